"""The Rerun views: a capture as it happens (:class:`RerunCaptureView`, a capture observer) and a
stored scene's views in their poses (:func:`view_store`).

Where a recording goes (:func:`choose_target`): the Rerun viewer is spawned when a display is
available; without one the recording is written to an .rrd file; an explicit ``--rrd PATH``
always writes that file (and spawns the viewer too when there is a display and ``--view``).

Entities (world = the rig's table frame, metres, +z up; camera frames in OpenCV axes, which
Rerun calls RDF: +x right, +y down, +z forward):

    world                               ViewCoordinates RIGHT_HAND_Z_UP (static)
    world/table                         the scene area's outline on the table top
    world/plan/viewpoints, path, look   planned camera centres (labelled by visiting order), the
                                        tour through them, and their viewing directions
    world/arm/links, joints             the arm: its link frames' origins by forward kinematics
    world/arm/camera                    the camera on the arm: Transform3D + Pinhole (its frustum)
    world/arm/camera/image              the latest committed frame (JPEG: the live feed)
    world/scenes/<scene>/view_<k>       each committed (or stored) view: Transform3D
                                        (camera-to-world) + Pinhole, and its image below it
    world/scenes/<scene>/objects        ground-truth objects, where the store has them

Timelines: ``step`` (every arm state and frame in the order they happened: scrub it to watch the
arm move and the frames arrive), ``view`` (the view index within its scene), ``capture_time``
(the frame's timestamp; arm states the wall clock when they were reported).

Rerun places pixel (0, 0)'s corner at the image origin, OpenCV its centre, so the logged
``image_from_camera`` is K with the principal point moved by half a pixel.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capture.observer import CaptureObserver
from common.errors import UserError

APPLICATION_ID = "ldsrig"
RERUN_REQUIREMENT = "rerun-sdk>=0.41"
INSTALL_HINT = (f"the Rerun view needs the optional rerun-sdk package: install it with "
                f"`pip install 'ldsrig[view]'` (or `.venv/bin/python -m pip install '{RERUN_REQUIREMENT}'`)")
FRUSTUM_DEPTH_M = 0.05  # how far from the camera centre the image plane is drawn


class ViewError(UserError):
    """A view that cannot be shown as asked (no rerun-sdk, no poses, an unknown scene)."""


def import_rerun():
    """The ``rerun`` module, or a :class:`ViewError` that says how to install it."""
    try:
        import rerun
    except ImportError:
        raise ViewError(INSTALL_HINT) from None
    return rerun


def display_available() -> bool:
    """Whether a viewer window could open here (macOS and Windows always have a desktop)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass(frozen=True)
class ViewTarget:
    """Where a recording goes: the spawned viewer, an .rrd file, or both."""

    spawn: bool
    rrd: Path | None

    def describe(self) -> str:
        parts = (["the Rerun viewer"] if self.spawn else []) + ([str(self.rrd)] if self.rrd else [])
        return " and ".join(parts)


def default_rrd_path(store: str | Path) -> Path:
    """STORE.rrd beside the store: ``raw.zarr`` -> ``raw.rrd``."""
    store = Path(store)
    return store.with_name(store.stem + ".rrd") if store.suffix else store.with_name(store.name + ".rrd")


def choose_target(view: bool, rrd: str | Path | None, default_rrd: str | Path) -> ViewTarget | None:
    """``view``: show it (the viewer with a display, else ``default_rrd``); ``rrd``: write that
    file (and, with ``view`` and a display, show it too). Neither: no view (None)."""
    if rrd is not None:
        return ViewTarget(spawn=view and display_available(), rrd=Path(rrd))
    if not view:
        return None
    if display_available():
        return ViewTarget(spawn=True, rrd=None)
    return ViewTarget(spawn=False, rrd=Path(default_rrd))


def open_recording(target: ViewTarget, name: str, blueprint=None):
    """A Rerun recording stream sending to ``target`` (the viewer, a file, or both), laid out by
    ``blueprint`` (None: Rerun's automatic layout)."""
    rr = import_rerun()
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4())
    sinks = []
    if target.spawn:
        try:
            rr.spawn(connect=False, recording=rec)
        except Exception as exc:  # noqa: BLE001 - no viewer binary, no window system...
            if target.rrd is None:
                raise ViewError(f"could not start the Rerun viewer ({exc}); pass --rrd PATH to "
                                "write a recording instead") from None
        else:
            sinks.append(rr.GrpcSink())
    if target.rrd is not None:
        try:
            target.rrd.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ViewError(f"cannot write the recording {target.rrd}: {exc}") from None
        sinks.append(rr.FileSink(str(target.rrd)))
    rec.set_sinks(*sinks, default_blueprint=blueprint)
    rec.send_recording_name(name)
    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    return rec


def close_recording(rec) -> None:
    """Flush everything to the viewer and the file, and close the file (a viewer that went away
    must not hold the command up for long)."""
    rec.flush(timeout_sec=60.0)
    rec.disconnect()


def _part(name: str) -> str:
    return import_rerun().escape_entity_path_part(str(name))


def rerun_intrinsics(K: np.ndarray) -> np.ndarray:
    """OpenCV K (pixel (0, 0)'s centre at the origin) as Rerun's image_from_camera (its corner)."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def capture_blueprint():
    """The live view's layout: the rig in 3D; what the camera sees, the joint angles and the
    scene log beside it."""
    rrb = import_rerun().blueprint
    return rrb.Blueprint(rrb.Horizontal(
        rrb.Spatial3DView(origin="world", name="rig"),
        rrb.Vertical(rrb.Spatial2DView(origin="world/arm/camera", name="camera"),
                     rrb.TimeSeriesView(origin="arm", name="joint angles (rad)"),
                     rrb.TextLogView(origin="log", name="log")),
        column_shares=[3, 1]))


def log_camera(rec, path: str, camera_pose_world: np.ndarray, K: np.ndarray | None, width: int,
               height: int, rgb: np.ndarray | None = None) -> None:
    """A camera at ``path``: its camera-to-world transform, its pinhole (the frustum) when ``K``
    is given, and its image below it when ``rgb`` is."""
    rr = import_rerun()
    T = np.asarray(camera_pose_world, dtype=np.float64)
    rec.log(path, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))
    if K is not None:
        rec.log(path, rr.Pinhole(image_from_camera=rerun_intrinsics(K), resolution=[width, height],
                                 camera_xyz=rr.ViewCoordinates.RDF,
                                 image_plane_distance=FRUSTUM_DEPTH_M))
    if rgb is not None:
        rec.log(f"{path}/image", rr.Image(np.ascontiguousarray(rgb)))


def log_table(rec, rig) -> None:
    """The scene area's outline on the table top (static)."""
    rr = import_rerun()
    (cx, cy), (sx, sy), z = rig.table.centre, rig.table.size, rig.table.height
    corners = [[cx - sx / 2, cy - sy / 2, z], [cx + sx / 2, cy - sy / 2, z], [cx + sx / 2, cy + sy / 2, z],
               [cx - sx / 2, cy + sy / 2, z], [cx - sx / 2, cy - sy / 2, z]]
    rec.log("world/table", rr.LineStrips3D([corners], colors=[[160, 160, 160]]), static=True)


def log_plan(rec, plan, home_camera_position: np.ndarray | None = None) -> None:
    """The planned viewpoints: camera centres labelled by visiting order, the tour through them
    (from and back to home where known) and each view's viewing direction."""
    rr = import_rerun()
    poses = np.asarray(plan.ordered_camera_poses, dtype=np.float64)
    centres = poses[:, :3, 3]
    rec.log("world/plan/viewpoints", rr.Points3D(centres, labels=[f"view {k}" for k in range(len(centres))],
                                                 colors=[[255, 200, 0]], radii=0.006))
    tour = centres if home_camera_position is None else np.vstack([home_camera_position, centres,
                                                                   home_camera_position])
    rec.log("world/plan/path", rr.LineStrips3D([tour], colors=[[255, 200, 0]], radii=0.001))
    rec.log("world/plan/look", rr.Arrows3D(origins=centres, vectors=poses[:, :3, 2] * FRUSTUM_DEPTH_M,
                                           colors=[[255, 140, 0]], radii=0.001))
    rec.log("world/plan/target", rr.Points3D([np.asarray(plan.target_world, dtype=np.float64)],
                                             colors=[[255, 0, 0]], radii=0.004))


def arm_link_points(arm, q) -> np.ndarray:
    """World positions of the arm's link frames (base first, flange last) and the camera: the
    arm as a chain, by forward kinematics of its model at ``q``."""
    frames = arm.model.collision_frames(q)                      # base frame
    T_world_base = np.asarray(arm.rig.T_world_base, dtype=np.float64)
    points = (T_world_base[:3, :3] @ frames[:, :3, 3].T).T + T_world_base[:3, 3]
    camera = np.asarray(arm.camera_pose_world(q))[:3, 3]
    # consecutive duplicates (fixed joints, coincident frames) would be zero-length segments
    keep = np.r_[True, np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-9]
    return np.vstack([points[keep], camera])


class RerunCaptureView(CaptureObserver):
    """The live view of a capture: the arm moving, the camera frustum with it, the planned
    viewpoints, and every committed frame in its pose."""

    def __init__(self, target: ViewTarget, name: str):
        self.rr = import_rerun()
        self.target, self.name = target, name
        self._rec = None  # opened at the first event: a capture refused up front leaves no file
        self.step = 0
        self.arm = None
        self.size = (0, 0)
        self.K = None
        self._table_logged = False

    @property
    def rec(self):
        if self._rec is None:
            self._rec = open_recording(self.target, self.name, capture_blueprint())
        return self._rec

    def _tick(self, timestamp: float | None = None) -> None:
        self.rec.reset_time()  # only frames carry a "view"
        self.rec.set_time("step", sequence=self.step)
        self.rec.set_time("capture_time", timestamp=time.time() if timestamp is None else timestamp)
        self.step += 1

    def on_scene_start(self, scene_id, plan, arm, intrinsics, width, height) -> None:
        rr = self.rr
        self.arm, self.K, self.size = arm, np.asarray(intrinsics, dtype=np.float64), (int(width), int(height))
        self._tick()
        if not self._table_logged:
            log_table(self.rec, arm.rig)
            self._table_logged = True
        home = np.asarray(arm.camera_pose_world(plan.home))[:3, 3]
        log_plan(self.rec, plan, home)
        self.rec.log("world/arm/camera", rr.Pinhole(
            image_from_camera=rerun_intrinsics(self.K), resolution=list(self.size),
            camera_xyz=rr.ViewCoordinates.RDF, image_plane_distance=FRUSTUM_DEPTH_M))
        self.rec.log("log", rr.TextLog(f"{scene_id}: {len(plan)} planned views"))

    def on_arm_state(self, q) -> None:
        if self.arm is None:
            return
        rr = self.rr
        self._tick()
        points = arm_link_points(self.arm, q)
        self.rec.log("world/arm/links", rr.LineStrips3D([points], colors=[[90, 140, 230]], radii=0.012))
        self.rec.log("world/arm/joints", rr.Points3D(points[:-1], colors=[[40, 60, 120]], radii=0.018))
        T = np.asarray(self.arm.camera_pose_world(q), dtype=np.float64)
        self.rec.log("world/arm/camera", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))

    def on_frame_committed(self, scene_id, view, image_index, rgb, camera_pose_world, intrinsics,
                           joint_positions, timestamp) -> None:
        rr = self.rr
        self._tick(timestamp)
        self.rec.set_time("view", sequence=int(view))
        h, w = rgb.shape[:2]
        log_camera(self.rec, f"world/scenes/{_part(scene_id)}/view_{int(view):03d}", camera_pose_world,
                   intrinsics, w, h, rgb)
        # the live feed: a JPEG copy (the exact frame is the view's own image above)
        self.rec.log("world/arm/camera/image", rr.Image(np.ascontiguousarray(rgb)).compress(jpeg_quality=85))
        q = np.asarray(joint_positions, dtype=np.float64)
        self.rec.log("arm/joint_positions", rr.Scalars(q[np.isfinite(q)]))

    def on_scene_end(self, scene_id, state) -> None:
        self._tick()
        self.rec.log("log", self.rr.TextLog(f"{scene_id}: {state}"))

    def close(self) -> None:
        if self._rec is not None:
            close_recording(self._rec)
            self._rec = None


# -- stored scenes ---------------------------------------------------------------------------------

def poses_unknown(poses: np.ndarray) -> bool:
    """True when a scene's poses say nothing: every one the identity (how importers of sources
    without cameras fill the column, e.g. multi-object), so there is nothing to place."""
    poses = np.asarray(poses, dtype=np.float64)
    return bool(len(poses)) and bool(np.all(np.abs(poses - np.eye(4)) < 1e-12))


def _objects(rec, path: str, metadata: dict) -> None:
    rr = import_rerun()
    objects = [o for o in metadata.get("objects") or [] if isinstance(o, dict)
               and isinstance(o.get("position_world"), (list, tuple)) and len(o["position_world"]) == 3]
    if not objects:
        return
    centres = [[float(v) for v in o["position_world"]] for o in objects]
    half = [float(o.get("half_extent", 0.02)) for o in objects]
    colors = [[int(255 * min(max(c, 0.0), 1.0) ** (1 / 2.2)) for c in o["color_rgb"]]
              if isinstance(o.get("color_rgb"), (list, tuple)) and len(o["color_rgb"]) == 3 else [200, 200, 200]
              for o in objects]
    labels = [" ".join(str(o[k]) for k in ("color", "shape") if k in o) or f"object {i + 1}"
              for i, o in enumerate(objects)]
    rotations = [rr.RotationAxisAngle(axis=[0, 0, 1], degrees=float(o.get("rotation", 0.0))) for o in objects]
    rec.log(path, rr.Boxes3D(centers=centres, half_sizes=[[h, h, h] for h in half], rotation_axis_angles=rotations,
                             colors=colors, labels=labels), static=True)


@dataclass
class StoreViewSummary:
    scenes: list[str]
    views: int


def view_store(store_path: str | Path, target: ViewTarget, scenes: list[str] | None = None,
               all_scenes: bool = False) -> StoreViewSummary:
    """Log the views of a store's scenes in their poses: each view's frustum, pose and image, the
    scene's ground-truth objects where it has them. ``scenes`` None: the first scene (every
    scene that is not discarded with ``all_scenes``)."""
    from datasets.store import SceneStore

    with SceneStore.open(store_path) as store:
        chosen = _choose_scenes(store, store_path, scenes, all_scenes)
        rows = {}
        for sid in chosen:  # read and check everything before a viewer or file appears
            idx = store.scene_image_indices(sid)
            if len(idx) == 0:
                raise ViewError(f"scene {sid!r} of {store_path} has no committed views to show")
            fields = ["rgb", "camera_pose_world", "intrinsics", "timestamp", "view_index"]
            data = store.images(idx, fields=fields)
            if poses_unknown(data["camera_pose_world"]):
                raise ViewError(f"scene {sid!r} of {store_path} has no camera poses (every view's pose is "
                                "the identity: its source recorded none), so its views cannot be placed")
            rows[sid] = (data, store.scene_metadata(sid))
    rr = import_rerun()
    rec = open_recording(target, f"{Path(store_path).name}: {', '.join(chosen)}")
    views = 0
    for sid, (data, meta) in rows.items():
        base = f"world/scenes/{_part(sid)}"
        _objects(rec, f"{base}/objects", meta)
        h, w = data["rgb"].shape[1:3]
        for k in range(len(data["rgb"])):
            rec.set_time("view", sequence=int(data["view_index"][k]))
            if data["timestamp"][k] > 0:  # 0 = unknown (imports)
                rec.set_time("capture_time", timestamp=float(data["timestamp"][k]))
            log_camera(rec, f"{base}/view_{int(data['view_index'][k]):03d}", data["camera_pose_world"][k],
                       data["intrinsics"][k], w, h, data["rgb"][k])
            rec.reset_time()
            views += 1
        rec.log(f"{base}/centres", rr.Points3D(data["camera_pose_world"][:, :3, 3], radii=0.004,
                                               labels=[f"view {int(v)}" for v in data["view_index"]]),
                static=True)
    close_recording(rec)
    return StoreViewSummary(chosen, views)


def _choose_scenes(store, store_path, scenes, all_scenes) -> list[str]:
    known = store.scene_ids
    if scenes:
        missing = [s for s in scenes if s not in known]
        if missing:
            shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
            raise ViewError(f"no scene {missing[0]!r} in {store_path}; its scenes: {shown or 'none'}")
        return list(dict.fromkeys(scenes))
    candidates = [s for s in known if store.scene_state(s) != "discarded"
                  and len(store.scene_image_indices(s))]
    if not candidates:
        raise ViewError(f"{store_path} has no scene with committed views to show")
    return candidates if all_scenes else candidates[:1]
