"""Render synthetic scenes into a scene store: parallel, deterministic, resumable.

Scene ``i`` draws everything (objects, cameras, path-tracer seeds, webcam noise) from
``np.random.SeedSequence([seed, i])``, so a scene's pixels do not depend on the worker count or on
which scenes were rendered before it.  Worker processes (spawned: Mitsuba's threads do not survive
a fork) render whole scenes and return arrays; the parent is the store's only writer and writes
scenes in index order.

Resuming: re-running the same command on an existing OUT checks that the generator settings match
the store's, skips scenes marked complete, marks a scene whose views were committed but whose mark
is missing complete, and renders again any scene left open or aborted by an interrupted run (a
scene with committed rows is discarded first; its rows stay on disk, hidden from readers).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from common.errors import UserError


class SynthError(UserError):
    """Bad generator settings, or an OUT that holds something else."""


@dataclass(frozen=True)
class ClevrMVSettings:
    views: int = 10
    size: int = 64
    min_objects: int = 2
    max_objects: int = 5
    shapes: str = "basic"
    spp: int = 144        # multi-jittered: 12 x 12 (datasets.synth.camera.mitsuba_sensor_dict)
    min_visible_pixels: int = 10  # per object and view at 64x64; scaled with the image area
    max_attempts: int = 200  # scenes re-sampled before giving up on the visibility check
    seed: int = 0

    def validate(self) -> None:
        from datasets.synth.clevr import SHAPE_SETS

        if self.shapes not in SHAPE_SETS:
            raise SynthError(f"--shapes must be one of {', '.join(SHAPE_SETS)}, got {self.shapes!r}")
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise SynthError(f"need 1 <= --min-objects <= --max-objects <= 10, got "
                             f"{self.min_objects} and {self.max_objects}")
        _check_positive(views=self.views, size=self.size, spp=self.spp)


@dataclass(frozen=True)
class CubesSettings:
    views: int = 25
    width: int = 640
    height: int = 480
    # 144 multi-jittered samples: Monte Carlo error about 0.3x the webcam's sensor noise at any
    # training size (benchmarks/bench_render_noise.py, docs/synthetic.md).
    spp: int = 144
    min_cubes: int = 2
    max_cubes: int = 4
    placement_half_width_m: float = 0.08     # cube centres within +-8 cm of the table centre
    elevation_deg: tuple[float, float] = (25.0, 65.0)
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    radius_m: tuple[float, float] = (0.25, 0.35)   # cubes cover ~17% of the centre crop
    fov_x_deg: float = 62.0
    noise: bool = True
    seed: int = 0

    def validate(self) -> None:
        from datasets.synth.cubes import CUBE_COLORS

        if not 1 <= self.min_cubes <= self.max_cubes <= len(CUBE_COLORS):
            raise SynthError(f"need 1 <= --min-cubes <= --max-cubes <= {len(CUBE_COLORS)}")
        _check_positive(views=self.views, width=self.width, height=self.height, spp=self.spp)
        lo, hi = self.elevation_deg
        if not 0 < lo <= hi < 90:
            raise SynthError(f"elevations must satisfy 0 < min <= max < 90 degrees, got {lo}, {hi}")
        if not 0 < self.radius_m[0] <= self.radius_m[1]:
            raise SynthError(f"camera distances must satisfy 0 < min <= max, got {self.radius_m}")
        if not 1 <= self.fov_x_deg <= 170:
            raise SynthError(f"--fov must be 1..170 degrees, got {self.fov_x_deg}")
        if self.placement_half_width_m <= 0:
            raise SynthError(f"--placement must be positive, got {self.placement_half_width_m}")


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value < 1:
            raise SynthError(f"--{name} must be at least 1, got {value}")


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def render_clevr_mv_scene(settings: ClevrMVSettings, index: int) -> dict:
    """Render scene ``index`` of a clevr-mv store: re-sample the arrangement (CLEVR-style) until
    every object has at least ``min_visible_pixels`` visible pixels in every view."""
    from datasets.synth import clevr

    rng = scene_rng(settings.seed, index)
    size = settings.size
    min_pixels = max(1, round(settings.min_visible_pixels * size * size / 4096))
    for attempt in range(1, settings.max_attempts + 1):
        scene = clevr.sample_clevr_scene(rng, min_objects=settings.min_objects,
                                         max_objects=settings.max_objects, shapes=settings.shapes)
        start = float(rng.uniform(0.0, 360.0))
        poses, Ks = clevr.camera_ring(settings.views, start, size, size)
        counts = clevr.visible_pixel_counts(scene, poses, Ks, size, size)
        if counts.min() >= min_pixels:
            break
    else:
        raise SynthError(f"scene {index}: no arrangement passed the visibility check in "
                         f"{settings.max_attempts} tries; lower --min-visible-pixels")
    views = [clevr.render_clevr_view(scene, pose, K, size, size, spp=settings.spp, rng=rng)
             for pose, K in zip(poses, Ks)]
    metadata = {
        "source": "synthetic/clevr-mv", **scene.to_metadata(),
        "camera": {"ring_radius": clevr.CAMERA_RING_RADIUS, "height": clevr.CAMERA_HEIGHT,
                   "start_azimuth_deg": start, "fov_x_deg": clevr.CAMERA_FOV_X_DEG,
                   "location": poses[:, :3, 3].tolist()},
        "visible_pixels": counts.tolist(), "attempts": attempt,
        "settings": _settings_dict(settings), "seed": [settings.seed, index],
    }
    return _scene_result(f"clevr-mv-{index:06d}", metadata, views, poses, Ks)


def render_cubes_scene(settings: CubesSettings, index: int) -> dict:
    from datasets.synth import cubes

    rng = scene_rng(settings.seed, index)
    scene = cubes.sample_cube_scene(rng, min_cubes=settings.min_cubes, max_cubes=settings.max_cubes,
                                    placement_half_width_m=settings.placement_half_width_m)
    poses = cubes.sample_cube_viewpoints(rng, settings.views, elevation_deg=settings.elevation_deg,
                                         azimuth_deg=settings.azimuth_deg, radius_m=settings.radius_m)
    K = cubes.default_intrinsics(settings.width, settings.height, settings.fov_x_deg)
    Ks = np.repeat(K[None], settings.views, 0)
    views = [cubes.render_cube_view(scene, pose, K, settings.width, settings.height, spp=settings.spp,
                                    rng=rng, noise=settings.noise) for pose in poses]
    metadata = {"source": "synthetic/cubes", **scene.to_metadata(),
                "settings": _settings_dict(settings), "seed": [settings.seed, index]}
    return _scene_result(f"cubes-{index:06d}", metadata, views, poses, Ks)


def _scene_result(scene_id, metadata, views, poses, Ks) -> dict:
    rgb, label_map, amodal = (np.stack(a) for a in zip(*views))
    return {"scene_id": scene_id, "metadata": metadata, "rgb": rgb, "camera_pose_world": poses,
            "intrinsics": Ks, "label_map": label_map, "amodal_masks": amodal}


def _settings_dict(settings) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


GENERATORS = {
    "clevr-mv": (ClevrMVSettings, render_clevr_mv_scene),
    "cubes": (CubesSettings, render_cubes_scene),
}


@dataclass
class GenerateReport:
    out: Path
    generator: str
    scenes_rendered: int = 0
    scenes_skipped: int = 0
    images_written: int = 0
    seconds: float = 0.0
    scene_ids: list = field(default_factory=list)

    def line(self) -> str:
        rate = self.images_written / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.out}: {self.scenes_rendered} scenes rendered ({self.images_written} images, "
                f"{rate:.2f} images/s), {self.scenes_skipped} already complete")


def _init_worker(threads: int) -> None:
    from datasets.synth.render import set_render_threads

    set_render_threads(threads)


def generate(out: str | Path, generator: str, settings, num_scenes: int, *, workers: int = 1,
             progress: bool = True) -> GenerateReport:
    """Render scenes 0..num_scenes-1 of ``generator`` into the store at ``out`` (created if
    missing, resumed if it holds an earlier run with the same settings)."""
    from datasets.store import SceneStore

    if generator not in GENERATORS:
        raise SynthError(f"unknown generator {generator!r}; one of {sorted(GENERATORS)}")
    settings.validate()
    if num_scenes < 1:
        raise SynthError(f"--scenes must be at least 1 (the number of scenes the store should "
                         f"hold), got {num_scenes}")
    if workers < 1:
        raise SynthError(f"--workers must be at least 1, got {workers}")
    render_scene = GENERATORS[generator][1]
    out = Path(out)
    report = GenerateReport(out=out, generator=generator)
    started = time.perf_counter()
    synth_attrs = {"generator": generator, "settings": _settings_dict(settings)}
    if generator == "clevr-mv":
        height = width = settings.size
        max_objects = settings.max_objects
    else:
        height, width, max_objects = settings.height, settings.width, settings.max_cubes

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        store = SceneStore.open(out, mode="a")
        previous = store.attrs.get("synth")
        if previous != synth_attrs:
            store.close()
            raise SynthError(f"{out} already holds a store made with other settings "
                             f"({_describe(previous)}); choose a new OUT or repeat its settings")
    else:
        store = SceneStore.create(out, height=height, width=width, ground_truth=True,
                                  max_objects=max_objects,
                                  attrs={"source": f"synthetic/{generator}", "synth": synth_attrs})
    with store:
        todo = _plan(store, generator, num_scenes, report)
        _render_and_write(store, render_scene, settings, todo, workers, progress, report, generator)
    report.seconds = time.perf_counter() - started
    return report


def _describe(previous) -> str:
    if not isinstance(previous, dict):
        return "not a synthetic store"
    return f"{previous.get('generator')} with {previous.get('settings')}"


def _plan(store, generator: str, num_scenes: int, report: GenerateReport) -> list[int]:
    """Indices still to render; finishes or retires what an interrupted run left behind."""
    todo = []
    for index in range(num_scenes):
        scene_id = f"{generator}-{index:06d}"
        if not store.has_scene(scene_id):
            todo.append(index)
            continue
        state = store.scene_state(scene_id)
        committed = len(store.scene_image_indices(scene_id))
        expected = int(store.scene_metadata(scene_id).get("settings", {}).get("views", -1))
        if state == "complete":
            report.scenes_skipped += 1
        elif state == "open" and committed and committed == expected:
            # Views are appended in one atomic batch: only the completion mark is missing.
            store.set_scene_state(scene_id, "complete")
            report.scenes_skipped += 1
        else:
            store.set_scene_state(scene_id, "discarded")
            todo.append(index)
    return todo


def _write(store, result: dict, report: GenerateReport) -> None:
    scene_id = result["scene_id"]
    store.add_scene(scene_id, result["metadata"])
    views = len(result["rgb"])
    store.append_images(scene_id, result["rgb"], result["camera_pose_world"], result["intrinsics"],
                        label_map=result["label_map"], amodal_masks=result["amodal_masks"])
    store.set_scene_state(scene_id, "complete")
    report.scenes_rendered += 1
    report.images_written += views
    report.scene_ids.append(scene_id)


def _render_and_write(store, render_scene, settings, todo, workers, progress, report, generator) -> None:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"rendering {generator}", total=len(todo))
        if workers == 1 or len(todo) <= 1:
            for index in todo:
                _write(store, render_scene(settings, index), report)
                bar.advance(task)
            return
        workers = min(workers, len(todo))
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
        try:
            # A bounded window of scenes in flight; results are written in index order so the
            # store's scene order does not depend on which worker finishes first.
            window = 2 * workers
            pending = {}
            queue = list(todo)
            next_submit = 0
            for index in todo:
                while next_submit < len(queue) and len(pending) < window:
                    i = queue[next_submit]
                    pending[i] = pool.submit(render_scene, settings, i)
                    next_submit += 1
                result = pending.pop(index).result()
                _write(store, result, report)
                bar.advance(task)
        except BaseException:
            # Interrupted (Ctrl-C) or a worker failed: drop queued scenes instead of waiting
            # for them; everything written so far is committed and a re-run resumes.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

