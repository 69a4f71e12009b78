"""What every importer shares: the scene record handed to the store, camera helpers, and the
resumable write loop.

An importer is a *reader*: it inspects SRC once (:class:`ImportPlan`: image size, ground truth,
object count, how many scenes) and then yields :class:`PendingScene` items whose pixels are
loaded only when needed, so that a resumed import skips finished scenes without decoding them.
:func:`write_import` owns the store: it creates or reopens DST, skips scenes already complete,
redoes interrupted ones, and commits each scene as one batch (one ``append_images`` call) before
marking it complete.  A scene's data is fully loaded and validated *before* anything is written
for it, so bad input never leaves a half-written scene, and everything committed earlier stays
as it was.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError


class ImportSourceError(UserError):
    """SRC is missing, of the wrong format, corrupt, or inconsistent (masks vs images, ...)."""


class ImportTargetError(UserError):
    """DST exists but cannot take this import (another source, other image size, ...)."""


# --- camera helpers: common.geometry (look-at poses, pinhole K, K from a field of view) ----


# --- what a reader hands the writer ----------------------------------------------------------


@dataclass
class SceneData:
    """One scene, every view, ready for ``SceneStore.append_images``."""

    metadata: dict
    rgb: np.ndarray  # (V,H,W,3) uint8
    camera_pose_world: np.ndarray  # (V,4,4) float64
    intrinsics: np.ndarray  # (V,3,3) float64
    label_map: np.ndarray | None = None  # (V,H,W) uint8, label i = metadata["objects"][i-1]
    amodal_masks: np.ndarray | None = None  # (V,O,H,W) bool
    distortion: np.ndarray | None = None  # (V,5) OpenCV k1 k2 p1 p2 k3; None: no distortion

    def validate(self, where: str, height: int, width: int, ground_truth: bool) -> None:
        """Shape and range checks that turn inconsistent input into one clear line."""
        views = self.rgb.shape[0]
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 4 or self.rgb.shape[1:] != (height, width, 3):
            raise ImportSourceError(
                f"{where}: images are {self.rgb.dtype} {tuple(self.rgb.shape)}, "
                f"expected uint8 (views,{height},{width},3)"
            )
        if views == 0:
            raise ImportSourceError(f"{where}: the scene has no views")
        if self.camera_pose_world.shape != (views, 4, 4) or self.intrinsics.shape != (views, 3, 3):
            raise ImportSourceError(f"{where}: camera data does not match the {views} images")
        if not (np.all(np.isfinite(self.camera_pose_world)) and np.all(np.isfinite(self.intrinsics))):
            raise ImportSourceError(f"{where}: camera data holds NaN or infinity")
        if self.distortion is not None and (self.distortion.shape != (views, 5)
                                            or not np.all(np.isfinite(self.distortion))):
            raise ImportSourceError(f"{where}: distortion is not finite ({views}, 5) coefficients")
        if not ground_truth:
            return
        objects = self.metadata.get("objects", [])
        if self.label_map is None or self.amodal_masks is None:
            raise ImportSourceError(f"{where}: masks are missing")
        if self.label_map.shape != (views, height, width):
            raise ImportSourceError(
                f"{where}: label maps are {tuple(self.label_map.shape)}, images are "
                f"{tuple(self.rgb.shape[:3])}: masks do not match images"
            )
        if self.amodal_masks.shape != (views, len(objects), height, width):
            raise ImportSourceError(
                f"{where}: amodal masks are {tuple(self.amodal_masks.shape)}, expected "
                f"({views},{len(objects)},{height},{width}) for {len(objects)} objects: "
                "masks do not match images"
            )
        if self.label_map.size and int(self.label_map.max()) > len(objects):
            raise ImportSourceError(
                f"{where}: label map names object {int(self.label_map.max())} "
                f"but the scene lists {len(objects)} objects"
            )


@dataclass
class PendingScene:
    """A scene found in SRC; ``load()`` reads and converts its pixels."""

    scene_id: str
    num_views: int
    load: Callable[[], SceneData]


@dataclass
class ImportPlan:
    """What a reader found in SRC before reading any pixels."""

    source: str  # e.g. "import/clevr-mv"; recorded in the store attributes
    height: int
    width: int
    ground_truth: bool
    max_objects: int
    scenes: Iterator[PendingScene]
    num_scenes: int | None = None  # None where SRC must be read through to count (TFRecords)
    store_attrs: dict = field(default_factory=dict)  # conventions and assumptions, documented


@dataclass
class ImportReport:
    """What one run did."""

    dst: Path
    source: str
    scenes_written: int = 0
    scenes_skipped: int = 0  # complete from an earlier run
    scenes_finished: int = 0  # images committed earlier, only the completion mark was missing
    images_written: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.images_written / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"{self.source} -> {self.dst}: {self.scenes_written} scenes "
            f"({self.images_written} images) written, {self.scenes_skipped} already complete, "
            f"{self.scenes_finished} finished from an interrupted run; "
            f"{self.seconds:.1f} s, {rate:.1f} images/s"
        )


# --- the write loop --------------------------------------------------------------------------


BATCH_IMAGES = 256


def _open_target(dst: Path, plan: ImportPlan, attrs: dict):
    """Create DST, or reopen it for a resumed import after checking it holds the same kind of
    data (never write one source's scenes into another's store)."""
    from datasets.store import SceneStore

    if dst.exists():
        store = SceneStore.open(dst, mode="a")
        try:
            existing_source = store.attrs.get("source")
            problems = []
            if existing_source != plan.source:
                problems.append(f"it holds {existing_source!r}, not {plan.source!r}")
            if (store.height, store.width) != (plan.height, plan.width):
                problems.append(
                    f"its images are {store.height}x{store.width}, SRC's are {plan.height}x{plan.width}"
                )
            if bool(store.has_ground_truth) != plan.ground_truth:
                problems.append("its ground-truth setting differs from SRC's")
            if plan.ground_truth and store.max_objects < plan.max_objects:
                problems.append(
                    f"it allows {store.max_objects} objects per scene, SRC has up to {plan.max_objects}"
                )
            if problems:
                raise ImportTargetError(f"cannot resume the import into {dst}: " + "; ".join(problems))
        except BaseException:
            store.close()
            raise
        return store
    return SceneStore.create(
        dst,
        height=plan.height,
        width=plan.width,
        ground_truth=plan.ground_truth,
        max_objects=max(plan.max_objects, 1),
        attrs=attrs,
    )


def write_import(
    dst: str | Path,
    plan: ImportPlan,
    *,
    limit: int | None = None,
    progress: bool = True,
    description: str = "importing",
) -> ImportReport:
    """Write the scenes of ``plan`` into DST, resuming where an earlier run stopped.

    Scenes already marked complete are skipped without loading them.  A scene whose images were
    committed but whose completion mark is missing is marked complete.  A scene that exists with
    no committed images (the run died between ``add_scene`` and the commit) is written again; one
    with some but not all views, or marked aborted, is discarded (its rows stay on disk, hidden
    from readers) and written again under the same id.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    dst = Path(dst)
    attrs = {"source": plan.source, **plan.store_attrs}
    report = ImportReport(dst=dst, source=plan.source)
    started = time.perf_counter()
    total = plan.num_scenes if limit is None else (
        limit if plan.num_scenes is None else min(limit, plan.num_scenes)
    )
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with _open_target(dst, plan, attrs) as store, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(description, total=total)
        existing = set(store.scene_ids)
        scenes = iter(enumerate(plan.scenes))
        finished = False
        bad_scene: ImportSourceError | None = None
        while not finished:
            # Scenes land in batches of about BATCH_IMAGES images: one commit per batch keeps
            # single-view data sets fast, and a crash loses at most the batch in flight.
            with store.batch():
                images_in_batch = 0
                while True:
                    try:
                        count, pending = next(scenes)
                    except StopIteration:
                        finished = True
                        break
                    except ImportSourceError as exc:  # a record that cannot be read
                        bad_scene, finished = exc, True
                        break
                    if limit is not None and count >= limit:
                        finished = True
                        break
                    redo = False
                    if pending.scene_id in existing:
                        state = store.scene_state(pending.scene_id)
                        committed = len(store.scene_image_indices(pending.scene_id))
                        if state == "complete":
                            report.scenes_skipped += 1
                            bar.advance(task)
                            continue
                        if state == "open" and committed and committed == pending.num_views:
                            # The batch is atomic: all views were committed, only the mark is missing.
                            store.set_scene_state(pending.scene_id, "complete")
                            report.scenes_finished += 1
                            bar.advance(task)
                            continue
                        # Interrupted (no images committed) or partial/aborted: redo it.  A scene with
                        # rows is discarded (its rows stay on disk, invisible) and written afresh.
                        redo = committed != 0 or state != "open"
                    try:
                        scene = pending.load()
                        scene.validate(pending.scene_id, plan.height, plan.width, plan.ground_truth)
                    except ImportSourceError as exc:
                        # Commit the good scenes of this batch first, then stop on the bad one.
                        bad_scene, finished = exc, True
                        break
                    views = scene.rgb.shape[0]
                    if redo:
                        store.set_scene_state(pending.scene_id, "discarded")
                    if redo or pending.scene_id not in existing:
                        store.add_scene(pending.scene_id, scene.metadata)
                        existing.add(pending.scene_id)
                    else:  # an interrupted scene with no images: refresh its metadata
                        store.update_scene_metadata(pending.scene_id, scene.metadata)
                    store.append_images(
                        pending.scene_id,
                        scene.rgb,
                        scene.camera_pose_world,
                        scene.intrinsics,
                        distortion=scene.distortion,
                        # Imported images have no known capture time: 0 marks "unknown" (the import
                        # time is in the scene metadata as imported_at).
                        timestamp=np.zeros(views, dtype=np.float64),
                        label_map=scene.label_map if plan.ground_truth else None,
                        amodal_masks=scene.amodal_masks if plan.ground_truth else None,
                    )
                    store.set_scene_state(pending.scene_id, "complete")
                    report.scenes_written += 1
                    report.images_written += views
                    bar.advance(task)
                    images_in_batch += views
                    if images_in_batch >= BATCH_IMAGES:
                        break
        if bad_scene is not None:
            raise bad_scene
    report.seconds = time.perf_counter() - started
    return report


def import_metadata(source: str, **extra) -> dict:
    """The scene-metadata fields every importer records."""
    return {
        "source": source,
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def read_json_file(path: Path) -> dict:
    """A JSON file, or one clear line on why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ImportSourceError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ImportSourceError(f"{path}: not valid JSON ({exc})") from None
