"""Run directories: what a training run leaves behind, and loading a trained model from it.

    run_dir/
        config.yaml             the full TrainConfig (defaults + YAML + overrides), reloadable
        checkpoints/            step_XXXXXXX.safetensors (+ optim_*.safetensors, state_*.json)
        metrics.jsonl           every logged value, one JSON row per logged step
        tensorboard/            TensorBoard event files

    model, cfg = load_run("runs/monet-lds")      # eval mode, latest checkpoint
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from common.errors import UserError
from lds.models import build_model
from lds.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from lds.training.config import TrainConfig, load_train_config, model_name_of

CONFIG_NAME = "config.yaml"
CHECKPOINT_DIR = "checkpoints"


class RunError(UserError):
    """A run directory that is missing, incomplete, or in the way."""


def read_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The TrainConfig saved in ``run_dir`` (with optional key=value overrides)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run (no {CONFIG_NAME})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RunError(f"{path} is not valid YAML: {exc}") from None
    return load_train_config(model_name_of(data), path, overrides)


def latest_checkpoint_step(run_dir: str | Path) -> int | None:
    steps = list_checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return steps[-1] if steps else None


def load_run(run_dir: str | Path, map_location: str | torch.device = "cpu",
             step: int | None = None) -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model (eval mode, on ``map_location``) and its TrainConfig.

    ``step`` picks a checkpoint; the default is the latest complete one. The step loaded is
    ``model.checkpoint_step``: results record it from there, not from the directory, which a
    training still running may have moved on since.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    cfg = read_run_config(run_dir)
    try:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_DIR, step, map_location)
    except CheckpointError as exc:
        raise RunError(f"{run_dir}: {exc}") from None
    model = build_model(cfg.model.name, cfg.model)
    missing, unexpected = model.load_state_dict(checkpoint.model_state, strict=False)
    if missing or unexpected:
        raise RunError(f"checkpoint {checkpoint.path} does not fit model {cfg.model.name!r}: "
                       f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise RunError(f"checkpoint {checkpoint.path} holds non-finite weights ({', '.join(bad[:3])}"
                       f"{' ...' if len(bad) > 3 else ''}); it cannot be evaluated: load an earlier "
                       "step (step=N) or retrain")
    model.checkpoint_step = checkpoint.step
    model.to(map_location)
    model.eval()
    return model, cfg
