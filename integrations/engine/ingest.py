"""Ingestion: frames into the stream's KV, in chunks, in the caller's thread or in the background.

A call's frames are cut into chunks of `vit_batch` frames (whole blocks: `frames_per_block`
frames, a temporal slice for Qwen-VL). Each chunk is encoded (preprocessing, the vision encoder
with STC-Cacher, the selection with STC-Pruner: the adapter's `stream_blocks`), then prefilled
through the LLM, whose new tokens attend to the sink and the sliding window (`StreamAttention`);
every block then goes to the store. With `pipeline`, chunk t+1 is encoded on a worker thread (on
its own CUDA stream on a GPU) while chunk t is prefilled; blocks and answers are the same as
serial ingestion. A prefill is planned (`plan_prefill`), run through the decoder driver and
stored (`store_prefilled`) in three steps, so that several streams' plans can share one LLM call
(`stc.integrations.engine.batch_prefill`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from stc.timing import synchronize

from stc.integrations.adapters.contract import ClipBlocks
from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.engine.attention import StreamAttention
from stc.integrations.engine.budget import MemoryPolicy
from stc.integrations.engine.kv import StreamKV
from stc.integrations.engine.options import SessionOptions
from stc.integrations.engine.prompt import BlockText


@dataclass
class IngestReport:
    """What one `append_frames` call did and how long each stage took (seconds)."""

    frames: int
    tokens_in: int
    tokens_kept: int
    encode_s: float
    prefill_s: float
    kept: list[Tensor] | None = None  # per block: the kept positions among its frame's visual tokens (None: all)

    @classmethod
    def empty(cls) -> IngestReport:
        """The report of no frames (what chunk reports are added to)."""
        return cls(frames=0, tokens_in=0, tokens_kept=0, encode_s=0.0, prefill_s=0.0, kept=[])

    def add(self, part: IngestReport) -> None:
        """Add a later chunk's report to this one (`kept` stays None once a part has none)."""
        self.frames += part.frames
        self.tokens_in += part.tokens_in
        self.tokens_kept += part.tokens_kept
        self.encode_s += part.encode_s
        self.prefill_s += part.prefill_s
        self.kept = None if self.kept is None or part.kept is None else self.kept + part.kept


class IngestJob:
    """A background `append_frames`: `done()`, and `result(timeout)` for its IngestReport (or
    its error)."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self._future: Future = Future()

    def run(self, append, video, times) -> None:
        try:
            self._future.set_result(append(video, times))
        except BaseException as exc:  # handed to whoever waits for the job
            self._future.set_exception(exc)

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> IngestReport:
        return self._future.result(timeout)


class Ingestion:
    """One stream's ingestion: the frames seen, the background job, the encoder's side stream.
    `lock` is held per chunk prefill (questions hold it too)."""

    def __init__(self, model, processor, adapter, state, driver: DecoderDriver, kv: StreamKV, policy: MemoryPolicy,
                 block_text: BlockText, options: SessionOptions, lock: threading.RLock):
        self.model, self.processor, self.adapter, self.state = model, processor, adapter, state
        self.driver, self.kv, self.policy, self.block_text = driver, kv, policy, block_text
        self.options, self.lock = options, lock
        self.frames_per_block = adapter.frames_per_block
        self.sample_fps = float(options.sample_fps)
        self._job: IngestJob | None = None
        self._side_stream = None  # the encoder's CUDA stream when pipelining on a GPU
        self.reset()

    def reset(self) -> None:
        """A new stream (after `wait`)."""
        self.frames_seen = 0
        self.last_timestamp: float | None = None

    def timestamps(self, count: int, timestamps) -> list[float]:
        """The given timestamps, checked (in time order, after the stream's last), or the next
        `count` at `sample_fps`."""
        if timestamps is None:
            if self.last_timestamp is None:
                return [i / self.sample_fps for i in range(count)]
            return [self.last_timestamp + (i + 1) / self.sample_fps for i in range(count)]
        times = [float(t) for t in np.asarray(timestamps, dtype=float).reshape(-1)]
        if len(times) != count:
            raise ValueError(f"got {count} frames but {len(times)} timestamps")
        previous = -np.inf if self.last_timestamp is None else self.last_timestamp
        for t in times:
            if t < previous:
                raise ValueError(f"timestamps must not go back in time: {t} after {previous}")
            previous = t
        return times

    def start(self, video: Tensor, times: list[float], background: bool) -> IngestReport | IngestJob:
        """Ingest now (the report), or on a thread (its job); the caller waited for the last job."""
        if not background:
            return self.append(video, times)
        job = IngestJob()
        job.thread = threading.Thread(target=job.run, args=(self.append, video, times), name="stc-ingest", daemon=True)
        self._job = job
        job.thread.start()
        return job

    def wait(self) -> IngestReport | None:
        """Wait for the background job (if any) and return its report, or raise its error."""
        job, self._job = self._job, None
        return job.result() if job is not None else None

    @property
    def synchronizes(self) -> bool:
        """A pipelined encoder synchronises only to be timed."""
        return not self.options.pipeline or self.state.timer.enabled

    def chunks(self, video: Tensor, times: list[float]) -> list[tuple[Tensor, list[float]]]:
        """The call's frames cut as it encodes them: `vit_batch` frames (whole blocks) per chunk."""
        vit_batch = self.options.vit_batch
        step = max(self.frames_per_block, vit_batch - vit_batch % self.frames_per_block)
        return [(video[start : start + step], times[start : start + step]) for start in range(0, len(video), step)]

    @torch.inference_mode()
    def append(self, video: Tensor, times: list[float]) -> IngestReport:
        report = IngestReport.empty()
        work = self.chunks(video, times)
        pipelined = self.options.pipeline and len(work) > 1
        encoded = self._encode_pipelined(work) if pipelined else (self.encode(*w) for w in work)
        for (_, ctimes), (blocks, tokens_in, encode_s) in zip(work, encoded):
            self._prefill_chunk(report, blocks, ctimes, tokens_in, encode_s)
        return report

    @torch.inference_mode()
    def append_encoded(self, blocks: ClipBlocks, times: list[float], tokens_in: int, encode_s: float) -> IngestReport:
        """Prefill one chunk whose blocks were encoded elsewhere (several streams' frames in one
        vision-encoder call), with the report `append` gives for it."""
        report = IngestReport.empty()
        self._prefill_chunk(report, blocks, times, tokens_in, encode_s)
        return report

    def _prefill_chunk(self, report: IngestReport, blocks: ClipBlocks, times: list[float], tokens_in: int,
                       encode_s: float) -> None:
        """Prefill one encoded chunk (under the lock) and add it to `report`."""
        t0 = time.perf_counter()
        with self.lock, self.state.timer.section("llm_prefill"):
            plan = self.plan_prefill(blocks, times)
            self.driver.run(plan.embeds, plan.context, extras_hook(plan.extras))
            self.store_prefilled(plan)
            if self.synchronizes:
                synchronize(self.model.device)
        report.add(chunk_report(blocks, times, tokens_in, encode_s, time.perf_counter() - t0))

    @torch.inference_mode()
    def encode(self, chunk: Tensor, times: list[float]) -> tuple[ClipBlocks, int, float]:
        """One chunk through preprocessing, the vision encoder and the selection: its blocks,
        the visual tokens offered to the selection, and the seconds taken."""
        t0 = time.perf_counter()
        offered = self.state.stats.llm_tokens_in
        with self.state.timer.section("preprocess"):
            pixels = self.adapter.preprocess(self.model, self.processor, chunk.numpy())
        blocks = self.adapter.stream_blocks(self.model, self.state, pixels, times, self.block_text)
        if self.synchronizes:
            synchronize(self.model.device)
        return blocks, self.state.stats.llm_tokens_in - offered, time.perf_counter() - t0

    def _encode_pipelined(self, chunks: list[tuple[Tensor, list[float]]]):
        """`encode` of every chunk, each started (on a worker thread) as soon as the previous one
        is handed over, so that it overlaps the caller's prefill of that previous chunk. Chunks
        are encoded in order by one thread: the Cacher and Pruner state advance as in serial."""
        device = torch.device(self.model.device)
        with ThreadPoolExecutor(1, thread_name_prefix="stc-encoder") as pool:
            pending = pool.submit(self._encode_on_side_stream, chunks[0])
            for i in range(len(chunks)):
                out, ready = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._encode_on_side_stream, chunks[i + 1])
                if ready is not None:  # CUDA: the prefill stream waits for the encoder's work
                    current = torch.cuda.current_stream(device)
                    current.wait_event(ready)
                    for t in out[0].tokens:
                        t.record_stream(current)
                yield out

    def _encode_on_side_stream(self, work: tuple[Tensor, list[float]]):
        device = torch.device(self.model.device)
        if device.type != "cuda":
            return self.encode(*work), None
        if self._side_stream is None:  # it reads only weights and the encoder's own state: one wait
            self._side_stream = torch.cuda.Stream(device)
            self._side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._side_stream):
            out = self.encode(*work)
        return out, self._side_stream.record_event()

    def plan_prefill(self, blocks: ClipBlocks, times: list[float]) -> PrefillPlan:
        """A chunk's prefill up to the LLM call: its blocks (one [L_i, D] tensor per block: a
        frame, or a temporal slice of `frames_per_block` frames, timed by its first frame) checked
        against its frames, its embeddings and the attention context that extends this stream's
        KV. Nothing of the stream changes until the context runs."""
        block_times = times[:: self.frames_per_block]
        if len(block_times) != len(blocks.tokens):
            raise RuntimeError(f"{len(times)} frames gave {len(blocks.tokens)} blocks; expected {len(block_times)}")
        to_sink = min(len(blocks.tokens), self.kv.sink_room)
        bounds = [int(b) for b in np.cumsum([0] + [len(t) for t in blocks.tokens])]
        context = StreamAttention(self.kv, self.adapter, self.driver, into="window", new_layouts=blocks.layouts,
                                  new_sink=bounds[to_sink])
        extras = None
        if blocks.extras is not None:
            extras = torch.cat(blocks.extras, dim=1)[:, None].to(self.model.dtype)  # [layers, 1, L, D]
        embeds = torch.cat(blocks.tokens)[None].to(self.model.dtype)
        return PrefillPlan(blocks, times, block_times, bounds, embeds, extras, context)

    def store_prefilled(self, plan: PrefillPlan) -> None:
        """After the LLM ran `plan.context`: one block per frame (or slice) into the store, the
        window slid, the memory policy applied."""
        layers = range(self.driver.num_layers)
        new_kv, bounds = plan.context.new_kv, plan.bounds
        for f, t in enumerate(plan.block_times):
            sl = slice(bounds[f], bounds[f + 1])
            keys = [new_kv[layer][0][:, sl] for layer in layers]
            values = [new_kv[layer][1][:, sl] for layer in layers]
            block, in_sink = self.kv.add_block(keys, values, t, plan.blocks.layouts[f])
            self.policy.added(block)
            if in_sink:  # the frame sink keeps its own full-precision copy for ingestion
                self.policy.retire(block)
        for block in self.kv.slide_window():
            self.policy.retire(block)
        self.frames_seen += len(plan.times)
        self.last_timestamp = plan.times[-1]
        self.policy.fit()


@dataclass
class PrefillPlan:
    """One chunk of one stream, ready for the LLM (`Ingestion.plan_prefill`): embeddings
    [1, L, D], extra features [layers, 1, L, D] (or None) and the attention context that reads and
    extends the stream's KV; `bounds` are the blocks' token offsets in the chunk."""

    blocks: ClipBlocks
    times: list[float]
    block_times: list[float]
    bounds: list[int]
    embeds: Tensor
    extras: Tensor | None
    context: StreamAttention


def extras_hook(extras: Tensor | None) -> Callable[[int, Tensor], Tensor] | None:
    """The decoder driver's layer hook that adds extra features [layers, B, L, D] to the hidden
    states after the first decoder layers (Qwen3-VL's DeepStack), or None without any."""
    if extras is None:
        return None
    return lambda layer, hidden: hidden + extras[layer] if layer < len(extras) else hidden


def chunk_report(blocks: ClipBlocks, times: list[float], tokens_in: int, encode_s: float, prefill_s: float) -> IngestReport:
    """The report of one prefilled chunk."""
    return IngestReport(len(times), tokens_in, sum(blocks.visual), encode_s, prefill_s,
                        None if blocks.kept is None else list(blocks.kept))
