"""`ldsrig experiment run|report|list` and `ldsrig gap` (mounted by root cli.py).

    ldsrig experiment run SPEC.yaml --out DIR [--slice i/n] [--only GLOB] [key=value ...]
    ldsrig experiment list SPEC.yaml [--out DIR] [--slice i/n]
    ldsrig experiment report DIR [--out REPORT_DIR]
    ldsrig gap RUN --data STORE [--samples 500] [--max-images 64] [--chunk 50]
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

experiment_app = typer.Typer(no_args_is_help=True, add_completion=False,
                             help="Run and report the paper's studies.")


@experiment_app.command("run")
def run_command(
    spec_path: Path = typer.Argument(..., help="Experiment spec (YAML)."),
    out: Path = typer.Option(..., "--out", help="Study directory (created; rerun to resume)."),
    slice_: Optional[str] = typer.Option(None, "--slice", help="Run only slice i of n (i/n, 0-based), e.g. 0/2."),
    only: Optional[str] = typer.Option(None, "--only", help="Only runs whose id matches this glob, e.g. '*__seed0' or '*__lds__*'."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: the runs' own setting)."),
    show_progress: bool = typer.Option(True, "--progress/--no-progress"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Spec overrides, e.g. gap.enabled=true train.steps=200."),
) -> None:
    """Train, evaluate and gap-estimate every run of the spec (finished runs are not retrained)."""
    from lds.experiments.runner import run_study
    from lds.experiments.spec import load_spec, parse_slice

    spec = load_spec(spec_path, list(overrides or []))
    done = run_study(spec, out, parse_slice(slice_), progress=show_progress, echo=typer.echo,
                     threads=threads or None, only=only)
    trained = sum(1 for _, h in done if h.get("train") == "done")
    typer.echo(f"{len(done)} runs up to date in {out} ({trained} trained now, "
               f"{len(done) - trained} already trained)")


@experiment_app.command("list")
def list_command(
    spec_path: Path = typer.Argument(..., help="Experiment spec (YAML)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Study directory: also show each run's state."),
    slice_: Optional[str] = typer.Option(None, "--slice", help="Only slice i/n."),
) -> None:
    """The runs a spec expands to (and, with --out, which are finished)."""
    from lds.experiments.runner import is_finished, run_dir_of
    from lds.experiments.spec import expand_runs, load_spec, parse_slice, select_slice

    spec = load_spec(spec_path)
    runs = select_slice(expand_runs(spec), *parse_slice(slice_))
    for run in runs:
        state = ""
        if out is not None:
            state = "finished" if is_finished(run_dir_of(out, run), spec.train.steps) else "to do"
        typer.echo(f"{run.run_id}  {state}".rstrip())


@experiment_app.command("report")
def report_command(
    study_dir: Path = typer.Argument(..., help="Study directory written by `ldsrig experiment run`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report directory (default: DIR/report)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw Figure 2 grids (loads the models)."),
) -> None:
    """Table 1, Figure 3, Table 2, Figure 2 grids and the ablations as report.html + report.md."""
    from lds.experiments.report import build_report

    paths = build_report(study_dir, out, draw_grids=figures)
    for path in paths:
        typer.echo(f"wrote {path}")


def gap_command(
    run: Path = typer.Argument(..., help="Run directory (written by `ldsrig train`)."),
    data: Path = typer.Option(..., "--data", help="Scene store to estimate the gap on."),
    samples: int = typer.Option(500, "--samples", min=1, help="Importance samples B per image."),
    max_images: Optional[int] = typer.Option(64, "--max-images", min=1, help="First N images only."),
    chunk: int = typer.Option(50, "--chunk", min=1, help="Samples per decoder pass (memory vs speed)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per pass."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output JSON (default: RUN/gap/gap.json)."),
    device: str = typer.Option("cpu", "--device"),
    seed: int = typer.Option(0, "--seed", help="Seed of the importance samples."),
    amp: str = typer.Option("off", "--amp", help="bf16: the decoder passes under bf16 autocast "
                            "(CUDA, or a CPU with native bf16; docs/experiments.md)."),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Inference gap per image: G = log p(x) (importance-weighted, B samples) - ELBO (unit weights)."""
    from lds import distributed
    from lds.evaluation.gap import gap_for_run

    with distributed.session(device):     # under torchrun: images sharded, rank 0 writes
        result = gap_for_run(run, data, num_samples=samples, max_images=max_images, chunk=chunk,
                             batch_size=batch_size, device=str(distributed.local_device(device)),
                             progress=not no_progress, out=out, seed=seed, amp=amp)
        if not distributed.is_main():
            return
    agg = result["aggregates"]
    typer.echo(f"{result['meta']['num_images']} images, B={samples}: "
               f"log p(x) {agg['log_px']['mean']:.2f}, ELBO {agg['elbo']['mean']:.2f}, "
               f"gap {agg['gap']['mean']:.3f} ± {agg['gap']['stderr'] or 0:.3f} (nats per image)")
    typer.echo(f"wrote {result['path']}")
