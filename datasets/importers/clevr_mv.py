"""CLE-MV / Dolphin importers: the packed format (JSON index + one npz archive per scene) and the
raw generator output (PNG + float32 .npy masks + scene JSON per scene).

Mask convention of the source: channel 0 is the visible label map where label ``i`` is the i-th
object *in depth order for that view* (nearest first) and ``depth_orders[v][i-1]`` is its index
in the object list; channels ``1..N`` are amodal silhouettes in object-list order.  The store
wants label ``i`` = ``objects[i-1]`` in every view, so channel 0 is remapped through
``depth_orders``; the original depth orders and camera locations are kept in the scene metadata
so the source labels can be rebuilt exactly (:func:`store_labels_to_depth_ordered`).

Cameras: the generator places the cameras on a circle around the origin, looking at the origin
with world up +z (checked on the real sample: the look-at pose reproduces the generator's
per-object camera depths to 1e-5 and its pixel coordinates to rounding).  Intrinsics come from
the CLEVR Blender camera (35 mm lens, 32 mm sensor width): fx = fy = 35/32 * W, i.e. 70 px at
64 px, with the principal point at the image centre in OpenCV pixel coordinates, (W-1)/2 = 31.5
(Blender measures from the pixel corner; its centre, 32, is 31.5 in OpenCV's pixel-centre
coordinates).  Units are Blender units, nominally metres.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from datasets.importers.base import (
    ImportPlan,
    ImportSourceError,
    PendingScene,
    SceneData,
    import_metadata,
    read_json_file,
)
from common.geometry import look_at, pinhole_intrinsics

CLEVR_FOCAL_LENGTH_MM = 35.0
CLEVR_SENSOR_WIDTH_MM = 32.0

SOURCE_PACKED = "import/clevr-mv"
SOURCE_RAW = "import/clevr-mv-raw"

STORE_ATTRS = {
    "import_conventions": {
        "label_map": "remapped from depth order to object-list order through depth_orders",
        "camera_pose_world": "look-at from camera.location to the origin, world up +z (derived)",
        "intrinsics": "CLEVR Blender camera, 35 mm lens / 32 mm sensor, centre (W-1)/2 (derived)",
        "timestamp": "0 = unknown capture time",
        "units": "Blender units (nominally metres)",
    }
}


def clevr_intrinsics(width: int, height: int) -> np.ndarray:
    """K of the CLEVR Blender camera (sensor fit horizontal) rendered at width x height."""
    focal = CLEVR_FOCAL_LENGTH_MM / CLEVR_SENSOR_WIDTH_MM * width
    return pinhole_intrinsics(focal, focal, width, height)


def depth_ordered_labels_to_store(depth_labels: np.ndarray, depth_order: list[int]) -> np.ndarray:
    """One view's label map from depth-order labels (i = depth_order[i-1]) to store labels
    (i = objects[i-1]).  ``depth_labels`` holds integers 0..N."""
    lookup = np.zeros(len(depth_order) + 1, dtype=np.uint8)
    lookup[1:] = np.asarray(depth_order, dtype=np.int64) + 1
    return lookup[depth_labels]


def store_labels_to_depth_ordered(label_map: np.ndarray, depth_order: list[int]) -> np.ndarray:
    """Inverse of :func:`depth_ordered_labels_to_store` for one view (rebuilds the source's
    channel 0 from a store label map and the depth order kept in the scene metadata)."""
    lookup = np.zeros(len(depth_order) + 1, dtype=np.uint8)
    for depth_rank, object_index in enumerate(depth_order):
        lookup[object_index + 1] = depth_rank + 1
    return lookup[label_map]


def _as_uint8_rgb(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ImportSourceError(f"{where}: images are {tuple(images.shape)}, expected (views,H,W,>=3)")
    images = images[..., :3]
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if np.issubdtype(images.dtype, np.floating) and images.size and 0.0 <= images.min() and images.max() <= 1.0:
        return np.round(images * 255.0).astype(np.uint8)
    raise ImportSourceError(f"{where}: images are {images.dtype}, expected uint8 (or float in [0,1])")


def convert_clevr_scene(
    where: str,
    source: str,
    scene_id: str,
    scene_json: dict,
    images: np.ndarray,
    masks: np.ndarray,
    extra_metadata: dict | None = None,
) -> SceneData:
    """Turn one CLE-MV scene (its JSON entry, images (V,H,W,>=3), masks (V,H,W,1+N) in the
    generator's convention) into store arrays."""
    rgb = _as_uint8_rgb(images, where)
    objects_src, locations, depth_orders = _scene_fields(scene_json, where)
    views, height, width = rgb.shape[:3]
    num_objects = len(objects_src)
    if masks.ndim != 4 or masks.shape[:3] != (views, height, width):
        raise ImportSourceError(
            f"{where}: masks are {tuple(masks.shape)}, images are {tuple(rgb.shape)}: "
            "masks do not match images"
        )
    if masks.shape[3] != 1 + num_objects:
        raise ImportSourceError(
            f"{where}: masks have {masks.shape[3]} channels, expected 1 + {num_objects} objects"
        )
    if len(locations) != views or len(depth_orders) != views:
        raise ImportSourceError(
            f"{where}: {views} images but {len(locations)} camera locations and "
            f"{len(depth_orders)} depth orders"
        )
    depth_labels = masks[..., 0]
    if not np.all(np.isfinite(depth_labels)) or np.any(depth_labels != np.round(depth_labels)):
        raise ImportSourceError(f"{where}: mask channel 0 is not an integer label map")
    depth_labels = depth_labels.astype(np.int64)
    if depth_labels.size and (depth_labels.min() < 0 or depth_labels.max() > num_objects):
        raise ImportSourceError(
            f"{where}: mask channel 0 holds labels {depth_labels.min()}..{depth_labels.max()}, "
            f"expected 0..{num_objects}"
        )
    label_map = np.empty((views, height, width), dtype=np.uint8)
    for view, depth_order in enumerate(depth_orders):
        if sorted(depth_order) != list(range(num_objects)):
            raise ImportSourceError(
                f"{where}: depth_orders[{view}] = {depth_order} is not an order of the "
                f"{num_objects} objects"
            )
        label_map[view] = depth_ordered_labels_to_store(depth_labels[view], depth_order)
    amodal = masks[..., 1:]
    if not np.all(np.isfinite(amodal)):
        raise ImportSourceError(f"{where}: amodal masks hold NaN or infinity")
    amodal_masks = np.ascontiguousarray(np.moveaxis(amodal > 0.5, -1, 1))  # (V,N,H,W)

    poses = np.stack([look_at(location, (0.0, 0.0, 0.0)) for location in locations])
    intrinsics = np.repeat(clevr_intrinsics(width, height)[None], views, axis=0)
    objects = []
    for index, obj in enumerate(objects_src):
        obj = dict(obj)
        if "3d_coords" in obj:
            obj["position_world"] = [float(c) for c in obj["3d_coords"]]
        obj["source_index"] = index
        objects.append(obj)
    metadata = import_metadata(
        source,
        source_scene=scene_id,
        objects=objects,
        camera_locations=[[float(c) for c in loc] for loc in locations],
        depth_orders=[[int(i) for i in order] for order in depth_orders],
        camera_model="look-at origin, up +z; CLEVR Blender camera 35mm/32mm (derived)",
        **{k: v for k, v in scene_json.items() if k in ("split", "image_index", "image_filename")},
        **(extra_metadata or {}),
    )
    return SceneData(
        metadata=metadata,
        rgb=rgb,
        camera_pose_world=poses,
        intrinsics=intrinsics,
        label_map=label_map,
        amodal_masks=amodal_masks,
    )


def _scene_fields(scene_json: dict, where: str):
    try:
        objects = scene_json["objects"]
        locations = scene_json["camera"]["location"]
        depth_orders = scene_json["depth_orders"]
    except (KeyError, TypeError) as exc:
        raise ImportSourceError(f"{where}: scene entry lacks {exc} (need objects, camera.location, depth_orders)") from None
    try:
        locations = np.asarray(locations, dtype=np.float64)
    except (TypeError, ValueError):
        raise ImportSourceError(f"{where}: camera.location is not a list of [x,y,z]") from None
    if locations.ndim != 2 or locations.shape[1] != 3:
        raise ImportSourceError(f"{where}: camera.location is {locations.shape}, expected (views,3)")
    if not isinstance(objects, list) or not isinstance(depth_orders, list):
        raise ImportSourceError(f"{where}: objects and depth_orders must be lists")
    return objects, locations, depth_orders


# --- packed: JSON index + npz per scene ------------------------------------------------------


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ImportSourceError(f"{path}: scene archive not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ImportSourceError(f"{path}: a plain array, not an npz archive with images and masks")
            missing = {"images", "masks"} - set(archive.files)
            if missing:
                raise ImportSourceError(f"{path}: archive lacks {sorted(missing)}")
            return archive["images"], archive["masks"]
    except ImportSourceError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ImportSourceError(f"{path}: corrupt scene archive ({exc})") from None


def _packed_data_root(index_path: Path, first_data_path: str, data_root: Path | None) -> Path:
    """``data_path`` is relative to a data root that MulMON passes separately; without one, try
    the index's folder and its parents."""
    if data_root is not None:
        if not data_root.is_dir():
            raise ImportSourceError(f"{data_root}: data root is not a folder")
        return data_root
    for candidate in [index_path.parent, *list(index_path.parent.parents)[:3]]:
        if (candidate / first_data_path).is_file():
            return candidate
    raise ImportSourceError(
        f"{index_path}: cannot find the first scene's data_path {first_data_path!r} next to the "
        "index or in the folders above it; pass --data-root"
    )


def read_packed(src: str | Path, data_root: str | Path | None = None, source: str = SOURCE_PACKED) -> ImportPlan:
    """Plan the import of a CLE-MV / Dolphin JSON index (``clevr_mv_train.json`` ...)."""
    index_path = Path(src)
    if index_path.is_dir():
        raise ImportSourceError(f"{index_path}: give the JSON index file (e.g. clevr_mv_train.json), not a folder")
    index = read_json_file(index_path)
    if not isinstance(index, dict) or not isinstance(index.get("scenes"), list):
        raise ImportSourceError(
            f"{index_path}: not a CLE-MV index (expected a JSON object with a 'scenes' list; "
            "for the raw generator output use the format clevr-mv-raw)"
        )
    scenes = index["scenes"]
    if not scenes:
        raise ImportSourceError(f"{index_path}: the index lists no scenes")
    for number, entry in enumerate(scenes):
        if not isinstance(entry, dict) or "data_path" not in entry:
            raise ImportSourceError(f"{index_path}: scene {number} has no data_path")
    root = _packed_data_root(index_path, scenes[0]["data_path"], Path(data_root) if data_root else None)
    first_images, _ = _load_npz(root / scenes[0]["data_path"])
    if first_images.ndim != 4:
        raise ImportSourceError(f"{root / scenes[0]['data_path']}: images are {first_images.shape}, expected (views,H,W,C)")
    height, width = first_images.shape[1:3]
    max_objects = max(len(entry.get("objects", [])) for entry in scenes)

    def pending_scenes():
        seen = set()
        for number, entry in enumerate(scenes):
            scene_id = Path(entry["data_path"]).stem or f"scene{number:06d}"
            if scene_id in seen:
                scene_id = f"{scene_id}-{number}"
            seen.add(scene_id)
            num_views = len(entry.get("camera", {}).get("location", []))

            def load(entry=entry, scene_id=scene_id):
                path = root / entry["data_path"]
                images, masks = _load_npz(path)
                return convert_clevr_scene(
                    str(path), source, scene_id, entry, images, masks,
                    extra_metadata={"data_path": entry["data_path"]},
                )

            yield PendingScene(scene_id, num_views, load)

    attrs = dict(STORE_ATTRS)
    attrs["import_index"] = {
        "file": index_path.name,
        "info": index.get("info"),
        "shape_gallery": index.get("shape_gallery"),
        "num_views": index.get("num_views"),
    }
    return ImportPlan(
        source=source,
        height=int(height),
        width=int(width),
        ground_truth=True,
        max_objects=max_objects,
        scenes=pending_scenes(),
        num_scenes=len(scenes),
        store_attrs=attrs,
    )


# --- raw generator output ---------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ImportSourceError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            # The generator writes RGBA with alpha 255; drop alpha.
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImportSourceError(f"{path}: not a readable image ({exc})") from None


def _read_mask_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImportSourceError(f"{path}: mask file not found")
    try:
        masks = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ImportSourceError(f"{path}: corrupt mask file ({exc})") from None
    if not isinstance(masks, np.ndarray) or masks.ndim != 3:
        raise ImportSourceError(f"{path}: expected an (H,W,1+N) mask array")
    return masks


def read_raw(src: str | Path, source: str = SOURCE_RAW) -> ImportPlan:
    """Plan the import of the raw generator output folder (images/, masks/, scenes/)."""
    root = Path(src)
    if not root.is_dir():
        raise ImportSourceError(f"{root}: not a folder (clevr-mv-raw expects the generator's output folder)")
    scene_dir = root / "scenes"
    scene_files = sorted(scene_dir.glob("*.json")) if scene_dir.is_dir() else []
    if not scene_files:
        raise ImportSourceError(f"{root}: no scenes/*.json found (is this the generator's output folder?)")
    scene_jsons = [(path, read_json_file(path)) for path in scene_files]
    first_path, first_json = scene_jsons[0]
    first_image = _read_png(root / "images" / f"{first_path.stem}_00.png")
    height, width = first_image.shape[:2]
    max_objects = max(len(scene.get("objects", [])) if isinstance(scene, dict) else 0 for _, scene in scene_jsons)

    def pending_scenes():
        for path, scene_json in scene_jsons:
            name = path.stem
            if not isinstance(scene_json, dict):
                raise ImportSourceError(f"{path}: not a scene description")
            num_views = len(scene_json.get("camera", {}).get("location", []))

            def load(path=path, scene_json=scene_json, name=name, num_views=num_views):
                if num_views == 0:
                    raise ImportSourceError(f"{path}: camera.location lists no views")
                images = np.stack([_read_png(root / "images" / f"{name}_{v:02d}.png") for v in range(num_views)])
                mask_list = [_read_mask_npy(root / "masks" / f"{name}_{v:02d}.npy") for v in range(num_views)]
                if len({m.shape for m in mask_list}) != 1:
                    raise ImportSourceError(f"{root / 'masks'}: {name}'s mask files differ in shape")
                return convert_clevr_scene(str(path), source, name, scene_json, images, np.stack(mask_list))

            yield PendingScene(name, num_views, load)

    return ImportPlan(
        source=source,
        height=int(height),
        width=int(width),
        ground_truth=True,
        max_objects=max_objects,
        scenes=pending_scenes(),
        num_scenes=len(scene_jsons),
        store_attrs=dict(STORE_ATTRS),
    )
