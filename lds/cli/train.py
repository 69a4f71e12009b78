"""`ldsrig train <model>` (one subcommand per registered model), plus the evaluation commands.

    ldsrig train monet --data STORE [--lds/--no-lds] [--config FILE] [--out RUN_DIR]
                       [--steps N] [--resume] [key=value ...]

Root cli.py mounts ``train_app`` as `ldsrig train`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from lds.models import MODEL_CONFIGS

train_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Train a model with or without the LDS prior.",
)


def _default_run_dir(model: str, lds: bool) -> Path:
    return Path("runs") / f"{model}-{'lds' if lds else 'control'}-{time.strftime('%Y%m%d-%H%M%S')}"


def _make_train_command(model_name: str):
    def command(
        data: Optional[Path] = typer.Option(None, "--data", help="Scene store to train on."),
        lds: Optional[bool] = typer.Option(
            None, "--lds/--no-lds", help="Train with the LDS prior (default: the config's lds.enabled, off)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config (keys as in a run's config.yaml)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<model>-<lds|control>-<time>)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Total gradient steps (optim.steps)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
        from_step: Optional[int] = typer.Option(None, "--from-step", help="With --resume: continue from this checkpoint step instead (later ones are moved aside, not deleted)."),
        show_progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
        overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides, e.g. optim.lr=1e-4 model.num_slots=9."),
    ) -> None:
        from common.errors import UserError
        from lds.training.config import load_train_config
        from lds.training.loop import train
        from lds.training.runs import read_run_config

        overrides = list(overrides or [])
        if resume:
            if out is None:
                raise UserError("--resume needs --out RUN_DIR (the run to continue)")
            if config is not None:
                raise UserError("--resume takes the run's saved config.yaml; pass changes as key=value")
            cfg = read_run_config(out, overrides)
            if cfg.model.name != model_name:
                raise UserError(f"{out} is a {cfg.model.name} run, not {model_name}")
        else:
            cfg = load_train_config(model_name, config, overrides)
        # Flags win over the file and the overrides (set directly: paths need no YAML quoting).
        if data is not None:
            cfg.data = str(data)
        if lds is not None:
            cfg.lds.enabled = lds
        if steps is not None:
            if steps < 0:
                raise UserError("--steps must be >= 0")
            cfg.optim.steps = steps
        run_dir = out if out is not None else _default_run_dir(model_name, cfg.lds.enabled)
        from lds.evaluation import make_validator

        if from_step is not None and not resume:
            raise UserError("--from-step needs --resume")
        result = train(cfg, run_dir, resume=resume, progress=show_progress,
                       validator=make_validator(cfg), resume_step=from_step)
        from lds.distributed import launched_rank

        if launched_rank() != 0:      # under torchrun: one summary, from rank 0
            return
        typer.echo(f"trained {model_name}{' with LDS' if cfg.lds.enabled else ''} to step {result.step}")
        if result.last_values:
            typer.echo("last logged: " + ", ".join(f"{k} {v:.4g}" for k, v in result.last_values.items()))
        typer.echo(f"run: {run_dir}")
        if result.checkpoint is not None:
            typer.echo(f"checkpoint: {result.checkpoint}")
        if result.stopped_by_time_limit:
            typer.echo(f"stopped by time_limit_minutes={cfg.time_limit_minutes:g} at step "
                       f"{result.step} of {cfg.optim.steps}; continue with `ldsrig train "
                       f"{model_name} --out {run_dir} --resume`")

    command.__doc__ = (f"Train {model_name} (paper settings by default) with or without the LDS prior; "
                       f"writes config.yaml, checkpoints, metrics.jsonl and TensorBoard logs to the run directory.")
    return command


for _name in MODEL_CONFIGS:
    train_app.command(_name)(_make_train_command(_name))
