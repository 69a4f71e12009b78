"""The arm interface and the logic every back end shares: kinematics, safety checks, refusals.

    with SimulatedArm(rig) as arm:           # or URArm(rig)
        arm.move_to(q)                        # checks the whole path first, then moves and settles
        T = arm.camera_pose_world()           # base pose * fkine(q) * hand-eye

A move goes straight along the joint-space line to the target.  When that line breaks a rule
(typically the camera dipping under the table margin between two low views) and
``allow_via_home`` is set, the move is routed through the home configuration instead, both legs
checked.  When no route is safe the move is refused with an :class:`UnsafeMoveError` naming the
rule, before any motion command is sent.  Ctrl-C or any exception while moving sends a stop and
logs the state the arm stopped in.
"""

from __future__ import annotations

import abc

import logging
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from robot.config import RigConfig
from robot.errors import UnsafeMoveError
from robot.model import arm_model_for
from robot.safety import SafetyChecker
from robot.trajectory import JointTrajectory, check_move, first_unsafe_on_path, plan_trajectory

log = logging.getLogger("ldsrig.robot")


@runtime_checkable
class Arm(Protocol):
    rig: RigConfig

    def __enter__(self) -> "Arm": ...
    def __exit__(self, *exc) -> None: ...
    def joint_positions(self) -> np.ndarray: ...
    def move_to(self, q, wait: bool = True) -> "MovePlan": ...
    def stop(self) -> None: ...
    def camera_pose_world(self, q=None) -> np.ndarray: ...
    def is_settled(self) -> bool: ...
    def wait_until_settled(self, timeout: float = 60.0) -> bool: ...


@dataclass
class MovePlan:
    """What a move does: the checked legs (one, or two via home) and their trajectories."""

    waypoints: list[np.ndarray]                  # configurations after each leg
    trajectories: list[JointTrajectory] = field(default_factory=list)

    @property
    def via_home(self) -> bool:
        return len(self.waypoints) > 1

    @property
    def duration(self) -> float:
        return float(sum(t.duration for t in self.trajectories))


class BaseArm(abc.ABC):
    """Shared kinematics and safety; back ends implement ``_execute``, ``stop``, ``joint_positions``,
    ``is_settled`` and connection handling."""

    allow_via_home = True

    def __init__(self, rig: RigConfig):
        self.rig = rig
        self.model = arm_model_for(rig)
        self.checker = SafetyChecker(rig, self.model)
        self.home_q = np.asarray(rig.home, dtype=float) if rig.home else self.model.ready.copy()
        if self.home_q.shape != (self.model.n,):
            raise UnsafeMoveError(f"home has {self.home_q.size} values but {rig.model} has {self.model.n} joints")

    @property
    def dof(self) -> int:
        return self.model.n

    def camera_pose_world(self, q=None) -> np.ndarray:
        q = self.joint_positions() if q is None else np.asarray(q, dtype=float)
        return self.rig.T_world_base @ self.model.fkine_flange(q) @ self.rig.T_flange_camera

    def joint_limit_margins(self, q=None) -> np.ndarray:
        """Per joint, radians to the nearer joint limit (negative: outside)."""
        q = self.joint_positions() if q is None else np.asarray(q, dtype=float)
        lo, hi = self.model.qlim
        return np.minimum(q - lo, hi - q)

    def plan_move(self, target) -> MovePlan:
        """Check the move from the current configuration to ``target``; refuse if no route is safe."""
        target = np.asarray(target, dtype=float).reshape(-1)
        if target.shape != (self.dof,):
            raise UnsafeMoveError(f"move refused: target has {target.size} joint values, the arm has {self.dof}")
        if not np.all(np.isfinite(target)):
            raise UnsafeMoveError("move refused: target has non-finite joint values")
        start = self.joint_positions()
        direct = first_unsafe_on_path(self.checker, start, target)
        if direct is None:
            legs = [target]
        else:
            frac, violation = direct
            if frac == 1.0 or not self.allow_via_home:
                check_move(self.checker, start, target)       # raises with the full reason
            try:
                check_move(self.checker, start, self.home_q)
                check_move(self.checker, self.home_q, target)
            except UnsafeMoveError as exc:
                raise UnsafeMoveError(f"move refused before any motion: the direct path breaks a rule at "
                                      f"{frac:.0%} of the way ({violation}) and the route via home too ({exc})") from None
            legs = [self.home_q.copy(), target]
        plan = MovePlan(waypoints=legs)
        q0 = start
        for q1 in legs:
            plan.trajectories.append(plan_trajectory(self.rig, q0, q1))
            q0 = q1
        return plan

    def move_to(self, q, wait: bool = True) -> MovePlan:
        """Move to joint configuration ``q`` (radians); with ``wait`` return once settled."""
        plan = self.plan_move(q)
        try:
            self._execute(plan, wait)
        except BaseException as exc:       # Ctrl-C included: the arm must not keep going
            self._emergency_stop(exc)
            raise
        return plan

    def home(self, wait: bool = True) -> MovePlan:
        return self.move_to(self.home_q, wait=wait)

    def _emergency_stop(self, exc: BaseException) -> None:
        try:
            self.stop()
        finally:
            try:
                q = self.joint_positions()
                state = f"stopped at q = {np.array2string(q, precision=3)}"
            except Exception as state_exc:  # the connection may be what failed
                state = f"state unknown ({state_exc})"
            log.warning("motion interrupted by %s: stop sent, arm %s", type(exc).__name__, state)

    # back-end hooks
    @abc.abstractmethod
    def _execute(self, plan: MovePlan, wait: bool) -> None:
        """Send the planned motion to the arm (and wait for it when ``wait``)."""

    @abc.abstractmethod
    def joint_positions(self) -> np.ndarray:
        """The arm's current joint angles (radians)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop any motion now."""

    @abc.abstractmethod
    def is_settled(self) -> bool:
        """True once the arm has stopped moving."""

    @abc.abstractmethod
    def wait_until_settled(self, timeout: float = 60.0) -> bool:
        """Block until the arm has settled (True) or ``timeout`` seconds passed (False)."""
