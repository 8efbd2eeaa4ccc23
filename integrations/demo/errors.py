"""The demo's errors: each is an `InputError`, so the `stc` command reports it in one line."""

from __future__ import annotations

from stc.errors import InputError


class DemoError(InputError):
    """Something the demo cannot work with (a source, a question, an output file), with the reason."""


class SourceError(DemoError):
    """A source that cannot be opened or read."""
