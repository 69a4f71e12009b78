"""Viewpoint vectors: what a multi-view model (MulMON) is told about where a camera is.

Two kinds, chosen per dataset (``viewpoint=`` in the torch datasets):

``clevr-mv`` (3 numbers) is MulMON's own vector for CLE-MV data: the camera position with its
height dropped, scaled to unit length, minus [1, 0, 0].  It only says which way round the
scene's vertical axis the camera stands, which is all that varies in CLE-MV (every camera is on
one circle at one height).  Use it for imported CLE-MV / Dolphin data so published settings apply.

``pose`` (9 numbers) is the general vector for rig and synthetic data, where cameras differ in
height, distance and roll: the camera centre in world metres, then its viewing direction
(+z of the OpenCV camera frame) and its image-right direction (+x), both unit vectors in world
axes.  Together they fix the full camera-to-world pose (the third axis is their cross product).
"""

from __future__ import annotations

import numpy as np

VIEWPOINT_KINDS = {"clevr-mv": 3, "pose": 9}


def clevr_mv_viewpoint(camera_pose_world: np.ndarray) -> np.ndarray:
    """MulMON's CLE-MV viewpoint vector(s) from camera-to-world pose(s) (..., 4, 4) -> (..., 3)."""
    position = np.array(camera_pose_world[..., :3, 3], dtype=np.float64, copy=True)
    position[..., 2] = 0.0
    norm = np.linalg.norm(position, axis=-1, keepdims=True)
    direction = position / np.maximum(norm, 1e-12)
    return (direction - np.array([1.0, 0.0, 0.0])).astype(np.float32)


def pose_viewpoint(camera_pose_world: np.ndarray) -> np.ndarray:
    """General viewpoint vector(s) (..., 4, 4) -> (..., 9): centre, viewing dir, image-right dir."""
    T = np.asarray(camera_pose_world, dtype=np.float64)
    return np.concatenate([T[..., :3, 3], T[..., :3, 2], T[..., :3, 0]], axis=-1).astype(np.float32)


def viewpoint_vector(camera_pose_world: np.ndarray, kind: str) -> np.ndarray:
    if kind == "clevr-mv":
        return clevr_mv_viewpoint(camera_pose_world)
    if kind == "pose":
        return pose_viewpoint(camera_pose_world)
    raise ValueError(f"unknown viewpoint kind {kind!r}; one of {sorted(VIEWPOINT_KINDS)}")


def default_viewpoint_kind(store_attrs: dict) -> str:
    """CLE-MV-format sources get MulMON's vector, everything else the general one."""
    source = str(store_attrs.get("source", ""))
    return "clevr-mv" if "clevr-mv" in source or "dolphin" in source else "pose"
