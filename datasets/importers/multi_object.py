"""DeepMind multi_object_datasets importer (GZIP TFRecords of ``tf.train.Example``), read
without TensorFlow (see :mod:`datasets.importers.tfrecord`).

Each record is one single-view scene: ``image`` (H,W,C) uint8 and ``mask`` (entities,H,W,1) with
values 0/255 (multi_dsprites stores (H,W,entities,1)), both as BytesLists of single bytes, plus
per-dataset per-entity factors.  The dataset name fixes the shapes (``--dataset``).

Conversion to the store:
- entity 0 is the background (label 0); every other entity that is visible in the image, or
  flagged present by a ``visibility`` factor, becomes an object, in entity order; its factors are
  kept in the object's metadata together with ``entity`` (its index in the source).  For
  objects_room the first four entities are the room (sky, floor, walls), so entities 1-3 become
  objects with ``role: "room"``.
- the label map is the entity whose mask is set at each pixel.  The source has no amodal masks:
  ``amodal_masks`` holds the VISIBLE mask of each object (scene metadata
  ``amodal_masks_are_visible: true``).
- no camera is known: the pose is the identity and K is nominal (fx = fy = W, centre
  ((W-1)/2, (H-1)/2)); clevr_with_masks gets the CLEVR Blender camera's focal length
  (35/32 * W) but still an unknown pose.  Timestamps are 0 (unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.geometry import pinhole_intrinsics
from datasets.importers.base import (
    ImportPlan,
    ImportSourceError,
    PendingScene,
    SceneData,
    import_metadata,
)
from datasets.importers.tfrecord import ExampleDecodeError, iter_records, parse_example


@dataclass(frozen=True)
class MultiObjectDataset:
    """Shapes of one variant, as in DeepMind's reader for it."""

    height: int
    width: int
    channels: int
    max_entities: int
    mask_entities_last: bool = False  # multi_dsprites: mask is (H,W,E,1)
    room_entities: int = 1  # entities that are background parts; entity 0 is label 0
    focal_scale: float = 1.0  # nominal fx = focal_scale * W


_DSPRITES_FACTORS = ("x", "y", "shape", "visibility", "orientation", "scale")

DATASETS: dict[str, MultiObjectDataset] = {
    "multi_dsprites_binarized": MultiObjectDataset(64, 64, 1, 4, mask_entities_last=True),
    "multi_dsprites_colored_on_grayscale": MultiObjectDataset(64, 64, 3, 6, mask_entities_last=True),
    "multi_dsprites_colored_on_colored": MultiObjectDataset(64, 64, 3, 5, mask_entities_last=True),
    "objects_room": MultiObjectDataset(64, 64, 3, 7, room_entities=4),
    "objects_room_six_objects": MultiObjectDataset(64, 64, 3, 10, room_entities=4),
    "objects_room_empty_room": MultiObjectDataset(64, 64, 3, 4, room_entities=4),
    "objects_room_identical_color": MultiObjectDataset(64, 64, 3, 10, room_entities=4),
    "clevr_with_masks": MultiObjectDataset(240, 320, 3, 11, focal_scale=35.0 / 32.0),
    "tetrominoes": MultiObjectDataset(35, 35, 3, 4),
}

STORE_ATTRS = {
    "import_conventions": {
        "label_map": "entity 0 = background; other present entities = objects in entity order",
        "amodal_masks": "VISIBLE masks (the source has no amodal masks)",
        "camera_pose_world": "identity (single view, pose unknown)",
        "intrinsics": "nominal fx = fy = W (clevr_with_masks: 35/32 W), centre ((W-1)/2, (H-1)/2)",
        "timestamp": "0 = unknown capture time",
    }
}


def _byte_feature(features: dict, name: str, size: int, where: str) -> np.ndarray:
    if name not in features:
        raise ImportSourceError(f"{where}: the record has no {name!r} feature (found {sorted(features)})")
    value = features[name]
    if isinstance(value, list):
        # Also accept one raw string holding all the bytes.
        value = np.frombuffer(b"".join(value), dtype=np.uint8)
    value = np.asarray(value)
    if value.dtype != np.uint8 or value.size != size:
        raise ImportSourceError(
            f"{where}: {name!r} holds {value.size} values, expected {size} for this dataset "
            "(wrong --dataset?)"
        )
    return value


def convert_record(features: dict, spec: MultiObjectDataset, dataset: str, scene_id: str, where: str) -> SceneData:
    """One decoded Example -> a one-view store scene."""
    height, width, entities = spec.height, spec.width, spec.max_entities
    image = _byte_feature(features, "image", height * width * spec.channels, where)
    image = image.reshape(height, width, spec.channels)
    if spec.channels == 1:
        image = np.repeat(image, 3, axis=2)
    mask = _byte_feature(features, "mask", entities * height * width, where)
    if spec.mask_entities_last:
        mask = np.moveaxis(mask.reshape(height, width, entities), 2, 0)
    else:
        mask = mask.reshape(entities, height, width)
    entity_masks = mask > 127  # 0/255 in the source

    factors = {}
    for name, value in features.items():
        if name in ("image", "mask"):
            continue
        array = np.asarray(value) if not isinstance(value, list) else None
        if array is None or array.size == 0 or array.size % entities:
            continue
        factors[name] = array.reshape(entities, -1)
    visibility = factors.get("visibility")
    visible_pixels = entity_masks.reshape(entities, -1).any(axis=1)

    label_of_entity = np.zeros(entities, dtype=np.uint8)
    objects = []
    for entity in range(1, entities):
        flagged = visibility is not None and float(visibility[entity, 0]) > 0.5
        if not (visible_pixels[entity] or flagged):
            continue
        obj = {"entity": entity, "role": "room" if entity < spec.room_entities else "object"}
        for name, values in factors.items():
            row = values[entity]
            if np.issubdtype(row.dtype, np.floating):
                row_list = [float(v) for v in row]
            else:
                row_list = [int(v) for v in row]
            obj[name] = row_list[0] if len(row_list) == 1 else row_list
        objects.append(obj)
        label_of_entity[entity] = len(objects)
    # The masks partition the image; where none is set (should not happen) the pixel is background.
    claimed = entity_masks.any(axis=0)
    label_map = np.where(claimed, label_of_entity[np.argmax(entity_masks, axis=0)], 0).astype(np.uint8)
    present = [obj["entity"] for obj in objects]
    amodal = entity_masks[present] if present else np.zeros((0, height, width), dtype=bool)

    intrinsics = pinhole_intrinsics(spec.focal_scale * width, spec.focal_scale * width, width, height)
    metadata = import_metadata(
        f"import/multi-object/{dataset}",
        source_scene=scene_id,
        dataset=dataset,
        objects=objects,
        amodal_masks_are_visible=True,
        camera_model="unknown: identity pose, nominal K",
    )
    return SceneData(
        metadata=metadata,
        rgb=np.ascontiguousarray(image)[None],
        camera_pose_world=np.eye(4)[None],
        intrinsics=intrinsics[None],
        label_map=label_map[None],
        amodal_masks=np.ascontiguousarray(amodal)[None],
    )


def read_multi_object(src: str | Path, dataset: str | None) -> ImportPlan:
    if dataset is None:
        raise ImportSourceError(
            "the multi-object format needs --dataset (one of " + ", ".join(DATASETS) + ")"
        )
    if dataset not in DATASETS:
        raise ImportSourceError(f"unknown --dataset {dataset!r}; choose one of " + ", ".join(DATASETS))
    spec = DATASETS[dataset]
    path = Path(src)
    if not path.is_file():
        raise ImportSourceError(f"{path}: file not found")
    source = f"import/multi-object/{dataset}"

    def pending_scenes():
        for number, record in enumerate(iter_records(path)):
            scene_id = f"{dataset}-{number:07d}"

            def load(record=record, number=number, scene_id=scene_id):
                where = f"{path}: record {number}"
                try:
                    features = parse_example(record)
                except (ExampleDecodeError, UnicodeDecodeError) as exc:
                    raise ImportSourceError(f"{where}: not a tf.train.Example ({exc})") from None
                return convert_record(features, spec, dataset, scene_id, where)

            yield PendingScene(scene_id, 1, load)

    return ImportPlan(
        source=source,
        height=spec.height,
        width=spec.width,
        ground_truth=True,
        max_objects=spec.max_entities - 1,
        scenes=pending_scenes(),
        num_scenes=None,
        store_attrs={**STORE_ATTRS, "import_file": path.name, "dataset": dataset},
    )
