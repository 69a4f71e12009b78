"""Derive a training store (square, small) from a raw store without touching the raw one.

Centre crop to a square, then area-average resize (cv2.INTER_AREA: the right filter for
shrinking, no aliasing) for RGB and nearest neighbour for masks, so labels stay labels.  The
intrinsics follow the pixels: the crop shifts the principal point and the resize scales K about
pixel centres, so projecting with the new K lands on the same content.  Distortion coefficients
act on normalised coordinates and are unchanged.

The new store is built under ``DST.partial`` and renamed to DST only when complete, so an
interrupted prepare never leaves something at DST that looks finished.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from datasets.store import SceneStore, StoreError


def crop_resize_intrinsics(K: np.ndarray, x0: float, y0: float, scale: float) -> np.ndarray:
    """K after cropping at (x0, y0) and scaling by ``scale`` (pixel-centre convention)."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 2] = (K[..., 0, 2] - x0 + 0.5) * scale - 0.5
    K[..., 1, 2] = (K[..., 1, 2] - y0 + 0.5) * scale - 0.5
    K[..., 0, 0] *= scale
    K[..., 1, 1] *= scale
    K[..., 0, 1] *= scale
    return K


def centre_crop_box(height: int, width: int) -> tuple[int, int, int]:
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def prepare_store(src: str | Path, dst: str | Path, size: int, batch: int = 256,
                  images_per_shard: int | None = 256, progress: bool = True) -> Path:
    src, dst = Path(src), Path(dst)
    if size <= 0:
        raise StoreError(f"--size must be positive, got {size}")
    if dst.exists():
        raise StoreError(f"{dst} already exists; prepare writes a new store (remove it or choose another path)")
    if src.resolve() == dst.resolve():
        raise StoreError("source and destination are the same path")
    raw = SceneStore.open(src)
    y0, x0, side = centre_crop_box(raw.height, raw.width)
    scale = size / side
    partial = dst.with_name(dst.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # leftovers of an interrupted prepare: never committed to DST
    out = SceneStore.create(
        partial, size, size, ground_truth=raw.has_ground_truth,
        max_objects=max(raw.max_objects, 1),
        attrs={k: v for k, v in raw.attrs.items()
               if k not in ("schema", "conventions", "height", "width", "ground_truth", "max_objects", "created")}
        | {"prepared_from": str(src.resolve()), "prepare": {"size": size, "crop": [int(y0), int(x0), int(side)],
                                                            "resize": "area (rgb), nearest (masks)"}},
        images_per_shard=images_per_shard,
    )
    from rich.progress import Progress

    try:
        with out, Progress(disable=not progress, transient=False) as bar:
            task = bar.add_task(f"preparing {size}x{size}", total=raw.num_images)
            for scene_id in raw.scene_ids:
                out.add_scene(scene_id, raw.scene_metadata(scene_id) | {"prepared_from_scene": scene_id})
                indices = raw.scene_image_indices(scene_id)
                for lo in range(0, len(indices), batch):
                    rows = raw.images(indices[lo: lo + batch])
                    n = len(rows["rgb"])
                    crop = (slice(y0, y0 + side), slice(x0, x0 + side))
                    rgb = np.stack([cv2.resize(img[crop], (size, size), interpolation=cv2.INTER_AREA)
                                    for img in rows["rgb"]])
                    kwargs = {}
                    if raw.has_ground_truth:
                        kwargs["label_map"] = np.stack([
                            cv2.resize(lbl[crop], (size, size), interpolation=cv2.INTER_NEAREST)
                            for lbl in rows["label_map"]])
                        amodal = rows["amodal_masks"][:, :, crop[0], crop[1]].astype(np.uint8)
                        kwargs["amodal_masks"] = np.stack([
                            np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in masks])
                            for masks in amodal]).astype(bool)
                    out.append_images(
                        scene_id, rgb,
                        camera_pose_world=rows["camera_pose_world"],
                        intrinsics=crop_resize_intrinsics(rows["intrinsics"], x0, y0, scale),
                        distortion=rows["distortion"], timestamp=rows["timestamp"],
                        joint_positions=rows["joint_positions"], **kwargs)
                    bar.advance(task, n)
                out.set_scene_state(scene_id, raw.scene_state(scene_id))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(dst)
    return dst
