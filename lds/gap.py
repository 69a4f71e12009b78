"""The inference gap (Table 2): G = log p(x) - ELBO per image, and the model adapters it needs.

For one image x with amortised posterior q(z | x):

    log w_b  = log p~(x, z_b) - log q(z_b | x),     z_b ~ q(z | x),  b = 1..B
    log p(x) ~= logsumexp_b(log w_b) - log B        (importance weighting, the IWAE estimate)
    ELBO     ~= mean_b(log w_b)                     (unit weights: no beta, gamma or LDS)
    G        = log p(x) - ELBO                      (>= 0 for every draw, by Jensen's inequality)

The estimate of log p(x) is a stochastic lower bound that rises to log p(x) as B grows
(tests/test_gap.py checks this on a linear Gaussian model whose log p(x) is known exactly). The
ELBO is estimated from the same B samples (one sample set, so G is never negative; with B=500
its Monte-Carlo error is small next to the gaps the paper reports). Samples are drawn and
decoded ``chunk`` at a time, so memory is chunk x images x K decoder passes, not B x ...

Adapters. The estimator knows nothing about a model; a :class:`GapAdapter` registered under the
model's name (``cfg.name``) supplies

    posterior(model, batch)              -> GaussianPosterior(mean, logvar, context)
                                            mean/logvar (N, ...) for N images: q after the last
                                            refinement step for iterative models (IODINE, MulMON);
                                            ``context`` holds whatever is deterministic given x
    log_joint(model, batch, post, z)     -> (S, N): log p~(x, z) for samples z (S, N, ...)
    log_q(post, z)                       -> (S, N): default: the diagonal Gaussian's density

and ``register_gap_adapter("iodine")(IODINEGapAdapter)`` adds another model.

MONet's joint (the choice, stated): z = the K component latents. The attention masks are a
deterministic function of x and are treated as part of q's amortisation (they are not sampled
and have no density). The unnormalised joint is MONet's own objective with unit weights,

    log p~(x, z) = log sum_k m_k(x) N(x; x_k(z_k), sigma_k^2)        (pixel mixture, Eq. 1)
                   + sum_k log N(z_k; 0, I)
                   - KL(m(x) || softmax_k(m^lg_k(z)))                  (the mask KL, gamma = 1)

so ELBO = E_q[log p~(x, z) - log q(z | x)] is exactly -(MONet loss) at beta = gamma = 1 and
lambda = 0, and "log p(x)" is log of the integral of p~ over z: the quantity MONet's ELBO bounds.
"""

from __future__ import annotations

import abc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from common.errors import UserError
from lds import distributed
from lds.models.base import LOG_2PI

GAP_DIR = "gap"
GAP_FILE = "gap.json"


@dataclass
class GaussianPosterior:
    """q(z | x) for N images: a diagonal Gaussian, plus what the joint needs that is not z."""

    mean: torch.Tensor                     # (N, ...)
    logvar: torch.Tensor                   # (N, ...)
    context: dict[str, Any] = field(default_factory=dict)


def diagonal_gaussian_log_density(z: torch.Tensor, mean: torch.Tensor,
                                  logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over every axis after the first two: (S, N)."""
    log_density = -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)
    return log_density.flatten(2).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over every axis after the first two: (S, N)."""
    return (-0.5 * (z ** 2 + LOG_2PI)).flatten(2).sum(-1)


class GapAdapter(abc.ABC):
    """How the gap estimator talks to one model family (see the module docstring)."""

    @abc.abstractmethod
    def posterior(self, model: torch.nn.Module, batch: dict) -> GaussianPosterior:
        """q(z | x) of the batch (after the last refinement step for iterative models)."""

    @abc.abstractmethod
    def log_joint(self, model: torch.nn.Module, batch: dict, posterior: GaussianPosterior,
                  z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) for each sample z."""

    def log_q(self, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        return diagonal_gaussian_log_density(z, posterior.mean.unsqueeze(0),
                                             posterior.logvar.unsqueeze(0))

    def sample(self, model: torch.nn.Module, batch: dict, posterior: GaussianPosterior,
               num_samples: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` draws z ~ q and their log q(z | x): ((S, N, ...), (S, N)).

        Default: the fixed diagonal Gaussian ``posterior``. Override for a q that is not one
        Gaussian given x (GENESIS: z^c's proposal depends on the sampled z^m)."""
        mean, std = posterior.mean, torch.exp(0.5 * posterior.logvar)
        noise = torch.randn((num_samples, *mean.shape), generator=generator, device=mean.device,
                            dtype=mean.dtype)
        z = mean.unsqueeze(0) + std.unsqueeze(0) * noise
        return z, self.log_q(posterior, z)


GAP_ADAPTERS: dict[str, GapAdapter] = {}


def register_gap_adapter(name: str) -> Callable[[type[GapAdapter]], type[GapAdapter]]:
    """Class decorator: ``@register_gap_adapter("iodine") class IODINEGap(GapAdapter): ...``."""
    def decorate(cls: type[GapAdapter]) -> type[GapAdapter]:
        GAP_ADAPTERS[name] = cls()
        return cls
    return decorate


class GapUnsupportedError(UserError):
    """The model has no inference-gap adapter yet."""


def adapter_for(model: torch.nn.Module) -> GapAdapter:
    """The adapter registered under the model's config name (``model.cfg.name``)."""
    own = getattr(model, "gap_adapter", None)
    if isinstance(own, GapAdapter):
        return own
    name = getattr(getattr(model, "cfg", None), "name", type(model).__name__.lower())
    if name not in GAP_ADAPTERS:
        raise GapUnsupportedError(
            f"no inference-gap adapter for model {name!r} (have: {', '.join(sorted(GAP_ADAPTERS))}); "
            "see docs/experiments.md, 'Adding a model to the gap'")
    return GAP_ADAPTERS[name]


@torch.no_grad()
def importance_weights(model: torch.nn.Module, batch: dict, num_samples: int, chunk: int = 50,
                       generator: torch.Generator | None = None,
                       adapter: GapAdapter | None = None) -> torch.Tensor:
    """log w for B = ``num_samples`` draws from q per image: (B, N)."""
    if num_samples < 1 or chunk < 1:
        raise UserError("the number of samples and the chunk size must be at least 1")
    adapter = adapter or adapter_for(model)
    posterior = adapter.posterior(model, batch)
    chunks = []
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        z, log_q = adapter.sample(model, batch, posterior, size, generator)
        log_joint = adapter.log_joint(model, batch, posterior, z)
        chunks.append((log_joint - log_q).double())
    return torch.cat(chunks, dim=0)


def gap_from_log_weights(log_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, N) log weights -> per image log p(x), ELBO, gap and the effective sample size."""
    num_samples = log_w.shape[0]
    log_px = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    elbo = log_w.mean(dim=0)
    normalised = torch.softmax(log_w, dim=0)
    ess = 1.0 / normalised.pow(2).sum(dim=0)       # Kish: B for equal weights, 1 for one winner
    return {"log_px": log_px, "elbo": elbo, "gap": log_px - elbo, "ess": ess}


def estimate_gap(model: torch.nn.Module, batch: dict, num_samples: int = 500, chunk: int = 50,
                 generator: torch.Generator | None = None,
                 adapter: GapAdapter | None = None) -> dict[str, torch.Tensor]:
    """Per-image log p(x), ELBO and G = log p(x) - ELBO (each (N,), float64) for one batch."""
    return gap_from_log_weights(importance_weights(model, batch, num_samples, chunk, generator,
                                                   adapter))


# ---- MONet ----------------------------------------------------------------------------------

@register_gap_adapter("monet")
class MONetGapAdapter(GapAdapter):
    """MONet: z = component latents; attention masks deterministic given x (module docstring)."""

    def posterior(self, model, batch) -> GaussianPosterior:
        image = batch["image"]
        b, c, h, w = image.shape
        k = model.num_slots
        log_att = model.attention_log_masks(image)                          # (N, K, 1, H, W)
        enc_in = torch.cat([image.unsqueeze(1).expand(b, k, c, h, w), log_att], dim=2)
        mean, logvar = model.encoder(model._memory_format(enc_in.flatten(0, 1)))
        return GaussianPosterior(mean.view(b, k, -1), logvar.view(b, k, -1),
                                 {"log_attention": log_att})

    def log_joint(self, model, batch, posterior, z) -> torch.Tensor:
        from lds.models.base import mixture_log_likelihood

        cfg = model.cfg
        image = batch["image"]
        s, n, k, d = z.shape
        _, c, h, w = image.shape
        decoded = model.decoder(z.reshape(s * n * k, d)).view(s * n, k, 4, h, w)
        appearance = torch.sigmoid(decoded[:, :, :3])
        log_dec = torch.log_softmax(decoded[:, :, 3:], dim=1)
        log_att = posterior.context["log_attention"]
        log_att = log_att.unsqueeze(0).expand(s, *log_att.shape).reshape(s * n, k, 1, h, w)
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, c, h, w)
        log_lik = mixture_log_likelihood(images, appearance, log_att, model.pixel_sigma,
                                         per_channel=cfg.likelihood == "channel")
        # The mask KL exactly as in MONet's loss (clamped below), at unit weight.
        q = log_att.exp().clamp_min(cfg.mask_clamp)
        p = log_dec.exp().clamp_min(cfg.mask_clamp)
        kl_mask = (q * (q.log() - p.log())).flatten(1).sum(1)
        return (log_lik - kl_mask).view(s, n) + standard_normal_log_density(z)


# ---- MulMON ---------------------------------------------------------------------------------

@register_gap_adapter("mulmon")
class MulMONGapAdapter(GapAdapter):
    """MulMON: one item is a scene; x = its observed views, z = the K slot latents.

    Observed views: the model's evaluation split, the first min(eval_observed, V - 1) views of
    the item (all of them when V = 1); the query views are not part of x. q = the posterior after
    the last refinement step on the last observed view. The joint is MulMON's ELBO at unit
    weights over those views, with the learned initial prior lambda_0 = p(z) (the prior of the
    first view, where the sequence of per-view KLs starts):

        log p~(x, z) = sum_v log p(x_v | z, v) + log N(z; lambda_0)

    with the per-colour-channel mixture likelihood at pixel sigma (0.1), so ELBO = E_q[sum_v
    log p(x_v | z, v)] - KL(q || lambda_0). MulMON's training loss instead weights its views and
    iterations (w_v, w_t, each summing to 1) and takes each view's KL against the previous
    view's posterior; those weights and the query NLL are training devices, not part of the
    bound on log p(x_observed) (docs/experiments.md).
    """

    @staticmethod
    def num_observed(model, num_views: int) -> int:
        return min(model.cfg.eval_observed, num_views - 1) if num_views > 1 else 1

    def posterior(self, model, batch) -> GaussianPosterior:
        image, viewpoint = batch["image"], batch["viewpoint"]
        s, v = image.shape[:2]
        observed = self.num_observed(model, v)
        if observed == v:
            # One view only: repeat it as a query so the forward returns the final posterior
            # (the query rows carry it); the query's rendering is not used.
            image = torch.cat([image, image[:, -1:]], dim=1)
            viewpoint = torch.cat([viewpoint, viewpoint[:, -1:]], dim=1)
        was_training = model.training
        model.eval()
        try:
            out = model({"image": image, "viewpoint": viewpoint}, num_observed=observed)
            view_embedding = model.view_encoder(viewpoint[:, :observed])   # no noise at eval
        finally:
            model.train(was_training)
        k, d = model.cfg.num_slots, model.cfg.latent_dim
        mean = out.posterior_mean.view(s, image.shape[1], k, d)[:, -1]      # a query row: final q
        logvar = out.posterior_logvar.view(s, image.shape[1], k, d)[:, -1]
        return GaussianPosterior(mean.detach(), logvar.detach(),
                                 {"num_observed": observed, "view_embedding": view_embedding})

    def log_likelihood(self, model, batch, posterior, z) -> torch.Tensor:
        """sum over the observed views of log p(x_v | z, v): (S, N). One decoder pass per view
        (memory: S x N x K slot images, as for the single-image models)."""
        s, n, k, d = z.shape
        embedding = posterior.context["view_embedding"]                     # (N, V_obs, E)
        flat_z = z.reshape(s * n, k, d)
        coordinate_features = model.decoder.coordinate_features()
        total = z.new_zeros(s * n)
        for view in range(posterior.context["num_observed"]):
            view_embedding = embedding[:, view: view + 1]
            view_embedding = view_embedding.unsqueeze(0).expand(s, *view_embedding.shape)
            means, log_masks, _ = model.render(flat_z, view_embedding.reshape(s * n, 1, -1),
                                               coordinate_features)
            x = batch["image"][:, view: view + 1]
            x = x.unsqueeze(0).expand(s, *x.shape).reshape(s * n, *x.shape[1:])
            total = total + model._nll(model._log_components(x, means), log_masks)[:, 0]
        return -total.view(s, n)

    def log_joint(self, model, batch, posterior, z) -> torch.Tensor:
        prior_mean, prior_logvar = model.initial_posterior.chunk(2, dim=-1)   # (1, 1, D)
        return (self.log_likelihood(model, batch, posterior, z)
                + diagonal_gaussian_log_density(z, prior_mean, prior_logvar))


# ---- GENESIS --------------------------------------------------------------------------------

@register_gap_adapter("genesis")
class GENESISGapAdapter(GapAdapter):
    """GENESIS: z_k = [z^m_k, z^c_k] (the slot latents), q sequential as in the model.

    q(z | x) = q(z^m_{1:K} | x) prod_k q(z^c_k | x, pi_k(z^m)): the mask posterior is a fixed
    diagonal Gaussian given x (its LSTM runs on the image encoding, not on sampled latents), the
    component posterior is re-encoded from (x, log pi_k) for every sampled z^m. So
    :meth:`sample` draws z^m, decodes its masks, encodes and draws z^c, and returns
    log q = log q(z^m) + log q(z^c | x, pi(z^m)). The joint is GENESIS's generative model:

        log p~(x, z) = sum_pixels log sum_k pi_k(z^m) N(x; mu_k(z^c_k), sigma_x^2 I)
                       + log p(z^m_{1:K}) (autoregressive) + sum_k log p(z^c_k | z^m_k)

    so ELBO = -(nll + kl_mask + kl_comp), GENESIS's loss at beta = 1 (no GECO) and lambda = 0.
    """

    def posterior(self, model, batch) -> GaussianPosterior:
        image = batch["image"]
        b, k = image.shape[0], model.num_slots
        features = model.image_encoder(model._memory_format(image))
        hidden, _ = model.posterior_lstm(features.unsqueeze(1).expand(b, k, features.shape[1]))
        mask_mean, mask_raw = model.posterior_head(hidden).chunk(2, dim=-1)
        return GaussianPosterior(mask_mean, 2.0 * torch.log(_genesis().std_from_raw(mask_raw)))

    @staticmethod
    def _log_masks(model, z_mask: torch.Tensor) -> torch.Tensor:
        """z^m (S, N, K, Dm) -> log pi (S*N, K, 1, H, W)."""
        s, n, k, dm = z_mask.shape
        cfg = model.cfg
        alpha = model.mask_decoder(z_mask.reshape(s * n * k, dm)).view(s * n, k, 1, cfg.height,
                                                                       cfg.width)
        return model.stick_breaking(alpha)

    @staticmethod
    def _component_posterior(model, image, log_masks, s):
        """q(z^c | x, log pi): mean and std (S, N, K, Dc) for log pi (S*N, K, 1, H, W)."""
        n, c, h, w = image.shape
        k, dc = model.num_slots, model.cfg.comp_latent_dim
        images = image.unsqueeze(0).expand(s, n, c, h, w).reshape(s * n, 1, c, h, w)
        enc_in = torch.cat([images.expand(s * n, k, c, h, w), log_masks], dim=2)
        out = model.comp_encoder(model._memory_format(enc_in.reshape(s * n * k, c + 1, h, w)))
        mean, raw = out.view(s, n, k, 2 * dc).chunk(2, dim=-1)
        return mean, _genesis().std_from_raw(raw)

    def _log_q_parts(self, model, batch, posterior, z_mask, z_comp=None, generator=None):
        genesis = _genesis()
        s = z_mask.shape[0]
        log_masks = self._log_masks(model, z_mask)
        comp_mean, comp_std = self._component_posterior(model, batch["image"], log_masks, s)
        if z_comp is None:
            noise = torch.randn(comp_mean.shape, generator=generator, device=comp_mean.device,
                                dtype=comp_mean.dtype)
            z_comp = comp_mean + comp_std * noise
        mask_std = torch.exp(0.5 * posterior.logvar).unsqueeze(0)
        log_q = (genesis.normal_log_density(z_mask, posterior.mean.unsqueeze(0), mask_std)
                 + genesis.normal_log_density(z_comp, comp_mean, comp_std)).sum(-1)
        z = torch.cat([z_mask, z_comp], dim=-1)
        posterior.context["decoded"] = (z, log_masks)      # log_joint reuses these masks
        return z, log_q

    def sample(self, model, batch, posterior, num_samples, generator=None):
        mean, std = posterior.mean, torch.exp(0.5 * posterior.logvar)
        noise = torch.randn((num_samples, *mean.shape), generator=generator, device=mean.device,
                            dtype=mean.dtype)
        return self._log_q_parts(model, batch, posterior, mean.unsqueeze(0) + std.unsqueeze(0) * noise,
                                 generator=generator)

    def log_q_at(self, model, batch, posterior, z) -> torch.Tensor:
        """log q(z | x) for given z = [z^m, z^c] (S, N, K, Dm + Dc): (S, N)."""
        z_mask, z_comp = z.split([model.cfg.mask_latent_dim, model.cfg.comp_latent_dim], dim=-1)
        return self._log_q_parts(model, batch, posterior, z_mask, z_comp)[1]

    def log_q(self, posterior, z):
        raise NotImplementedError("GENESIS's q needs the model: use sample() or log_q_at()")

    def log_joint(self, model, batch, posterior, z) -> torch.Tensor:
        genesis = _genesis()
        cfg = model.cfg
        image = batch["image"]
        s, n, k, _ = z.shape
        z_mask, z_comp = z.split([cfg.mask_latent_dim, cfg.comp_latent_dim], dim=-1)
        decoded = posterior.context.get("decoded")
        log_masks = decoded[1] if decoded is not None and decoded[0] is z \
            else self._log_masks(model, z_mask)
        flat_mask = z_mask.reshape(s * n, k, cfg.mask_latent_dim)
        # Autoregressive mask prior, teacher-forced as in the model: p(z^m_1) = N(0, I).
        prior_hidden, _ = model.prior_lstm(flat_mask[:, :-1])
        prior_mean, prior_raw = model.prior_head(prior_hidden).chunk(2, dim=-1)
        prior_mean = torch.cat([torch.zeros_like(flat_mask[:, :1]), prior_mean], dim=1)
        prior_std = torch.cat([torch.ones_like(flat_mask[:, :1]), genesis.std_from_raw(prior_raw)], 1)
        log_p_mask = genesis.normal_log_density(flat_mask, prior_mean, prior_std).sum(1)
        comp_prior_mean, comp_prior_raw = model.comp_prior(z_mask).chunk(2, dim=-1)
        log_p_comp = genesis.normal_log_density(z_comp, comp_prior_mean,
                                                genesis.std_from_raw(comp_prior_raw)).sum(-1)
        appearance = torch.sigmoid(model.comp_decoder(z_comp.reshape(s * n * k, -1)))
        appearance = appearance.view(s * n, k, 3, cfg.height, cfg.width)
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, 1, *image.shape[1:])
        sigma = cfg.pixel_std
        log_comp = (-0.5 / sigma ** 2) * (images - appearance).pow(2).sum(2, keepdim=True) \
            - 3 * (math.log(sigma) + 0.5 * LOG_2PI)
        log_lik = torch.logsumexp(log_masks + log_comp, dim=1).flatten(1).sum(1)
        return (log_lik + log_p_mask).view(s, n) + log_p_comp


def _genesis():
    # Imported lazily, as the model modules are (lds.gap must import without them).
    from lds.models import genesis
    return genesis


# ---- running it on a trained run ------------------------------------------------------------

def _aggregate(values: np.ndarray) -> dict[str, float | int | None]:
    values = values[np.isfinite(values)]
    n = int(values.size)
    return {"mean": float(values.mean()) if n else None,
            "stderr": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None, "n": n}


def gap_for_run(run: str | Path, data: str | Path, num_samples: int = 500,
                max_images: int | None = 64, chunk: int = 50, batch_size: int = 8,
                device: str = "cpu", progress: bool = True, out: str | Path | None = None,
                seed: int = 0, extra_meta: dict | None = None) -> dict:
    """Estimate the gap for the first ``max_images`` images of ``data`` under the run's latest
    checkpoint; write RUN/gap/gap.json (records per image + aggregates) and return it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lds.data import open_eval_dataset
    from lds.training.runs import latest_checkpoint_step, load_run

    run = Path(run)
    if not Path(data).exists():
        raise UserError(f"data store {data} does not exist")
    model, cfg = load_run(run, map_location=device)
    adapter = adapter_for(model)
    dataset = open_eval_dataset(Path(data), cfg.model)      # scene-view items for view models
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise UserError(f"data store {data} has no images")
    # Under torchrun whole batches go round-robin to the ranks (lds/distributed.py); each item's
    # samples are seeded by (seed, image index), so the gathered records are those of a
    # one-process run whatever the number of processes, the batch size or the order.
    shards = distributed.shard_batches(count, batch_size)
    loader = DataLoader(Subset(dataset, [i for _, indices in shards for i in indices]),
                        batch_size=batch_size, shuffle=False)
    generator = torch.Generator(device=device)
    per_batch = []
    started = time.perf_counter()
    bar = Progress(TextColumn("inference gap"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("images"), TimeRemainingColumn(),
                   disable=not progress or not distributed.is_main(), transient=True)
    with bar:
        task = bar.add_task("gap", total=sum(len(indices) for _, indices in shards))
        for (batch_number, indices), batch in zip(shards, loader):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            # One item at a time, its samples seeded by (seed, its image index): an image's
            # estimate is the same whatever --batch-size, the order or the number of processes.
            # (The B samples of one item already batch the decoder: S x K slot images a pass.)
            parts = []
            for i in range(batch["image"].shape[0]):
                item = {k: v[i:i + 1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                key = (int(batch["image_index"][i].reshape(-1)[0]) if "image_index" in batch
                       else indices[0] + i)
                generator.manual_seed(seed * 1_000_003 + key)
                parts.append(estimate_gap(model, item, num_samples, chunk, generator, adapter))
            values = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
            records = []
            for i in range(batch["image"].shape[0]):
                record = {"image_index": indices[0] + i}
                if "image_index" in batch:
                    # A scene item (MulMON) has one image index per view: the record is the
                    # scene's, keyed by its first view's image and listing the observed views.
                    image_index = batch["image_index"][i].reshape(-1)
                    record["image_index"] = int(image_index[0])
                    if image_index.numel() > 1:
                        observed = getattr(adapter, "num_observed", None)
                        count_observed = (observed(model, image_index.numel()) if observed
                                          else image_index.numel())
                        record["observed_image_indices"] = image_index[:count_observed].tolist()
                if "scene_index" in batch:
                    record["scene_index"] = int(batch["scene_index"][i].reshape(-1)[0])
                for key, value in values.items():
                    record[key] = float(value[i])
                records.append(record)
            per_batch.append((batch_number, records))
            bar.advance(task, batch["image"].shape[0])
    records = [record for part in distributed.gather_batches(per_batch) for record in part]
    aggregates = {key: _aggregate(np.array([r[key] for r in records]))
                  for key in ("log_px", "elbo", "gap", "ess")}
    meta = {"run": str(run), "data": str(Path(data).resolve()), "model": cfg.model.name,
            "lds": {"enabled": cfg.lds.enabled, "weight": cfg.lds.weight, "sigma": cfg.lds.sigma},
            "num_images": len(records), "samples": num_samples, "seed": seed,
            "max_images": max_images,
            "checkpoint_step": latest_checkpoint_step(run),
            "seconds": time.perf_counter() - started,
            "units": "nats per image", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    meta.update(extra_meta or {})
    result = {"meta": meta, "aggregates": aggregates, "records": records}
    path = Path(out) if out is not None else run / GAP_DIR / GAP_FILE
    result["path"] = str(path)
    if not distributed.is_main():          # every rank holds the gathered records; rank 0 writes
        return result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v for k, v in result.items() if k != "path"}, indent=1))
    tmp.replace(path)
    return result


def load_gap(run: str | Path) -> dict | None:
    """RUN/gap/gap.json, or None when the gap was not estimated for the run."""
    path = Path(run) / GAP_DIR / GAP_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not readable JSON ({exc})") from None


__all__ = ["GaussianPosterior", "GapAdapter", "GAP_ADAPTERS", "register_gap_adapter",
           "adapter_for", "importance_weights", "gap_from_log_weights", "estimate_gap",
           "MONetGapAdapter", "MulMONGapAdapter", "GENESISGapAdapter", "gap_for_run", "load_gap", "GAP_DIR", "GAP_FILE",
           "diagonal_gaussian_log_density", "standard_normal_log_density", "gap_difference",
           "gap_table"]


def gap_difference(control_gap: dict, lds_gap: dict, control_records: list[dict] | None = None,
                   lds_records: list[dict] | None = None) -> dict:
    """Table 2 for one control/LDS pair, images joined on ``image_index``.

    dG = G(control) - G(LDS) per image (positive: LDS narrowed the gap); with the two runs'
    evaluation records also dMSE = MSE(control) - MSE(LDS) and dmIoU = mIoU(LDS) - mIoU(control)
    (both positive when LDS is better) and the Pearson correlations of dG with each.
    """
    from scipy.stats import pearsonr

    control = {r["image_index"]: r for r in control_gap["records"]}
    lds = {r["image_index"]: r for r in lds_gap["records"]}
    shared = sorted(set(control) & set(lds))
    dg = np.array([control[i]["gap"] - lds[i]["gap"] for i in shared], dtype=np.float64)
    out: dict[str, Any] = {"image_index": shared, "dG": dg.tolist(), "n": len(shared),
                           "mean_dG": float(dg.mean()) if len(dg) else None,
                           "stderr_dG": float(dg.std(ddof=1) / math.sqrt(len(dg))) if len(dg) > 1 else None}
    if control_records is None or lds_records is None:
        return out
    c_eval = {r["image_index"]: r for r in control_records}
    l_eval = {r["image_index"]: r for r in lds_records}
    for key, metric, sign in (("dMSE", "mse", -1.0), ("dmIoU", "miou", 1.0)):
        values = []
        for i in shared:
            a, b = c_eval.get(i, {}).get(metric), l_eval.get(i, {}).get(metric)
            values.append(np.nan if a is None or b is None else sign * (b - a))
        values = np.array(values, dtype=np.float64)
        out[key] = values.tolist()
        ok = np.isfinite(values) & np.isfinite(dg)
        r = p = None
        if ok.sum() > 2 and np.std(values[ok]) > 0 and np.std(dg[ok]) > 0:
            r, p = (float(v) for v in pearsonr(dg[ok], values[ok]))
        out[f"pearson_dG_{key}"] = r
        out[f"pearson_p_dG_{key}"] = p
    return out


def gap_table(diff: dict):
    """A rich table of :func:`gap_difference` (what `ldsrig compare` prints)."""
    from rich.table import Table

    def number(value, fmt="{:.3f}"):
        return "-" if value is None else fmt.format(value)

    table = Table(title=f"inference gap (Table 2): {diff['n']} images")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("mean dG = G(control) − G(LDS) (nats)", number(diff["mean_dG"]))
    table.add_row("± s.e.", number(diff["stderr_dG"]))
    for key, label in (("dMSE", "MSE(control) − MSE(LDS)"), ("dmIoU", "mIoU(LDS) − mIoU(control)")):
        if f"pearson_dG_{key}" in diff:
            r, p = diff[f"pearson_dG_{key}"], diff[f"pearson_p_dG_{key}"]
            table.add_row(f"Pearson r(dG, {label})",
                          "-" if r is None else f"{r:.3f} (p={p:.2g})")
    return table
