"""The inference gap (Table 2): G = log p(x) - ELBO per image, from each model's own q and joint.

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

The estimator knows nothing about a model beyond its probabilistic interface
(lds.models.interface.MultiObjectVAE): ``posterior(batch)``, ``log_joint(batch, q, z)`` and
``sample_posterior(batch, q, S, generator)``, each model's own, built from the named steps of its
forward pass (MONet's joint, the choice stated there: its objective at unit weights, with the
attention masks part of q's amortisation).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.io import atomic_write_text
from lds.evaluation.evaluate import aggregate
from lds.evaluation.sharding import ShardedBatches
from lds import distributed

GAP_DIR = "gap"
GAP_FILE = "gap.json"


class GapUnsupportedError(UserError):
    """The model does not implement the probabilistic interface the gap needs."""


def _check_interface(model) -> None:
    from lds.models.interface import MultiObjectVAE

    if not isinstance(model, MultiObjectVAE):
        raise GapUnsupportedError(
            f"{type(model).__name__} does not implement the probabilistic interface of "
            "lds.models.interface.MultiObjectVAE (posterior, log_joint, sample_posterior)")


def _joint_autocast(amp: str, device: torch.device):
    """bf16 autocast around the joint's decoder passes (``amp="bf16"``), or nothing."""
    if amp == "off":
        return contextlib.nullcontext()
    from lds.training.loop import check_amp_supported

    check_amp_supported(amp, device)
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def importance_weights(model: torch.nn.Module, batch: dict, num_samples: int, chunk: int = 50,
                       generator: torch.Generator | None = None, amp: str = "off") -> torch.Tensor:
    """log w for B = ``num_samples`` draws from q per item: (B, N).

    ``amp="bf16"`` runs log p~(x, z) under bf16 autocast: the B x K decoder passes, nearly all
    of the cost. q, its samples and log q stay fp32, and each model casts its decoder output to
    fp32 before the likelihood, so only the decoder's arithmetic is bf16 (docs/experiments.md
    gives the measured change in G against its Monte Carlo error)."""
    if num_samples < 1 or chunk < 1:
        raise UserError("the number of samples and the chunk size must be at least 1")
    _check_interface(model)
    posterior = model.posterior(batch)
    device = next((v.device for v in batch.values() if isinstance(v, torch.Tensor)),
                  torch.device("cpu"))
    chunks = []
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        z, log_q = model.sample_posterior(batch, posterior, size, generator)
        with _joint_autocast(amp, device):
            log_joint = model.log_joint(batch, posterior, z)
        chunks.append((log_joint.double() - log_q.double()))
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
                 amp: str = "off") -> dict[str, torch.Tensor]:
    """Per-item log p(x), ELBO and G = log p(x) - ELBO (each (N,), float64) for one batch."""
    return gap_from_log_weights(importance_weights(model, batch, num_samples, chunk, generator,
                                                   amp))


# ---- running it on a trained run ------------------------------------------------------------

def gap_for_run(run: str | Path, data: str | Path, num_samples: int = 500,
                max_images: int | None = 64, chunk: int = 50, batch_size: int = 8,
                device: str = "cpu", progress: bool = True, out: str | Path | None = None,
                seed: int = 0, extra_meta: dict | None = None, amp: str = "off") -> dict:
    """Estimate the gap for the first ``max_images`` images of ``data`` under the run's latest
    checkpoint; write RUN/gap/gap.json (records per image + aggregates) and return it."""
    from lds.data import open_eval_dataset
    from lds.training.runs import load_run

    run = Path(run)
    if not Path(data).exists():
        raise UserError(f"data store {data} does not exist")
    model, cfg = load_run(run, map_location=device)
    _check_interface(model)
    if amp != "off":        # refused here, once, before any work (e.g. a CPU without bf16)
        _joint_autocast(amp, torch.device(device))
    dataset = open_eval_dataset(Path(data), cfg.model)      # scene-view items for view models
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise UserError(f"data store {data} has no images")
    # Each item's samples are seeded by (seed, image index), so the gathered records are those
    # of a one-process run whatever the number of processes, the batch size or the order.
    batches = ShardedBatches(dataset, count, batch_size)
    generator = torch.Generator(device=device)
    per_batch = []
    started = time.perf_counter()
    bar = batches.progress("inference gap", progress)
    with bar:
        task = bar.add_task("gap", total=batches.num_items)
        for batch_number, indices, batch in batches:
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
                parts.append(estimate_gap(model, item, num_samples, chunk, generator, amp))
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
                        count_observed = model.gap_observed_views(image_index.numel())
                        record["observed_image_indices"] = image_index[:count_observed].tolist()
                if "scene_index" in batch:
                    record["scene_index"] = int(batch["scene_index"][i].reshape(-1)[0])
                for key, value in values.items():
                    record[key] = float(value[i])
                records.append(record)
            per_batch.append((batch_number, records))
            bar.advance(task, batch["image"].shape[0])
    records = batches.gather(per_batch)
    aggregates = {key: aggregate(r[key] for r in records)
                  for key in ("log_px", "elbo", "gap", "ess")}
    meta = {"run": str(run), "data": str(Path(data).resolve()), "model": cfg.model.name,
            "lds": {"enabled": cfg.lds.enabled, "weight": cfg.lds.weight, "sigma": cfg.lds.sigma},
            "num_images": len(records), "samples": num_samples, "seed": seed,
            "max_images": max_images, "amp": amp,
            "checkpoint_step": model.checkpoint_step,
            "seconds": time.perf_counter() - started,
            "units": "nats per image", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    meta.update(extra_meta or {})
    result = {"meta": meta, "aggregates": aggregates, "records": records}
    path = Path(out) if out is not None else run / GAP_DIR / GAP_FILE
    result["path"] = str(path)
    if not distributed.is_main():          # every rank holds the gathered records; rank 0 writes
        return result
    atomic_write_text(path, json.dumps({k: v for k, v in result.items() if k != "path"}, indent=1))
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


__all__ = ["GapUnsupportedError", "importance_weights", "gap_from_log_weights", "estimate_gap",
           "gap_for_run", "load_gap", "GAP_DIR", "GAP_FILE", "gap_difference", "gap_table"]


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
    summary = aggregate(dg.tolist())
    out: dict[str, Any] = {"image_index": shared, "dG": dg.tolist(), "n": len(shared),
                           "mean_dG": summary["mean"], "stderr_dG": summary["stderr"]}
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
