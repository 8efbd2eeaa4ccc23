"""The one error family of stc. Every error a user can cause (a bad setting, an unsupported model,
a budget too small, a file that is not what it should be) is an `STCError`; the `stc` command
reports any of them in one line with exit code 2, and a library caller can catch them all at once."""


class STCError(Exception):
    """Base of every error stc raises on purpose for bad input."""


class ConfigError(STCError, ValueError):
    """A setting out of range or contradicting another, found while running (a construction-time
    check of `STCConfig` raises plain ValueError naming the field)."""


class UnsupportedModelError(ConfigError, TypeError):
    """A model no adapter knows (`stc.patch`), or a family the streaming engine cannot run."""


class MemoryBudgetError(ConfigError):
    """A memory budget too small for what must stay in memory (the sink and the ingestion window)."""


class InputError(STCError, RuntimeError):
    """A file, folder or stream given by the user that cannot be used as it is: a checkpoint, a
    video, an evaluation file, a live source."""
