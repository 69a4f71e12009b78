"""Capture sessions: one scene (move, settle, shoot, check, write, for every planned view) and a
session of several scenes with operator prompts in between.  The real rig and the simulated rig
(simulated arm + simulated camera + randomised cube scenes) run exactly this code.

Every view is committed to the store as soon as it is taken, so an interrupted scene (Ctrl-C, a
dead camera, a killed process) keeps every committed view and resumes at the next one.  The plan
(the exact joint configurations) is written into the scene metadata before the first view, and a
resumed scene follows that stored plan, never a re-planned one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import datetime
import hashlib
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from capture.camera import Camera, CameraConfig, CameraError
from capture.cameras import open_camera
from capture.checks import ImageCheckConfig, check_image
from capture.observer import CaptureObserver, SafeObserver, report_motion
from common.config import to_dict
from common.errors import UserError


class CaptureError(UserError):
    """A scene that cannot be captured as asked (exists already, wrong store, no plan...)."""


class CaptureInterrupted(UserError):
    """Ctrl-C during a scene: the arm was stopped and every committed view kept."""

    exit_code = 130


@dataclass
class SimSceneConfig:
    """The simulated rig's randomised cube scenes."""

    seed: int = 0  # scene k of a store is drawn from (seed, scene id): reproducible, resumable
    min_cubes: int = 2
    max_cubes: int = 4


@dataclass
class CaptureConfig:
    camera: CameraConfig = field(default_factory=CameraConfig)
    checks: ImageCheckConfig = field(default_factory=ImageCheckConfig)
    sim: SimSceneConfig = field(default_factory=SimSceneConfig)
    rig: str = ""  # rig config YAML (robot.config.RigConfig); "" = the embedded default rig
    calibration: str = ""  # rig calibration YAML written by `ldsrig calib`; "" = none
    plan: str = ""  # a saved view plan (JSON) to follow; "" = plan now
    n_views: int = 0  # views per scene; 0 = the rig's views.n_views
    plan_seed: int = 0
    arm: str = "sim"  # arm back end: "sim" or "ur"
    arm_host: str = ""  # UR controller address ("" = the rig config's)
    arm_realtime: bool = False  # simulated arm: move in real time instead of a virtual clock
    settle_timeout_s: float = 10.0
    return_home: bool = True  # park the arm at home after each scene (out of the operator's way)


@dataclass
class ViewRecord:
    """What happened at one view (kept in the scene metadata as diagnostics)."""

    view: int
    image_index: int
    takes: int
    check: dict
    move_s: float  # arm motion and settling
    camera_s: float  # waiting for a frame after settling (exposure, transfer; rendering when simulated)
    check_s: float
    write_s: float  # store append + commit
    total_s: float

    @property
    def software_s(self) -> float:
        """Everything except arm motion and the camera: the software's own time."""
        return self.total_s - self.move_s - self.camera_s


@dataclass
class SceneSummary:
    scene_id: str
    state: str
    views_planned: int
    views_before: int  # committed before this run (resume)
    views: list[ViewRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def views_committed(self) -> int:
        return self.views_before + len(self.views)

    @property
    def retakes(self) -> int:
        return sum(v.takes - 1 for v in self.views)

    @property
    def flagged(self) -> list[int]:
        return [v.view for v in self.views if v.check["problems"]]

    def timing(self) -> dict:
        if not self.views:
            return {}
        def mean(key):
            return float(np.mean([getattr(v, key) for v in self.views]))
        return {"total_s_per_view": mean("total_s"), "software_s_per_view": mean("software_s"),
                "move_s_per_view": mean("move_s"), "camera_s_per_view": mean("camera_s"),
                "check_s_per_view": mean("check_s"), "write_s_per_view": mean("write_s")}

    def line(self) -> str:
        t = self.timing()
        timing = (f", {t['total_s_per_view']:.2f} s/view ({t['software_s_per_view'] * 1000:.0f} ms software)"
                  if t else "")
        flagged = f", flagged views {self.flagged}" if self.flagged else ""
        return (f"{self.scene_id}: {self.state}, {self.views_committed}/{self.views_planned} views "
                f"({len(self.views)} this run, {self.retakes} retakes{flagged}) in {self.seconds:.1f} s{timing}")


# -- the rig: arm + camera + plan, real or simulated -----------------------------------------------

class CaptureRig:
    """Opens the arm and the camera (context manager) and holds the rig config and the plan."""

    def __init__(self, cfg: CaptureConfig, rig_overrides: list[str] | None = None):
        from robot.config import load_rig_config

        self.cfg = cfg
        self.rig = load_rig_config(cfg.rig or None, rig_overrides)
        self.sim = cfg.camera.backend == "sim"
        if self.sim and cfg.arm != "sim":
            raise CaptureError("the simulated camera renders the simulated scene: it needs arm=sim")
        self.calibration: dict = {}
        if cfg.calibration:
            self._apply_calibration(cfg.calibration)
        self.arm = None
        self.camera: Camera | None = None
        self._plan = None

    def _apply_calibration(self, path: str) -> None:
        from capture.calibration import calibrated_hand_eye, calibrated_intrinsics, load_calibration

        self.calibration = load_calibration(path)
        cam_cfg = self.cfg.camera
        found = calibrated_intrinsics(self.calibration, cam_cfg.width, cam_cfg.height)
        if found is not None:
            self.cfg = dataclasses.replace(self.cfg, camera=cam_cfg.with_intrinsics(*found))
        T_flange_cam = calibrated_hand_eye(self.calibration)
        if T_flange_cam is not None:
            self.rig = dataclasses.replace(self.rig, flange_to_camera=T_flange_cam.tolist())

    def __enter__(self) -> "CaptureRig":
        from robot.backends import open_arm

        self.arm = open_arm(self.rig, self.cfg.arm, host=self.cfg.arm_host or None,
                            fast=not self.cfg.arm_realtime)
        self.arm.__enter__()
        try:
            kwargs = {"arm": self.arm} if self.sim else {}
            self.camera = open_camera(self.cfg.camera, **kwargs)
            self.camera.open()
        except BaseException:
            self.arm.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.camera is not None:
                self.camera.close()
        finally:
            if self.arm is not None:
                self.arm.__exit__(*exc)

    def plan(self):
        """The view plan for new scenes: loaded from cfg.plan, or planned once per rig."""
        from robot.planning import ViewPlan, plan_viewpoints

        if self._plan is None:
            if self.cfg.plan:
                plan = ViewPlan.load(self.cfg.plan)
                plan.check_rig(self.rig)
            else:
                plan = plan_viewpoints(self.rig, self.cfg.n_views or None, seed=self.cfg.plan_seed)
            if len(plan) == 0:
                raise CaptureError("the view plan has no reachable views")
            self._plan = plan
        return self._plan

    def sim_scene(self, scene_id: str):
        """The randomised cube scene for ``scene_id`` (the same one every time: resumable)."""
        from datasets.synth.cubes import sample_cube_scene

        seed = [self.cfg.sim.seed, zlib.crc32(scene_id.encode())]
        rng = np.random.default_rng(seed)
        scene = sample_cube_scene(rng, min_cubes=self.cfg.sim.min_cubes, max_cubes=self.cfg.sim.max_cubes)
        return scene, seed


def _reach_resume_view(arm, tour: np.ndarray, view: int, log: Callable[[str], None]) -> None:
    """Bring the arm to where a resumed scene continues: view ``view`` of the planned tour.

    The plan checked home -> view 0 and every view -> the next, not home -> view k, so a resumed
    run (the arm at home, or wherever an interruption left it) may find the direct move, and the
    route via home, unsafe. Then it takes the checked route: home, views 0 .. k-1 (no pictures),
    and the capture loop moves on to view k as an uninterrupted run would have.
    """
    from robot.errors import UnsafeMoveError

    try:
        arm.plan_move(tour[view])          # checked, not executed: the capture loop moves
        return
    except UnsafeMoveError:
        pass
    arm.home(wait=True)                    # refused with a clear reason if even that is unsafe
    for k in range(view):
        arm.move_to(tour[k], wait=True)
    log(f"resuming at view {view}: the direct move was unsafe, so the arm took the planned "
        f"route through views 0..{view - 1}")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


# -- the store -------------------------------------------------------------------------------------

def open_store_for_capture(path: str | Path, camera_cfg: CameraConfig, sim: bool):
    """Open (or create) a raw capture store whose image size matches the camera."""
    from datasets.store import SceneStore

    path = Path(path)
    if (path / "zarr.json").exists():
        store = SceneStore.open(path, mode="a")
        fits = ((store.height, store.width) == (camera_cfg.height, camera_cfg.width)
                and store.has_ground_truth == sim)
        if not fits and store.num_images == 0 and not store.all_scenes():
            # an empty store left by a capture that failed before its first scene: nothing in it
            # to keep, so it must not block the next attempt with other settings
            import shutil

            store.close()
            shutil.rmtree(path)
            return open_store_for_capture(path, camera_cfg, sim)
        if (store.height, store.width) != (camera_cfg.height, camera_cfg.width):
            store.close()
            raise CaptureError(f"store {path} holds {store.width}x{store.height} images, the camera "
                               f"gives {camera_cfg.width}x{camera_cfg.height}: use another store")
        if store.has_ground_truth and not sim:
            store.close()
            raise CaptureError(f"store {path} holds ground-truth (simulated) scenes; capture real scenes "
                               "into a store of their own")
        return store
    if path.exists() and any(path.iterdir()):
        raise CaptureError(f"{path} exists and is not a scene store")
    return SceneStore.create(path, height=camera_cfg.height, width=camera_cfg.width, ground_truth=sim,
                             max_objects=10, attrs={"source": "sim-rig" if sim else "rig"})


def next_scene_id(store, prefix: str = "scene") -> str:
    taken = set(store.scene_ids)
    k = len(taken)
    while f"{prefix}_{k:04d}" in taken:
        k += 1
    return f"{prefix}_{k:04d}"


def open_scenes(store) -> list[str]:
    return [sid for sid in store.scene_ids if store.scene_state(sid) == "open"]


# -- one scene -------------------------------------------------------------------------------------

def _wait_settled(arm, timeout_s: float) -> None:
    if not arm.wait_until_settled(timeout_s):
        raise CaptureError(f"the arm did not settle within {timeout_s:g} s")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler, `kill`, a closing terminal) handled like Ctrl-C while capturing:
    the arm stops, the interruption is recorded and the store's lock is released on the way
    out, instead of the process dying mid-motion. Only the main thread can install handlers;
    elsewhere this does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def capture_scene(store, scene_id: str, rig: CaptureRig, *, notes: str = "", resume: bool = False,
                  progress: Callable[[int, int], None] | None = None,
                  log: Callable[[str], None] = print,
                  observer: CaptureObserver | None = None) -> SceneSummary:
    """Capture (or, with ``resume``, finish) one scene into an open, writable store. SIGTERM
    during the capture is an interruption, like Ctrl-C (:func:`sigterm_as_interrupt`).
    ``observer`` (capture/observer.py) is told the plan, the arm's motion and every committed
    frame as they happen (the live view); one that fails is dropped, the capture goes on."""
    if not isinstance(observer, SafeObserver):
        observer = SafeObserver(observer)
    with sigterm_as_interrupt():
        return _capture_scene(store, scene_id, rig, notes=notes, resume=resume, progress=progress,
                              log=log, observer=observer)


def _capture_scene(store, scene_id: str, rig: CaptureRig, *, notes: str, resume: bool,
                   progress: Callable[[int, int], None] | None,
                   log: Callable[[str], None], observer: SafeObserver) -> SceneSummary:
    started = time.perf_counter()
    cfg, camera, arm = rig.cfg, rig.camera, rig.arm
    exists = scene_id in store.scene_ids
    if exists and not resume:
        raise CaptureError(f"scene {scene_id!r} already exists in {store.path}: pass --resume to finish "
                           "it, or choose another --scene")
    if exists:
        state = store.scene_state(scene_id)
        if state == "complete":
            log(f"{scene_id} is already complete; nothing to do")
            n = len(store.scene_image_indices(scene_id))
            return SceneSummary(scene_id, "complete", n, n, seconds=0.0)
        if state != "open":
            raise CaptureError(f"scene {scene_id!r} is {state}; only open scenes can be resumed")
        meta = store.scene_metadata(scene_id)
        from robot.planning import ViewPlan

        plan = ViewPlan.from_dict(meta["plan"])
        plan.check_rig(rig.rig)
        if rig.sim:
            from datasets.synth.cubes import CubeScene

            if "sim_scene" not in meta:
                raise CaptureError(f"scene {scene_id!r} was not captured on the simulated rig")
            # The render noise continues from a seed of its own, so the resumed views differ from
            # what an uninterrupted run would have drawn, but the scene is exactly the same.
            n_done = len(store.scene_image_indices(scene_id))
            camera.set_scene(CubeScene.from_metadata(meta["sim_scene"]),
                             seed=zlib.crc32(f"{meta['sim']['seed']}-{n_done}".encode()))
        if notes:
            store.update_scene_metadata(scene_id, {"notes": (meta.get("notes", "") + "\n" + notes).strip()})
    else:
        plan = rig.plan()
        meta = {"source": "sim-rig" if rig.sim else "rig", "notes": notes,
                "started_at": datetime.datetime.now().isoformat(timespec="seconds")}
        if rig.sim:
            sim_scene, seed = rig.sim_scene(scene_id)
            meta["sim"] = {"seed": [int(s) for s in seed], **to_dict(cfg.sim)}
            camera.set_scene(sim_scene, seed=zlib.crc32(f"{meta['sim']['seed']}-0".encode()))
            scene_meta = _jsonable(sim_scene.to_metadata())
            meta["objects"] = scene_meta["objects"]
            meta["sim_scene"] = scene_meta
        plan_dict = plan.to_dict()
        plan_dict.pop("drops", None)  # the rejected candidates are planning diagnostics, not the plan
        meta.update({
            "plan": plan_dict,
            "rig": _jsonable({"config": to_dict(rig.rig)}),
            "camera": _jsonable({"settings": camera.settings(), "intrinsics": camera.intrinsics(),
                                 "distortion": camera.distortion()}),
            "calibration": _jsonable(rig.calibration) if rig.calibration else None,
            "capture": _jsonable(to_dict(cfg)),
        })
        store.add_scene(scene_id, meta)

    poses_in_order = plan.ordered_joint_positions
    n_views = len(poses_in_order)
    done = len(store.scene_image_indices(scene_id))
    summary = SceneSummary(scene_id, "open", n_views, done)
    K, dist = camera.intrinsics(), camera.distortion()
    write_gt = rig.sim and store.has_ground_truth
    locked = None
    view = done
    observer.on_scene_start(scene_id, plan, arm, K, cfg.camera.width, cfg.camera.height)
    observer.on_arm_state(arm.joint_positions())
    try:
        if done:
            _reach_resume_view(arm, poses_in_order, done, log)
            observer.on_arm_state(arm.joint_positions())
        for view in range(done, n_views):
            t0 = time.perf_counter()
            move = arm.move_to(poses_in_order[view], wait=True)
            _wait_settled(arm, cfg.settle_timeout_s)
            settled_at = time.time()
            t1 = time.perf_counter()
            report_motion(observer, move)  # after t1: the observer's time is software time
            if locked is None and cfg.camera.lock_exposure:
                # Lock at the first view of this run, once auto exposure has seen the scene.
                locked = camera.lock_exposure()
                store.update_scene_metadata(scene_id, {"exposure_lock": _jsonable(locked)})
            best, best_check, takes, camera_s, check_s = None, None, 0, 0.0, 0.0
            for take in range(cfg.checks.max_retakes + 1):
                tc = time.perf_counter()
                if take:  # waiting before a retake counts as camera time, not software time
                    time.sleep(cfg.checks.retake_delay_s)
                    settled_at = time.time()
                frame = camera.read_after(settled_at)
                tk = time.perf_counter()
                result = check_image(frame.image, cfg.checks)
                camera_s += tk - tc
                check_s += time.perf_counter() - tk
                takes += 1
                if best is None or result.score() > best_check.score():
                    best, best_check = frame, result
                if result.ok:
                    break
            q = arm.joint_positions()
            pose = arm.camera_pose_world(q)
            tw = time.perf_counter()
            kwargs = {}
            if write_gt:
                kwargs = {"label_map": best.ground_truth["label_map"][None],
                          "amodal_masks": best.ground_truth["amodal_masks"][None]}
            index = store.append_images(scene_id, best.image[None], pose[None], K[None],
                                        distortion=dist[None], timestamp=np.array([best.timestamp]),
                                        joint_positions=q[None], **kwargs)
            t_end = time.perf_counter()
            observer.on_frame_committed(scene_id, view, int(index[0]), best.image, pose, K, q,
                                        float(best.timestamp))
            summary.views.append(ViewRecord(view, int(index[0]), takes, best_check.to_dict(),
                                            move_s=t1 - t0, camera_s=camera_s, check_s=check_s,
                                            write_s=t_end - tw, total_s=t_end - t0))
            if best_check.problems:
                log(f"{scene_id} view {view}: kept the best of {takes} takes, still "
                    + "; ".join(best_check.problems))
            if progress is not None:
                progress(view + 1, n_views)
    except KeyboardInterrupt:
        arm.stop()
        _record_run(store, scene_id, summary, started, "interrupted")
        observer.on_scene_end(scene_id, "interrupted")
        raise CaptureInterrupted(
            f"interrupted at view {view} of {scene_id}: arm stopped, {summary.views_committed} of "
            f"{n_views} views committed; finish it with `ldsrig capture scene --resume --scene "
            f"{scene_id}` (or `ldsrig capture session --resume`, which finishes open scenes first)") from None
    except CameraError as exc:
        arm.stop()
        _record_run(store, scene_id, summary, started, f"camera failed: {exc}")
        observer.on_scene_end(scene_id, "failed")
        raise CameraError(f"{exc}; {scene_id} stopped at view {view}: arm halted, "
                          f"{summary.views_committed} of {n_views} views kept; fix the camera and "
                          f"finish it with `ldsrig capture scene --resume --scene {scene_id}` (or "
                          f"`ldsrig capture session --resume`)") from None
    except BaseException:
        arm.stop()
        _record_run(store, scene_id, summary, started, "failed")
        observer.on_scene_end(scene_id, "failed")
        raise
    finally:
        if locked:
            camera.unlock_exposure()
    if cfg.return_home:
        report_motion(observer, arm.move_to(plan.home, wait=True))
    store.set_scene_state(scene_id, "complete")
    summary.state = "complete"
    _record_run(store, scene_id, summary, started, "complete")
    observer.on_scene_end(scene_id, "complete")
    return summary


def _record_run(store, scene_id: str, summary: SceneSummary, started: float, outcome: str) -> None:
    """Append this run's per-view diagnostics to the scene metadata (best effort)."""
    summary.seconds = time.perf_counter() - started
    try:
        meta = store.scene_metadata(scene_id)
        runs = list(meta.get("capture_runs", []))
        runs.append({"outcome": outcome, "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
                     "seconds": round(summary.seconds, 3), "timing": summary.timing(),
                     "views": [dict(dataclasses.asdict(v), software_s=v.software_s) for v in summary.views]})
        store.update_scene_metadata(scene_id, {"capture_runs": _jsonable(runs)})
    except Exception as exc:  # diagnostics must never mask the real outcome, but say they failed
        logging.getLogger(__name__).warning("scene %s: capture diagnostics not recorded: %s", scene_id, exc)


# -- a session of scenes with operator prompts ---------------------------------------------------

SESSION_HELP = "[Enter] capture   n: add notes   s: skip   r: redo previous scene   q: quit"


@dataclass
class SessionResult:
    scenes: list[SceneSummary] = field(default_factory=list)
    skipped: int = 0
    redone: list[str] = field(default_factory=list)  # scenes marked aborted and captured again
    quit_early: bool = False


def run_session(store, rig: CaptureRig, n_scenes: int, *, prompt: Callable[[str], str] | None,
                echo: Callable[[str], None] = print, resume: bool = False, prefix: str = "scene",
                progress_factory=None, observer: CaptureObserver | None = None) -> SessionResult:
    """Capture ``n_scenes`` scenes, asking the operator before each one (``prompt`` None: never).

    ``prompt(text)`` returns the operator's answer; EOF (``EOFError``) means quit.  Choices: capture,
    add notes, skip this scene, redo the previous scene (marked aborted, its views kept on disk,
    captured again under a new id), quit.  With ``resume``, open scenes are finished first.
    ``observer`` watches every scene (see :func:`capture_scene`)."""
    result = SessionResult()
    observer = SafeObserver(observer)
    pending_resume = open_scenes(store) if resume else []
    slot = 0
    last_complete: str | None = None
    while slot < n_scenes:
        resuming = bool(pending_resume)
        scene_id = pending_resume[0] if resuming else next_scene_id(store, prefix)
        notes = ""
        redo_of = None
        if prompt is not None:
            action = "?"
            while action not in ("", "c", "s", "r", "q"):
                what = "resume" if resuming else ("simulated: new random cubes for" if rig.sim else "arrange 2-4 cubes for")
                try:
                    action = prompt(f"scene {slot + 1}/{n_scenes} ({what} {scene_id}). {SESSION_HELP}").strip().lower()
                except EOFError:
                    action = "q"
                if action == "n":
                    try:
                        notes = (notes + "\n" + prompt("notes for this scene").strip()).strip()
                    except EOFError:
                        pass
                    echo(f"notes: {notes!r}")
                elif action == "r" and last_complete is None:
                    echo("nothing to redo yet")
                    action = "?"
                elif action not in ("", "c", "s", "r", "q", "n"):
                    echo(f"unknown choice {action!r}")
            if action == "q":
                result.quit_early = True
                break
            if action == "s":
                echo(f"skipped scene {slot + 1}/{n_scenes}")
                result.skipped += 1
                if resuming:  # a skipped unfinished scene is given up, its views kept
                    store.set_scene_state(scene_id, "aborted")
                    pending_resume.pop(0)
                slot += 1
                continue
            if action == "r":
                store.set_scene_state(last_complete, "aborted")
                result.redone.append(last_complete)
                redo_of = last_complete
                result.scenes = [s for s in result.scenes if s.scene_id != last_complete]
                slot -= 1  # the redo takes the previous scene's place
                if resuming:  # keep the open scene for after the redo
                    scene_id = next_scene_id(store, prefix)
                    resuming = False
        if redo_of:
            notes = (f"redo of {redo_of}\n" + notes).strip()
        progress = progress_factory(scene_id) if progress_factory else None
        try:
            summary = capture_scene(store, scene_id, rig, notes=notes, resume=resuming,
                                    progress=progress.update if progress else None, log=echo,
                                    observer=observer)
        finally:
            if progress:
                progress.close()
        if resuming:
            pending_resume.pop(0)
        result.scenes.append(summary)
        last_complete = scene_id
        echo(summary.line())
        slot += 1
    return result


def contact_sheet(store, scene_id: str, path: str | Path, columns: int = 6, scale: float = 1.0) -> Path:
    """A PNG grid of one scene's committed views (view number in the corner)."""
    import cv2

    indices = store.scene_image_indices(scene_id)
    if len(indices) == 0:
        raise CaptureError(f"scene {scene_id!r} has no committed views")
    rgb = store.images(indices, fields=["rgb"])["rgb"]
    n, h, w, _ = rgb.shape
    if scale != 1.0:
        rgb = np.stack([cv2.resize(im, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA) for im in rgb])
        n, h, w, _ = rgb.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 4) + 4, columns * (w + 4) + 4, 3), 255, np.uint8)
    for i, im in enumerate(rgb):
        r, c = divmod(i, columns)
        y, x = 4 + r * (h + 4), 4 + c * (w + 4)
        tile = im.copy()
        cv2.putText(tile, str(i), (3, max(10, h // 8)), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, h / 300), (255, 255, 0), 1,
                    cv2.LINE_AA)
        sheet[y:y + h, x:x + w] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path


def image_checksums(store, indices) -> list[str]:
    """SHA-256 of each image's RGB bytes (kill/resume checks: committed views never change)."""
    rgb = store.images(np.asarray(indices), fields=["rgb"])["rgb"]
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in rgb]
