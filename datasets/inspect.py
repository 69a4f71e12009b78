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


def check_store(path: str | Path, progress: bool = True, batch: int = 256) -> list[Problem]:
    """Every problem found; an empty list means the store is sound."""
    problems: list[Problem] = []
    try:
        store = SceneStore.open(path)
    except StoreError as exc:
        return [Problem("error", str(exc))]

    def error(msg: str) -> None:
        problems.append(Problem("error", msg))

    version = int(store.attrs["schema"]["version"])
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

    n = store.num_images
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
    bad_pose = bad_k = bad_ts = bad_mask = bad_scene = 0
    first_examples: dict[str, int] = {}

    def note(kind: str, i: int) -> None:
        first_examples.setdefault(kind, i)

    fields = ["rgb", "camera_pose_world", "intrinsics", "timestamp", "scene_index", "view_index"]
    if store.has_ground_truth:
        fields += ["label_map", "amodal_masks"]
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("checking images", total=n)
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            try:
                rows = store.images(slice(lo, hi), fields=fields)
            except StoreError as exc:
                error(str(exc))
                bar.advance(task, hi - lo)
                continue
            for j in range(hi - lo):
                i = lo + j
                T = rows["camera_pose_world"][j]
                R = T[:3, :3]
                if (not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9)
                        or not np.allclose(R @ R.T, np.eye(3), atol=ROTATION_TOLERANCE)
                        or abs(np.linalg.det(R) - 1) > ROTATION_TOLERANCE):
                    bad_pose += 1
                    note("pose", i)
                K = rows["intrinsics"][j]
                if not (K[0, 0] > 0 and K[1, 1] > 0 and -W <= K[0, 2] <= 2 * W and -H <= K[1, 2] <= 2 * H
                        and np.allclose(K[2], [0, 0, 1]) and abs(K[1, 0]) < 1e-9
                        and abs(K[0, 1]) < 0.01 * K[0, 0]):
                    bad_k += 1
                    note("intrinsics", i)
                if not np.isfinite(rows["timestamp"][j]):
                    bad_ts += 1
                    note("timestamp", i)
                s = int(rows["scene_index"][j])
                v = int(rows["view_index"][j])
                if not 0 <= s < len(scene_objects) or v in seen_views[s]:
                    bad_scene += 1
                    note("scene/view index", i)
                seen_views[s].add(v)
                if store.has_ground_truth:
                    labels = rows["label_map"][j]
                    amodal = rows["amodal_masks"][j]
                    n_obj = scene_objects.get(s)
                    top = int(labels.max())
                    if n_obj is not None and top > n_obj:
                        bad_mask += 1
                        note("mask labels", i)
                        continue
                    for obj in np.unique(labels):
                        if obj == 0:
                            continue
                        visible = labels == obj
                        outside = np.count_nonzero(visible & ~amodal[obj - 1])
                        if outside > MASK_MISMATCH_TOLERANCE * np.count_nonzero(visible):
                            bad_mask += 1
                            note("masks", i)
                            break
            bar.advance(task, hi - lo)

    for count, what, kind in [
        (bad_pose, "camera poses that are not rigid transforms", "pose"),
        (bad_k, "implausible intrinsics", "intrinsics"),
        (bad_ts, "non-finite timestamps", "timestamp"),
        (bad_scene, "bad scene/view indices", "scene/view index"),
        (bad_mask, "masks that disagree (visible labels outside amodal masks or unknown objects)", "masks"),
    ]:
        if count:
            example = first_examples.get(kind, first_examples.get("mask labels"))
            error(f"{count} image(s) with {what} (first: image {example})")
    for index, (scene_id, state) in enumerate(store.all_scenes()):
        if state == "complete" and not seen_views.get(index):
            problems.append(Problem("warning", f"scene {scene_id!r} is marked complete but has no images"))
    return problems


def format_summary(summary: dict) -> str:
    return json.dumps(summary, indent=2)
