"""MulMON (Li, Fisher et al. 2020): multi-view multi-object inference by iterative refinement.

A scene is a set of K slot latents z_k ~ q(z_k) = N(mu_k, exp(logvar_k)), one posterior
lambda = [mu, logvar] per slot shared by every view. The model sees the scene's observed views
one after another; for each view it runs T iterations (IODINE-style), refining between them
(T - 1 updates per view; the last iteration is scored, not refined, as in MulMON's code):

    z ~ q_lambda                            (the mean at evaluation)
    z_v = projector([z, view_encoder(v)])   (viewpoint-conditioned slot latents)
    x_k, m_k^lg = decoder(z_v)              (RGB unbounded, masks = softmax over K)
    L_t = -log p(x | z_v) + KL_MC(q_lambda || prior)   (per-colour-channel mixture, sigma 0.1;
                                                        model.likelihood=pixel: per pixel)
    lambda <- lambda + refine(aux inputs, lambda, dL_t/dlambda)       (t < T - 1)

The posterior after one view is the prior (and the start) for the next; the first view's prior
and start is the learned lambda_0. After the observed views the final posterior predicts the
remaining *query* views, whose NLL is added to the loss. The training loss is

    sum_v w_v sum_t w_t [ NLL_vt + KL_vt - lambda * L_LDS(z_vt) ]  +  mean_q NLL_q

with w_t = (t+1)/T and w_v = (v+1)/V_obs, each normalised to sum to 1 (MulMON's weights), and
the LDS prior (Eq. 3 of the LDS paper) applied to the slot latents at *every* iteration: the
model returns every z_vt with its weight w_v w_t (``lds_latents``, ``lds_weights``) and the
trainer applies the prior (lds.training.objective).

LDS is a training term only: the refinement network is fed gradients of -ELBO (NLL + KL), not of
the LDS term, so inference is the same procedure with and without LDS and the loss with LDS
differs from the loss without by exactly lambda times the weighted prior.

Speed: every decoder call renders all S scenes x K slots (and, for the query views, all query
views) at once; the refinement gradients come from one ``torch.autograd.grad`` per iteration
that reuses the forward graph (retain_graph) which the training backward then walks again.

Output contract (lds.contract): views are flattened into the batch axis, B = scenes * views,
observed views first (in the order they were seen), then the query views. An observed view's
fields come from the last refinement iteration on that view; a query view's from the final
posterior. ``query_rows`` (B,) says which rows are queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from common.errors import ConfigError
from datasets.viewpoints import VIEWPOINT_KINDS
from lds.contract import ModelOutput
from lds.models.interface import GaussianPosterior, MultiObjectVAE, diagonal_gaussian_log_density
from lds.models.base import LOG_2PI, SpatialBroadcastDecoder, check_image_batch, \
    conv_output_size, coordinate_grid

REFINE_INPUT_CHANNELS = 17
# Query views per decoder call. One call over all query views (8 scenes x 7 views x 7 slots at
# the paper setting) has ~250 MB activations whose backward ran ~3x slower per FLOP than the
# observed iterations' calls (8 x 7 slot images); per-view calls are the same computation in
# cache- and heap-friendlier pieces (docs/mulmon.md, "Speed and memory").
QUERY_VIEWS_PER_DECODER_CALL = 1


@dataclass
class MulMONConfig:
    """MulMON's architecture and inference settings. Defaults: MulMON's CLEVR settings, 64x64."""

    name: Literal["mulmon"] = "mulmon"
    height: int = 64
    width: int = 64
    num_slots: int = 7                                  # K
    latent_dim: int = 16                                # D
    num_iterations: int = 5                             # T refinement iterations per observed view
    pixel_sigma: float = 0.1
    # The likelihood's mixture over slots (MONetConfig.likelihood's two values), where MulMON's code
    # and the papers disagree. "channel"
    # (MulMON's code, which the public-code check matches): each colour channel of a pixel mixes
    # the K slots on its own, sum_{i,c} log sum_k m_ki N(x_ic; mu_kic, sigma^2). "pixel" (the LDS
    # paper's Eq. 1, which it calls MulMON's formulation; IODINE's and MONet's code): one mixture
    # per pixel over its RGB value, sum_i log sum_k m_ki prod_c N(...). The default is the code
    # that the original results came from; at CPU scale the per-channel mixture keeps slots from
    # taking objects' colours (docs/results/mulmon_cpu_regime, the single-view limit).
    likelihood: Literal["channel", "pixel"] = "channel"
    decoder_channels: tuple[int, ...] = (32, 32, 32, 32)
    refine_channels: tuple[int, ...] = (32, 32, 64, 64)  # stride-2 convs, no padding
    refine_hidden: int = 256                            # MLP after the convs
    refine_features: int = 128                          # image features into the LSTM
    lstm_hidden: int = 128
    # Viewpoint vector (datasets/viewpoints.py): "clevr-mv" (3 numbers, MulMON's) or "pose" (9);
    # "auto" is resolved from the store when training starts (CLE-MV/Dolphin -> clevr-mv).
    viewpoint: Literal["auto", "clevr-mv", "pose"] = "auto"
    view_embed_dim: int = 0                             # 0: the viewpoint size (what MulMON ran)
    view_hidden: int = 128
    projector_hidden: int = 512
    viewpoint_noise: float = 0.015                      # std of N(0, s^2) added in training
    # Data: scenes as sets of views (datasets.torch_data.SceneViewsDataset).
    dataset: Literal["views"] = "views"
    num_views: int = 10                                 # views per scene per step (observed+query)
    # Which of a scene's views make up those num_views: "any" (MulMON's sampling: any views of
    # the scene) or "nearest" (one view and the views looking from the directions nearest to it,
    # a window of neighbouring cameras; datasets.torch_data.SceneViewsDataset). At CPU scale
    # multi-view MulMON splits scenes soonest when its views stand close together (an arc of
    # 45-90 deg), later on wider arcs, not from all round in 4000 steps
    # (docs/results/mulmon_cpu_regime), where a rig capture spreads all round.
    view_window: Literal["any", "nearest"] = "any"
    min_observed: int = 1                               # observed views drawn per training step
    max_observed: int = 6
    eval_observed: int = 5                              # evaluation: first 5 observed, rest query
    # Memory knob: gradient checkpointing of every refinement iteration (activations are
    # recomputed when needed; same values, more compute). See docs/mulmon.md for the figures.
    checkpoint_iterations: bool = False
    # Speed only: NHWC input for the refinement network's convs (the decoder is always NHWC).
    channels_last: bool = True
    # Speed only: on the CPU, run the decoder's conv trunk as one chunked, ReLU-fused op
    # (lds/models/fused_decoder.py). Same parameters and values; off = plain layer-by-layer.
    fused_decoder: bool = True

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(self.decoder_channels)
        self.refine_channels = tuple(self.refine_channels)
        if self.num_slots < 2:
            raise ConfigError(f"model.num_slots must be at least 2, got {self.num_slots}")
        if self.latent_dim < 1 or self.num_iterations < 1:
            raise ConfigError("model.latent_dim and model.num_iterations must be positive")
        if self.pixel_sigma <= 0:
            raise ConfigError("model.pixel_sigma must be positive")
        if self.likelihood not in ("channel", "pixel"):
            raise ConfigError(f"model.likelihood must be channel or pixel, got {self.likelihood!r}")
        if self.viewpoint not in ("auto", *VIEWPOINT_KINDS):
            raise ConfigError(f"model.viewpoint must be auto, clevr-mv or pose, got {self.viewpoint!r}")
        # num_views = 1 is the single-view limit: one observed view, no query, nothing that needs
        # the viewpoint transform learned (a diagnostic that sets MulMON beside IODINE).
        if self.num_views < 1:
            raise ConfigError("model.num_views must be at least 1")
        if self.view_window not in ("any", "nearest"):
            raise ConfigError(f"model.view_window must be any or nearest, got {self.view_window!r}")
        if not 1 <= self.min_observed <= self.max_observed:
            raise ConfigError("need 1 <= model.min_observed <= model.max_observed")
        if self.eval_observed < 1:
            raise ConfigError("model.eval_observed must be at least 1")
        h, w = self.height, self.width
        for _ in self.refine_channels:
            h, w = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2)
        if h < 1 or w < 1:
            raise ConfigError(f"{self.height}x{self.width} images are too small for "
                              f"{len(self.refine_channels)} stride-2 convs (model.refine_channels)")

    @property
    def viewpoint_size(self) -> int:
        # An unresolved "auto" (a model built without a store) takes the general 9-D vector.
        return VIEWPOINT_KINDS.get(self.viewpoint, VIEWPOINT_KINDS["pose"])

    def observed_range(self, num_views: int) -> tuple[int, int]:
        """Training: observed views are drawn from [lo, hi]; at least one view is a query."""
        hi = max(1, min(self.max_observed, num_views - 1))
        return min(self.min_observed, hi), hi


def _standardize(t: torch.Tensor, start_dim: int) -> torch.Tensor:
    """Parameter-free layer norm over the dims from ``start_dim`` on, detached, as MulMON's
    ``layernorm`` computes it: (x - mean) / (std + 1e-5), with the biased std over an image's
    C x H x W and the unbiased one (torch.std) over a vector. IODINE's ``standardize`` puts eps
    inside the square root, as its reference does; they are kept apart on purpose."""
    t = t.detach()
    flat = t.flatten(start_dim)
    mean = flat.mean(-1, keepdim=True)
    std = flat.std(-1, keepdim=True, correction=1 if t.dim() - start_dim == 1 else 0)
    shape = t.shape[:start_dim] + (1,) * (t.dim() - start_dim)
    return (t - mean.view(shape)) / (std.view(shape) + 1e-5)


class RefinementNetwork(nn.Module):
    """(17-channel aux image, [lambda, LN dL/dlambda]) -> additive update of lambda.

    4 stride-2 3x3 convs (no padding, ReLU) -> MLP (hidden, features) -> LSTMCell(features + 4D,
    lstm) -> Linear(lstm, 2D).
    """

    def __init__(self, cfg: MulMONConfig):
        super().__init__()
        layers: list[nn.Module] = []
        h, w, in_ch = cfg.height, cfg.width, REFINE_INPUT_CHANNELS
        for out_ch in cfg.refine_channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2), nn.ReLU(inplace=True)]
            h, w, in_ch = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2), out_ch
        self.convs = nn.Sequential(*layers)
        # No ReLU after the last layer: its 128 features go into the LSTM as MulMON's do.
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * h * w, cfg.refine_hidden),
                                 nn.ReLU(inplace=True),
                                 nn.Linear(cfg.refine_hidden, cfg.refine_features))
        self.lstm = nn.LSTMCell(cfg.refine_features + 4 * cfg.latent_dim, cfg.lstm_hidden)
        self.head = nn.Linear(cfg.lstm_hidden, 2 * cfg.latent_dim)
        self.channels_last = cfg.channels_last

    def forward(self, aux: torch.Tensor, vector: torch.Tensor, state):
        if self.channels_last:
            aux = aux.contiguous(memory_format=torch.channels_last)
        features = self.mlp(self.convs(aux))
        h, c = self.lstm(torch.cat([features, vector], dim=1), state)
        return self.head(h), (h, c)


def _gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((z - mean).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)


def _normalised_linear_weights(n: int) -> list[float]:
    """(i + 1) / n for i < n, normalised to sum to 1: MulMON's iteration and view weights."""
    total = (n + 1) / 2.0
    return [(i + 1) / n / total for i in range(n)]


class MulMON(MultiObjectVAE):
    """MulMON; the trainer's LDS prior sees every refinement iteration on every observed view.

    ``model(batch, num_observed=None) -> ModelOutput``; uses ``batch["image"]`` (S, V, 3, H, W)
    in [0, 1] and ``batch["viewpoint"]`` (S, V, v). The first ``num_observed`` views are
    observed, the rest are queries; by default training draws it from
    [min_observed, max_observed] (torch's global RNG) and evaluation uses ``eval_observed``.
    """

    input_keys = ("image", "viewpoint")
    item_kind = "scenes"

    def __init__(self, cfg: MulMONConfig):
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_slots
        d = cfg.latent_dim
        v_in = cfg.viewpoint_size
        v_dim = cfg.view_embed_dim or v_in
        # lambda_0 = [mu, logvar], one row shared by all slots: sampling breaks the symmetry.
        self.initial_posterior = nn.Parameter(torch.randn(1, 1, 2 * d) - 0.5)
        self.view_encoder = nn.Sequential(nn.Linear(v_in, cfg.view_hidden), nn.ReLU(inplace=True),
                                          nn.Linear(cfg.view_hidden, v_dim))
        self.projector = nn.Sequential(nn.Linear(d + v_dim, cfg.projector_hidden),
                                       nn.ReLU(inplace=True), nn.Linear(cfg.projector_hidden, d))
        # MulMON's spatial broadcast decoder: L unpadded 3x3 convs (ReLU), a 1x1 head to RGB
        # (unbounded) and one mask logit, returned as two tensors (splits (3, 1) in render).
        self.decoder = SpatialBroadcastDecoder(d, cfg.height, cfg.width, cfg.decoder_channels, 4,
                                               channels_last=True, fused_trunk=cfg.fused_decoder)
        self.refine = RefinementNetwork(cfg)
        self.register_buffer("coords", coordinate_grid(cfg.height, cfg.width), persistent=False)
        self.last_nonfinite: tuple[int, int] | None = None

    # ---- pieces --------------------------------------------------------------------------

    def output_rows(self, batch: dict) -> int:
        """Rows of every image-shaped output field: scenes * views."""
        return int(batch["image"].shape[0] * batch["image"].shape[1])

    def render(self, z: torch.Tensor, view_embedding: torch.Tensor, coordinate_features=None):
        """Slot latents (S, K, D) seen from N views (S, N, v_dim) -> means, log masks, logits.

        One decoder call over all S*N*K slot images. Returns (S, N, K, 3, H, W) RGB means
        (unbounded), (S, N, K, 1, H, W) log mixing probabilities and mask logits.
        """
        s, k, d = z.shape
        n = view_embedding.shape[1]
        zv = torch.cat([z[:, None].expand(s, n, k, d),
                        view_embedding[:, :, None].expand(s, n, k, view_embedding.shape[-1])], -1)
        means, logits = self.decoder(self.projector(zv).reshape(s * n * k, d), coordinate_features,
                                     splits=(3, 1))
        hw = (self.cfg.height, self.cfg.width)
        means, logits = means.view(s, n, k, 3, *hw), logits.view(s, n, k, 1, *hw)
        logits = logits.float()                     # mask probabilities in fp32 under autocast
        return means, F.log_softmax(logits, dim=2), logits

    def _log_components(self, image: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """log N(x_c; mu_kc, sigma^2) per slot and colour channel; image (S, N, 3, H, W)."""
        sigma = self.cfg.pixel_sigma
        return -0.5 * ((image.unsqueeze(2) - means) / sigma).pow(2) - math.log(sigma) - 0.5 * LOG_2PI

    def _nll(self, log_comp: torch.Tensor, log_masks: torch.Tensor) -> torch.Tensor:
        """Mixture NLL (per colour channel or per pixel: cfg.likelihood), summed over C, H, W ->
        (S, N); log_comp (S, N, K, C, H, W)."""
        if self.cfg.likelihood == "pixel":
            log_comp = log_comp.sum(3, keepdim=True)
        return -torch.logsumexp(log_masks + log_comp, dim=2).flatten(2).sum(-1)

    def _refinement_inputs(self, image, means, log_masks, logits, log_comp, d_means, d_log_masks):
        """The 17 auxiliary channels per slot image, (S*K, 17, H, W), as MulMON's code builds them.

        x, mu_x, mask, mask logit (not detached); LN dL/dmu_x and LN dL/dm (detached); the
        colour likelihood softmax_k sum_c log N(x_c; mu_kc, sigma) (no masks; detached); LN of the
        pixel likelihood exp(sum_c log sum_k m_k N(x_c; mu_kc, sigma)) (per pixel:
        sum_k m_k prod_c N(x_c; mu_kc, sigma), the mixture the loss scores) and LN of the
        leave-one-out likelihood (sum_j m_j L_j - m_k L_k) / (1 - m_k + 1e-5) with
        L_k = prod_c N(x_c; mu_kc, sigma) (likelihoods, not logs; detached); 2 coordinate channels.
        """
        s, k = means.shape[:2]
        h, w = means.shape[-2:]
        with torch.no_grad():
            # fp32 even under bf16 autocast: a mask of 0.999 is exactly 1 in bf16, which would
            # turn the leave-one-out divisor 1 - m_k + 1e-5 from 1e-3 into 1e-5.
            log_masks, log_comp = log_masks.float(), log_comp.float()
            masks = log_masks.exp()
            slot_ll = log_comp.sum(2, keepdim=True)                          # (S, K, 1, H, W)
            colour_likelihood = torch.softmax(slot_ll, dim=1)
            # The likelihood the loss scores (cfg.likelihood), as in MulMON's code, whose input is
            # exp of its own mixture log-likelihood: per pixel, the RGB product mixes once.
            mixed = slot_ll if self.cfg.likelihood == "pixel" else log_comp
            pixel_likelihood = torch.logsumexp(log_masks + mixed, dim=1).sum(1, keepdim=True).exp()
            pixel_likelihood = _standardize(pixel_likelihood, 1)[:, None].expand(s, k, 1, h, w)
            weighted = masks * slot_ll.exp()
            leave_one_out = (weighted.sum(1, keepdim=True) - weighted) / (1 - masks + 1e-5)
            leave_one_out = _standardize(leave_one_out, 2)
            # MulMON's mask input is dL/dm through log(m + 1e-6); ours is taken through log m.
            d_masks = d_log_masks / (masks + 1e-6)
        pieces = [
            image[:, None].expand(s, k, 3, h, w), means, log_masks.exp(), logits,
            _standardize(d_means, 2), _standardize(d_masks, 2),
            colour_likelihood, pixel_likelihood, leave_one_out,
            self.coords[:, None].expand(s, k, 2, h, w),
        ]
        # Concatenated channels-last: (S, K, H, W, 17) memory, which the refinement convs read
        # directly (a channel-dim cat of mixed layouts then an NHWC copy cost twice as much).
        aux = torch.cat([p.movedim(2, -1) for p in pieces], dim=-1).movedim(-1, 2)
        return aux.flatten(0, 1)

    # ---- forward ---------------------------------------------------------------------------

    def _iteration(self, x, view_embedding, coordinate_features, lam, prior, h_state, c_state,
                   refine: bool = True, noise: torch.Tensor | None = None):
        """One inference iteration on one observed view x (S, 3, H, W); z = mean + std * noise
        (``noise`` None: z = the mean).

        Returns the scene-mean NLL and KL of this iteration, its rendering and
        latents, and the refined posterior and LSTM state (unchanged when ``refine`` is false:
        the last iteration on a view is scored, not refined, as in MulMON's code).
        """
        cfg = self.cfg
        s, k = lam.shape[:2]
        d = cfg.latent_dim
        mean, logvar = lam.chunk(2, dim=-1)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise
        means, log_masks, logits = (t.squeeze(1) for t in self.render(z, view_embedding,
                                                                      coordinate_features))
        log_comp = self._log_components(x[:, None], means[:, None]).squeeze(1)
        nll = self._nll(log_comp[:, None], log_masks[:, None]).squeeze(1)             # (S,)
        prior_mean, prior_logvar = prior.chunk(2, dim=-1)
        kl = (_gaussian_log_prob(z, mean, logvar)
              - _gaussian_log_prob(z, prior_mean, prior_logvar)).flatten(1).sum(1)
        if not refine:
            return (nll.mean(), kl.mean(), means, log_masks, logits, z, mean, logvar, lam,
                    h_state, c_state)
        # Refinement: one autograd.grad over the ELBO terms (not LDS: inference is the same with
        # and without the prior), reusing this iteration's forward graph.
        d_means, d_log_masks, d_lam = torch.autograd.grad(
            (nll + kl).sum(), [means, log_masks, lam], retain_graph=self.training)
        aux = self._refinement_inputs(x, means, log_masks, logits, log_comp, d_means, d_log_masks)
        vector = torch.cat([lam, _standardize(d_lam, 2)], dim=-1).reshape(s * k, 4 * d)
        state = None if h_state is None else (h_state, c_state)
        delta, (h_state, c_state) = self.refine(aux, vector, state)
        new_lam = lam + delta.view(s, k, 2 * d)
        return (nll.mean(), kl.mean(), means, log_masks, logits, z, mean, logvar, new_lam,
                h_state, c_state)

    def forward(self, batch: dict, num_observed: int | None = None) -> ModelOutput:
        cfg = self.cfg
        image, viewpoint = batch["image"], batch["viewpoint"]
        check_image_batch(image, "MulMON", cfg.height, cfg.width, views=True)
        s, v_total, _, h, w = image.shape
        if viewpoint.shape[:2] != (s, v_total) or viewpoint.shape[-1] != cfg.viewpoint_size:
            raise ValueError(f"batch['viewpoint'] must be ({s}, {v_total}, {cfg.viewpoint_size}), "
                             f"got {tuple(viewpoint.shape)}")
        if num_observed is None:
            if self.training:
                lo, hi = cfg.observed_range(v_total)
                num_observed = int(torch.randint(lo, hi + 1, ()))
            else:
                num_observed = min(cfg.eval_observed, v_total - 1) if v_total > 1 else 1
        if not 1 <= num_observed <= v_total:
            raise ValueError(f"num_observed must be in 1..{v_total}, got {num_observed}")
        # Refinement needs gradients even under torch.no_grad() (evaluation).
        with torch.enable_grad():
            return self._infer(image, viewpoint, num_observed, batch.get("image_index"))

    def _eval_noise(self, image_index: torch.Tensor | None, view: int, t: int,
                    like: torch.Tensor) -> torch.Tensor:
        """Evaluation's sampling noise for iteration t on observed view ``view``: drawn per scene
        from a generator seeded by (its first image's index, view, t). All K slots start from the
        one learned lambda_0, so with z = the mean they would stay identical (the same masks
        for every slot: no segmentation at all); MulMON's own evaluation samples z. Seeded per
        scene, a scene's posterior does not depend on the batch it is in, its position or the
        batch size (positions stand in for indices when the batch has none)."""
        s, k, d = like.shape
        keys = (image_index.reshape(s, -1)[:, 0].tolist() if image_index is not None
                else list(range(s)))
        step = view * self.cfg.num_iterations + t
        rows = [torch.randn((k, d), generator=torch.Generator().manual_seed(
            int(key) * 1_000_003 + step), dtype=torch.float32) for key in keys]
        return torch.stack(rows).to(device=like.device, dtype=like.dtype)

    def _infer(self, image: torch.Tensor, viewpoint: torch.Tensor, num_observed: int,
               image_index: torch.Tensor | None = None) -> ModelOutput:
        cfg = self.cfg
        training = self.training
        s, v_total = image.shape[:2]
        k, d, steps = cfg.num_slots, cfg.latent_dim, cfg.num_iterations
        # Images in NHWC memory, the layout of the decoder's outputs: the likelihood terms then
        # run as vectorised streams (mixed layouts made each elementwise op ~10x slower).
        image = image.movedim(2, -1).contiguous().movedim(-1, 2)
        if training and cfg.viewpoint_noise > 0:
            viewpoint = viewpoint + cfg.viewpoint_noise * torch.randn_like(viewpoint)
        view_embedding = self.view_encoder(viewpoint)                      # (S, V, v_dim)
        coordinate_features = self.decoder.coordinate_features()           # once per forward

        lam = self.initial_posterior.expand(s, k, 2 * d)
        prior = lam
        iteration_weights = _normalised_linear_weights(steps)
        view_weights = _normalised_linear_weights(num_observed)
        nll_total = kl_total = image.new_zeros(())
        samples, sample_means, sample_weights = [], [], []  # every z_vt, its mean, w_v w_t (LDS)
        observed_fields = []
        self.last_nonfinite = None
        for view in range(num_observed):
            x = image[:, view]
            state = None                                                   # LSTM state per view
            for t in range(steps):
                if not training:                   # no graph across iterations at evaluation
                    lam = lam.detach().requires_grad_()
                h_state, c_state = state if state is not None else (None, None)
                refine = t < steps - 1
                # Training samples z every iteration; evaluation samples (seeded) where the
                # sample feeds a refinement, and scores each view's last iteration at the mean.
                if training:
                    noise = torch.randn_like(lam[..., :d])
                else:
                    noise = self._eval_noise(image_index, view, t, lam[..., :d]) if refine else None
                args = (image[:, view], view_embedding[:, view: view + 1], coordinate_features,
                        lam, prior, h_state, c_state, refine, noise)
                if training and cfg.checkpoint_iterations:
                    # Memory knob: keep only each iteration's inputs and outputs; recompute
                    # its activations when they are needed (the same values: RNG preserved).
                    result = checkpoint(self._iteration, *args, use_reentrant=False)
                else:
                    result = self._iteration(*args)
                nll, kl, means, log_masks, logits, z, mean, logvar, lam, h_state, c_state = result
                state = (h_state, c_state)
                weight = view_weights[view] * iteration_weights[t]
                nll_total = nll_total + weight * nll
                kl_total = kl_total + weight * kl
                samples.append(z)
                sample_means.append(mean)
                sample_weights.append(weight)
                if t == steps - 1:
                    observed_fields.append((means, log_masks, logits, z, mean, logvar))
                # MulMON asserts a finite posterior after every refinement step; here the step
                # is recorded and the loss made non-finite so the trainer's NaN guard stops the
                # run with the last good checkpoint.
                if self.last_nonfinite is None and not bool(torch.isfinite(lam).all()):
                    self.last_nonfinite = (view, t)
            prior = lam                                    # posterior after this view

        # Query views, rendered from the final posterior (QUERY_VIEWS_PER_DECODER_CALL views per
        # decoder call); each call's likelihood is computed on its own slice, while it is small.
        num_query = v_total - num_observed
        if not training:
            lam = lam.detach()
        mean, logvar = lam.chunk(2, dim=-1)
        z_final = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if training else mean
        query_parts: list[tuple[torch.Tensor, ...]] = []
        query_nll = image.new_zeros(())
        chunk = max(1, QUERY_VIEWS_PER_DECODER_CALL)
        for start in range(num_observed, v_total, chunk):
            part = self.render(z_final, view_embedding[:, start: start + chunk], coordinate_features)
            q_log_comp = self._log_components(image[:, start: start + chunk], part[0])
            query_nll = query_nll + self._nll(q_log_comp, part[1]).sum(1).mean()
            query_parts.append(part)
        if num_query:
            query_nll = query_nll / num_query                  # mean over query views and scenes

        loss = nll_total + kl_total + query_nll
        terms = {"nll": nll_total, "kl": kl_total, "query_nll": query_nll}
        if self.last_nonfinite is not None:
            loss = loss + float("nan")
            view, t = self.last_nonfinite
            terms["nonfinite_refinement_step"] = image.new_tensor(float(view * steps + t + 1))

        # Contract fields: (S, V, ...) with observed views first, flattened to (S*V, ...).
        def per_view(index: int, query_values=()) -> torch.Tensor:
            parts = [f[index][:, None] for f in observed_fields]          # one copy, not two
            return torch.cat([*parts, *query_values], dim=1).flatten(0, 1)

        all_means = per_view(0, [p[0] for p in query_parts])
        log_masks_all = per_view(1, [p[1] for p in query_parts])
        logits_all = per_view(2, [p[2] for p in query_parts])

        def latents(index: int, final: torch.Tensor) -> torch.Tensor:
            return per_view(index, [final[:, None].expand(s, num_query, k, d)] if num_query else ())

        masks = log_masks_all.exp()
        query_view = torch.zeros(s, v_total, dtype=torch.bool, device=image.device)
        query_view[:, num_observed:] = True
        extras = {"view_weights": image.new_tensor(view_weights),
                  "iteration_weights": image.new_tensor(iteration_weights)}
        out = ModelOutput(
            loss=loss,
            loss_terms=terms,
            slot_latents=latents(3, z_final),
            posterior_mean=latents(4, mean),
            posterior_logvar=latents(5, logvar),
            mask_logits=logits_all,
            masks=masks,
            appearance=all_means,
            reconstruction=(masks * all_means).sum(dim=1),
            extras=extras,
            lds_latents=torch.stack(samples),                 # (V_obs * T, S, K, D)
            lds_means=torch.stack(sample_means),
            lds_weights=image.new_tensor(sample_weights),
            lds_iterations=torch.arange(steps).repeat(num_observed),   # (v, t) in view-major order
            query_rows=query_view.flatten(),
        )
        if not training:
            out = out.detached()
        return out

    # ---- the probabilistic interface (lds.models.interface) -------------------------------
    # One item is a scene; x = its observed views, z = the K slot latents. Observed views: the
    # evaluation split, the first min(eval_observed, V - 1) views (all of them when V = 1); the
    # query views are not part of x. q = the posterior after the last refinement step on the
    # last observed view. The joint is MulMON's ELBO at unit weights over those views, with the
    # learned initial prior lambda_0 = p(z) (the prior of the first view, where the sequence of
    # per-view KLs starts):
    #     log p~(x, z) = sum_v log p(x_v | z, v) + log N(z; lambda_0)
    # with the per-colour-channel mixture at pixel sigma, so ELBO = E_q[sum_v log p(x_v | z, v)]
    # - KL(q || lambda_0). The training loss's view and iteration weights and its query NLL are
    # training devices, not part of the bound on log p(x_observed) (docs/experiments.md).

    def gap_observed_views(self, num_views: int) -> int:
        return min(self.cfg.eval_observed, num_views - 1) if num_views > 1 else 1

    def posterior(self, batch: dict) -> GaussianPosterior:
        image, viewpoint = batch["image"], batch["viewpoint"]
        s, v = image.shape[:2]
        observed = self.gap_observed_views(v)
        if observed == v:
            # One view only: repeat it as a query so the forward returns the final posterior
            # (the query rows carry it); the query's rendering is not used.
            image = torch.cat([image, image[:, -1:]], dim=1)
            viewpoint = torch.cat([viewpoint, viewpoint[:, -1:]], dim=1)
        was_training = self.training
        self.eval()
        try:
            out = self({"image": image, "viewpoint": viewpoint,
                        "image_index": batch.get("image_index")}, num_observed=observed)
            view_embedding = self.view_encoder(viewpoint[:, :observed])     # no noise at eval
        finally:
            self.train(was_training)
        k, d = self.cfg.num_slots, self.cfg.latent_dim
        mean = out.posterior_mean.view(s, image.shape[1], k, d)[:, -1]      # a query row: final q
        logvar = out.posterior_logvar.view(s, image.shape[1], k, d)[:, -1]
        return GaussianPosterior(mean.detach(), logvar.detach(),
                                 {"num_observed": observed, "view_embedding": view_embedding})

    def observed_log_likelihood(self, batch: dict, posterior: GaussianPosterior,
                                z: torch.Tensor) -> torch.Tensor:
        """sum over the observed views of log p(x_v | z, v): (S, N). One decoder pass per view
        (memory: S x N x K slot images, as for the single-image models)."""
        s, n, k, d = z.shape
        embedding = posterior.context["view_embedding"]                     # (N, V_obs, E)
        flat_z = z.reshape(s * n, k, d)
        coordinate_features = self.decoder.coordinate_features()
        total = z.new_zeros(s * n)
        for view in range(posterior.context["num_observed"]):
            view_embedding = embedding[:, view: view + 1]
            view_embedding = view_embedding.unsqueeze(0).expand(s, *view_embedding.shape)
            means, log_masks, _ = self.render(flat_z, view_embedding.reshape(s * n, 1, -1),
                                              coordinate_features)
            x = batch["image"][:, view: view + 1]
            x = x.unsqueeze(0).expand(s, *x.shape).reshape(s * n, *x.shape[1:])
            total = total + self._nll(self._log_components(x, means), log_masks)[:, 0]
        return -total.view(s, n)

    def log_joint(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        prior_mean, prior_logvar = self.initial_posterior.chunk(2, dim=-1)   # (1, 1, D)
        return (self.observed_log_likelihood(batch, posterior, z)
                + diagonal_gaussian_log_density(z, prior_mean, prior_logvar))
