"""Camera geometry every area shares: look-at poses and pinhole intrinsics (OpenCV conventions:
camera axes +x right, +y down, +z forward; pixel (0, 0)'s centre at (0, 0))."""

from __future__ import annotations

import math

import numpy as np


def invert_rigid(pose) -> np.ndarray:
    """Inverse of a 4x4 rigid transform as R^T, -R^T t: exact to rounding, unlike a general
    inverse, so poses survive an export/import round trip to ~1e-16."""
    pose = np.asarray(pose, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = pose[:3, :3].T
    out[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return out


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world pose T_world_camera of a camera at ``eye`` looking at ``target``, with
    the image's up as close to world ``up`` as possible (no roll).

    z = (target - eye)/|.|, x = z x up, y = z x x. When z is (anti)parallel to ``up`` (a camera
    looking straight down) world +x stands in for ``up``, so the pose stays defined; an eye on
    its target is an error.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(z)
    if norm < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    z = z / norm
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def pinhole_intrinsics(fx: float, fy: float, width: int, height: int) -> np.ndarray:
    """K with the principal point at the image centre: the centre of a W-pixel row is (W-1)/2."""
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fy, (height - 1) / 2.0],
                     [0.0, 0.0, 1.0]], dtype=np.float64)


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """Square-pixel K with the given horizontal field of view and a centred principal point."""
    focal = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return pinhole_intrinsics(focal, focal, width, height)
