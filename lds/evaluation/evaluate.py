"""Evaluate a trained model on a dataset: per-image metrics, aggregates, JSON and a rich table.

    result = evaluate(model, ImageDataset(store), batch_size=32, device="cpu")
    result.save(run_dir / "eval" / "eval.json")
    print_result(result)

Aggregates are the mean over images with its standard error (std / sqrt(n), ddof=1); an
undefined per-image value (FG-ARI of an image without foreground) is left out of its metric's n.
``dup_gt`` and ``dup_nogt`` are 0/1 per image, so their mean is the fraction of images with at
least one duplicate (the paper's "percentage of images with duplicates").
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import Dataset

from common.config import to_dict
from common.errors import UserError
from common.io import atomic_write_text
from lds.contract import ModelOutput
from lds.evaluation.sharding import ShardedBatches
from lds.evaluation.metrics import (DECODED_PREFIX, METRICS, QUERY_PREFIX, MetricsConfig, batch_metrics, metric,
                         segmentation_masks, segmentation_source_of, slot_similarity)

# Per-image lists that the records carry until aggregation, then leave for eval.json's meta.
SIM_BY_ITERATION = "sim_by_iteration"

EVAL_FILE_VERSION = 1
class EvalFileError(UserError):
    """An eval.json that is missing or cannot be read."""


@dataclass
class EvalResult:
    """Per-image records (one dict per image) and per-metric aggregates (mean, stderr, n)."""

    records: list[dict[str, Any]]
    aggregates: dict[str, dict[str, float | int | None]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_names(self) -> list[str]:
        return list(self.aggregates)

    def mean(self, name: str) -> float:
        value = self.aggregates[name]["mean"]
        return float("nan") if value is None else float(value)

    def per_image(self, name: str) -> np.ndarray:
        return np.array([_nan_if_none(r.get(name)) for r in self.records], dtype=np.float64)

    def to_json(self) -> dict:
        return {"version": EVAL_FILE_VERSION, "meta": self.meta, "aggregates": self.aggregates,
                "records": self.records}

    def save(self, path: str | Path) -> Path:
        """Write the JSON (strict: NaN is written as null) atomically; return the path."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> "EvalResult":
        path = Path(path)
        if not path.is_file():
            raise EvalFileError(f"no evaluation file at {path}")
        try:
            data = json.loads(path.read_text())
            return cls(records=data["records"], aggregates=data["aggregates"],
                       meta=data.get("meta", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EvalFileError(f"{path} is not a readable eval.json ({exc})") from exc


def _nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _json_number(value: float) -> float | int | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def aggregate(values: Iterable[float]) -> dict[str, float | int | None]:
    """Mean, standard error of the mean (ddof=1) and count over the finite values."""
    array = np.asarray([_nan_if_none(v) for v in values], dtype=np.float64)
    array = array[np.isfinite(array)]
    n = int(array.size)
    mean = float(array.mean()) if n else None
    stderr = float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": mean, "stderr": stderr, "n": n}


def _flatten_views(batch: dict) -> dict:
    """A multi-view batch (image (S, V, 3, H, W)) with views moved into the batch axis, in the
    order multi-view models emit their output rows (lds.contract); single images pass through."""
    image = batch["image"]
    if image.dim() != 5:
        return batch
    lead = tuple(image.shape[:2])
    return {k: v.flatten(0, 1) if isinstance(v, torch.Tensor) and v.dim() >= 2
            and tuple(v.shape[:2]) == lead else v for k, v in batch.items()}


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, batch_size: int = 32,
             device: str | torch.device = "cpu", max_images: int | None = None,
             progress: bool = True, config: MetricsConfig | None = None,
             meta: dict | None = None, shard: bool = True) -> EvalResult:
    """Run ``model`` over ``dataset`` (first ``max_images`` images) and compute every metric.

    ``dataset`` yields dicts with "image" (3, H, W) in [0, 1] and, when the data has ground
    truth, "label_map" (H, W); "image_index"/"scene_index" are copied into the records.
    The model is put in eval mode; inference is exactly as in training minus the LDS term
    (the prior is a training-only term and does not change q). ``shard=False`` evaluates
    everything in this process even under torchrun (validation inside training, on rank 0).
    """
    config = config or MetricsConfig()
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    num_images = len(dataset) if max_images is None else min(len(dataset), max_images)
    if num_images == 0:
        raise UserError("nothing to evaluate: the dataset has no images")
    # Each batch's random draws (iterative models may sample during inference) are seeded by
    # its number, so the gathered records equal a one-process run's whatever the world size.
    batches = ShardedBatches(dataset, num_images, batch_size, shard)
    device = torch.device(device)
    model = model.to(device).eval()

    per_batch: list[tuple[int, list[dict[str, Any]]]] = []
    has_gt: bool | None = None
    source: str | None = None
    started = time.perf_counter()
    bar = batches.progress("evaluating", progress)
    rng_devices = [device] if device.type == "cuda" else []
    with bar, torch.random.fork_rng(devices=rng_devices):
        task = bar.add_task("eval", total=batches.num_items)
        for batch_number, indices, batch in batches:
            torch.manual_seed(batch_number)
            batch = _to_device(batch, device)
            output: ModelOutput = model(batch)
            batch = _flatten_views(batch)
            labels = batch.get("label_map")
            has_gt = labels is not None if has_gt is None else has_gt
            source = source or segmentation_masks(output, config.segmentation_masks)[1]
            values = batch_metrics(output, batch["image"], labels, config)
            size = batch["image"].shape[0]
            rows_per_item = size // len(indices)        # views per scene for multi-view data
            sim_by_iteration = _sim_by_iteration(output, size, config)
            records: list[dict[str, Any]] = []
            for i in range(size):
                index = indices[0] * rows_per_item + i
                record: dict[str, Any] = {
                    "image_index": int(batch["image_index"][i]) if "image_index" in batch else index,
                }
                if "scene_index" in batch:
                    record["scene_index"] = int(batch["scene_index"][i])
                if output.query_rows is not None:   # multi-view models: observed or query view
                    record["query_view"] = bool(output.query_rows[i])
                for name, value in values.items():
                    record[name] = _json_number(float(value[i]))
                if sim_by_iteration is not None:
                    record[SIM_BY_ITERATION] = [_json_number(float(v)) for v in sim_by_iteration[:, i]]
                records.append(record)
            per_batch.append((batch_number, records))
            bar.advance(task, len(indices))
    records = batches.gather(per_batch)
    has_gt = batches.any_rank(bool(has_gt))
    seconds = time.perf_counter() - started

    names = [n for n in METRICS if n in records[0]]
    # Multi-view models (MulMON): the plain names aggregate the observed views, "query_<name>"
    # the query views the model predicted without seeing them.
    queries = [r for r in records if r.get("query_view")]
    observed = [r for r in records if not r.get("query_view")]
    aggregates = {name: aggregate(r[name] for r in observed) for name in names}
    by_iteration = [r.pop(SIM_BY_ITERATION) for r in records if SIM_BY_ITERATION in r]
    if queries:
        aggregates.update({f"{QUERY_PREFIX}{name}": aggregate(r[name] for r in queries)
                           for name in names})
    # Which masks segment: "" labels the plain names, "decoded_" the decoded-mask companions.
    sources = {"": source}
    if any(name.startswith(DECODED_PREFIX) for name in names):
        sources[DECODED_PREFIX] = "decoded masks"
    info = {"num_images": len(records), "ground_truth": bool(has_gt), "seconds": seconds,
            "segmentation_sources": sources, "metrics_config": to_dict(config),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if "query_view" in records[0]:
        info["views"] = {"observed": len(observed), "query": len(queries),
                         "scenes": len({r.get("scene_index") for r in records})}
    if by_iteration:
        # Sim at each refinement iteration at test time (IODINE, MulMON: does inference pull the
        # slots apart as it refines?); MulMON's rows repeat their scene's value on each view.
        observed_rows = [row for row, r in zip(by_iteration, records) if not r.get("query_view")]
        per_iteration = [aggregate(column) for column in zip(*observed_rows)]
        info[SIM_BY_ITERATION] = {key: [a[key] for a in per_iteration] for key in ("mean", "stderr", "n")}
    info.update(meta or {})
    return EvalResult(records=records, aggregates=aggregates, meta=info)


def _sim_by_iteration(output: ModelOutput, rows: int, config: MetricsConfig) -> torch.Tensor | None:
    """(I, rows): each output row's Sim of the posterior means at each refinement iteration, or
    None for a model with one inference step. The latents' rows are images or, for MulMON,
    scenes whose views are consecutive output rows."""
    means = output.lds_means.detach().cpu()
    steps, latent_rows = means.shape[:2]
    if steps < 2:
        return None
    sim = slot_similarity(means.flatten(0, 1), config.similarity_eps).view(steps, latent_rows)
    sim = output.per_iteration(sim)
    return sim.repeat_interleave(rows // latent_rows, dim=1)


def make_validator(cfg) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The held-out evaluation a training run calls every ``cfg.validate.every`` steps
    (lds.training.loop.train's ``validator``), or None when ``cfg.validate`` is off: every
    aggregate of :func:`evaluate` on ``cfg.validate.data``, by name."""
    from lds.data import open_store_dataset

    settings = cfg.validate
    if not settings.enabled:
        return None
    dataset = open_store_dataset(settings.data, cfg.model, training=False)

    def validate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        result = evaluate(model, dataset, batch_size=settings.batch_size, device=device,
                          max_images=settings.max_images, progress=False, shard=False)
        return {name: agg["mean"] for name, agg in result.aggregates.items()
                if agg["mean"] is not None}

    return validate


def _format(name: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return metric(name).format(value)


def result_table(result: EvalResult, title: str | None = None) -> Table:
    """A readable table: metric, mean +- standard error, number of images."""
    table = Table(title=title or f"evaluation ({result.meta.get('num_images', '?')} images)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("± s.e.", justify="right")
    table.add_column("n", justify="right")
    source = segmentation_source_of(result.meta)
    for name, agg in result.aggregates.items():
        table.add_row(metric(name, source).label, _format(name, agg["mean"]),
                      _format(name, agg["stderr"]), str(agg["n"]))
    return table


def print_result(result: EvalResult, console: Console | None = None, title: str | None = None):
    (console or Console()).print(result_table(result, title))


# ---- comparing a control run with an LDS run (the paper's view) -------------------------------

def _image_pairs(control: EvalResult, lds: EvalResult) -> list[tuple[dict, dict]] | None:
    """(control record, LDS record) per image, matched by ``image_index``; None unless both runs
    scored the same images."""
    a = {r["image_index"]: r for r in control.records if "image_index" in r}
    b = {r["image_index"]: r for r in lds.records if "image_index" in r}
    if not a or a.keys() != b.keys():
        return None
    return [(a[index], b[index]) for index in a]


def paired_stderr(pairs: list[tuple[dict, dict]] | None, name: str) -> tuple[float | None, int]:
    """Standard error of the mean difference LDS - control of ``name`` over image ``pairs``
    (:func:`_image_pairs`).

    The differences are averaged per scene first, because the views of one scene are not
    independent samples, and the standard error is taken over scenes. Returns (stderr, scenes),
    or (None, scenes) without pairs or with fewer than 2 scenes that have the metric.
    """
    if pairs is None:
        return None, 0
    per_scene: dict = {}
    for ra, rb in pairs:
        va, vb = _nan_if_none(ra.get(name)), _nan_if_none(rb.get(name))
        if np.isfinite(va) and np.isfinite(vb):
            per_scene.setdefault(ra.get("scene_index", ra["image_index"]), []).append(vb - va)
    means = np.array([np.mean(d) for d in per_scene.values()])
    if len(means) < 2:
        return None, len(means)
    return float(means.std(ddof=1) / np.sqrt(len(means))), len(means)


def compare(control: EvalResult, lds: EvalResult) -> dict[str, dict[str, float | None]]:
    """Per metric: control mean, LDS mean, delta = LDS - control, whether LDS is better, and
    the paired standard error of delta over scenes (:func:`paired_stderr`) with ``clear``:
    |delta| > 2 standard errors (None when the two runs did not score the same images).

    The paper's headline is dSim = Sim(control) - Sim(LDS) (positive: LDS made slot latents less
    similar); it is reported under the key "dSim". Metrics only one side has are skipped.
    """
    rows: dict[str, dict[str, float | None]] = {}
    pairs = _image_pairs(control, lds)
    for name, entry in METRICS.items():
        if name not in control.aggregates or name not in lds.aggregates:
            continue
        a, b = control.aggregates[name]["mean"], lds.aggregates[name]["mean"]
        delta = None if a is None or b is None else b - a
        better = None
        # a difference below the shown precision is no difference ("-0.0000 ... better? yes")
        shown_equal = a is not None and b is not None and entry.format(a) == entry.format(b)
        if delta is not None and entry.higher_is_better is not None and not shown_equal:
            better = (delta > 0) == entry.higher_is_better
        stderr, scenes = paired_stderr(pairs, name)
        clear = None if stderr is None or delta is None else abs(delta) > 2.0 * stderr
        rows[name] = {"control": a, "lds": b, "delta": delta, "lds_better": better,
                      "stderr": stderr, "scenes": scenes, "clear": clear}
    if "sim" in rows and rows["sim"]["delta"] is not None:
        rows["dSim"] = {**rows["sim"], "control": None, "lds": None, "delta": -rows["sim"]["delta"]}
    return rows


def comparison_table(control: EvalResult, lds: EvalResult, control_name: str = "control",
                     lds_name: str = "LDS") -> Table:
    rows = compare(control, lds)
    scenes = max((row["scenes"] for row in rows.values()), default=0)
    paired = any(row["stderr"] is not None for row in rows.values())
    table = Table(title=f"{control_name} vs {lds_name}",
                  caption=(f"± : standard error of Δ, paired by image and taken over {scenes} "
                           "scenes; a verdict in brackets is within 2 standard errors"
                           if paired else "the runs scored different images: no paired error"))
    table.add_column("metric")
    table.add_column(control_name, justify="right")
    table.add_column(lds_name, justify="right")
    table.add_column("Δ (LDS − control)", justify="right")
    table.add_column("LDS better?", justify="center")
    order = ["sim", "dSim", "dup_gt", "dup_nogt", "dup_components", "dup_pairs", "mse", "rmse",
             "miou", "miou_greedy", "ari", "fg_ari", "fg_in_bg_slot", "active_slots",
             "largest_segment"]
    order += [DECODED_PREFIX + name for name in order if DECODED_PREFIX + name in METRICS]
    source = segmentation_source_of(control.meta)
    for name in order:
        if name not in rows:
            continue
        row = rows[name]
        better = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row["lds_better"]]
        if row["lds_better"] is not None and row["clear"] is False:
            better = f"[dim]({'yes' if row['lds_better'] else 'no'})[/]"
        delta = _signed("sim" if name == "dSim" else name, row["delta"])
        if row["stderr"] is not None and delta != "-":
            delta += " ± " + _format("sim" if name == "dSim" else name, row["stderr"])
        if name == "dSim":
            table.add_row("ΔSim = Sim(control) − Sim(LDS)", "", "", delta, better)
            continue
        table.add_row(metric(name, source).label, _format(name, row["control"]), _format(name, row["lds"]),
                      delta, better)
    return table


def _signed(name: str, value: float | None) -> str:
    text = _format(name, None if value is None else abs(value))
    if value is None or text == "-":
        return text
    return ("+" if value >= 0 else "−") + text
