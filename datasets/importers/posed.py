"""Posed image sets (COLMAP models, nerfstudio transforms.json) into a scene store.

A reader (datasets/posed/colmap.py, datasets/posed/nerfstudio.py) turns its source into
:class:`PosedFrame` lists, one per scene; this module checks them as a whole before anything is
written (every image file present, one image size) and hands them to the shared resumable write
loop.  Scenes: one per COLMAP project / transforms.json folder, or, with a scene map (a JSON file
``{"scene id": ["image name", ...], ...}``), the named images of a single source split into
scenes; images the map does not name are left out.  Posed image sets carry no ground truth, so
the store has none; poses, intrinsics and distortion come over exactly (pixel centres and axes
converted, docs/store.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.importers.base import (ImportPlan, ImportSourceError, PendingScene, SceneData,
                                     import_metadata, read_json_file)
from datasets.posed.conventions import PosedFormatError
from datasets.posed.scenes import PosedFrame


def read_scene_map(path: Path) -> dict[str, list[str]]:
    scene_map = read_json_file(Path(path))
    if (not isinstance(scene_map, dict) or not scene_map
            or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in scene_map.values())):
        raise ImportSourceError(f"{path}: a scene map is a JSON object "
                                '{"scene id": ["image name", ...], ...}')
    return scene_map


def apply_scene_map(scenes: dict[str, list[PosedFrame]], scene_map: dict[str, list[str]],
                    src: Path) -> dict[str, list[PosedFrame]]:
    if len(scenes) != 1:
        raise ImportSourceError(f"{src} holds {len(scenes)} sources ({', '.join(scenes)}); a scene "
                                "map splits one COLMAP model or transforms.json, so point SRC at one")
    (frames,) = scenes.values()
    by_name = {f.name: f for f in frames}
    out = {}
    for scene_id, names in scene_map.items():
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ImportSourceError(f"scene map: scene {scene_id!r} names {len(unknown)} image(s) the "
                                    f"source does not have, first {unknown[0]!r}")
        if not names:
            raise ImportSourceError(f"scene map: scene {scene_id!r} lists no images")
        out[scene_id] = [by_name[n] for n in names]
    return out


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size  # (W, H), read from the header only
    except (UnidentifiedImageError, OSError) as exc:
        raise ImportSourceError(f"{path}: not a readable image ({exc})") from None


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def posed_import_plan(source: str, scenes: dict[str, list[PosedFrame]], src: Path,
                      store_attrs: dict | None = None) -> ImportPlan:
    """An ImportPlan for posed frames grouped by scene id, checked before anything is written."""
    frames = [f for scene in scenes.values() for f in scene]
    missing = [f.path for f in frames if not f.path.is_file()]
    if missing:
        raise ImportSourceError(f"{src}: {len(missing)} of {len(frames)} image files are missing, "
                                f"first {missing[0]}")
    sizes = {(f.camera.width, f.camera.height) for f in frames}
    if len(sizes) != 1:
        raise ImportSourceError(f"{src}: the cameras have {len(sizes)} image sizes "
                                f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); a store holds "
                                "one size, so import each size into its own store")
    ((width, height),) = sizes
    for frame in frames:
        actual = _image_size(frame.path)
        if actual != (width, height):
            raise ImportSourceError(f"{frame.path}: the image is {actual[0]}x{actual[1]} but its "
                                    f"camera says {width}x{height}")

    def pending(scene_id: str, scene_frames: list[PosedFrame]) -> PendingScene:
        def load() -> SceneData:
            return SceneData(
                metadata=import_metadata(source, src=str(src),
                                         image_names=[f.name for f in scene_frames]),
                rgb=np.stack([_load_rgb(f.path) for f in scene_frames]),
                camera_pose_world=np.stack([f.camera_pose_world for f in scene_frames]),
                intrinsics=np.stack([f.camera.K for f in scene_frames]),
                distortion=np.stack([f.camera.distortion_array for f in scene_frames]))
        return PendingScene(scene_id=scene_id, num_views=len(scene_frames), load=load)

    return ImportPlan(
        source=source, height=height, width=width, ground_truth=False, max_objects=0,
        scenes=iter([pending(s, f) for s, f in scenes.items()]), num_scenes=len(scenes),
        store_attrs={"import_conventions": {
            "camera_pose_world": "from the source's poses, converted to OpenCV axes camera-to-world",
            "intrinsics": "principal point moved by -0.5 px (source: pixel (0,0) centred at (0.5,0.5))",
            "timestamp": "0 = unknown capture time"}, **(store_attrs or {})})


def read_colmap_source(src: str | Path, scene_map: str | Path | None = None) -> ImportPlan:
    from datasets.posed.colmap import find_colmap_models, read_colmap_model
    from datasets.posed.conventions import require_pycolmap

    require_pycolmap()  # first: without the extra, that is the one thing to say
    src = Path(src)
    try:
        scenes = {scene_id: read_colmap_model(model, images)
                  for scene_id, model, images in find_colmap_models(src)}
    except PosedFormatError as exc:
        raise ImportSourceError(str(exc)) from None
    if scene_map is not None:
        scenes = apply_scene_map(scenes, read_scene_map(scene_map), src)
    return posed_import_plan("import/colmap", scenes, src)


def read_nerfstudio_source(src: str | Path, scene_map: str | Path | None = None) -> ImportPlan:
    from datasets.posed.nerfstudio import find_transforms, read_transforms

    src = Path(src)
    try:
        scenes = {scene_id: read_transforms(path) for scene_id, path in find_transforms(src)}
    except PosedFormatError as exc:
        raise ImportSourceError(str(exc)) from None
    if scene_map is not None:
        scenes = apply_scene_map(scenes, read_scene_map(scene_map), src)
    return posed_import_plan("import/nerfstudio", scenes, src)
