"""Expected failures. The CLI prints ``str(exc)`` on one line and exits non-zero; anything
else is a bug and keeps its traceback."""


class KernelSightError(Exception):
    """Base class: the message says what was wrong and what to do."""

    exit_code = 2


class ConfigError(KernelSightError):
    """A bad flag or environment variable."""


class RedisUnavailable(KernelSightError):
    """Redis cannot be reached (and the command cannot work without it)."""

    exit_code = 3


class DatabaseError(KernelSightError):
    """The database path is unusable (unwritable, wrong schema version, disk full)."""

    exit_code = 4


class CollectorError(KernelSightError):
    """A collector cannot start on this host; the message says why and the fix."""

    exit_code = 5


class RedisRefused(KernelSightError):
    """Redis answers but refuses what the pipeline needs (no permission, read-only replica,
    a key of the wrong type): retrying cannot help, so the command stops."""

    exit_code = 6
