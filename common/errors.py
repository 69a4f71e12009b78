"""User-facing errors.

Anything a user can cause (a wrong path, a corrupt store, an unreachable pose, a missing camera)
raises a subclass of :class:`UserError`.  The CLI prints its message on one line and exits
non-zero; it never shows a traceback for these.  Programming errors stay ordinary exceptions.
"""


class UserError(Exception):
    """An error whose message is meant for the person at the keyboard."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that cannot be applied."""
