"""`ldsrig eval` and `ldsrig compare` (mounted by root cli.py through lds/cli/train.py).

    ldsrig eval RUN --data STORE [--out FILE] [--batch-size 32] [--max-images N] [--figure N]
                [--metric claim_iou=0.6 ...] [--observed-views N]
    ldsrig compare RUN_CONTROL RUN_LDS [--data STORE] [--figure N]

`eval` writes RUN/eval/eval.json (per-image records + aggregates) and prints a table; with
--figure N it also writes RUN/eval/figure2.png with N images. `compare` reads both runs'
eval.json (evaluating first when one is missing and --data is given) and prints the paper's
view: Sim for each run and dSim = Sim(control) - Sim(LDS), duplicate rates side by side, MSE
and mIoU with deltas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer
from rich.console import Console

from common.config import load_config
from common.errors import UserError
from lds import distributed
from lds.data import open_eval_dataset
from lds.evaluation import EvalResult, comparison_table, compare, evaluate, print_result
from lds.evaluation.figures import figure2_for_dataset
from lds.evaluation.metrics import MetricsConfig

EVAL_DIR = "eval"
EVAL_FILE = "eval.json"
FIGURE_FILE = "figure2.png"


def _check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA GPU is available")
    return device


def _load_run(run: Path, device: str, step: int | None = None):
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    from lds.training.runs import load_run  # the training package is only needed here

    return load_run(run, map_location=device, step=step)


def _run_meta(run: Path, train_cfg, data: Path) -> dict:
    meta = {"run": str(run), "data": str(Path(data).resolve()), "model": train_cfg.model.name,
            "lds": {"enabled": train_cfg.lds.enabled, "weight": train_cfg.lds.weight,
                    "sigma": train_cfg.lds.sigma}}
    return meta


def evaluate_run(run: Path, data: Path, out: Path | None = None, batch_size: int = 32,
                 max_images: int | None = None, device: str = "cpu", figure: int = 0,
                 metric_overrides: list[str] | None = None, progress: bool = True,
                 console: Console | None = None, observed_views: int | None = None,
                 step: int | None = None) -> EvalResult:
    """Evaluate the run's latest checkpoint (or the one of ``step``) on ``data``; write eval.json
    (and figure2.png).

    ``observed_views``: multi-view models (MulMON) observe the first N views of each scene and
    predict the rest (the query views) instead of their trained ``model.eval_observed``.
    Under torchrun the images are sharded over the ranks and gathered; rank 0 writes the files.
    """
    with distributed.session(device):
        return _evaluate_run(run, data, out, batch_size, max_images,
                             str(distributed.local_device(device)), figure, metric_overrides,
                             progress, console, observed_views, step)


def _evaluate_run(run, data, out, batch_size, max_images, device, figure, metric_overrides,
                  progress, console, observed_views=None, step=None) -> EvalResult:
    console = console or Console()
    run = Path(run)
    config = load_config(MetricsConfig, None, metric_overrides or [])
    model, train_cfg = _load_run(run, _check_device(device), step)
    meta = _run_meta(run, train_cfg, data)
    # the step loaded, and the image limit: a study counts this file as current when both match
    meta.update(checkpoint_step=model.checkpoint_step, max_images=max_images)
    if observed_views is not None:
        if not hasattr(model.cfg, "eval_observed"):
            raise UserError(f"--observed-views is for multi-view models (MulMON); "
                            f"{train_cfg.model.name} sees one image at a time")
        # the run's own config stays as trained; only this evaluation observes N views
        model.cfg.eval_observed = observed_views
        meta["observed_views"] = observed_views
    dataset = open_eval_dataset(data, train_cfg.model)
    if len(dataset) == 0:
        raise UserError(f"data store {data} has no images to evaluate")
    result = evaluate(model, dataset, batch_size=batch_size, device=device, max_images=max_images,
                      progress=progress, config=config, meta=meta)
    out = Path(out) if out is not None else run / EVAL_DIR / EVAL_FILE
    if not distributed.is_main():      # every rank holds the gathered result; rank 0 writes it
        return result
    result.save(out)
    print_result(result, console, title=f"{run.name}: {result.meta['num_images']} images")
    console.print(f"wrote {out}")
    if figure > 0:
        # The evaluated items (images, or scenes of views for MulMON), as evaluate() counts them.
        evaluated = len(dataset) if max_images is None else min(len(dataset), max_images)
        path = figure2_for_dataset([model], dataset, figure, out.parent / FIGURE_FILE,
                            limit=evaluated, labels=[run.name])
        console.print(f"wrote {path}")
    return result


def eval_command(
    run: Path = typer.Argument(..., help="Run directory (written by `ldsrig train`)."),
    data: Path = typer.Option(..., "--data", help="Scene store to evaluate on."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output JSON (default: RUN/eval/eval.json)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="Evaluate only the first N images."),
    figure: int = typer.Option(0, "--figure", min=0, help="Also write Figure 2 with N example images."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    metric: list[str] = typer.Option([], "--metric", help="Metric threshold override key=value (repeatable), e.g. claim_iou=0.6."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output JSON."),
    observed_views: Optional[int] = typer.Option(
        None, "--observed-views", min=1, help="MulMON: observe the first N views of each scene "
        "and predict the others (query views); default: the run's model.eval_observed."),
    step: Optional[int] = typer.Option(
        None, "--step", min=0, help="Evaluate the checkpoint of this training step (default: "
        "the latest), e.g. to score a run's curve again with changed metrics."),
) -> None:
    """Evaluate a trained run: MSE, RMSE, mIoU (Hungarian and greedy), ARI, FG-ARI, Sim, duplicates."""
    target = Path(out) if out is not None else Path(run) / EVAL_DIR / EVAL_FILE
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists already; pass --overwrite to replace it, or --out FILE")
    evaluate_run(run, data, out, batch_size, max_images, device, figure, list(metric),
                 progress=not no_progress, observed_views=observed_views, step=step)


def _eval_for(run: Path, data: Path | None, **kwargs) -> EvalResult:
    """The run's eval.json; with ``data``, (re-)evaluated first when it is missing or was made
    on other data or another number of images (``max_images``)."""
    path = Path(run) / EVAL_DIR / EVAL_FILE
    if path.is_file():
        result = EvalResult.load(path)
        max_images = kwargs.get("max_images")
        same_images = max_images is None or result.meta.get("num_images") == max_images
        if data is None or (result.meta.get("data") == str(Path(data).resolve()) and same_images):
            return result
    if data is None:
        raise UserError(f"{path} does not exist: run `ldsrig eval {run} --data STORE` first, "
                        "or pass --data to compare")
    return evaluate_run(Path(run), data, **kwargs)


def compare_command(
    run_control: Path = typer.Argument(..., help="Control run (trained without LDS)."),
    run_lds: Path = typer.Argument(..., help="Run trained with the LDS prior."),
    data: Optional[Path] = typer.Option(None, "--data", help="Store to evaluate on when an eval.json is missing."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1),
    figure: int = typer.Option(0, "--figure", min=0, help="With --data: Figure 2 of both runs stacked (control above LDS), N images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the comparison as JSON."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Compare a control run with an LDS run: dSim, duplicate rates, MSE and mIoU with deltas."""
    console = Console()
    if Path(run_control).resolve() == Path(run_lds).resolve():
        raise UserError(f"compare takes two different runs; {run_control} was given twice")
    kwargs = dict(batch_size=batch_size, max_images=max_images, device=device, console=console)
    control = _eval_for(run_control, data, **kwargs)
    lds = _eval_for(run_lds, data, **kwargs)
    trained_with = [r.meta.get("lds", {}).get("enabled") for r in (control, lds)]
    if trained_with == [True, False]:
        raise UserError(f"the runs are swapped: {run_control} was trained with LDS and {run_lds} "
                        "without; pass the control run first, then the LDS run")
    if trained_with[0] is True:
        raise UserError(f"{run_control} was trained with LDS: compare takes the control run "
                        "(without LDS) first, then the LDS run")
    if trained_with[1] is False:
        raise UserError(f"{run_lds} was trained without LDS: compare takes the control run first, "
                        "then the LDS run")
    if control.meta.get("data") != lds.meta.get("data") or \
            control.meta.get("num_images") != lds.meta.get("num_images"):
        console.print("[yellow]note: the two runs were evaluated on different data or image counts "
                      f"({control.meta.get('data')}, {control.meta.get('num_images')} images vs "
                      f"{lds.meta.get('data')}, {lds.meta.get('num_images')} images)[/]")
    console.print(comparison_table(control, lds, Path(run_control).name, Path(run_lds).name))
    # Table 2 when both runs have RUN/gap/gap.json (`ldsrig gap`): dG per image and correlations.
    from lds.evaluation.gap import gap_difference, gap_table, load_gap

    gaps = load_gap(run_control), load_gap(run_lds)
    gap_rows = None
    if all(gaps):
        gap_rows = gap_difference(gaps[0], gaps[1], control.records, lds.records)
        console.print(gap_table(gap_rows))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"control": str(run_control), "lds": str(run_lds),
                                         "rows": compare(control, lds), "gap": gap_rows}, indent=1))
        console.print(f"wrote {out}")
    if figure > 0:
        if data is None:
            raise UserError("--figure needs --data (the images to draw)")
        control_model, control_cfg = _load_run(Path(run_control), _check_device(device))
        lds_model, _ = _load_run(Path(run_lds), _check_device(device))
        path = figure2_for_dataset([control_model, lds_model], open_eval_dataset(data, control_cfg.model),
                            figure,
                            Path(run_lds) / EVAL_DIR / "figure2_vs_control.png", limit=max_images,
                            labels=[f"{Path(run_control).name} (control)",
                                    f"{Path(run_lds).name} (LDS)"])
        console.print(f"wrote {path}")
