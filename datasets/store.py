"""The scene store: one zarr v3 group holding many scenes, each a set of views of one arrangement.

Every source (the rig, the renderers, the importers) writes this schema and every consumer
(training, evaluation) reads it, so nothing downstream cares where a scene came from.  The schema
is documented in docs/store.md; the short version:

    STORE/
      zarr.json            attrs: schema name + version, conventions, image size, ground truth
      images/<array>       one row per image, axis 0 = global image index:
        rgb                (N, H, W, 3) uint8
        camera_pose_world  (N, 4, 4) float64   camera-to-world, OpenCV axes, metres
        intrinsics         (N, 3, 3) float64   pixel K
        distortion         (N, 5) float64      OpenCV k1 k2 p1 p2 k3
        timestamp          (N,) float64        unix seconds
        joint_positions    (N, 8) float64      radians, NaN where no robot / unused joints
        scene_index        (N,) int32          index into the committed scene list
        view_index         (N,) int32          position of the view within its scene
        label_map          (N, H, W) uint8     ground truth only: 0 background, i = objects[i-1]
        amodal_masks       (N, O, H, W) bool   ground truth only: per-object silhouettes
      scenes/<array>       the scene registry, one row per scene entry:
        scene_id           (S,) str
        state              (S,) uint8              index into SCENE_STATES
        metadata           (S,) str                JSON: objects, notes, plan, settings...
      commit               attrs: {num_images, num_scenes}               <- written last

Crash safety.  zarr's resize-then-write leaves fill-value rows if a process dies mid-write, so
the ``commit`` record (rewritten atomically by zarr's LocalStore, >= 3.1.3) is the only truth:
readers see exactly ``num_images`` image rows and ``num_scenes`` scene rows; rows past them are
an uncommitted tail that the next writer truncates.  Scene states and metadata of committed
scenes are rewritten in place (one chunk, atomically).  One writer at a time holds an flock on ``.writer.lock``;
the kernel releases it when the writer dies, so a lock left by a dead process is detected as
stale instead of blocking forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from common import locks
from common.errors import UserError

SCHEMA_NAME = "ldsrig-scene-store"
SCHEMA_VERSION = 1
MAX_JOINTS = 8
NUM_DISTORTION = 5
SCENE_STATES = ("open", "complete", "aborted", "discarded")
CONVENTIONS = {
    "camera_pose_world": "camera-to-world 4x4, OpenCV camera axes (+x right, +y down, +z forward), metres",
    "intrinsics": "3x3 pixel camera matrix K of the stored image",
    "distortion": "OpenCV coefficients k1, k2, p1, p2, k3 (zeros: none)",
    "timestamp": "capture time, unix seconds (float64)",
    "joint_positions": "robot joint angles in radians, NaN-padded to 8; all NaN without a robot",
    "label_map": "visible object per pixel: 0 = background, i = scene objects[i-1]",
    "amodal_masks": "full silhouette of scene objects[i] in channel i, occluded parts included",
}
LOCK_NAME = ".writer.lock"


class StoreError(UserError):
    """A store that is missing, foreign, corrupt, locked, or used the wrong way."""


@dataclass(frozen=True)
class ArraySpec:
    dtype: str
    row_shape: tuple[int, ...]
    fill: Any


def _array_specs(height: int, width: int, ground_truth: bool, max_objects: int) -> dict[str, ArraySpec]:
    specs = {
        "rgb": ArraySpec("uint8", (height, width, 3), 0),
        "camera_pose_world": ArraySpec("float64", (4, 4), 0.0),
        "intrinsics": ArraySpec("float64", (3, 3), 0.0),
        "distortion": ArraySpec("float64", (NUM_DISTORTION,), 0.0),
        "timestamp": ArraySpec("float64", (), 0.0),
        "joint_positions": ArraySpec("float64", (MAX_JOINTS,), float("nan")),
        "scene_index": ArraySpec("int32", (), -1),
        "view_index": ArraySpec("int32", (), -1),
    }
    if ground_truth:
        specs["label_map"] = ArraySpec("uint8", (height, width), 0)
        specs["amodal_masks"] = ArraySpec("bool", (max_objects, height, width), False)
    return specs


# Image-sized arrays get one image per chunk (so a capture writes one chunk per array and a
# reader decodes only what it asks for); small per-image values are chunked in blocks.
_IMAGE_ARRAYS = ("rgb", "label_map", "amodal_masks")
# The scene registry: one row per scene entry.  Small chunks for metadata keep the rewrite of
# one scene's metadata (or state) cheap; ids and states are read whole on open.
_SCENE_ARRAYS = {"scene_id": (str, 1024), "state": ("uint8", 4096), "metadata": (str, 64)}
_SMALL_CHUNK = 4096
# Each chunk is compressed and then checksummed (a flipped byte inside a valid zstd frame
# decodes to wrong pixels; the CRC32C refuses it), and written even when it holds only fill
# values, so a missing chunk file always means damage, never "all background".
_ARRAY_CONFIG = {"write_empty_chunks": True}


def _compressors():
    import zarr

    return [zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()]


class SceneStore:
    """Open with :meth:`create` or :meth:`open`; use as a context manager when writing."""

    def __init__(self, path: Path, group, mode: str, lock_fd: int | None):
        self.path = path
        self._group = group
        self.mode = mode
        self._lock_fd = lock_fd
        attrs = group.attrs.asdict()
        try:
            self.height: int = int(attrs["height"])
            self.width: int = int(attrs["width"])
            self.has_ground_truth: bool = bool(attrs["ground_truth"])
            self.max_objects: int = int(attrs.get("max_objects", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{path}: the store attributes are damaged (missing or invalid "
                             f"{exc}); height, width and ground_truth are required") from None
        self.attrs: dict = attrs
        self._specs = _array_specs(self.height, self.width, self.has_ground_truth, self.max_objects)
        try:
            # The commit record first, then the arrays: a writer resizes an array before it
            # writes rows and commits them after, so arrays opened after the record are never
            # shorter than it (opened before, a live append looked like lost committed rows).
            commit = dict(group["commit"].attrs)
            self.num_images: int = int(commit["num_images"])
            num_scenes = int(commit["num_scenes"])
            images = group["images"]
            # write_empty_chunks is a runtime setting, not stored: every handle that writes
            # needs it (reading is unaffected)
            self._arrays = {name: images[name].with_config(_ARRAY_CONFIG) for name in self._specs}
            scenes = group["scenes"]
            self._scene_arrays = {name: scenes[name].with_config(_ARRAY_CONFIG)
                                  for name in _SCENE_ARRAYS}
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{path} is a damaged ldsrig store (missing or invalid {exc}); "
                             "run `ldsrig data check` on it") from None
        for name, arr in [*self._arrays.items(), *self._scene_arrays.items()]:
            committed = self.num_images if name in self._arrays else num_scenes
            if arr.shape[0] < committed:
                raise StoreError(
                    f"{path}: array {arr.path} has {arr.shape[0]} rows but {committed} are "
                    "committed; the store is damaged (committed data is missing)")
        # The scene registry is small (ids and one state byte per scene): keep it in memory.
        self._scene_ids: list[str] = [str(x) for x in np.asarray(self._scene_arrays["scene_id"][:num_scenes])]
        self._scene_states: list[str] = [SCENE_STATES[int(c)] for c in
                                         np.asarray(self._scene_arrays["state"][:num_scenes])]
        self._metadata_cache: list[str] | None = None
        self._scene_index_cache: np.ndarray | None = None
        self._view_counts: dict[int, int] | None = None
        self._batch_depth = 0
        self._pending_scenes: list[tuple[str, str, str]] = []  # (id, state, metadata JSON)
        self._pending_rows: list[dict[str, np.ndarray]] = []

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, height: int, width: int, ground_truth: bool = False,
               max_objects: int = 10, attrs: dict | None = None,
               images_per_shard: int | None = None) -> "SceneStore":
        """Create a new, empty store and open it for writing.

        ``images_per_shard`` packs that many images into one file (zarr sharding): good for
        large training stores written in batches, bad for a rig that commits one image at a
        time (each commit would rewrite the shard), so raw captures leave it None.
        """
        import zarr

        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"{path} already exists; choose a new path or open it to append")
        if height <= 0 or width <= 0:
            raise StoreError(f"image size must be positive, got {height}x{width}")
        if ground_truth and not 1 <= max_objects <= 255:
            raise StoreError(f"max_objects must be 1..255, got {max_objects}")
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = _acquire_lock(path)
        try:
            root = zarr.open_group(str(path), mode="a", zarr_format=3)  # "w" would delete the lock file
            images = root.create_group("images")
            specs = _array_specs(height, width, ground_truth, max_objects)
            for name, spec in specs.items():
                if name in _IMAGE_ARRAYS:
                    chunks = (1, *spec.row_shape)
                    shards = (images_per_shard, *spec.row_shape) if images_per_shard else None
                else:
                    chunks, shards = (_SMALL_CHUNK, *spec.row_shape), None
                images.create_array(
                    name, shape=(0, *spec.row_shape), chunks=chunks, shards=shards,
                    dtype=spec.dtype, fill_value=spec.fill, compressors=_compressors(),
                    config=_ARRAY_CONFIG,
                )
            scenes = root.create_group("scenes")
            for name, (dtype, chunk) in _SCENE_ARRAYS.items():
                scenes.create_array(name, shape=(0,), chunks=(chunk,), dtype=dtype,
                                    compressors=_compressors(), config=_ARRAY_CONFIG)
            root.create_group("commit").attrs.update({"num_images": 0, "num_scenes": 0})
            root.attrs.update({
                "schema": {"name": SCHEMA_NAME, "version": SCHEMA_VERSION},
                "conventions": CONVENTIONS,
                "height": int(height), "width": int(width),
                "ground_truth": bool(ground_truth), "max_objects": int(max_objects) if ground_truth else 0,
                "created": time.time(),
                # every chunk carries a CRC32C and is written even when it equals the fill value,
                # so `data check` can tell flipped bytes and deleted chunks from real data
                "integrity": {"checksums": "crc32c", "empty_chunks_written": True},
                **(attrs or {}),
            })
        except Exception:
            _release_lock(lock_fd)
            raise
        return cls(path, root, "a", lock_fd)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "SceneStore":
        """Open an existing store for reading (``"r"``) or appending (``"a"``)."""
        import zarr

        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no store at {path}")
        if not path.is_dir() or not (path / "zarr.json").is_file():
            raise StoreError(f"{path} is not a zarr store (no zarr.json)")
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}/zarr.json is unreadable: {exc}") from None
        schema = (meta.get("attributes") or {}).get("schema") or {}
        if schema.get("name") != SCHEMA_NAME:
            raise StoreError(f"{path} is a zarr store but not an ldsrig scene store")
        version = schema.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise StoreError(f"{path}: the store schema version is {version!r}, not an integer; "
                             "the store's zarr.json is damaged")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} uses store schema v{version}, newer than this ldsrig "
                             f"reads (v{SCHEMA_VERSION}); upgrade ldsrig")
        lock_fd = _acquire_lock(path) if mode == "a" else None
        try:
            group = zarr.open_group(str(path), mode="r+" if mode == "a" else "r", zarr_format=3)
            store = cls(path, group, mode, lock_fd)
            if mode == "a":
                store._truncate_uncommitted_tail()
        except Exception:
            _release_lock(lock_fd)
            raise
        return store

    def close(self) -> None:
        _release_lock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "SceneStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # safety net; the kernel would release the flock anyway
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ scenes
    @property
    def scene_ids(self) -> list[str]:
        """Committed scene ids in store order, discarded scenes excluded."""
        return [sid for sid, state in zip(self._scene_ids, self._scene_states) if state != "discarded"]

    @property
    def num_scenes(self) -> int:
        return len(self.scene_ids)

    def all_scenes(self) -> list[tuple[str, str]]:
        """(scene_id, state) of every committed scene entry, discarded ones included."""
        return list(zip(self._scene_ids, self._scene_states))

    def has_scene(self, scene_id: str) -> bool:
        return self._find_scene(scene_id) is not None

    def _find_scene(self, scene_id: str) -> int | None:
        """Index of the live (not discarded) scene with this id, pending ones included."""
        for k in range(len(self._pending_scenes) - 1, -1, -1):
            sid, state, _ = self._pending_scenes[k]
            if sid == scene_id and state != "discarded":
                return len(self._scene_ids) + k
        for index in range(len(self._scene_ids) - 1, -1, -1):
            if self._scene_ids[index] == scene_id and self._scene_states[index] != "discarded":
                return index
        return None

    def _scene_index(self, scene_id: str) -> int:
        index = self._find_scene(scene_id)
        if index is None:
            raise StoreError(f"scene {scene_id!r} is not in {self.path}")
        return index

    def scene_state(self, scene_id: str) -> str:
        index = self._scene_index(scene_id)
        if index >= len(self._scene_ids):
            return self._pending_scenes[index - len(self._scene_ids)][1]
        return self._scene_states[index]

    def scene_metadata(self, scene_id: str) -> dict:
        return self.scene_metadata_at(self._scene_index(scene_id))

    def scene_metadata_at(self, scene_index: int) -> dict:
        """Metadata of the scene entry at ``scene_index`` (the value in images/scene_index)."""
        if scene_index >= len(self._scene_ids):
            return json.loads(self._pending_scenes[scene_index - len(self._scene_ids)][2])
        if self._metadata_cache is None:
            try:
                self._metadata_cache = [str(x) for x in np.asarray(
                    self._scene_arrays["metadata"][: len(self._scene_ids)])]
            except Exception as exc:
                raise StoreError(f"{self.path}: cannot read scene metadata: {exc}") from None
        try:
            return json.loads(self._metadata_cache[scene_index])
        except ValueError:
            raise StoreError(f"{self.path}: metadata of scene #{scene_index} is not valid JSON") from None

    def scene_image_indices(self, scene_id: str) -> np.ndarray:
        """Global indices of the scene's committed images, in view order."""
        index = self._scene_index(scene_id)
        scene_index = self._scene_index_array()
        found = np.flatnonzero(scene_index == index)
        if len(found) == 0:
            return found
        views = self._read_rows("view_index", found)
        return found[np.argsort(views, kind="stable")]

    def scene_index_of(self, scene_id: str) -> int:
        """The scene's position in the scene registry (the value in images/scene_index)."""
        return self._scene_index(scene_id)

    def scene_id_at(self, scene_index: int) -> str:
        return self._scene_ids[scene_index]

    def _scene_index_array(self) -> np.ndarray:
        if self._scene_index_cache is None or len(self._scene_index_cache) != self.num_images:
            self._scene_index_cache = np.asarray(self._arrays["scene_index"][: self.num_images])
        return self._scene_index_cache

    # ------------------------------------------------------------------ reading
    def images(self, indices: Iterable[int] | slice | np.ndarray, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Rows of every per-image array (or only ``fields``) for the given committed indices."""
        n = self.num_images
        if isinstance(indices, slice):
            start, stop, step = indices.indices(n)
            idx = np.arange(start, stop, step)
        else:
            idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise StoreError(f"image index out of range: the store has {n} committed images")
        names = list(fields) if fields is not None else list(self._arrays)
        unknown = [f for f in names if f not in self._arrays]
        if unknown:
            raise StoreError(f"no field(s) {unknown} in this store; it has {sorted(self._arrays)}")
        out = {}
        for name in names:
            out[name] = self._read_rows(name, idx)
        return out

    def _read_rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        arr = self._arrays[name]
        try:
            if len(idx) == 0:
                return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            if hi - lo == len(idx) and np.all(np.diff(idx) == 1):
                return np.asarray(arr[lo:hi])
            if name not in _IMAGE_ARRAYS:  # small values: one contiguous read is cheapest
                return np.asarray(arr[lo:hi])[idx - lo]
            return np.asarray(arr.oindex[idx])
        except Exception as exc:  # a corrupt chunk or a vanished file
            raise StoreError(f"{self.path}: cannot read images/{name} rows "
                             f"{int(idx[0])}..{int(idx[-1])}: {exc}") from None

    def array(self, name: str):
        """The underlying zarr array (rows past ``num_images`` are not committed)."""
        return self._arrays[name]

    # ------------------------------------------------------------------ writing
    def _require_writer(self) -> None:
        if self.mode != "a" or self._lock_fd is None:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to write")

    @contextlib.contextmanager
    def batch(self):
        """Group many scenes and images into one commit: all of them land, or none.

        Each call of add_scene / append_images outside a batch is its own commit (what the rig
        wants: nothing lost).  Writers of many small scenes (importers, renderers) batch them:
        one resize and one write per array instead of one per scene.
        """
        self._require_writer()
        self._batch_depth += 1
        try:
            yield self
        except BaseException:
            if self._batch_depth == 1:
                self._pending_scenes.clear()
                self._pending_rows.clear()
                self._view_counts = None
            raise
        finally:
            self._batch_depth -= 1
        if self._batch_depth == 0:
            self._flush()

    def add_scene(self, scene_id: str, metadata: dict | None = None, state: str = "open") -> None:
        """Register a new scene with its JSON-able metadata."""
        self._require_writer()
        _check_scene_id(scene_id)
        if self._find_scene(scene_id) is not None:
            raise StoreError(f"scene {scene_id!r} already exists in {self.path}")
        if state not in SCENE_STATES:
            raise StoreError(f"unknown scene state {state!r}; one of {SCENE_STATES}")
        try:
            text = json.dumps(dict(metadata or {}))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"scene {scene_id!r} metadata is not JSON-serialisable: {exc}") from None
        self._pending_scenes.append((scene_id, state, text))
        if self._batch_depth == 0:
            self._flush()

    def update_scene_metadata(self, scene_id: str, updates: dict) -> None:
        self._require_writer()
        index = self._scene_index(scene_id)
        meta = self.scene_metadata_at(index) | dict(updates)
        text = json.dumps(meta)
        if index >= len(self._scene_ids):
            sid, state, _ = self._pending_scenes[index - len(self._scene_ids)]
            self._pending_scenes[index - len(self._scene_ids)] = (sid, state, text)
            return
        self._scene_arrays["metadata"][index] = text  # one chunk, replaced atomically
        if self._metadata_cache is not None:
            self._metadata_cache[index] = text

    def set_scene_state(self, scene_id: str, state: str) -> None:
        """Mark a scene open, complete, aborted, or discarded (discarded scenes vanish from
        ``scene_ids`` and from the torch datasets; their rows stay on disk untouched)."""
        self._require_writer()
        if state not in SCENE_STATES:
            raise StoreError(f"unknown scene state {state!r}; one of {SCENE_STATES}")
        index = self._scene_index(scene_id)
        if index >= len(self._scene_ids):
            sid, _, text = self._pending_scenes[index - len(self._scene_ids)]
            self._pending_scenes[index - len(self._scene_ids)] = (sid, state, text)
            return
        self._scene_arrays["state"][index] = SCENE_STATES.index(state)  # one chunk, atomic
        self._scene_states[index] = state

    def append_images(self, scene_id: str, rgb: np.ndarray, camera_pose_world: np.ndarray,
                      intrinsics: np.ndarray, distortion: np.ndarray | None = None,
                      timestamp: np.ndarray | None = None, joint_positions: np.ndarray | None = None,
                      label_map: np.ndarray | None = None, amodal_masks: np.ndarray | None = None) -> np.ndarray:
        """Append n views of ``scene_id``; returns their global indices.

        Outside a :meth:`batch` this returns only after the commit record naming the new rows
        has been written, so on return the images survive any later crash; before it, a crash
        leaves them invisible.
        """
        self._require_writer()
        scene_index = self._scene_index(scene_id)
        rows = self._validate_rows(rgb, camera_pose_world, intrinsics, distortion, timestamp,
                                   joint_positions, label_map, amodal_masks)
        n = rows["rgb"].shape[0]
        counts = self._view_count_map()
        start_view = counts.get(scene_index, 0)
        rows["scene_index"] = np.full(n, scene_index, np.int32)
        rows["view_index"] = np.arange(start_view, start_view + n, dtype=np.int32)
        counts[scene_index] = start_view + n
        first = self.num_images + sum(len(r["rgb"]) for r in self._pending_rows)
        self._pending_rows.append(rows)
        if self._batch_depth == 0:
            self._flush()
        return np.arange(first, first + n)

    def _flush(self) -> None:
        """Write pending scenes and rows, then the commit record (last)."""
        scenes, rows = self._pending_scenes, self._pending_rows
        if not scenes and not rows:
            return
        s0, n0 = len(self._scene_ids), self.num_images
        if scenes:
            values = {
                "scene_id": np.array([s[0] for s in scenes], dtype=object),
                "state": np.array([SCENE_STATES.index(s[1]) for s in scenes], dtype=np.uint8),
                "metadata": np.array([s[2] for s in scenes], dtype=object),
            }
            for name, arr in self._scene_arrays.items():
                arr.resize((s0 + len(scenes),))
                arr[s0:] = values[name]
        n = 0
        if rows:
            merged = {name: np.concatenate([r[name] for r in rows]) if len(rows) > 1 else rows[0][name]
                      for name in self._arrays}
            n = len(merged["rgb"])
            for name, arr in self._arrays.items():
                arr.resize((n0 + n, *arr.shape[1:]))
                arr[n0:] = merged[name]
        self._commit(n0 + n, s0 + len(scenes))
        self._scene_ids.extend(s[0] for s in scenes)
        self._scene_states.extend(s[1] for s in scenes)
        if self._metadata_cache is not None:
            self._metadata_cache.extend(s[2] for s in scenes)
        if self._scene_index_cache is not None and rows:
            self._scene_index_cache = np.concatenate([self._scene_index_cache, merged["scene_index"]])
        self._pending_scenes, self._pending_rows = [], []

    def _validate_rows(self, rgb, pose, K, dist, ts, joints, labels, amodal) -> dict[str, np.ndarray]:
        H, W = self.height, self.width
        rgb = np.asarray(rgb)
        if rgb.ndim == 3:
            rgb = rgb[None]
        if rgb.dtype != np.uint8 or rgb.shape[1:] != (H, W, 3):
            raise StoreError(f"rgb must be uint8 (n, {H}, {W}, 3) for this store, got {rgb.dtype} {rgb.shape}")
        n = rgb.shape[0]

        def rows_of(value, shape, dtype, name, default):
            if value is None:
                return np.full((n, *shape), default, dtype=dtype)
            value = np.asarray(value, dtype=dtype)
            if value.shape == shape:
                value = value[None]
            if value.shape != (n, *shape):
                raise StoreError(f"{name} must have shape ({n}, {', '.join(map(str, shape))}), got {value.shape}")
            return value

        out = {"rgb": rgb}
        out["camera_pose_world"] = rows_of(pose, (4, 4), np.float64, "camera_pose_world", 0.0)
        out["intrinsics"] = rows_of(K, (3, 3), np.float64, "intrinsics", 0.0)
        out["distortion"] = rows_of(dist, (NUM_DISTORTION,), np.float64, "distortion", 0.0)
        out["timestamp"] = rows_of(ts, (), np.float64, "timestamp", time.time())
        if joints is None:
            out["joint_positions"] = np.full((n, MAX_JOINTS), np.nan)
        else:
            joints = np.asarray(joints, dtype=np.float64)
            if joints.ndim == 1:
                joints = joints[None]
            if joints.shape[0] != n or joints.shape[1] > MAX_JOINTS:
                raise StoreError(f"joint_positions must be (n, <= {MAX_JOINTS}), got {joints.shape}")
            padded = np.full((n, MAX_JOINTS), np.nan)
            padded[:, : joints.shape[1]] = joints
            out["joint_positions"] = padded
        for name in ("camera_pose_world", "intrinsics", "distortion", "timestamp"):
            if not np.all(np.isfinite(out[name])):
                raise StoreError(f"{name} contains NaN or inf")
        # NaN is the padding of unused joints (and "no robot"); an infinite angle is never valid
        if np.isinf(out["joint_positions"]).any():
            raise StoreError("joint_positions contains inf")
        if self.has_ground_truth:
            if labels is None or amodal is None:
                raise StoreError("this store holds ground truth: label_map and amodal_masks are required")
            out["label_map"] = rows_of(labels, (H, W), np.uint8, "label_map", 0)
            amodal = np.asarray(amodal, dtype=bool)
            if amodal.ndim == 3:
                amodal = amodal[None]
            if amodal.ndim != 4 or amodal.shape[0] != n or amodal.shape[2:] != (H, W) or amodal.shape[1] > self.max_objects:
                raise StoreError(f"amodal_masks must be bool (n, <= {self.max_objects}, {H}, {W}), got {amodal.shape}")
            padded = np.zeros((n, self.max_objects, H, W), dtype=bool)
            padded[:, : amodal.shape[1]] = amodal
            out["amodal_masks"] = padded
            if int(out["label_map"].max(initial=0)) > amodal.shape[1]:
                raise StoreError(f"label_map names object {int(out['label_map'].max())} but only "
                                 f"{amodal.shape[1]} amodal masks were given")
        elif labels is not None or amodal is not None:
            raise StoreError("this store was created without ground truth; masks cannot be added")
        return out

    def _view_count_map(self) -> dict[int, int]:
        if self._view_counts is None:
            scene_index = self._scene_index_array()
            values, counts = np.unique(scene_index, return_counts=True)
            self._view_counts = {int(v): int(c) for v, c in zip(values, counts)}
        return self._view_counts

    def _commit(self, num_images: int, num_scenes: int) -> None:
        self._group["commit"].attrs.update({"num_images": int(num_images), "num_scenes": int(num_scenes)})
        self.num_images = int(num_images)

    def uncommitted_rows(self) -> int:
        """Image rows past the commit marker (left by a writer that died mid-append)."""
        return max(arr.shape[0] for arr in self._arrays.values()) - self.num_images

    def _truncate_uncommitted_tail(self) -> None:
        for arr in self._arrays.values():
            if arr.shape[0] != self.num_images:
                arr.resize((self.num_images, *arr.shape[1:]))
        for arr in self._scene_arrays.values():
            if arr.shape[0] != len(self._scene_ids):
                arr.resize((len(self._scene_ids),))

    def set_attrs(self, **attrs) -> None:
        self._require_writer()
        reserved = {"schema", "conventions", "height", "width", "ground_truth", "max_objects"}
        if reserved & set(attrs):
            raise StoreError(f"attributes {sorted(reserved & set(attrs))} are fixed at creation")
        self._group.attrs.update(attrs)
        self.attrs.update(attrs)


def _check_scene_id(scene_id: str) -> None:
    if not isinstance(scene_id, str) or not scene_id or len(scene_id) > 200 or any(
            c in scene_id for c in "/\\\0\n"):
        raise StoreError(f"invalid scene id {scene_id!r}: use a short name without slashes")


# ---------------------------------------------------------------------- the writer lock
def _acquire_lock(path: Path) -> int:
    return locks.acquire(path / LOCK_NAME, str(path), StoreError)


_release_lock = locks.release


def stale_lock_owner(path: str | Path) -> str | None:
    """The writer named in the lock file if it is not running any more (else None)."""
    return locks.stale_owner(Path(path) / LOCK_NAME)
