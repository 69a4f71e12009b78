"""Training configuration: one dataclass tree, loadable from YAML and overridable as key=value.

    cfg = load_train_config("monet", "my.yaml", ["optim.lr=1e-4", "model.num_slots=9"])

``TrainConfig`` holds what every model shares (data, seed, optimiser, LDS, logging); its
``model`` field is the model's own config dataclass (``MONetConfig`` ...). Because the YAML loader
needs a concrete type for ``model``, :func:`train_config_class` makes one ``TrainConfig``
subclass per registered model. Defaults are the paper's Table 1 (MONet); a model whose paper
settings differ declares them in ``lds.models.PAPER_TRAIN_SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import apply_overrides, from_dict, load_config, merge_mapping, read_yaml_mapping, to_dict
from common.errors import ConfigError
from lds.models import MODEL_CONFIGS, PAPER_TRAIN_SETTINGS


@dataclass
class OptimConfig:
    name: Literal["rmsprop", "adam"] = "rmsprop"
    lr: float = 3e-4
    batch_size: int = 40
    steps: int = 600_000                    # total gradient steps of the run
    grad_clip: float = 5.0                  # global gradient-norm clip; 0 disables it
    # "constant", or "gqn": max(0.1 lr + 0.9 lr (1 - s / 1e6), 0.1 lr) (IODINE / MulMON tables).
    schedule: Literal["constant", "gqn"] = "constant"
    alpha: float = 0.99                     # RMSprop smoothing (torch's default)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"optim.batch_size must be at least 1, got {self.batch_size}")
        if self.steps < 0:
            raise ConfigError(f"optim.steps must be >= 0, got {self.steps}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")


LDS_LATENTS = ("sample", "mean")


@dataclass
class LDSConfig:
    enabled: bool = False                   # --lds / --no-lds
    weight: float = 0.5                     # lambda in Eq. 4 (0.5 for MONet+, Table 1)
    sigma: float = 0.1                      # sigma in Eq. 3
    # Which latents Sigma is computed from: "sample" (the z_k ~ q the ELBO decodes) or "mean"
    # (the posterior means, what evaluation's Sim measures). Eq. 3 says "the inferred z_k" and
    # does not settle it. On samples, a collapsed posterior (q = N(0, I)) gives near-orthogonal
    # noise, so the prior cannot see slots whose means coincide (docs/training.md, "LDS on
    # samples or on means").
    latents: str = "sample"
    # The first refinement iteration the prior applies to. Eq. 3 and supplement A put it on every
    # iteration (0). IODINE and MulMON start every slot from one learned initial posterior, so at
    # iteration 0 the slots differ only by their samples' noise and the prior can be paid only by
    # widening that noise; 1 leaves iteration 0 out (an ablation; MulMON: of every observed view).
    from_iteration: int = 0

    def __post_init__(self) -> None:
        if self.from_iteration < 0:
            raise ConfigError(f"lds.from_iteration must be >= 0, got {self.from_iteration}")
        if self.latents not in LDS_LATENTS:
            raise ConfigError(f"lds.latents must be one of {', '.join(LDS_LATENTS)}, got "
                              f"{self.latents!r}")
        if self.weight < 0:
            raise ConfigError(f"lds.weight must be >= 0, got {self.weight}")
        if self.sigma <= 0:
            raise ConfigError(f"lds.sigma must be positive, got {self.sigma}")


@dataclass
class LogConfig:
    every: int = 50                         # steps per logged row (values averaged over them)
    checkpoint_every: int = 1000            # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3               # older ones are deleted; 0 keeps all
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.every < 1 or self.checkpoint_every < 1:
            raise ConfigError("log.every and log.checkpoint_every must be at least 1")


@dataclass
class ValidationConfig:
    """Held-out evaluation during training: FG-ARI, mIoU, MSE ... against steps, on scenes the
    run never trains on (validation.jsonl and TensorBoard ``val/``). Never the test scenes:
    a regime tuned on them would be judged on the scenes it was tuned on."""

    data: str = ""                          # held-out scene store; empty: no validation
    every: int = 0                          # steps between validations (and at 0 and the end); 0: off
    max_images: int | None = 240
    batch_size: int = 48

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"validate.every must be >= 0, got {self.every}")
        if self.batch_size < 1:
            raise ConfigError(f"validate.batch_size must be at least 1, got {self.batch_size}")

    @property
    def enabled(self) -> bool:
        return bool(self.data) and self.every > 0


@dataclass
class TrainConfig:
    model: Any = None                       # the model's config dataclass (see train_config_class)
    data: str = ""                          # scene store path
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    lds: LDSConfig = field(default_factory=LDSConfig)
    log: LogConfig = field(default_factory=LogConfig)
    validate: ValidationConfig = field(default_factory=ValidationConfig)
    workers: int = 0                        # DataLoader worker processes
    threads: int = 0                        # torch CPU threads; 0 leaves torch's default
    device: str = "cpu"
    # Start from these model parameters (a .safetensors file of a model state, e.g. a run's
    # checkpoints/step_N.safetensors) with a fresh optimiser; "" = a fresh initialisation.
    # Ignored on --resume, which continues from the run's own checkpoint.
    init_from: str = ""
    compile: bool = False                   # torch.compile the model (eager when false)
    # Mixed precision (docs/training.md, docs/distributed.md). "bf16": the training forward runs
    # under autocast to bfloat16 on the run's device, CUDA or a CPU with native bf16 (AMX or
    # AVX512-BF16; refused elsewhere, where emulated bf16 is slower than fp32). Convs and
    # matmuls run in bf16, parameters and optimiser state stay fp32, the loss is cast to fp32
    # before backward (no loss scaling needed for bf16). CUDA autocast also keeps log/exp/
    # softmax/sums in fp32; CPU autocast does not (what that means per model: docs/training.md).
    # Evaluation always runs in fp32.
    # (YAML 1.1 reads an unquoted `off` as false, so amp=off on the command line arrives as False.)
    amp: Literal["off", "bf16", False] = "off"
    pin_memory: bool = True                 # page-locked host batches when training on CUDA
    # Stop after this much wall time (0: no limit) with a log row, a checkpoint and a validation
    # at the step reached, so a cluster job's time limit or a fixed GPU budget ends the run
    # cleanly; `--resume` continues it.
    time_limit_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.amp is False:
            self.amp = "off"
        if self.time_limit_minutes < 0:
            raise ConfigError(f"time_limit_minutes must be >= 0, got {self.time_limit_minutes}")
        import torch

        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device {self.device!r} is not a torch device (cpu, cuda, cuda:1, "
                              "mps, ...)") from None



# Model keys that older runs saved in their config.yaml and that no longer exist: the LDS
# weight and sigma were copied into every model's config; the run's `lds` section is now the
# only source (the trainer applies the prior).
LEGACY_MODEL_KEYS = ("lds_weight", "lds_sigma")


@functools.cache
def train_config_class(model_name: str) -> type[TrainConfig]:
    """The TrainConfig subclass whose ``model`` field is ``model_name``'s config dataclass."""
    if model_name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model {model_name!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
    model_cls = MODEL_CONFIGS[model_name]
    cls = dataclasses.make_dataclass(
        f"{model_cls.__name__.removesuffix('Config')}TrainConfig",
        [("model", model_cls, field(default_factory=model_cls))],
        bases=(TrainConfig,),
    )
    cls.__module__ = __name__
    return cls


def default_train_config(model_name: str) -> TrainConfig:
    """Defaults of ``model_name`` with its paper training settings applied."""
    cls = train_config_class(model_name)
    data = to_dict(cls())
    paper = PAPER_TRAIN_SETTINGS.get(model_name, {})
    _merge_nested(data, paper)
    return from_dict(cls, data)


def _merge_nested(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict):
            _merge_nested(into[key], value)
        else:
            into[key] = value


def load_train_config(model_name: str, yaml_path: str | Path | None = None,
                      overrides: list[str] | None = None) -> TrainConfig:
    """Paper defaults for the model, then the YAML file, then key=value overrides."""
    cls = train_config_class(model_name)
    data = to_dict(default_train_config(model_name))
    if yaml_path is not None:
        loaded = read_yaml_mapping(yaml_path)
        model = loaded.get("model")
        if isinstance(model, dict):
            for key in LEGACY_MODEL_KEYS:       # configs saved by runs made before they went
                model.pop(key, None)
        merge_mapping(data, loaded)
    apply_overrides(data, overrides or [])
    cfg = from_dict(cls, data)
    if cfg.model.name != model_name:
        raise ConfigError(f"the config is for model {cfg.model.name!r}, not {model_name!r}")
    return cfg


def model_name_of(yaml_data: dict) -> str:
    """The model named in a saved run config (``model.name``)."""
    try:
        return str(yaml_data["model"]["name"])
    except (KeyError, TypeError):
        raise ConfigError("the run config has no model.name") from None


__all__ = ["OptimConfig", "LDSConfig", "LogConfig", "ValidationConfig", "TrainConfig", "train_config_class",
           "default_train_config", "load_train_config", "model_name_of", "apply_overrides"]
