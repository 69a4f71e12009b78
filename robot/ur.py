"""Universal Robots back end through the vendor-supported ``ur-rtde`` SDK (optional extra ``ur``).

``rtde_control``/``rtde_receive`` are imported only when connecting, so everything else works
without the SDK.  Moves are checked by :class:`BaseArm` before the first command; the controller's
``moveJ`` follows the same straight joint-space path that was checked.  While moving, a protective
or emergency stop, or a lost connection, ends the move with a :class:`RobotError` that says so.

The kinematics must match the arm: use ``model: DH.UR5`` (or DH.UR3 / DH.UR10), whose joint
zeros are UR's own.
"""

from __future__ import annotations

import time

import numpy as np

from robot.arm import BaseArm, MovePlan, log
from robot.config import RigConfig
from robot.errors import RobotError

_INSTALL_HINT = "pip install 'ldsrig[ur]' (or: pip install ur-rtde)"


def _sdk_interfaces(host: str, frequency: float):
    """(control, receive) interfaces from ur-rtde, with user-facing errors."""
    try:
        import rtde_control
        import rtde_receive
    except ImportError as exc:
        raise RobotError(f"the UR back end needs the ur-rtde SDK, which is not installed ({exc}); {_INSTALL_HINT}") from None
    try:
        receive = rtde_receive.RTDEReceiveInterface(host, frequency)
        control = rtde_control.RTDEControlInterface(host, frequency)
    except (RuntimeError, OSError) as exc:
        raise RobotError(f"cannot connect to the UR robot at {host} ({exc}); check the cable and ur.host, "
                         f"and that the robot is powered on and in remote control mode") from None
    return control, receive


class URArm(BaseArm):
    def __init__(self, rig: RigConfig, host: str | None = None, interfaces=None):
        super().__init__(rig)
        if "UR" not in rig.model.upper():
            log.warning("URArm with model %r: the safety checks use that model's kinematics; use DH.UR5/UR3/UR10", rig.model)
        self.host = host or rig.ur.host
        self._interfaces = interfaces or _sdk_interfaces     # tests pass a stand-in controller
        self.control = None
        self.receive = None
        self._target = None

    def __enter__(self) -> "URArm":
        self.control, self.receive = self._interfaces(self.host, self.rig.ur.frequency)
        return self

    def __exit__(self, *exc) -> None:
        if self.control is None:
            return
        try:
            if self._async_running():
                self.stop()
            self.control.stopScript()
        finally:
            for iface in (self.control, self.receive):
                try:
                    iface.disconnect()
                except Exception:
                    pass
            self.control = self.receive = None

    # -- state --------------------------------------------------------------------------------
    def _require(self):
        if self.control is None or self.receive is None:
            raise RobotError("UR arm is not connected: use it as a context manager (with URArm(rig) as arm)")
        if not self.receive.isConnected():
            raise RobotError(f"lost the connection to the UR robot at {self.host}")

    def joint_positions(self) -> np.ndarray:
        self._require()
        return np.asarray(self.receive.getActualQ(), dtype=float)

    def safety_state(self) -> str:
        self._require()
        if self.receive.isEmergencyStopped():
            return "emergency stop"
        if self.receive.isProtectiveStopped():
            return "protective stop"
        return "normal"

    def _async_running(self) -> bool:
        # ur-rtde: progress < 0 means no asynchronous operation is running
        return self.control is not None and self.control.getAsyncOperationProgress() >= 0

    def is_settled(self) -> bool:
        self._require()
        if self._async_running():
            return False
        qd = np.asarray(self.receive.getActualQd(), dtype=float)
        at_target = self._target is None or np.max(np.abs(self.joint_positions() - self._target)) \
            <= max(self.rig.motion.settle_tolerance_rad, 2e-3)
        return bool(np.max(np.abs(qd)) < 1e-3 and at_target)

    # -- motion -------------------------------------------------------------------------------
    def _execute(self, plan: MovePlan, wait: bool) -> None:
        self._require()
        state = self.safety_state()
        if state != "normal":
            raise RobotError(f"UR robot is in {state}: clear it on the teach pendant, then retry")
        vmax, amax = self.rig.joint_limits_per_joint(self.dof)
        # moveJ limits the leading joint; the smallest per-joint limit keeps every joint within its own
        speed, accel = float(np.min(vmax)), float(np.min(amax))
        self._target = np.asarray(plan.waypoints[-1], dtype=float)
        path = [list(map(float, q)) + [speed, accel, 0.0] for q in plan.waypoints]
        ok = self.control.moveJ(path, True) if len(path) > 1 else \
            self.control.moveJ(path[0][:self.dof], speed, accel, True)
        if ok is False:
            raise RobotError("UR controller rejected the moveJ command (check the pendant for the reason)")
        if wait:
            self.wait_until_settled(self.rig.ur.move_timeout_s)

    def wait_until_settled(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._require()
            state = self.safety_state()
            if state != "normal":
                q = np.array2string(self.joint_positions(), precision=3)
                raise RobotError(f"UR robot entered {state} during the move, at q = {q}")
            if self.is_settled():
                time.sleep(self.rig.motion.settle_time_s)   # let the camera mount stop ringing
                return True
            if time.monotonic() > deadline:
                raise RobotError(f"UR move did not finish within {timeout:.0f} s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.control is None:
            return
        _, amax = self.rig.joint_limits_per_joint(self.dof)
        # brake harder than we accelerate, but within what the arm allows
        self.control.stopJ(float(max(2.0 * np.min(amax), 2.0)), False)
