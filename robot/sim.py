"""The simulated arm: the rig's kinematics, motion stepped along the planned trajectory at the
configured speeds, and settling after each move.

``fast=True`` keeps a virtual clock instead of sleeping, so tests and synthetic capture run as
fast as the checks allow while the arm still passes through every trajectory sample.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from robot.arm import BaseArm, MovePlan
from robot.config import RigConfig
from robot.errors import RobotError


class SimulatedArm(BaseArm):
    def __init__(self, rig: RigConfig, fast: bool = True, start_q=None):
        super().__init__(rig)
        self.fast = fast
        self._q = self.home_q.copy() if start_q is None else np.asarray(start_q, dtype=float).copy()
        self._qd = np.zeros(self.dof)
        self._target = self._q.copy()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._moving = False
        self._virtual_now = 0.0
        self._settled_at = 0.0          # clock time from which the arm counts as settled
        self._connected = False
        self.commands_sent = 0          # motion commands executed (tests check refusals send none)
        self.stopped = False            # whether the last motion ended by a stop

    # -- connection ---------------------------------------------------------------------------
    def __enter__(self) -> "SimulatedArm":
        self._connected = True
        return self

    def __exit__(self, *exc) -> None:
        if self._moving:
            self.stop()
        self._join()
        self._connected = False

    # -- state --------------------------------------------------------------------------------
    def _now(self) -> float:
        return self._virtual_now if self.fast else time.monotonic()

    def joint_positions(self) -> np.ndarray:
        with self._lock:
            return self._q.copy()

    def joint_velocities(self) -> np.ndarray:
        with self._lock:
            return self._qd.copy()

    def is_moving(self) -> bool:
        return self._moving

    def is_settled(self) -> bool:
        """Not moving, at the commanded configuration, and past the settling time."""
        with self._lock:
            return (not self._moving and self._now() >= self._settled_at
                    and np.max(np.abs(self._q - self._target)) <= self.rig.motion.settle_tolerance_rad)

    def wait_until_settled(self, timeout: float = 60.0) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.fast:
            self._virtual_now = max(self._virtual_now, self._settled_at)
            return self.is_settled()
        deadline = time.monotonic() + timeout
        while not self.is_settled() and time.monotonic() < deadline:
            if self._stop.is_set():
                return False
            time.sleep(0.005)
        return self.is_settled()

    # -- motion -------------------------------------------------------------------------------
    def _execute(self, plan: MovePlan, wait: bool) -> None:
        if not self._connected:
            raise RobotError("simulated arm is not connected: use it as a context manager (with SimulatedArm(rig) as arm)")
        self._join()
        self._stop.clear()
        self.stopped = False
        self._target = np.asarray(plan.waypoints[-1], dtype=float).copy()
        self._moving = True
        self.commands_sent += 1
        if wait:
            try:
                self._run(plan)
            finally:
                self._moving = False
            self.wait_until_settled()
        else:
            self._thread = threading.Thread(target=self._run_bg, args=(plan,), daemon=True)
            self._thread.start()

    def _run_bg(self, plan: MovePlan) -> None:
        try:
            self._run(plan)
        finally:
            self._moving = False

    def _run(self, plan: MovePlan) -> None:
        t_start = self._now()
        offset = 0.0
        for traj in plan.trajectories:
            for t, q, qd in zip(traj.t, traj.q, traj.qd):
                if self._stop.is_set():
                    with self._lock:
                        self._qd[:] = 0.0
                    self.stopped = True
                    return
                if self.fast:
                    self._virtual_now = t_start + offset + t
                else:
                    delay = t_start + offset + t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                with self._lock:
                    self._q[:] = q
                    self._qd[:] = qd
            offset += traj.duration
        with self._lock:
            self._qd[:] = 0.0
            self._settled_at = self._now() + self.rig.motion.settle_time_s

    def stop(self) -> None:
        """Stop where the arm is (the simulation brakes instantly)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        with self._lock:
            self._qd[:] = 0.0
            self._target = self._q.copy()
            self._settled_at = self._now() + self.rig.motion.settle_time_s
        self._moving = False

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
