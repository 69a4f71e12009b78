"""Small pose helpers (spatialmath has no look-at: common.geometry has the one look-at)."""

from __future__ import annotations

import numpy as np

from common.geometry import invert_rigid

invert = invert_rigid      # the one rigid inverse (common.geometry)


def pose_error(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(translation error in metres, rotation error in radians) between two poses."""
    dt = float(np.linalg.norm(A[:3, 3] - B[:3, 3]))
    cos = (np.trace(A[:3, :3].T @ B[:3, :3]) - 1.0) / 2.0
    return dt, float(np.arccos(np.clip(cos, -1.0, 1.0)))
