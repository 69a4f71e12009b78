"""A scene's posed views read from a store, for the exporters and the pose audit.

Some stores hold images without real poses: single-view imports record an identity pose and say
so in their ``import_conventions`` (docs/importers.md).  Exporting those as a posed image set, or
auditing them, would produce nonsense quietly, so both refuse with one line instead.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.posed.conventions import PosedFormatError, StoreCamera, is_rigid


@dataclass
class PosedScene:
    """Every view of one scene, in view order."""

    scene_id: str
    metadata: dict
    view_index: np.ndarray          # (V,) int
    rgb: np.ndarray                 # (V,H,W,3) uint8
    camera_pose_world: np.ndarray   # (V,4,4) camera-to-world, OpenCV axes
    cameras: list[StoreCamera]      # one per view
    label_map: np.ndarray | None = None   # (V,H,W) uint8 where the store has ground truth
    image_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_views(self) -> int:
        return len(self.view_index)

    def object_centres(self) -> np.ndarray:
        """(O,3) world positions of the scene's objects where its metadata records them."""
        centres = [o["position_world"] for o in self.metadata.get("objects", [])
                   if isinstance(o, dict) and "position_world" in o]
        return np.asarray(centres, dtype=np.float64).reshape(-1, 3)


@dataclass(frozen=True)
class PosedFrame:
    """One posed image of a COLMAP / nerfstudio source, already in store conventions."""

    name: str                      # its name in the source (COLMAP image name, file_path)
    path: Path                     # the image file
    camera_pose_world: np.ndarray  # (4,4) camera-to-world, OpenCV axes
    camera: StoreCamera


def unknown_pose_reason(store) -> str | None:
    """Why the store as a whole has no real camera poses, from what its importer recorded."""
    said = str((store.attrs.get("import_conventions") or {}).get("camera_pose_world", ""))
    if "unknown" in said.lower():
        return f"its importer recorded camera_pose_world as {said!r}"
    return None


def select_scenes(store, scene_ids: list[str] | None) -> list[str]:
    """The scenes to work on: those named (each must exist), else every complete scene."""
    if scene_ids:
        missing = [s for s in scene_ids if not store.has_scene(s)]
        if missing:
            raise PosedFormatError(f"{store.path} has no scene {', '.join(map(repr, missing))}")
        return list(scene_ids)
    chosen = [s for s in store.scene_ids if store.scene_state(s) == "complete"]
    if not chosen:
        raise PosedFormatError(f"{store.path} has no complete scenes")
    return chosen


def read_posed_scene(store, scene_id: str, *, with_rgb: bool = True) -> PosedScene:
    """The scene's views, checked to carry real poses (one clear line otherwise)."""
    reason = unknown_pose_reason(store)
    if reason:
        raise PosedFormatError(f"{store.path} has no camera poses ({reason}); a posed image set "
                               "needs posed views")
    indices = store.scene_image_indices(scene_id)
    if len(indices) == 0:
        raise PosedFormatError(f"{store.path}: scene {scene_id!r} has no images")
    fields = ["camera_pose_world", "intrinsics", "distortion", "view_index"]
    if with_rgb:
        fields.append("rgb")
        if store.has_ground_truth:
            fields.append("label_map")
    rows = store.images(indices, fields=fields)
    poses = rows["camera_pose_world"]
    for view, pose in zip(rows["view_index"], poses):
        if not is_rigid(pose):
            raise PosedFormatError(f"{store.path}: scene {scene_id!r} view {int(view)} has no valid "
                                   "camera pose (not a rigid transform); run `ldsrig data check`")
    if len(poses) > 1 and np.all(np.abs(poses - poses[0]).max(axis=(1, 2)) == 0.0):
        raise PosedFormatError(f"{store.path}: every view of scene {scene_id!r} has the same camera "
                               "pose; the store has no real poses for it")
    cameras = [StoreCamera.from_store(K, d, store.width, store.height,
                                      f"scene {scene_id!r} view {int(v)}")
               for K, d, v in zip(rows["intrinsics"], rows["distortion"], rows["view_index"])]
    return PosedScene(scene_id=scene_id, metadata=store.scene_metadata(scene_id),
                      view_index=np.asarray(rows["view_index"], dtype=np.int64),
                      rgb=rows.get("rgb"), camera_pose_world=poses, cameras=cameras,
                      label_map=rows.get("label_map"), image_indices=np.asarray(indices))


def frame_name(view_index: int) -> str:
    """File name of a view's image (and mask) in an exported scene folder."""
    return f"frame_{int(view_index):05d}.png"


def save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    # compress_level 1: exports are written once and read once; speed matters more than bytes
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1)


class SceneFolder:
    """An exported scene's folder, written under a temporary name and renamed into place when
    complete, so OUT never holds a half-written scene (an interrupted export leaves
    ``.SCENE.partial``, removed by the next run)."""

    def __init__(self, out: Path, scene_id: str):
        self.final = Path(out) / scene_id
        self.partial = Path(out) / f".{scene_id}.partial"

    def __enter__(self) -> Path:
        if self.final.exists():
            raise PosedFormatError(f"{self.final} already exists; export into a new OUT or remove it")
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        return self.partial

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.partial.rename(self.final)
        else:
            shutil.rmtree(self.partial, ignore_errors=True)
