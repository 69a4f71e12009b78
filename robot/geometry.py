"""Small pose helpers (spatialmath has no look-at)."""

from __future__ import annotations

import numpy as np


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """T_world_camera with OpenCV axes: +z from ``eye`` towards ``target``, +y pointing down-ish.

    z = (target - eye)/|.|, x = z x up, y = z x x.  When z is (anti)parallel to ``up`` the world
    +x axis stands in for ``up`` so the pose stays defined.
    """
    eye = np.asarray(eye, dtype=float)
    z = np.asarray(target, dtype=float) - eye
    norm = np.linalg.norm(z)
    if norm < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    z /= norm
    x = np.cross(z, np.asarray(up, dtype=float))
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def pose_error(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(translation error in metres, rotation error in radians) between two poses."""
    dt = float(np.linalg.norm(A[:3, 3] - B[:3, 3]))
    cos = (np.trace(A[:3, :3].T @ B[:3, :3]) - 1.0) / 2.0
    return dt, float(np.arccos(np.clip(cos, -1.0, 1.0)))
