"""What is in a store (``ldsrig data info``) and is it sound (``ldsrig data check``)."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.store import SCHEMA_VERSION, SceneStore, StoreError, _array_specs, stale_lock_owner

# A visible-label pixel outside its object's amodal silhouette means masks and images disagree.
# Renderers and importers agree exactly; a little slack absorbs anti-aliased ground truth.
MASK_MISMATCH_TOLERANCE = 0.02
ROTATION_TOLERANCE = 1e-4


@dataclass
class Problem:
    severity: str  # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_summary(path: str | Path) -> dict:
    """Scenes, images, sizes, sources and ground truth of a store, as a JSON-able dict."""
    store = SceneStore.open(path)
    states = collections.Counter(state for _, state in store.all_scenes())
    sources = collections.Counter()
    objects_per_scene = []
    for scene_id in store.scene_ids:
        meta = store.scene_metadata(scene_id)
        sources[str(meta.get("source", store.attrs.get("source", "unknown")))] += 1
        if "objects" in meta:
            objects_per_scene.append(len(meta["objects"]))
    n = store.num_images
    small = store.images(slice(0, n), fields=["timestamp", "joint_positions", "scene_index"]) if n else None
    views = collections.Counter(small["scene_index"].tolist()).values() if n else []
    return {
        "path": str(Path(path).resolve()),
        "schema_version": int(store.attrs["schema"]["version"]),
        "images": n,
        "scenes": store.num_scenes,
        "scene_states": dict(states),
        "image_size": [store.height, store.width],
        "views_per_scene": [int(min(views)), int(max(views))] if n else [0, 0],
        "ground_truth": store.has_ground_truth,
        "objects_per_scene": [min(objects_per_scene), max(objects_per_scene)] if objects_per_scene else None,
        "sources": dict(sources),
        "robot_images": int(np.isfinite(small["joint_positions"][:, 0]).sum()) if n else 0,
        "time_range": [float(small["timestamp"].min()), float(small["timestamp"].max())] if n else None,
        "uncommitted_rows": store.uncommitted_rows(),
        "disk_bytes": _directory_bytes(Path(path)),
        "attrs": {k: v for k, v in store.attrs.items() if k not in ("conventions", "schema")},
    }


def _missing_chunks(store: SceneStore, name: str, committed: int, group: str = "images") -> list[tuple[int, int]]:
    """Row ranges of ``group/name`` whose chunk (or shard) file is missing on disk."""
    arr = store.array(name) if group == "images" else store._scene_arrays[name]
    unit = (arr.shards or arr.chunks)[0]
    root = Path(store.path) / group / name
    missing = []
    for k in range((committed + unit - 1) // unit):
        key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
        if not (root / key).is_file():
            missing.append((k * unit, min(committed, (k + 1) * unit) - 1))
    return missing


def _integrity(store: SceneStore) -> dict:
    value = store.attrs.get("integrity")
    return value if isinstance(value, dict) else {}


def check_store(path: str | Path, progress: bool = True, batch: int = 256) -> list[Problem]:
    """Every problem found; an empty list means the store is sound.

    Opens the store (a damaged schema, attributes or commit record is one problem), compares
    every array with the schema, checks that a chunk file exists for every committed row,
    decodes every committed row (a checksum mismatch or an unreadable chunk is reported with
    the image and the array), and checks the values: rigid, finite poses; plausible finite
    intrinsics; finite timestamps and joint angles; consistent scene/view indices; masks that
    agree with the label map.
    """
    problems: list[Problem] = []
    try:
        store = SceneStore.open(path)
    except StoreError as exc:
        return [Problem("error", str(exc))]

    def error(msg: str) -> None:
        problems.append(Problem("error", msg))

    version = store.attrs["schema"]["version"]
    if version != SCHEMA_VERSION:
        problems.append(Problem("warning", f"schema v{version}; this ldsrig writes v{SCHEMA_VERSION}"))
    specs = _array_specs(store.height, store.width, store.has_ground_truth, store.max_objects)
    for name, spec in specs.items():
        arr = store.array(name)
        if str(arr.dtype) != spec.dtype or tuple(arr.shape[1:]) != spec.row_shape:
            error(f"images/{name} is {arr.dtype} {arr.shape[1:]}, schema says {spec.dtype} {spec.row_shape}")
    if problems and any(p.severity == "error" for p in problems):
        return problems
    tail = store.uncommitted_rows()
    if tail:
        error(f"{tail} uncommitted row(s) past the commit marker (a writer died mid-append); "
              "committed data is intact; the next writer (or `ldsrig data repair`) drops them")
    owner = stale_lock_owner(path)
    if owner:
        problems.append(Problem("warning", f"stale writer lock left by {owner} (not running)"))

    integrity = _integrity(store)
    if integrity.get("checksums") != "crc32c":
        problems.append(Problem("warning", "this store predates per-chunk checksums: flipped bytes "
                                "inside a compressed chunk cannot be detected"))
    n = store.num_images
    # Missing chunk files: zarr would read them as fill values (a black image, an empty mask).
    # Stores written before empty chunks were kept may lack all-background mask chunks.
    may_lack_empty = not integrity.get("empty_chunks_written")
    for name in specs:
        if may_lack_empty and name in ("label_map", "amodal_masks"):
            continue
        for lo, hi in _missing_chunks(store, name, n):
            where = f"image {lo}" if lo == hi else f"images {lo}..{hi}"
            error(f"images/{name}: the chunk of {where} is missing (deleted or never written); "
                  "those rows would read as fill values")
    num_scenes = len(store.all_scenes())
    for name in ("scene_id", "state", "metadata"):
        for lo, hi in _missing_chunks(store, name, num_scenes, group="scenes"):
            error(f"scenes/{name}: the chunk of scene entries {lo}..{hi} is missing")

    H, W = store.height, store.width
    scene_objects = {}
    for index, (scene_id, state) in enumerate(store.all_scenes()):
        try:
            meta = store.scene_metadata_at(index)
        except StoreError as exc:
            error(str(exc))
            break
        scene_objects[index] = len(meta["objects"]) if isinstance(meta.get("objects"), list) else None

    seen_views: dict[int, set] = collections.defaultdict(set)
    unread_scenes: set[int] = set()
    bad = collections.Counter()
    first_examples: dict[str, int] = {}

    def note(kind: str, i: int) -> None:
        bad[kind] += 1
        first_examples.setdefault(kind, i)

    fields = ["rgb", "camera_pose_world", "intrinsics", "timestamp", "joint_positions",
              "scene_index", "view_index"]
    if store.has_ground_truth:
        fields += ["label_map", "amodal_masks"]
    try:
        scene_of_row = store.images(slice(0, n), fields=["scene_index"])["scene_index"]
    except StoreError:
        scene_of_row = None
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("checking images", total=n)
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            rows = {}
            for name in fields:
                try:
                    rows[name] = store.images(slice(lo, hi), fields=[name])[name]
                except StoreError:
                    rows[name] = None          # read row by row below, to name the image
            for j in range(hi - lo):
                i = lo + j
                row = {}
                for name in fields:
                    if rows[name] is not None:
                        row[name] = rows[name][j]
                        continue
                    try:
                        row[name] = store.images([i], fields=[name])[name][0]
                    except StoreError as exc:
                        reason = str(exc).split(": ", 2)[-1]
                        error(f"image {i}: images/{name} cannot be read ({reason})")
                        if scene_of_row is not None and 0 <= int(scene_of_row[i]) < num_scenes:
                            unread_scenes.add(int(scene_of_row[i]))
                _check_row(i, row, store, scene_objects, seen_views, note, H, W)
            bar.advance(task, hi - lo)

    for kind, what in [
        ("pose", "camera poses that are not finite rigid transforms"),
        ("intrinsics", "implausible or non-finite intrinsics"),
        ("timestamp", "non-finite timestamps"),
        ("joints", "infinite joint angles"),
        ("scene/view index", "bad scene/view indices"),
        ("masks", "masks that disagree (visible labels outside amodal masks or unknown objects)"),
    ]:
        if bad[kind]:
            error(f"{bad[kind]} image(s) with {what} (first: image {first_examples[kind]})")
    for index, (scene_id, state) in enumerate(store.all_scenes()):
        if state == "complete" and not seen_views.get(index) and index not in unread_scenes:
            problems.append(Problem("warning", f"scene {scene_id!r} is marked complete but has no images"))
    return problems


def _check_row(i: int, row: dict, store: SceneStore, scene_objects: dict, seen_views: dict,
               note, H: int, W: int) -> None:
    """The value checks of one image; fields that could not be read are skipped."""
    if "camera_pose_world" in row:
        T = row["camera_pose_world"]
        R = T[:3, :3]
        if (not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9)
                or not np.allclose(R @ R.T, np.eye(3), atol=ROTATION_TOLERANCE)
                or abs(np.linalg.det(R) - 1) > ROTATION_TOLERANCE):
            note("pose", i)
    if "intrinsics" in row:
        K = row["intrinsics"]
        if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0
                and -W <= K[0, 2] <= 2 * W and -H <= K[1, 2] <= 2 * H
                and np.allclose(K[2], [0, 0, 1]) and abs(K[1, 0]) < 1e-9
                and abs(K[0, 1]) < 0.01 * K[0, 0]):
            note("intrinsics", i)
    if "timestamp" in row and not np.isfinite(row["timestamp"]):
        note("timestamp", i)
    if "joint_positions" in row and np.isinf(row["joint_positions"]).any():
        note("joints", i)
    if "scene_index" not in row or "view_index" not in row:
        return
    s, v = int(row["scene_index"]), int(row["view_index"])
    if not 0 <= s < len(scene_objects) or v in seen_views[s]:
        note("scene/view index", i)
    seen_views[s].add(v)
    if not store.has_ground_truth or "label_map" not in row or "amodal_masks" not in row:
        return
    labels, amodal = row["label_map"], row["amodal_masks"]
    n_obj = scene_objects.get(s)
    if n_obj is not None and int(labels.max()) > n_obj:
        note("masks", i)
        return
    for obj in np.unique(labels):
        if obj == 0:
            continue
        visible = labels == obj
        outside = np.count_nonzero(visible & ~amodal[obj - 1])
        if outside > MASK_MISMATCH_TOLERANCE * np.count_nonzero(visible):
            note("masks", i)
            return


def format_summary(summary: dict) -> str:
    return json.dumps(summary, indent=2)
