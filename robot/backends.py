"""The arm back ends by name: robot/arm.py is the interface (BaseArm); each back end imports it,
and this module imports the back ends, so the imports run one way (ur-rtde loads only when a
UR arm connects)."""

from __future__ import annotations

from robot.arm import BaseArm
from robot.config import RigConfig
from robot.errors import UnsafeMoveError
from robot.sim import SimulatedArm
from robot.ur import URArm


def open_arm(rig: RigConfig, backend: str = "sim", host: str | None = None, fast: bool = True) -> BaseArm:
    """An (unconnected) arm for ``backend`` "sim" or "ur"; use it as a context manager."""
    if backend == "sim":
        return SimulatedArm(rig, fast=fast)
    if backend == "ur":
        return URArm(rig, host=host)
    raise UnsafeMoveError(f"unknown arm back end {backend!r}; use 'sim' or 'ur'")
