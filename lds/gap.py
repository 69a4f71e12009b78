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

GAP_DIR = "gap"
GAP_FILE = "gap.json"
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class GaussianPosterior:
    """q(z | x) for N images: a diagonal Gaussian, plus what the joint needs that is not z."""

    mean: torch.Tensor                     # (N, ...)
    logvar: torch.Tensor                   # (N, ...)
    context: dict[str, Any] = field(default_factory=dict)


def diagonal_gaussian_log_density(z: torch.Tensor, mean: torch.Tensor,
                                  logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over every axis after the first two: (S, N)."""
    log_density = -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI)
    return log_density.flatten(2).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over every axis after the first two: (S, N)."""
    return (-0.5 * (z ** 2 + _LOG_2PI)).flatten(2).sum(-1)


class GapAdapter:
    """How the gap estimator talks to one model family (see the module docstring)."""

    def posterior(self, model: torch.nn.Module, batch: dict) -> GaussianPosterior:
        raise NotImplementedError

    def log_joint(self, model: torch.nn.Module, batch: dict, posterior: GaussianPosterior,
                  z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_q(self, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        return diagonal_gaussian_log_density(z, posterior.mean.unsqueeze(0),
                                             posterior.logvar.unsqueeze(0))


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
    mean, std = posterior.mean, torch.exp(0.5 * posterior.logvar)
    chunks = []
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        noise = torch.randn((size, *mean.shape), generator=generator, device=mean.device,
                            dtype=mean.dtype)
        z = mean.unsqueeze(0) + std.unsqueeze(0) * noise
        log_joint = adapter.log_joint(model, batch, posterior, z)
        chunks.append((log_joint - adapter.log_q(posterior, z)).double())
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

    from lds.eval_cli import _open_dataset
    from lds.training.runs import latest_checkpoint_step, load_run

    run = Path(run)
    if not Path(data).exists():
        raise UserError(f"data store {data} does not exist")
    model, cfg = load_run(run, map_location=device)
    adapter = adapter_for(model)
    dataset = _open_dataset(Path(data), cfg.model)      # scene-view items for view models
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise UserError(f"data store {data} has no images")
    # Under torchrun whole batches go round-robin to the ranks (lds/distributed.py) and each
    # batch's samples are seeded by (seed, batch number): the gathered records are those of a
    # one-process run with the same seed and batch size, whatever the number of processes.
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
            generator.manual_seed(seed * 1_000_003 + batch_number)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            values = estimate_gap(model, batch, num_samples, chunk, generator, adapter)
            records = []
            for i in range(batch["image"].shape[0]):
                record = {"image_index": int(batch["image_index"][i]) if "image_index" in batch
                          else indices[0] + i}
                if "scene_index" in batch:
                    record["scene_index"] = int(batch["scene_index"][i])
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
           "MONetGapAdapter", "gap_for_run", "load_gap", "GAP_DIR", "GAP_FILE",
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
