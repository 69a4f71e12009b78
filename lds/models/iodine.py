"""IODINE (Greff et al. 2019): iterative amortised inference, as the LDS paper trained it (Table 2).

The posterior of every slot, lambda_k = [mean_k, s_k] (2D numbers, variance = softplus(s_k), the
original's "var" scale with a softplus), starts at a learned lambda_0 shared by all slots and is
refined T times by a refinement network:

    for t = 0 .. T:
        z_k    = mean_k + sqrt(softplus(s_k)) * eps            (a fresh sample every iteration)
        decode: appearance mu_k = sigmoid(RGB logits), mask logits m_k^lg, masks = softmax_k
        L_t    = NLL_t + beta * KL(q_t || N(0, I))  -  lambda_LDS * L_LDS(z_t)
        if t < T:  lambda <- lambda + RefineNet(inputs_t, LSTM state)          (additive update)

    loss = sum_t w_t L_t,   w_t = t / T                 (T = 5: 0, 0.2, 0.4, ..., 1.0)

As in DeepMind's original (iodine/modules/iodine.py): T refinement updates and T + 1 decodes,
the loss weights a "linspace" from 0 (lambda_0's loss, which only feeds the first refinement)
to 1 (the posterior after the last update).

Refinement inputs (per slot), each as the original's ``_get_inputs_for`` computes it. "LN" is a
standardisation over the slot's own channels x pixels (biased variance, eps 1e-5 inside the
square root, as snt.LayerNorm), and every LN input is *detached* (stop-gradient):

    image-shaped, 17 channels:  x (3), mu_k (3), mask_k (1), mask logit_k (1),
                                LN dL/dmu_k (3), LN dL/d(mask logit_k) (1),
                                mask posterior N_k / (sum_j N_j + 1e-6) (1, component
                                likelihoods alone, no mask weights),
                                LN log p(x) (1, the mixture's, standardised over the image,
                                the same for every slot),
                                LN counterfactual log p(x) - log p_{-k}(x) (1, p_{-k}: slot k
                                removed, the other masks renormalised), coordinates x, y (2)
    vector:                     lambda_k (2D), LN dL/dlambda_k (2D)

x, mu, masks, mask logits and the mask posterior are *not* detached (the decoder also learns
through the refinement path, as in the reference); the gradients and log-likelihoods are.
dL/dmu and dL/d(mask logit) are the exact analytic gradients of the mixture NLL (no autograd);
dL/dlambda goes back through the decoder with torch.autograd.grad(create_graph=False), i.e. one
input-gradient pass per iteration with no weight gradients. L here is the ELBO loss of the
iteration *without* the LDS term: LDS shapes training only, so inference (the refinement
trajectory) is the same function with and without it, which also makes the LDS contribution to
the loss exactly ``-lambda_LDS * sum_t w_t L_LDS(z_t)``: the model returns each iteration's
sample z_t and weight w_t (``lds_latents``, ``lds_weights``) and the trainer applies the prior
(lds.training.objective).

Stability: after every refinement update the posterior is checked for NaN/inf (as the reference
code does); on a non-finite value refinement stops, a warning names the iteration and the loss is
made NaN, so the training loop's NaN guard stops the run with the last good checkpoint.

Memory: the graph of all T + 1 iterations is kept for the backward pass. ``grad_checkpoint=True``
recomputes each refining iteration in the backward pass instead (torch.utils.checkpoint) and
stores only the iteration boundaries: dL/dlambda then comes from a separate decode of a detached
copy of lambda whose graph is freed at once, so each refining iteration costs two extra decoder
forwards (same values, same gradients; tested).

Evaluation (``model.eval()``): the refinement iterations still sample z (all slots start from the
same lambda_0, and only the sampling noise breaks their symmetry). That noise is drawn per image
from a generator seeded by (the batch's ``image_index`` of that image, the iteration), so an
evaluation is reproducible and an image's posterior does not change with the batch size or its
position in the batch (without ``image_index``, the position stands in for it); the last
iteration decodes the posterior mean,
so ``slot_latents == posterior_mean``. Under ``torch.no_grad()`` the model turns autograd on
internally for dL/dlambda and detaches lambda between iterations.

Inference gap (lds.models.interface): ``posterior`` is q after the last refinement
step (eval mode) and log p~(x, z) = log sum_k m_k(z) N(x; mu_k(z), sigma^2) + log N(z; 0, I), so
its ELBO is the final iteration's -(NLL + KL) at unit weights.

Departures from the original (documented in docs/models.md): the spatial broadcast decoder is
the shared one (ReLU, fused first conv) rather than ELU; pixels are Gaussian with a fixed sigma
(0.1, as MulMON and zhixuan-lin/IODINE) rather than logistic with scale 0.03, so the RGB means
are sigmoid(decoder output) and the refinement sees them and dL/dmu; the LN has no learned gain
and bias and the constant "capacity" inputs are left out (both absorbed exactly by the unpadded
first conv and the LSTM's input weights); the refinement convs are unpadded and flattened, not
avg-pooled.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.models.interface import GaussianPosterior, MultiObjectVAE, standard_normal_log_density
from lds.models.base import LOG_2PI, SpatialBroadcastDecoder, check_image_batch, conv_output_size, \
    coordinate_grid

REFINE_IMAGE_CHANNELS = 17


@dataclass
class IODINEConfig:
    """IODINE's architecture and loss weights. Defaults: 64x64 images, the LDS paper's settings."""

    name: Literal["iodine"] = "iodine"
    height: int = 64
    width: int = 64
    num_slots: int = 7                                  # K
    latent_dim: int = 16                                # D (64 in the IODINE paper; 16 in LDS's)
    num_iterations: int = 5                             # T refinement updates, T + 1 decodes
    decoder_channels: tuple[int, ...] = (64, 64, 64, 64)
    refine_channels: tuple[int, ...] = (64, 64, 64, 64)  # 3x3 stride-2 convs, ELU
    refine_hidden: int = 256                            # MLP after the convs
    lstm_hidden: int = 256
    pixel_sigma: float = 0.1                            # fixed Gaussian pixel std
    beta: float = 1.0                                   # KL weight
    # Memory: recompute each refinement iteration in the backward pass (same function).
    grad_checkpoint: bool = False
    # Speed only (same function, same parameters).
    channels_last: bool = True
    fused_broadcast: bool = True
    # CPU: the decoder's conv trunk as one chunked, ReLU-fused op (lds/models/fused_decoder.py).
    fused_decoder: bool = True

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(self.decoder_channels)
        self.refine_channels = tuple(self.refine_channels)
        if self.num_slots < 2:
            raise ConfigError(f"model.num_slots must be at least 2, got {self.num_slots}")
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be positive, got {self.latent_dim}")
        if self.num_iterations < 1:
            raise ConfigError(f"model.num_iterations must be at least 1, got {self.num_iterations}")
        if self.pixel_sigma <= 0:
            raise ConfigError("model.pixel_sigma must be positive")
        h, w = self.height, self.width
        for _ in self.refine_channels:
            h, w = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2)
        if h < 1 or w < 1:
            raise ConfigError(f"{self.height}x{self.width} images are too small for "
                              f"{len(self.refine_channels)} stride-2 convs (model.refine_channels)")


def standardize(x: torch.Tensor, dims: Sequence[int], eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free layer norm over ``dims``, detached: IODINE's LN of the refinement inputs."""
    x = x.detach()
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


class RefinementNetwork(nn.Module):
    """(17-channel image inputs, vector inputs, LSTM state) -> additive update of lambda."""

    def __init__(self, latent_dim: int, height: int, width: int, channels: Sequence[int],
                 hidden: int, lstm_hidden: int):
        super().__init__()
        layers: list[nn.Module] = []
        h, w, in_ch = height, width, REFINE_IMAGE_CHANNELS
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2), nn.ELU(inplace=True)]
            h, w, in_ch = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2), out_ch
        self.convs = nn.Sequential(*layers)
        # The original's MLP: two layers, ELU between them, none after the last.
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * h * w, hidden), nn.ELU(inplace=True),
                                 nn.Linear(hidden, hidden))
        self.lstm = nn.LSTMCell(hidden + 4 * latent_dim, lstm_hidden)
        with torch.no_grad():            # snt.LSTM's forget_bias = 1 (gates i, f, g, o)
            self.lstm.bias_ih[lstm_hidden:2 * lstm_hidden] += 1.0
        self.head = nn.Linear(lstm_hidden, 2 * latent_dim)

    def forward(self, image_inputs: torch.Tensor, vector_inputs: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor]):
        features = self.mlp(self.convs(image_inputs))
        h, c = self.lstm(torch.cat([features, vector_inputs], dim=1), state)
        return self.head(h), (h, c)


class IODINE(MultiObjectVAE):
    """IODINE. ``model(batch) -> ModelOutput``; the trainer's LDS sees every iteration's z_t."""

    def __init__(self, cfg: IODINEConfig):
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_slots
        d = cfg.latent_dim
        self.decoder = SpatialBroadcastDecoder(d, cfg.height, cfg.width, cfg.decoder_channels, 4,
                                               cfg.fused_broadcast, cfg.channels_last,
                                               cfg.fused_decoder)
        self.refine = RefinementNetwork(d, cfg.height, cfg.width, cfg.refine_channels,
                                        cfg.refine_hidden, cfg.lstm_hidden)
        # lambda_0 = [mean, s], shared by all slots; starts at N(0, I): softplus(s) = 1.
        self.initial_posterior = nn.Parameter(
            torch.cat([torch.zeros(d), torch.full((d,), math.log(math.e - 1.0))]))
        self.register_buffer("coords", coordinate_grid(cfg.height, cfg.width), persistent=False)
        # The original's "linspace" weights t / T over the T + 1 decodes (lambda_0 weighs 0).
        t = cfg.num_iterations
        self.register_buffer("iteration_weights",
                             torch.arange(0, t + 1, dtype=torch.float32) / t, persistent=False)

    # ---- one decode and its loss -------------------------------------------------------
    def _render(self, image: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode z (B, K, D) and evaluate the mixture likelihood of ``image``."""
        b, k, _ = z.shape
        h, w = image.shape[-2:]
        decoded = self.decoder(z.reshape(b * k, -1)).view(b, k, 4, h, w)
        appearance = torch.sigmoid(decoded[:, :, :3])
        mask_logits = decoded[:, :, 3:]
        log_masks = F.log_softmax(mask_logits, dim=1)
        sigma = self.cfg.pixel_sigma
        diff = image.unsqueeze(1) - appearance                               # (B, K, 3, H, W)
        log_comp = (-0.5 / sigma**2) * diff.pow(2).sum(2, keepdim=True) \
            - 3 * (math.log(sigma) + 0.5 * LOG_2PI)                          # (B, K, 1, H, W)
        log_joint = log_masks + log_comp
        log_pixel = torch.logsumexp(log_joint, dim=1, keepdim=True)          # (B, 1, 1, H, W)
        return {"appearance": appearance, "mask_logits": mask_logits, "log_masks": log_masks,
                "diff": diff, "log_comp": log_comp, "log_joint": log_joint, "log_pixel": log_pixel}

    @staticmethod
    def _moments(posterior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lambda = [mean, s] -> (mean, variance = softplus(s)), as the original's latent_dist."""
        mean, s = posterior.chunk(2, dim=-1)
        return mean, F.softplus(s)

    @classmethod
    def _kl(cls, posterior: torch.Tensor) -> torch.Tensor:
        """KL(q || N(0, I)) summed over slots and dims -> (B,)."""
        mean, var = cls._moments(posterior)
        return (0.5 * (mean.pow(2) + var - 1.0 - torch.log(var))).sum((1, 2))

    def _sample(self, posterior: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        mean, var = self._moments(posterior)
        return mean if noise is None else mean + torch.sqrt(var) * noise

    def _refinement_inputs(self, image: torch.Tensor, r: dict[str, torch.Tensor],
                           posterior: torch.Tensor, grad_posterior: torch.Tensor):
        """The 17 image channels (B*K, 17, H, W) and the vector inputs (B*K, 4D).

        Each input is computed as in the original's ``_get_inputs_for`` (module docstring).
        """
        b, k = posterior.shape[:2]
        h, w = image.shape[-2:]
        sigma2 = self.cfg.pixel_sigma ** 2
        with torch.no_grad():
            # Exact gradients of the per-image NLL = -sum_pixels log sum_k m_k N(x; mu_k, sigma),
            # m = softmax_k(mask logits), r_k = m_k N_k / p(x) the responsibility:
            #   dNLL/d(mask logit_k) = m_k - r_k,   dNLL/dmu_k = -r_k (x - mu_k) / sigma^2.
            log_joint, log_pixel = r["log_joint"].detach(), r["log_pixel"].detach()
            responsibility = torch.exp(log_joint - log_pixel)
            grad_mask_logits = r["log_masks"].detach().exp() - responsibility
            grad_means = -(responsibility / sigma2) * r["diff"].detach()
            # Counterfactual: log p(x) minus the log-likelihood with slot k removed and the other
            # slots' masks renormalised (softmax over the remaining mask logits).
            eye = torch.eye(k, dtype=torch.bool, device=image.device).view(1, k, k, 1, 1, 1)
            minus_inf = torch.tensor(-math.inf, dtype=log_joint.dtype, device=image.device)
            loo_joint = torch.where(eye, minus_inf, log_joint.unsqueeze(1))
            loo_masks = torch.where(eye, minus_inf, r["log_masks"].detach().unsqueeze(1))
            leave_one_out = torch.logsumexp(loo_joint, 2) - torch.logsumexp(loo_masks, 2)
            counterfactual = log_pixel - leave_one_out
        # The original's mask posterior p_k / (sum_j p_j + 1e-6) normalises the component
        # likelihoods alone (no mask weights); computed in log space, and it keeps its graph.
        log_comp = r["log_comp"]
        log_norm = torch.logaddexp(torch.logsumexp(log_comp, dim=1, keepdim=True),
                                   log_comp.new_tensor(math.log(1e-6)))
        mask_posterior = torch.exp(log_comp - log_norm)
        slot_dims = (2, 3, 4)
        channels = [
            image.unsqueeze(1).expand(b, k, 3, h, w),
            r["appearance"],
            r["log_masks"].exp(),
            r["mask_logits"],
            standardize(grad_means, slot_dims),
            standardize(grad_mask_logits, slot_dims),
            mask_posterior,
            # The mixture's log-likelihood, standardised over the image's pixels, same per slot.
            standardize(r["log_pixel"], slot_dims).expand(b, k, 1, h, w),
            standardize(counterfactual, slot_dims),
            self.coords.unsqueeze(0).expand(b, k, 2, h, w),
        ]
        inputs = torch.cat(channels, dim=2).reshape(b * k, REFINE_IMAGE_CHANNELS, h, w)
        if self.cfg.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        vector = torch.cat([posterior, standardize(grad_posterior, (2,))], dim=2)
        return inputs, vector.reshape(b * k, -1)

    def _posterior_gradient(self, image, posterior, noise) -> torch.Tensor:
        """dL/dlambda from a decode of a detached copy of lambda (its graph is freed at once).

        The gradient-checkpointed path uses this so that the checkpointed function is free of
        autograd calls; the plain path takes the same gradient from its own graph instead.
        """
        posterior = posterior.detach().requires_grad_()
        r = self._render(image, self._sample(posterior, noise))
        loss = (-r["log_pixel"].flatten(1).sum(1) + self.cfg.beta * self._kl(posterior)).sum()
        return torch.autograd.grad(loss, posterior)[0]

    def _iteration(self, image, posterior, state, noise, refine: bool, need_grad: bool,
                   grad_posterior: torch.Tensor | None = None):
        """Decode lambda_t, score it, and (``refine``) compute lambda_{t+1}.

        Returns (nll (B,), kl (B,), z, render dict, next posterior or None, next state or None).
        """
        b, k, _ = posterior.shape
        if need_grad and grad_posterior is None and not posterior.requires_grad:
            posterior = posterior.detach().requires_grad_()
        z = self._sample(posterior, noise)
        r = self._render(image, z)
        nll = -r["log_pixel"].flatten(1).sum(1)
        kl = self._kl(posterior)
        if not refine:
            return nll, kl, z, r, None, None
        if grad_posterior is None:
            # dL/dlambda for the refinement inputs: one input-gradient pass through the decoder,
            # no weight gradients, no graph of its own (create_graph=False); the summed loss
            # keeps each image's gradient independent of the batch size. LDS is not part of it.
            (grad_posterior,) = torch.autograd.grad((nll + self.cfg.beta * kl).sum(), posterior,
                                                    retain_graph=True)
        image_inputs, vector_inputs = self._refinement_inputs(image, r, posterior, grad_posterior)
        if state is None:
            zeros = image.new_zeros(b * k, self.cfg.lstm_hidden)
            state = (zeros, zeros)
        delta, state = self.refine(image_inputs, vector_inputs, state)
        return nll, kl, z, r, posterior + delta.view(b, k, -1), state

    def _checkpointed_iteration(self, image, posterior, h, c, noise, grad_posterior):
        """The refining iteration as a pure function of tensors, for torch.utils.checkpoint."""
        nll, kl, z, r, posterior_next, (h, c) = self._iteration(
            image, posterior, (h, c), noise, refine=True, need_grad=True,
            grad_posterior=grad_posterior)
        return nll, kl, z, posterior_next, h, c

    # ---- forward -----------------------------------------------------------------------
    def forward(self, batch: dict) -> ModelOutput:
        cfg = self.cfg
        image = batch["image"]
        check_image_batch(image, "IODINE", cfg.height, cfg.width)
        b, _, h, w = image.shape
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            out = self._run(image, keep_graph, batch.get("image_index"))
        return out

    def _eval_noise(self, image_index: torch.Tensor | None, t: int, like: torch.Tensor) -> torch.Tensor:
        """Evaluation's sampling noise for refinement step ``t``: drawn per image from a
        generator seeded by (its image index, t), so an image's posterior does not depend on
        the batch it is in, its position or the batch size (positions stand in for indices
        when the batch has none)."""
        b, k, d = like.shape
        keys = (image_index.reshape(b, -1)[:, 0].tolist() if image_index is not None
                else list(range(b)))
        rows = [torch.randn((k, d), generator=torch.Generator().manual_seed(
            int(key) * 1_000_003 + t), dtype=torch.float32) for key in keys]
        return torch.stack(rows).to(device=like.device, dtype=like.dtype)

    def _run(self, image: torch.Tensor, keep_graph: bool,
             image_index: torch.Tensor | None = None) -> ModelOutput:
        cfg = self.cfg
        b = image.shape[0]
        k, d, iterations = self.num_slots, cfg.latent_dim, cfg.num_iterations
        posterior = self.initial_posterior.view(1, 1, 2 * d).expand(b, k, 2 * d)
        state = None
        nlls, kls, samples, means = [], [], [], []
        diverged_at = None
        use_checkpoint = cfg.grad_checkpoint and keep_graph
        for t in range(iterations + 1):
            last = t == iterations
            if not keep_graph:                       # evaluation: no graph across iterations
                posterior = posterior.detach()
            # Every iteration samples; in eval mode the last one decodes the posterior mean.
            if self.training:
                noise = torch.randn_like(posterior[..., :d])
            elif last:
                noise = None
            else:
                noise = self._eval_noise(image_index, t, posterior[..., :d])
            if last or not use_checkpoint:
                nll, kl, z, r, posterior_next, state_next = self._iteration(
                    image, posterior, state, noise, refine=not last, need_grad=True)
            else:
                if state is None:
                    zeros = image.new_zeros(b * k, cfg.lstm_hidden)
                    state = (zeros, zeros)
                grad_posterior = self._posterior_gradient(image, posterior, noise)
                nll, kl, z, posterior_next, hs, cs = checkpoint(
                    self._checkpointed_iteration, image, posterior, *state, noise, grad_posterior,
                    use_reentrant=False)
                state_next, r = (hs, cs), None
            nlls.append(nll.mean())
            kls.append(kl.mean())
            samples.append(z)
            means.append(self._moments(posterior)[0])
            if last:
                final_posterior, final_z, final_render = posterior, z, r
                break
            # The reference code asserts a finite posterior after every refinement step.
            if not bool(torch.isfinite(posterior_next).all()):
                diverged_at = t + 1
                final_posterior, final_z = posterior_next, z
                final_render = r if r is not None else self._render(image, z)
                break
            posterior, state = posterior_next, state_next

        n = len(nlls)
        weights = self.iteration_weights[:n]
        nll_t, kl_t = torch.stack(nlls), torch.stack(kls)
        nll_sum = (weights * nll_t).sum()
        kl_sum = (weights * kl_t).sum()
        loss = nll_sum + cfg.beta * kl_sum
        if diverged_at is not None:
            warnings.warn(f"IODINE: non-finite posterior after refinement step {diverged_at}; "
                          f"the loss is set to NaN so training stops at the last good state",
                          RuntimeWarning, stacklevel=3)
            loss = loss + float("nan")

        r = final_render
        mean, var = self._moments(final_posterior)
        logvar = torch.log(var)
        log_masks = r["log_masks"]
        out = ModelOutput(
            loss=loss,
            loss_terms={"nll": nll_sum, "kl_z": kl_sum},
            slot_latents=final_z,
            posterior_mean=mean,
            posterior_logvar=logvar,
            mask_logits=r["mask_logits"],
            masks=log_masks.exp(),
            appearance=r["appearance"],
            reconstruction=(log_masks.exp() * r["appearance"]).sum(1),
            lds_latents=torch.stack(samples),             # (T + 1, B, K, D): z_t of every decode
            lds_means=torch.stack(means),                 # and the mean z_t was sampled around
            lds_weights=weights,
            extras={"nll_per_iteration": nll_t, "kl_per_iteration": kl_t},
        )
        if not keep_graph:
            out = out.detached()
        return out

    # ---- the probabilistic interface (lds.models.interface) -------------------------------
    def posterior(self, batch: dict) -> GaussianPosterior:
        """q = the posterior after the last refinement step (eval mode: per-image noise)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self({k: batch[k] for k in ("image", "image_index") if k in batch})
        finally:
            self.train(was_training)
        return GaussianPosterior(out.posterior_mean, out.posterior_logvar)

    def log_joint(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        """log p~(x, z) = log sum_k m_k(z) N(x; mu_k(z), sigma^2) + log N(z; 0, I): the final
        iteration's -(NLL + KL) at unit weights is its ELBO."""
        image = batch["image"]
        s, n, k, d = z.shape
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, *image.shape[1:])
        r = self._render(images, z.reshape(s * n, k, d))
        log_likelihood = r["log_pixel"].flatten(1).sum(1).view(s, n)
        return log_likelihood + standard_normal_log_density(z)
