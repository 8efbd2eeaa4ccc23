"""One patched model shared by many streams.

A patched model has one `STCState` (`stc.api.state_of`): the Cacher's references, the Pruner's
history, the counters of `stc.stats` and the config, all of the stream being encoded. Several
`StreamingSession`s on one model would share it, so each stream owns a `StateSlot` (its own
copy of those fields) and uses the model only inside `SharedModel.turn(slot)`: under one lock,
its fields are put into the state for the turn and taken back after. Sessions then never see
each other's state in any interleaving; their KV and recurrent state are their own already.
`SharedModel.batch_turn(slots)` is the turn of several streams at once, for one vision-encoder
call over all of them: each slot's stream is one row of the state (a fresh one for a stream
that has none yet), and each row's counters go back to its own slot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import stc
from stc.api import state_of
from stc.config import STCConfig
from stc.state import STCState, Stats, VideoCall

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

    @contextmanager
    def batch_turn(self, slots: list[StateSlot]) -> Iterator[None]:
        """The model for several streams with one STC config (`slots[0]`'s): row s of the state
        is slot s's stream; after the turn each slot has its stream back, the counters its row
        added, and its row of the call (`call.kept`)."""
        with self.lock:
            fields = [slot.fields for slot in slots]
            config = fields[0]["config"]
            if any(f["config"] != config for f in fields) or any(len(f["streams"]) > 1 for f in fields):
                raise ValueError("a batched turn needs streams of one STC config, one stream per slot")
            previous = _stream_fields(self.state)
            scratch = STCState(config)
            streams = [f["streams"][0] if f["streams"] else scratch.new_stream(0) for f in fields]
            held = [stream.stats for stream in streams]
            for stream in streams:  # each row counts this turn apart, then adds it to what it held
                stream.stats = Stats()
            vars(self.state).update(config=config, streaming=True, streams=list(streams), stats=Stats(), call=VideoCall())
            try:
                yield
            finally:
                kept = self.state.call.kept
                for s, (f, stream, before) in enumerate(zip(fields, streams, held)):
                    turn, stream.stats = stream.stats, before
                    before.add(turn)
                    f["stats"].add(turn)
                    f["streams"] = [stream]
                    f["call"] = VideoCall(kept=kept[s : s + 1])
                vars(self.state).update(previous)

    def close(self) -> None:
        with self.lock:
            if self._patched_here:
                stc.unpatch(self.model)
