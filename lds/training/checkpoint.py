"""Checkpoints that are safe to load from a stranger and resume exactly.

A checkpoint for step N (N completed gradient steps) is three files in ``checkpoints/``:

    step_000000N.safetensors    model parameters and buffers (a plain safetensors file)
    optim_000000N.safetensors   optimiser tensors (e.g. RMSprop's square_avg), keyed state.<i>.<name>
    state_000000N.json          scalars: step, seed, optimiser param groups and scalar state

No pickle anywhere. Each file is written to a temporary name and moved into place with
``os.replace`` (atomic on POSIX), and the JSON is written last: a checkpoint counts only when
its JSON exists, so a crash mid-write leaves the previous checkpoint as the latest one.
RNG state needs no saving: the trainer reseeds from (seed, step) at every step and draws the
data order from (seed, epoch), so both follow from the step number alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.io import atomic_path, atomic_write_text

_STATE_RE = re.compile(r"^state_(\d{7,})\.json$")


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or unreadable."""


def _names(directory: Path, step: int) -> tuple[Path, Path, Path]:
    return (directory / f"step_{step:07d}.safetensors", directory / f"optim_{step:07d}.safetensors",
            directory / f"state_{step:07d}.json")


def model_path(directory: str | Path, step: int) -> Path:
    return _names(Path(directory), step)[0]


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalar_state": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta.get("scalar_state", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    extra: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically; returns the model file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_file, optim_file, state_file = _names(directory, step)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_save_tensors(weights, model_file, {"step": str(step), "format": "ldsrig-model-1"})
    state = {"step": step, "format": "ldsrig-checkpoint-1", **(extra or {})}
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        _atomic_save_tensors(tensors, optim_file, {"step": str(step)})
        state["optimizer"] = meta
    atomic_write_text(state_file, json.dumps(state, indent=1))  # last: marks it complete
    return model_file


def list_checkpoints(directory: str | Path) -> list[int]:
    """Steps of the complete checkpoints in ``directory``, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for entry in directory.iterdir():
        match = _STATE_RE.match(entry.name)
        if match and model_path(directory, int(match.group(1))).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


@dataclass
class Checkpoint:
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None
    state: dict                      # the JSON (step, seed, anything the trainer stored)
    path: Path                       # the model file


def load_checkpoint(directory: str | Path, step: int | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load checkpoint ``step`` (default: the latest complete one) without unpickling anything."""
    directory = Path(directory)
    steps = list_checkpoints(directory)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {directory}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; have {steps}")
    model_file, optim_file, state_file = _names(directory, step)
    device = str(map_location)
    try:
        state = json.loads(state_file.read_text())
        if not isinstance(state, dict) or state.get("step") != step:
            raise ValueError(f"{state_file.name} is not this checkpoint's state (a JSON object "
                             f"with step {step})")
        model_state = load_file(str(model_file), device=device)
        optimizer_state = None
        if "optimizer" in state:
            optimizer_state = _unflatten_optimizer(load_file(str(optim_file), device=device),
                                                   state["optimizer"])
    except RecursionError:
        raise CheckpointError(f"checkpoint {state_file} is unreadable: its JSON is nested too "
                              "deeply") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {model_file} is unreadable: {exc}") from None
    return Checkpoint(step, model_state, optimizer_state, state, model_file)


def restore(checkpoint: Checkpoint, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer | None) -> None:
    """Load a checkpoint into a model and its optimiser, or raise one CheckpointError saying
    what does not fit (a missing or extra key, a tensor of another shape, broken optimiser
    groups or state) before anything is half-loaded."""
    where = f"checkpoint {checkpoint.path}"
    own = model.state_dict()
    given = checkpoint.model_state
    missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    if missing or extra:
        raise CheckpointError(f"{where} does not fit the model: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(given[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{where} does not fit the model: {k} is {tuple(given[k].shape)}, "
                              f"the model's is {tuple(own[k].shape)}")
    if optimizer is not None and checkpoint.optimizer_state is not None:
        groups = checkpoint.optimizer_state.get("param_groups")
        ours = optimizer.state_dict()["param_groups"]
        if (not isinstance(groups, list) or len(groups) != len(ours)
                or any(not isinstance(g, dict) or not isinstance(g.get("params"), list)
                       or len(g["params"]) != len(o["params"]) for g, o in zip(groups, ours))):
            raise CheckpointError(f"{where}: the optimiser's parameter groups do not fit this model")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        index_of = {i: p for i, p in zip((i for g in groups for i in g["params"]), params)}
        for index, entry in checkpoint.optimizer_state["state"].items():
            param = index_of.get(index)
            if param is None:
                raise CheckpointError(f"{where}: optimiser state for an unknown parameter {index}")
            for name, value in entry.items():
                if (isinstance(value, torch.Tensor) and value.dim() > 0
                        and tuple(value.shape) != tuple(param.shape)):
                    raise CheckpointError(f"{where}: optimiser state {name} of parameter {index} "
                                          f"is {tuple(value.shape)}, the parameter is "
                                          f"{tuple(param.shape)}")
    model.load_state_dict(given)
    if optimizer is not None and checkpoint.optimizer_state is not None:
        try:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}: the optimiser state does not load ({exc})") from None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    for step in list_checkpoints(directory)[:-keep]:
        # The JSON goes first so that a half-deleted checkpoint is never taken as complete.
        for path in reversed(_names(Path(directory), step)):
            path.unlink(missing_ok=True)
