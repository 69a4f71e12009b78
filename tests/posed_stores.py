"""Tiny posed stores for the export, import and pose-audit tests: rendered cube scenes (exact
poses, K and object centres) and variants of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.store import SceneStore

TINY_SIZE = (48, 36)  # (W, H)


def render_cubes(path: Path, *, scenes: int = 1, views: int = 5, width: int = TINY_SIZE[0],
                 height: int = TINY_SIZE[1], spp: int = 4, **settings) -> Path:
    """A rendered cube store (no webcam noise, few samples: geometry is what these tests use)."""
    from datasets.synth.generate import CubesSettings, generate

    generate(path, "cubes", CubesSettings(views=views, width=width, height=height, spp=spp,
                                          noise=False, **settings), scenes, progress=False)
    return path


def distorted_copy(src: Path, dst: Path) -> Path:
    """The same scenes and poses with per-view intrinsics and non-zero OpenCV distortion,
    k3 included (the pixels stay the undistorted render: export geometry does not read them)."""
    with SceneStore.open(src) as source, SceneStore.create(
            dst, source.height, source.width, ground_truth=True, max_objects=source.max_objects,
            attrs={"source": "test/distorted"}) as out:
        for scene_id in source.scene_ids:
            rows = source.images(source.scene_image_indices(scene_id))
            views = len(rows["rgb"])
            K = rows["intrinsics"].copy()
            K[:, 0, 0] *= 1.0 + 0.01 * np.arange(views)
            K[:, 1, 1] *= 1.0 + 0.012 * np.arange(views)
            K[:, 0, 2] += 0.3 * np.arange(views)
            K[:, 1, 2] -= 0.2 * np.arange(views)
            k = np.arange(views)
            distortion = np.stack([-0.08 + 0.01 * k, 0.02 - 0.003 * k, 0.001 * k,
                                   -0.0015 * k, np.where(k % 2 == 1, 0.004, 0.0)], axis=1)
            out.add_scene(scene_id, source.scene_metadata(scene_id))
            out.append_images(scene_id, rows["rgb"], rows["camera_pose_world"], K,
                              distortion=distortion, label_map=rows["label_map"],
                              amodal_masks=rows["amodal_masks"])
            out.set_scene_state(scene_id, "complete")
    return dst


def store_projections(pose: np.ndarray, K: np.ndarray, distortion: np.ndarray,
                      points: np.ndarray) -> np.ndarray:
    """Pixel positions (store convention: pixel (0,0)'s centre at (0,0)) of world points, by
    OpenCV's own projection with the store's pose, K and distortion."""
    import cv2

    world_to_camera = np.linalg.inv(pose)
    rvec, _ = cv2.Rodrigues(world_to_camera[:3, :3])
    pixels, _ = cv2.projectPoints(np.asarray(points, np.float64).reshape(-1, 1, 3), rvec,
                                  world_to_camera[:3, 3], K, distortion)
    return pixels.reshape(-1, 2)
