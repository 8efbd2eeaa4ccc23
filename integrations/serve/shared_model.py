"""One patched model shared by many streams.

A patched model has one `STCState` (`stc.api.state_of`): the Cacher's references, the Pruner's
history, the counters of `stc.stats` and the config, all of the stream being encoded. Several
`StreamingSession`s on one model would share it, so each stream owns a `StateSlot` (its own
copy of those fields) and uses the model only inside `SharedModel.turn(slot)`: under one lock,
its fields are put into the state for the turn and taken back after. Sessions then never see
each other's state in any interleaving; their KV and recurrent state are their own already.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import stc
from stc.api import state_of
from stc.config import STCConfig
from stc.state import STCState

SHARED_FIELDS = ("timer",)  # STCState fields that belong to the model, not to a stream


class StateSlot:
    """A stream's STC state while another stream has the model (a fresh stream at first)."""

    def __init__(self):
        self.fields = _stream_fields(STCState(STCConfig.off()))


def _stream_fields(state: STCState) -> dict:
    return {name: value for name, value in vars(state).items() if name not in SHARED_FIELDS}


class SharedModel:
    """The model, its processor and the lock that serialises its use across streams. The model is
    patched once, here (so that closing a session never unpatches it for the others), and
    unpatched by `close` if it was not patched before."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self._patched_here = not stc.is_patched(model)
        stc.patch(model, STCConfig.off())
        self.state = state_of(model)
        self.lock = threading.RLock()

    @contextmanager
    def turn(self, slot: StateSlot) -> Iterator[None]:
        """The model for one stream: its STC state in place, every other stream waiting."""
        with self.lock:
            previous = _stream_fields(self.state)
            vars(self.state).update(slot.fields)
            try:
                yield
            finally:
                slot.fields = _stream_fields(self.state)
                vars(self.state).update(previous)

    def close(self) -> None:
        with self.lock:
            if self._patched_here:
                stc.unpatch(self.model)
