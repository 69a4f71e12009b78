"""nerfstudio's transforms.json: one folder per scene.

    SCENE/transforms.json
    SCENE/images/frame_00000.png          RGB, lossless
    SCENE/masks/frame_00000.png           ground truth only: 255 where an object is visible
    SCENE/labels/frame_00000.png          ground truth only: the store's label map (0 background)

transforms.json holds ``camera_model`` "OPENCV" and the camera (``w h fl_x fl_y cx cy k1 k2 k3 k4
p1 p2``) at the top level when every view shares it, else in each frame; each frame has
``file_path``, ``transform_matrix`` (camera-to-world, OpenGL camera axes) and, with ground truth,
``mask_path``.  nerfstudio reads a mask as "train on the pixels that are non-zero", so the
exported mask is the objects' union: a model trained with it reconstructs the objects, not the
table.  ``ldsrig_label_path`` (ignored by nerfstudio) points at the full label map.  Pixel
centres and axes: datasets/posed/conventions.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.io import atomic_write_text
from datasets.posed.conventions import (PosedFormatError, StoreCamera, opencv_pose_to_opengl,
                                        opengl_pose_to_opencv)
from datasets.posed.export import ExportConfig, ExportReport, export_scenes
from datasets.posed.scenes import PosedFrame, PosedScene, frame_name, save_png

TRANSFORMS = "transforms.json"


def write_nerfstudio_scene(scene: PosedScene, folder: Path, config: ExportConfig) -> int:
    (folder / "images").mkdir()
    with_masks = config.masks and scene.label_map is not None
    if with_masks:
        (folder / "masks").mkdir()
        (folder / "labels").mkdir()
    shared = all(c == scene.cameras[0] for c in scene.cameras)
    frames = []
    for k, view in enumerate(scene.view_index):
        name = frame_name(view)
        save_png(folder / "images" / name, scene.rgb[k])
        frame = {"file_path": f"images/{name}",
                 "transform_matrix": opencv_pose_to_opengl(scene.camera_pose_world[k]).tolist()}
        if not shared:
            frame.update(scene.cameras[k].nerfstudio_fields())
        if with_masks:
            save_png(folder / "masks" / name, np.where(scene.label_map[k] > 0, 255, 0).astype(np.uint8))
            save_png(folder / "labels" / name, scene.label_map[k])
            frame["mask_path"] = f"masks/{name}"
            frame["ldsrig_label_path"] = f"labels/{name}"
        frames.append(frame)
    meta = {"camera_model": "OPENCV"}
    if shared:
        meta.update(scene.cameras[0].nerfstudio_fields())
    meta["frames"] = frames
    meta["ldsrig"] = {
        "scene_id": scene.scene_id,
        "conventions": "transform_matrix: camera-to-world, OpenGL camera axes (x right, y up, "
                       "z back), metres, the store's world frame; cx, cy: pixel (0, 0)'s centre "
                       "at (0.5, 0.5); mask_path: 255 = object pixels",
    }
    atomic_write_text(folder / TRANSFORMS, json.dumps(meta, indent=2))
    return 0


def export_nerfstudio(store: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> ExportReport:
    return export_scenes(store, out, config, "nerfstudio", write_nerfstudio_scene)


# ------------------------------------------------------------------------------- reading
def find_transforms(src: Path) -> list[tuple[str, Path]]:
    """(scene id, transforms.json) for SRC: the file itself, a folder holding one, or a folder
    of scene folders each holding one."""
    src = Path(src)
    if src.is_file():
        return [(src.parent.resolve().name, src)]
    if (src / TRANSFORMS).is_file():
        return [(src.resolve().name, src / TRANSFORMS)]
    if src.is_dir():
        found = [(d.name, d / TRANSFORMS) for d in sorted(src.iterdir())
                 if d.is_dir() and not d.name.startswith(".") and (d / TRANSFORMS).is_file()]
        if found:
            return found
    raise PosedFormatError(f"{src}: no {TRANSFORMS} (looked at SRC, SRC/{TRANSFORMS} and "
                           f"SRC/*/{TRANSFORMS})")


def read_transforms(path: Path):
    """The frames of one transforms.json as importer PosedFrames, in file order."""
    from datasets.importers.base import read_json_file
    meta = read_json_file(path)
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise PosedFormatError(f"{path}: no frames")
    top = {k: v for k, v in meta.items() if k != "frames"}
    out = []
    for k, frame in enumerate(frames):
        where = f"{path} frame {k}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise PosedFormatError(f"{where}: a frame needs file_path and transform_matrix")
        try:
            matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            matrix = np.zeros(0)
        if matrix.shape == (3, 4):
            matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise PosedFormatError(f"{where}: transform_matrix is not a finite 4x4 (or 3x4) matrix")
        camera = StoreCamera.from_nerfstudio({**top, **frame}, where)
        name = str(frame["file_path"])
        out.append(PosedFrame(name=name, path=path.parent / name,
                              camera_pose_world=opengl_pose_to_opencv(matrix), camera=camera))
    return out
