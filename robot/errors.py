"""Errors on the arm's side.  All are :class:`UserError`s: the CLI prints them as one line."""

from common.errors import UserError


class RobotError(UserError):
    """The arm refused or could not do something (unsafe move, unreachable pose, lost connection)."""


class ModelLoadError(RobotError):
    """A robot model name that cannot be loaded (unknown, or one that needs the network)."""


class PlanningError(RobotError):
    """No viewpoint plan could be made (no candidate survived the checks), or a plan file is bad."""


class UnsafeMoveError(RobotError):
    """A move refused before any motion command because some configuration on it breaks a limit."""
