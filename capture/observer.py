"""What a capture tells whoever watches it (a live view, a logger, a test): the plan of each
scene, the arm's configurations along every move, and each frame once it is committed.

The capture session calls a :class:`CaptureObserver`; every method does nothing by default, so
an observer overrides only what it shows.  Nothing here knows how it is shown: the Rerun live
view (``viz/rerun_view.py``) is one observer, and the capture code never imports it.

An observer that raises does not stop a capture: the session reports the failure once and stops
calling it (:class:`SafeObserver`), because a viewer that went away must not cost a scene.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("ldsrig.capture")


class CaptureObserver:
    """Callbacks from a capture, in the order they happen for each scene:
    ``on_scene_start`` once, then ``on_arm_state`` along each move and ``on_frame_committed``
    for each view, then ``on_scene_end``; ``close`` once when the capture is over."""

    def on_scene_start(self, scene_id: str, plan, arm, intrinsics: np.ndarray, width: int,
                       height: int) -> None:
        """A scene begins (or resumes). ``plan`` is its :class:`robot.planning.ViewPlan` (the
        planned viewpoints, in ``plan.order``); ``arm`` the rig's arm (its ``model``,
        ``rig`` and ``camera_pose_world(q)`` give the kinematics)."""

    def on_arm_state(self, q: np.ndarray) -> None:
        """The arm passed through joint configuration ``q`` (radians), in motion order."""

    def on_frame_committed(self, scene_id: str, view: int, image_index: int, rgb: np.ndarray,
                           camera_pose_world: np.ndarray, intrinsics: np.ndarray,
                           joint_positions: np.ndarray, timestamp: float) -> None:
        """View ``view`` of the scene is in the store (row ``image_index``): exactly what was
        written, the camera-to-world pose in OpenCV axes, metres."""

    def on_scene_end(self, scene_id: str, state: str) -> None:
        """The scene ended ``complete``, ``interrupted`` or ``failed``."""

    def close(self) -> None:
        """The capture is over: flush whatever is buffered."""


def report_motion(observer: CaptureObserver, move_plan, interval_s: float = 0.1) -> None:
    """Tell ``observer`` the configurations of a move (a :class:`robot.arm.MovePlan`): one
    trajectory sample every ``interval_s`` seconds of motion, and the last one."""
    for traj in move_plan.trajectories:
        next_t = 0.0
        last = len(traj.t) - 1
        for k, t in enumerate(traj.t):
            if t >= next_t or k == last:
                observer.on_arm_state(np.asarray(traj.q[k], dtype=float))
                next_t = t + interval_s


class SafeObserver(CaptureObserver):
    """Forwards to an observer until it raises; then warns once and forwards nothing more."""

    def __init__(self, inner: CaptureObserver | None):
        self.inner = inner

    def _call(self, name: str, *args) -> None:
        if self.inner is None:
            return
        try:
            getattr(self.inner, name)(*args)
        except Exception as exc:  # noqa: BLE001 - a broken view must not break the capture
            log.warning("the capture observer %s failed in %s (%s: %s); capturing on without it",
                        type(self.inner).__name__, name, type(exc).__name__, exc)
            self.inner = None

    def on_scene_start(self, *args) -> None:
        self._call("on_scene_start", *args)

    def on_arm_state(self, *args) -> None:
        self._call("on_arm_state", *args)

    def on_frame_committed(self, *args) -> None:
        self._call("on_frame_committed", *args)

    def on_scene_end(self, *args) -> None:
        self._call("on_scene_end", *args)

    def close(self) -> None:
        self._call("close")
