"""Joint-space trajectories between configurations, within the rig's speed and acceleration limits.

A quintic (``rtb.jtraj``) profile along the straight joint-space line q0 -> q1.  Its peak speed
is 1.875 d/T and its peak acceleration 10/sqrt(3) d/T^2 for a joint moving d in time T, so the
shortest duration that respects every joint's limits is

    T = max_j max(1.875 d_j / v_j, sqrt(5.7735 d_j / a_j)).

The path is the same straight joint-space line that a UR ``moveJ`` follows, so checking our samples
checks the path a real controller takes between the two configurations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot.config import RigConfig
from robot.errors import UnsafeMoveError
from robot.safety import SafetyChecker

_PEAK_SPEED = 1.875                       # max ds/dtau of 10t^3 - 15t^4 + 6t^5
_PEAK_ACCEL = 10.0 / np.sqrt(3.0)         # max d2s/dtau2 of the same polynomial


@dataclass
class JointTrajectory:
    t: np.ndarray     # (S,) seconds from the start
    q: np.ndarray     # (S, dof)
    qd: np.ndarray    # (S, dof)
    qdd: np.ndarray   # (S, dof)

    @property
    def duration(self) -> float:
        return float(self.t[-1])


def minimum_duration(q0, q1, max_speed, max_accel) -> float:
    d = np.abs(np.asarray(q1, dtype=float) - np.asarray(q0, dtype=float))
    if not np.any(d > 0):
        return 0.0
    return float(np.max(np.maximum(_PEAK_SPEED * d / max_speed, np.sqrt(_PEAK_ACCEL * d / max_accel))))


def plan_trajectory(rig: RigConfig, q0, q1, time_step: float | None = None,
                    check_step_rad: float | None = None) -> JointTrajectory:
    """Quintic joint trajectory q0 -> q1 at the fastest duration the limits allow.

    Samples are ``time_step`` apart, and close enough that no joint moves more than
    ``check_step_rad`` between two of them (so checking the samples checks the path)."""
    import roboticstoolbox as rtb

    q0 = np.asarray(q0, dtype=float)
    q1 = np.asarray(q1, dtype=float)
    vmax, amax = rig.joint_limits_per_joint(q0.size)
    time_step = rig.motion.time_step_s if time_step is None else time_step
    check_step_rad = rig.safety.check_step_rad if check_step_rad is None else check_step_rad
    T = minimum_duration(q0, q1, vmax, amax)
    if T == 0.0:
        z = np.zeros((1, q0.size))
        return JointTrajectory(np.zeros(1), q0[None].copy(), z, z.copy())
    # a quintic moves at most 1.875 * d / (S-1) per sample step near its middle
    steps = max(int(np.ceil(T / time_step)),
                int(np.ceil(_PEAK_SPEED * np.max(np.abs(q1 - q0)) / check_step_rad)), 2)
    t = np.linspace(0.0, T, steps + 1)
    tr = rtb.jtraj(q0, q1, t)
    return JointTrajectory(t, np.asarray(tr.q), np.asarray(tr.qd), np.asarray(tr.qdd))


def path_samples(q0, q1, check_step_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """(fractions s, configurations) along the straight joint-space path q0 -> q1, no joint moving
    more than ``check_step_rad`` between neighbours.  Every trajectory here (and a UR moveJ)
    follows this path whatever its timing, so checking these samples checks the motion."""
    q0 = np.asarray(q0, dtype=float)
    q1 = np.asarray(q1, dtype=float)
    steps = max(int(np.ceil(np.max(np.abs(q1 - q0)) / check_step_rad)), 1)
    s = np.linspace(0.0, 1.0, steps + 1)
    return s, q0 + s[:, None] * (q1 - q0)


def first_unsafe_on_path(checker: SafetyChecker, q0, q1):
    """(fraction along the path, Violation) of the first unsafe sample, or None when safe."""
    s, qs = path_samples(q0, q1, checker.rig.safety.check_step_rad)
    # the target first: a bad target is the common case and the clearest message
    v = checker.check(qs[-1])
    if v is not None:
        return 1.0, v
    hit = checker.first_violation(qs[:-1])
    return None if hit is None else (float(s[hit[0]]), hit[1])


def check_move(checker: SafetyChecker, q0, q1) -> None:
    """Raise :class:`UnsafeMoveError` naming the first unsafe configuration on q0 -> q1.

    Call it before the first motion command."""
    hit = first_unsafe_on_path(checker, q0, q1)
    if hit is None:
        return
    frac, violation = hit
    where = "the target" if frac == 1.0 else ("the start" if frac == 0.0 else f"{frac:.0%} of the way")
    raise UnsafeMoveError(f"move refused before any motion: at {where} {violation}")
