"""One ingestion step for several streams on one shared model: `ingest_many`.

Each stream's frames are cut into chunks as its session cuts them (`vit_batch` frames, whole
blocks). Chunk c of every stream is one round: the streams whose chunks can share a
vision-encoder call (`stc.integrations.engine.batch.batch_key`: one STC config, family,
chunk length and frame size) are encoded in one call, in one `SharedModel.batch_turn`; every
other stream is encoded alone in its own turn. Then the streams whose new blocks have the same
token count (`stc.integrations.engine.batch_prefill.prefill_key`; not a hybrid model) are
prefilled in one batched LLM call, each row attending over its own stream's sink and window at
its own positions; every other stream prefills alone in its own turn.
The blocks, K/V, answers and counters are those of each stream ingesting alone, bit for bit
where the matrix products give a row the same bits whatever the other rows (docs/serve.md,
"Batched multi-stream ingestion"; tests/serve/test_batched.py)"""

from __future__ import annotations

from dataclasses import dataclass, field

from stc.integrations.engine.batch import EncodedChunk, batch_key, encode_streams
from stc.integrations.engine.batch_prefill import prefill_key, prefill_streams
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
    """The step: per stream (in the order given) its result; the vision-encoder calls made, of
    which `batched_calls` encoded more than one stream; the LLM prefill calls made, of which
    `batched_prefills` prefilled more than one stream."""

    results: list[StreamResult]
    encoder_calls: int = 0
    batched_calls: int = 0
    prefill_calls: int = 0
    batched_prefills: int = 0


def ingest_many(shared: SharedModel, items: list[StreamFrames]) -> ManyReport:
    """Ingest every stream's frames: per round of chunks, one vision-encoder call for the streams
    that can share one, then one LLM prefill for the streams whose chunks have one shape. An
    error in one stream stops that stream only (in a batched call: its rows)."""
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
        encoded: dict[int, EncodedChunk] = {}
        for group in _groups([batch_key(items[i].session, chunks[i][c][0]) for i in ready], ready):
            report.encoder_calls += 1
            report.batched_calls += len(group) > 1
            _encode(shared, items, group, [chunks[i][c] for i in group], results, encoded)
        rows = [i for i in ready if i in encoded]
        for group in _groups([prefill_key(items[i].session, encoded[i]) for i in rows], rows):
            report.prefill_calls += 1
            report.batched_prefills += len(group) > 1
            _prefill(shared, items, group, [chunks[i][c][1] for i in group], encoded, results)
    return report


def _groups(keys: list, rows: list[int]) -> list[list[int]]:
    """`rows` grouped by equal key (in order of first appearance; a None key alone)."""
    groups: list[tuple[tuple | None, list[int]]] = []
    for i, key in zip(rows, keys):
        match = next((g for k, g in groups if key is not None and k == key), None)
        if match is None:
            groups.append((key, [i]))
        else:
            match.append(i)
    return [g for _, g in groups]


def _encode(shared: SharedModel, items: list[StreamFrames], group: list[int], chunks: list, results: list[StreamResult],
            encoded: dict) -> None:
    """The group's chunks through the vision encoder (one call; a stream alone in its own turn)
    into `encoded`; an error stops the group's streams."""
    try:
        if len(group) == 1:
            item, (chunk, times) = items[group[0]], chunks[0]
            with shared.turn(item.slot):
                encoded[group[0]] = EncodedChunk(*item.session.ingestion.encode(chunk, times))
            return
        with shared.batch_turn([items[i].slot for i in group]):
            out = encode_streams([items[i].session for i in group], [c for c, _ in chunks], [t for _, t in chunks])
        encoded.update(zip(group, out))
    except Exception as exc:  # noqa: BLE001 - the rows of this call stop; the others go on
        for i in group:
            results[i].error = exc


def _prefill(shared: SharedModel, items: list[StreamFrames], group: list[int], times: list, encoded: dict,
             results: list[StreamResult]) -> None:
    """The group's encoded chunks through the LLM: one batched prefill under the model's lock
    (it reads no STC state), or a stream alone in its own turn."""
    if len(group) == 1:
        item, chunk = items[group[0]], encoded[group[0]]
        try:
            with shared.turn(item.slot):
                results[group[0]].report.add(item.session.append_encoded(chunk.blocks, times[0], chunk.tokens_in,
                                                                         chunk.encode_s))
        except Exception as exc:  # noqa: BLE001 - this stream stops; the others go on
            results[group[0]].error = exc
        return
    with shared.lock:
        out = prefill_streams([items[i].session for i in group], [encoded[i] for i in group], times)
    for i, part in zip(group, out):
        if part.error is not None:
            results[i].error = part.error
        else:
            results[i].report.add(part.report)
