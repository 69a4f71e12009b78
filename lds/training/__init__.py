"""Training for every model: config dataclasses, the loop, checkpoints, run directories, logs.

    from lds.training import load_train_config, train, load_run
    cfg = load_train_config("monet", overrides=["optim.steps=1000"]); cfg.data = "store.zarr"
    train(cfg, "runs/monet")
    model, cfg = load_run("runs/monet")
"""

from lds.training.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint,
                                     save_checkpoint)
from lds.training.config import (LDSConfig, LogConfig, OptimConfig, TrainConfig,
                                 default_train_config, load_train_config, train_config_class)
from lds.training.loop import NonFiniteLossError, TrainResult, train
from lds.training.runs import RunError, latest_checkpoint_step, load_run, read_run_config

__all__ = [
    "CheckpointError", "list_checkpoints", "load_checkpoint", "save_checkpoint",
    "LDSConfig", "LogConfig", "OptimConfig", "TrainConfig", "default_train_config",
    "load_train_config", "train_config_class", "NonFiniteLossError", "TrainResult", "train",
    "RunError", "latest_checkpoint_step", "load_run", "read_run_config",
]
