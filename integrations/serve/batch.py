"""One ingestion step for several streams on one shared model: `ingest_many`.

Each stream's frames are cut into chunks as its session cuts them (`vit_batch` frames, whole
blocks). Chunk c of every stream is one round: the streams whose chunks can share a
vision-encoder call (`stc.integrations.engine.batch.batch_key`: one STC config, family,
chunk length and frame size) are encoded in one call, in one `SharedModel.batch_turn`; every
other stream is ingested alone in its own turn. Each stream then prefills its own blocks in its
own turn: the LLM prefill is not batched (every stream's sink, window and positions differ).
The blocks, K/V, answers and counters are those of each stream ingesting alone, bit for bit
where the matrix products give a row the same bits whatever the other rows (docs/serve.md,
"Batched multi-stream ingestion"; tests/serve/test_batched.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stc.integrations.engine.batch import batch_key, encode_streams
from stc.integrations.engine.ingest import IngestReport
from stc.integrations.engine.session import StreamingSession
from stc.integrations.processing import as_frames
from stc.integrations.serve.shared_model import SharedModel, StateSlot


@dataclass
class StreamFrames:
    """What one stream delivered in this tick: uint8 RGB frames [F, H, W, 3] in time order and
    their timestamps (None: the session's next ones)."""

    slot: StateSlot
    session: StreamingSession
    frames: object
    timestamps: list[float] | None = None


@dataclass
class StreamResult:
    """One stream's part of the step: its report (the sum over its chunks, as `append_frames`
    gives it), or the error that stopped it (its later chunks were not ingested)."""

    report: IngestReport = field(default_factory=IngestReport.empty)
    error: Exception | None = None


@dataclass
class ManyReport:
    """The step: per stream (in the order given) its result; the vision-encoder calls made,
    of which `batched_calls` encoded more than one stream."""

    results: list[StreamResult]
    encoder_calls: int = 0
    batched_calls: int = 0


def ingest_many(shared: SharedModel, items: list[StreamFrames]) -> ManyReport:
    """Ingest every stream's frames, one vision-encoder call per round for the streams that can
    share one. An error in one stream stops that stream only (in a batched call: its rows)."""
    results = [StreamResult() for _ in items]
    chunks = []
    for item, result in zip(items, results):
        try:
            video = as_frames(item.frames)
            item.session.wait()
            times = item.session.ingestion.timestamps(len(video), item.timestamps)
            chunks.append(item.session.ingestion.chunks(video, times))
        except Exception as exc:  # noqa: BLE001 - the stream's own bad input, reported with it
            result.error = exc
            chunks.append([])
    report = ManyReport(results)
    for c in range(max((len(ch) for ch in chunks), default=0)):
        ready = [i for i, ch in enumerate(chunks) if c < len(ch) and results[i].error is None]
        for group in _groups(items, [chunks[i][c][0] for i in ready], ready):
            report.encoder_calls += 1
            if len(group) == 1:
                _alone(shared, items[group[0]], *chunks[group[0]][c], results[group[0]])
            else:
                report.batched_calls += 1
                _together(shared, [items[i] for i in group], [chunks[i][c] for i in group], [results[i] for i in group])
    return report


def _groups(items: list[StreamFrames], frames: list, rows: list[int]) -> list[list[int]]:
    """`rows` grouped by equal `batch_key` (in order of first appearance; a None key alone)."""
    groups: list[tuple[tuple | None, list[int]]] = []
    for i, chunk in zip(rows, frames):
        key = batch_key(items[i].session, chunk)
        match = next((g for k, g in groups if key is not None and k == key), None)
        if match is None:
            groups.append((key, [i]))
        else:
            match.append(i)
    return [g for _, g in groups]


def _alone(shared: SharedModel, item: StreamFrames, chunk, times: list[float], result: StreamResult) -> None:
    try:
        with shared.turn(item.slot):
            result.report.add(item.session.append_frames(chunk, timestamps=times))
    except Exception as exc:  # noqa: BLE001 - this stream stops; the others go on
        result.error = exc


def _together(shared: SharedModel, items: list[StreamFrames], chunks: list, results: list[StreamResult]) -> None:
    sessions = [item.session for item in items]
    try:
        with shared.batch_turn([item.slot for item in items]):
            encoded = encode_streams(sessions, [c for c, _ in chunks], [t for _, t in chunks])
    except Exception as exc:  # noqa: BLE001 - the rows of this call stop; the others go on
        for result in results:
            result.error = exc
        return
    for item, (_, times), chunk, result in zip(items, chunks, encoded, results):
        try:
            with shared.turn(item.slot):
                result.report.add(item.session.append_encoded(chunk.blocks, times, chunk.tokens_in, chunk.encode_s))
        except Exception as exc:  # noqa: BLE001 - this stream stops; the others go on
            result.error = exc

