"""Run logs a user can plot: a JSONL of every logged value and TensorBoard event files.

Each call to :meth:`RunLogger.log` writes one JSON line ``{"step": N, "time": unix, name: value,
...}`` to ``metrics.jsonl`` and the same scalars to TensorBoard under ``train/<name>``;
:meth:`RunLogger.log_validation` does the same for held-out evaluations (``validation.jsonl``,
``val/<name>``). The JSONL files are appended and flushed per row, so a killed run keeps every
row it logged; on ``--resume`` rows past the resumed step (logged after the last checkpoint) are
dropped first, so each file holds one row per step.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.validation_path = self.run_dir / "validation.jsonl"
        if resume_step is not None:
            for path in (self.path, self.validation_path):
                if path.exists():
                    _truncate_after(path, resume_step)
        self._file = open(self.path, "a")
        self._validation_file = None
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                         purge_step=resume_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        self._write(self._file, "train", step, values)

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        if self._validation_file is None:
            self._validation_file = open(self.validation_path, "a")
        self._write(self._validation_file, "val", step, values)

    def _write(self, file, group: str, step: int, values: dict[str, float]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        # JSON has no NaN/inf; write them as strings rather than produce an unparsable file.
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        file.write(json.dumps(row) + "\n")
        file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{group}/{name}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._validation_file is not None:
            self._validation_file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_after(path: Path, step: int) -> None:
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


def read_metrics(run_dir: str | Path, name: str = "metrics.jsonl") -> list[dict]:
    """The rows of a run's metrics.jsonl, or validation.jsonl (for plotting and tests)."""
    path = Path(run_dir) / name
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a last line cut short by a kill
            continue
    return rows
