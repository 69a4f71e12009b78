"""What the *_vs_public.py comparisons share: their stores checked in one line each, and their
curve files (one JSON row per evaluation, per model and seed) read and lined up over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import UserError


def require_stores(**stores: str | None) -> None:
    """Each named store (``train=..., val=...``) given and present, or one line naming it."""
    for name, path in stores.items():
        if not path:
            raise UserError(f"--{name} STORE is needed to train")
        if not Path(path).exists():
            raise UserError(f"--{name} store {path} does not exist")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def common_steps(runs: list[list[dict]]) -> list[int]:
    """The steps every run evaluated at."""
    return sorted(set.intersection(*[{r["step"] for r in rows} for rows in runs]))


def values_at(runs: list[list[dict]], steps: list[int], key: str) -> np.ndarray:
    """(runs, steps) values of ``key``; NaN where a run's row lacks it."""
    return np.array([[next((r.get(key) for r in rows if r["step"] == s), None) for s in steps]
                     for rows in runs], dtype=float)
