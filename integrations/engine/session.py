"""ReKV-style streaming engine: frames in, answers out, at any time.

Behaviour (../shared/docs/rekv-and-benchmarks.md):
- a header prompt (the chat template up to the video) is prefilled first; its tokens are the
  attention sink;
- frames are ingested as they arrive: the vision encoder (with STC-Cacher) and the Pruner turn
  each frame into visual tokens, which attend to the sink plus a sliding window of the last
  `n_local` tokens; every frame becomes one block (un-rotated keys and values per layer plus a
  representative key) in a block store (for adapters whose encoder folds several frames into
  one temporal slice, e.g. Qwen-VL's 2, a block is one slice: `adapter.frames_per_block`);
- a question first runs alone through the LLM (retrieval pass): at every layer the mean of its
  un-rotated queries scores each block's representative key (dot product) and the `topk` best
  blocks, in time order, are that layer's context; the prompt is then answered greedily over
  [sink][retrieved blocks, re-positioned contiguously][prompt], and its KV is dropped, so the
  stream is unchanged by answering.
With n_local >= stream length and topk >= frames this is ordinary full attention over
[header][frames][prompt].
Hybrid language models (Qwen3.5): the engine's layers are the full-attention ones; the gated
linear-attention layers carry one recurrent state through the whole stream (the decoder driver
keeps it, and restores it after the retrieval pass and after every answer).

Bounded memory (all off by default):
- `sink_frames`: the first frames' tokens join the header in the ingestion sink (LongLive's frame
  sink), visible to every later frame however short the window;
- `kv_bits` 8/4/2: a block is quantized (`stc.kv_quant`) once its tokens leave the window, and
  dequantized only when a question fetches it; retrieval scores are unchanged (representative keys
  come from the full-precision keys);
- `memory_budget` (bytes): when the stream's KV (sink, window, blocks, representative keys) would
  exceed it, the oldest blocks outside the sink and window drop to 2 bits, then blocks are evicted
  until it fits: the least novel (the most similar to its predecessor) by default, or the oldest.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import stc
from stc.api import adapter_for, is_patched, state_of
from stc.config import STCConfig
from stc.errors import MemoryBudgetError
from stc.peers import MethodConfig
from stc.timing import synchronize

from stc.integrations.adapters.contract import ClipBlocks
from stc.integrations.engine.block_store import BlockStore, TensorBlockStore
from stc.integrations.engine.options import DEFAULTS, SessionOptions
from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.processing import as_frames, tokenizer_of

QUESTION_MARK = "STCQUESTIONSLOT"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class IngestReport:
    """What one `append_frames` call did and how long each stage took (seconds)."""

    frames: int
    tokens_in: int
    tokens_kept: int
    encode_s: float
    prefill_s: float
    kept: list[Tensor] | None = None  # per block: the kept positions among its frame's visual tokens (None: all)


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


@dataclass
class SessionAnswer:
    text: str
    token_ids: list[int]
    frames_seen: int
    retrieved: dict[int, list[int]]  # layer -> block ids (= frame indices, or slice indices), time order
    context_tokens: int  # sink + retrieved tokens at layer 0
    timings: dict[str, float] = field(default_factory=dict)

    def retrieved_times(self, timestamps: list[float], layer: int = 0) -> list[float]:
        return [timestamps[i] for i in self.retrieved.get(layer, [])]


class PromptTemplate:
    """The chat template split around the video: header (the sink) and question suffix. Public:
    whatever builds a prompt the engine's way (the testbed's training, for one) uses this."""

    def __init__(self, tokenizer, placeholder: str, system_prompt: str | None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; the engine builds its prompts from it")
        messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION_MARK}]})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if placeholder not in text or QUESTION_MARK not in text:
            raise ValueError(f"the chat template did not render the video placeholder {placeholder!r}")
        first = text.index(placeholder)
        last = text.rindex(placeholder) + len(placeholder)
        self.header, self.suffix = text[:first], text[last:]
        self.tokenizer = tokenizer
        if not self.header_ids():
            raise ValueError("the chat template puts nothing before the video: the engine needs a header as its sink")

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def header_ids(self) -> list[int]:
        return self.ids(self.header)

    def prompt_ids(self, question: str) -> list[int]:
        return self.ids(self.suffix.replace(QUESTION_MARK, question))


class BlockText:
    """Text an adapter puts around a frame's tokens (e.g. a timestamp): token ids and their
    input embeddings [L, D]."""

    def __init__(self, template: PromptTemplate, driver: DecoderDriver):
        self.template, self.driver = template, driver

    def ids(self, text: str) -> list[int]:
        return self.template.ids(text)

    def embed(self, ids: list[int]) -> Tensor:
        return self.driver.embed(torch.tensor([ids], device=self.driver.embed.weight.device))[0]


def format_options(question: str, options) -> str:
    if not options:
        return question
    lines = [question]
    for i, option in enumerate(options):
        option = str(option)
        letter = chr(ord("A") + i)
        lines.append(option if option[:2] in (f"{letter}.", f"{letter})") else f"{letter}. {option}")
    lines.append(MC_INSTRUCTION)
    return "\n".join(lines)


class _LayerKV:
    """Header sink, frame sink and sliding window of one layer: un-rotated keys/values [H_kv, n, D]."""

    def __init__(self):
        self.sink_k = self.sink_v = self.frame_k = self.frame_v = self.win_k = self.win_v = None

    def tensors(self):
        return [t for t in (self.sink_k, self.sink_v, self.frame_k, self.frame_v, self.win_k, self.win_v) if t is not None]


def _sliding_mask(queries: int, sink: int, window: int, n_local: int, device, new_sink: int = 0) -> Tensor:
    """[queries, sink + window + queries] bool: sink always visible; query i (stream index
    window + i within window+chunk) sees chunk/window tokens j with w+i-n_local < j <= w+i, and
    the chunk's first `new_sink` tokens (frames joining the sink) whenever j <= w+i."""
    q = torch.arange(queries, device=device).view(-1, 1) + window
    j = torch.arange(window + queries, device=device).view(1, -1)
    joining = (j >= window) & (j < window + new_sink)
    local = (j <= q) & ((j > q - n_local) | joining)
    return torch.cat([torch.ones(queries, sink, dtype=torch.bool, device=device), local], dim=1)


class _StreamAttention:
    """Ingestion (and the retrieval pass): attention over sink + sliding window + new tokens.

    `new_layouts` are the position layouts of the frames being ingested (None for text: the
    header when `into="sink"`, the question in the retrieval pass); their first `new_sink` tokens
    join the frame sink."""

    def __init__(self, session: StreamingSession, into: str | None, new_layouts: list[Tensor] | None = None,
                 new_sink: int = 0):
        self.session = session
        self.into = into  # "sink", "window" (store blocks) or None (retrieval pass: no change)
        self.new_layouts = new_layouts
        self.new_sink = new_sink
        self.new_kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.queries: dict[int, Tensor] = {}
        self._positions: Tensor | None = None

    def positions(self, count: int, device) -> Tensor:
        """[rows, sink + window + count] positions, the same at every layer: the sink, the
        window's frames re-positioned from the sink's end, then the new tokens."""
        if self._positions is None:
            s = self.session
            sink = s.adapter.text_positions(0, s.sink_tokens) if self.into != "sink" else None
            layouts = [s.store.layout(b) for b in s._sink_blocks] + s._window_layouts()
            if self.new_layouts is not None:
                layouts = layouts + self.new_layouts
            start = s.sink_tokens if self.into != "sink" else 0
            visual, extent = s.adapter.visual_positions(start, layouts)
            parts = [p for p in (sink, visual) if p is not None]
            if self.new_layouts is None:
                parts.append(s.adapter.text_positions(start + extent, count))
            self._positions = torch.cat(parts, dim=1).to(device)
        return self._positions

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        s = self.session
        kv = s._layers[layer]
        parts_k = [t for t in (kv.sink_k, kv.frame_k, kv.win_k) if t is not None] + [k[0]]
        parts_v = [t for t in (kv.sink_v, kv.frame_v, kv.win_v) if t is not None] + [v[0]]
        sink = sum(t.shape[1] for t in (kv.sink_k, kv.frame_k) if t is not None)
        window = 0 if kv.win_k is None else kv.win_k.shape[1]
        count = q.shape[2]
        keys, values = torch.cat(parts_k, dim=1)[None], torch.cat(parts_v, dim=1)[None]
        positions = self.positions(count, q.device)
        q_rot = s.driver.rotate(q, positions[:, sink + window :])
        k_rot = s.driver.rotate(keys, positions)
        mask = _sliding_mask(count, sink, window, s.n_local, q.device, self.new_sink)
        out = F.scaled_dot_product_attention(q_rot, k_rot, values, attn_mask=mask, scale=scale, enable_gqa=True)
        if self.into == "sink":
            kv.sink_k, kv.sink_v = k[0], v[0]
        elif self.into == "window":
            ns = self.new_sink
            if ns:
                kv.frame_k = _joined(kv.frame_k, k[0][:, :ns])
                kv.frame_v = _joined(kv.frame_v, v[0][:, :ns])
            if count > ns:
                kv.win_k = _joined(kv.win_k, k[0][:, ns:])[:, -s.n_local :]
                kv.win_v = _joined(kv.win_v, v[0][:, ns:])[:, -s.n_local :]
            self.new_kv[layer] = (k[0], v[0])
        else:
            self.queries[layer] = q[0]
        return out


def _joined(held: Tensor | None, new: Tensor) -> Tensor:
    return new if held is None else torch.cat([held, new], dim=1)


class _AnswerAttention:
    """Answering: [sink][retrieved blocks][prompt + generated], re-positioned contiguously."""

    def __init__(self, session: StreamingSession, retrieved: dict[int, list[int]]):
        self.session = session
        self.retrieved = retrieved
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}
        self.next_position: dict[int, int] = {}

    def context_tokens(self, layer: int) -> int:
        s = self.session
        return s.sink_tokens + sum(s.store.tokens(i) for i in self.retrieved[layer])

    def _context(self, layer: int, like: Tensor) -> None:
        s = self.session
        kv = s._layers[layer]
        keys, values = [kv.sink_k], [kv.sink_v]
        ids = self.retrieved[layer]
        if ids:
            block_k, block_v = s.store.fetch(layer, ids, like.device)
            keys.append(block_k.to(like.dtype))
            values.append(block_v.to(like.dtype))
        keys, values = torch.cat(keys, dim=1)[None], torch.cat(values, dim=1)[None]
        visual, extent = s.adapter.visual_positions(s.sink_tokens, [s.store.layout(i) for i in ids])
        positions = torch.cat([s.adapter.text_positions(0, s.sink_tokens), visual], dim=1).to(like.device)
        self.cache[layer] = (s.driver.rotate(keys, positions), values)
        self.next_position[layer] = s.sink_tokens + extent

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if layer not in self.cache:
            self._context(layer, q)
        s = self.session
        count = q.shape[2]
        positions = s.adapter.text_positions(self.next_position[layer], count).to(q.device)
        q_rot, k_rot = s.driver.rotate(q, positions), s.driver.rotate(k, positions)
        cached_k, cached_v = self.cache[layer]
        keys, values = torch.cat([cached_k, k_rot], dim=2), torch.cat([cached_v, v], dim=2)
        self.cache[layer] = (keys, values)
        self.next_position[layer] += count
        mask = None
        if count > 1:
            past = keys.shape[2] - count
            mask = torch.ones(count, keys.shape[2], dtype=torch.bool, device=q.device)
            mask[:, past:] = torch.ones(count, count, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q_rot, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)


def _select_blocks(queries: Tensor, reps: Tensor, topk: int, eligible: Tensor) -> list[int]:
    """Rows (in the store's `ids` order) of the top-k blocks by mean question query ·
    representative key (summed over heads), in time order. queries [H, L, D] un-rotated;
    reps [N, H_kv, D]; eligible [N] bool."""
    query = queries.float().mean(dim=1)  # [H, D]
    groups = query.shape[0] // reps.shape[1]
    scores = torch.einsum("nhd,hd->n", reps.float().repeat_interleave(groups, dim=1), query)
    scores = scores.masked_fill(~eligible, float("-inf"))
    count = min(topk, int(eligible.sum()))
    if count == 0:
        return []
    return sorted(torch.topk(scores, count).indices.tolist())


class StreamingSession:
    """One video stream over a loaded VideoLLM: `append_frames` as frames arrive, `ask` at any time.

    model:      a supported VideoLLM (see `stc.supported_families()`), loaded by the caller.
    processor:  its processor (Hugging Face `AutoProcessor`, or `stc.integrations.load_processor`).
    config:     an `STCConfig` or a peer method's `MethodConfig` (None = STC off); the session
                patches the model with it.
    n_local:    sliding attention window while ingesting, in tokens (ReKV default 15000).
    topk:       frames retrieved per layer for a question (ReKV default 64).
    sample_fps: spacing of default timestamps (frame i at i / sample_fps seconds).
    block_store: where frame blocks live (default: RAM on CPU, pinned host memory on CUDA).
    vit_batch:  frames per vision-encoder call while ingesting.
    pipeline:   encode chunk t+1 (vision encoder, Cacher, Pruner) while the LLM prefills chunk t:
                a worker thread, on its own CUDA stream on a GPU. Blocks and answers are the
                same as serial ingestion.
    kv_bits:    16 (blocks kept as computed), 8, 4 or 2: blocks are quantized with `kv_scheme`
                ("kivi" or "qvg", see `stc.kv_quant`) once they leave the window.
    sink_frames: the first frames join the ingestion sink (always visible while ingesting; for
                Qwen-VL, rounded up to whole temporal slices); never evicted.
    memory_budget: bytes for the whole stream's KV (`memory()["total_bytes"]`), or None: older
                blocks drop to 2 bits, then blocks are evicted, to stay within it.
    eviction:   which block goes first: "novelty" (the least novel: the most similar to its
                predecessor, so that the stream's variety is kept) or "oldest".

    `ask` may be called from another thread while `append_frames(..., background=True)` runs:
    it is answered from the chunks prefilled so far, waiting at most for the chunk in progress.
    """

    def __init__(
        self,
        model,
        processor,
        config: STCConfig | MethodConfig | None = None,
        n_local: int = DEFAULTS.n_local,
        topk: int = DEFAULTS.topk,
        sample_fps: float = DEFAULTS.sample_fps,
        block_store: BlockStore | None = None,
        max_new_tokens: int = DEFAULTS.max_new_tokens,
        system_prompt: str | None = DEFAULTS.system_prompt,
        vit_batch: int = DEFAULTS.vit_batch,
        pipeline: bool = DEFAULTS.pipeline,
        kv_bits: int = DEFAULTS.kv_bits,
        kv_scheme: str = DEFAULTS.kv_scheme,
        sink_frames: int = DEFAULTS.sink_frames,
        memory_budget: int | None = DEFAULTS.memory_budget,
        eviction: str = DEFAULTS.eviction,
    ):
        options = SessionOptions(
            n_local=n_local, topk=topk, sample_fps=sample_fps, max_new_tokens=max_new_tokens,
            system_prompt=system_prompt, vit_batch=vit_batch, pipeline=pipeline, kv_bits=kv_bits,
            kv_scheme=kv_scheme, sink_frames=sink_frames, memory_budget=memory_budget, eviction=eviction,
        )
        if block_store is not None and kv_scheme != "kivi":
            raise ValueError("kv_scheme configures the session's own block store; give it to your block_store instead")
        if config is not None and not isinstance(config, (STCConfig, MethodConfig)):
            raise TypeError(f"config must be an stc.STCConfig, an stc.MethodConfig or None, got {type(config).__name__}")
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.options = options
        self.n_local, self.topk, self.sample_fps = n_local, topk, float(sample_fps)
        self.max_new_tokens, self.vit_batch, self.pipeline = max_new_tokens, vit_batch, pipeline
        self.kv_bits, self.sink_frames, self.memory_budget = kv_bits, sink_frames, memory_budget
        self.eviction = eviction
        self._lock = threading.RLock()  # the LLM side of the stream: held per chunk prefill and per question
        self._job: IngestJob | None = None
        self._side_stream = None  # the encoder's CUDA stream when pipelining on a GPU
        self.adapter = adapter_for(model)
        self._patched_here = not is_patched(model)
        stc.patch(model, config if config is not None else STCConfig.off())
        self.config = config
        self.state = state_of(model)
        self.state.streaming = True
        self.timer = self.state.timer  # stage sections; enabled by benchmarks
        self.frames_per_block = self.adapter.frames_per_block
        self.adapter.set_sample_fps(self.sample_fps)
        self.driver: DecoderDriver = self.adapter.decoder_driver(model)
        self.store = block_store or TensorBlockStore(self.driver.num_layers, model.device, scheme=kv_scheme)
        self.sink_blocks = -(-sink_frames // self.frames_per_block)
        self.template = PromptTemplate(self.tokenizer, self.adapter.video_placeholder, system_prompt)
        self._block_text = BlockText(self.template, self.driver)
        self.eos_ids = self._eos_ids()
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return ids

    @torch.inference_mode()
    def reset(self) -> None:
        """Start a new stream: forget frames, blocks and STC state; prefill the header (sink)."""
        self.wait()
        self.state.reset()
        self.store.clear()
        self._layers = [_LayerKV() for _ in range(self.driver.num_layers)]
        self.driver.reset_recurrent()
        self._sink_blocks: list[int] = []  # the first `sink_blocks` blocks: the frame sink
        self._window: list[int] = []  # blocks with tokens in the sliding window, oldest first
        self._window_skip = 0  # tokens of the oldest window block that slid out
        self._novelty: dict[int, float] = {}  # block id -> `_dissimilarity` to its predecessor (novelty eviction)
        self.evicted_blocks = 0
        self.frames_seen = 0
        self.last_timestamp: float | None = None
        header = torch.tensor([self.template.header_ids()], device=self.model.device)
        self.sink_tokens = header.shape[1]
        self.driver.run(self.driver.embed(header), _StreamAttention(self, into="sink"))

    def close(self) -> None:
        """Leave the model as it was before the session (unpatched if the session patched it)."""
        self.wait()
        self.state.streaming = False
        if self._patched_here:
            stc.unpatch(self.model)
        self.store.clear()

    def __enter__(self) -> StreamingSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- ingestion ------------------------------------------------------------------------

    def _timestamps(self, count: int, timestamps) -> list[float]:
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

    def append_frames(self, frames, timestamps=None, background: bool = False) -> IngestReport | IngestJob:
        """Ingest frames [F, H, W, 3] (or one [H, W, 3]) uint8 RGB, numpy or torch, in time order.

        background=True returns at once with an `IngestJob` (its `result()` is the report) while
        a thread ingests; questions asked meanwhile see the chunks prefilled so far. Appends are
        always applied in call order (a new one first waits for a running one)."""
        video = as_frames(frames)
        self.wait()
        times = self._timestamps(len(video), timestamps)
        if not background:
            return self._append(video, times)
        job = IngestJob()
        job.thread = threading.Thread(target=job.run, args=(self._append, video, times), name="stc-ingest", daemon=True)
        self._job = job
        job.thread.start()
        return job

    def wait(self) -> IngestReport | None:
        """Wait for a background `append_frames` (if any) and return its report; its error, if it
        failed, is raised here."""
        job, self._job = self._job, None
        return job.result() if job is not None else None

    @torch.inference_mode()
    def _append(self, video: Tensor, times: list[float]) -> IngestReport:
        report = IngestReport(frames=0, tokens_in=0, tokens_kept=0, encode_s=0.0, prefill_s=0.0)
        step = max(self.frames_per_block, self.vit_batch - self.vit_batch % self.frames_per_block)
        starts = list(range(0, len(video), step))
        chunks = [video[start : start + step] for start in starts]
        chunk_times = [times[start : start + step] for start in starts]
        work = list(zip(chunks, chunk_times))
        encoded = self._encode_pipelined(work) if self.pipeline and len(work) > 1 else (self._encode(*w) for w in work)
        kept = []
        for chunk, ctimes, (blocks, tokens_in, encode_s) in zip(chunks, chunk_times, encoded):
            t0 = time.perf_counter()
            with self._lock, self.timer.section("llm_prefill"):
                self._ingest(blocks, ctimes)
                if not self.pipeline or self.timer.enabled:
                    synchronize(self.model.device)
            report.frames += len(chunk)
            report.tokens_in += tokens_in
            report.tokens_kept += sum(blocks.visual)
            kept = None if kept is None or blocks.kept is None else kept + list(blocks.kept)
            report.encode_s += encode_s
            report.prefill_s += time.perf_counter() - t0
        report.kept = kept
        return report

    @torch.inference_mode()
    def _encode(self, chunk: Tensor, times: list[float]) -> tuple[ClipBlocks, int, float]:
        """One chunk through preprocessing, the vision encoder and the selection: its blocks,
        the visual tokens offered to the selection, and the seconds taken."""
        t0 = time.perf_counter()
        offered = self.state.stats.llm_tokens_in
        with self.timer.section("preprocess"):
            pixels = self.adapter.preprocess(self.model, self.processor, chunk.numpy())
        blocks = self.adapter.stream_blocks(self.model, self.state, pixels, times, self._block_text)
        if not self.pipeline or self.timer.enabled:  # a pipelined encoder synchronises only to be timed
            synchronize(self.model.device)
        return blocks, self.state.stats.llm_tokens_in - offered, time.perf_counter() - t0

    def _encode_pipelined(self, chunks: list[tuple[Tensor, list[float]]]):
        """`_encode` of every chunk, each started (on a worker thread) as soon as the previous one
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
            return self._encode(*work), None
        if self._side_stream is None:  # it reads only weights and the encoder's own state: one wait
            self._side_stream = torch.cuda.Stream(device)
            self._side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._side_stream):
            out = self._encode(*work)
        return out, self._side_stream.record_event()

    def _ingest(self, blocks: ClipBlocks, times: list[float]) -> None:
        """Prefill a chunk's blocks (one [L_i, D] tensor per block: a frame, or a temporal slice of
        `frames_per_block` frames, timed by its first frame) and store one block each; extra
        features are added after the first decoder layers."""
        tokens, layouts = blocks.tokens, blocks.layouts
        block_times = times[:: self.frames_per_block]
        if len(block_times) != len(tokens):
            raise RuntimeError(f"{len(times)} frames gave {len(tokens)} blocks; expected {len(block_times)}")
        to_sink = min(len(tokens), self.sink_blocks - len(self._sink_blocks))
        bounds = np.cumsum([0] + [len(t) for t in tokens])
        context = _StreamAttention(self, into="window", new_layouts=layouts, new_sink=int(bounds[to_sink]))
        layer_hook = None
        if blocks.extras is not None:
            extras = torch.cat(blocks.extras, dim=1)[:, None].to(self.model.dtype)  # [layers, 1, L, D]
            layer_hook = lambda layer, hidden: hidden + extras[layer] if layer < len(extras) else hidden  # noqa: E731
        self.driver.run(torch.cat(tokens)[None].to(self.model.dtype), context, layer_hook)
        for f, t in enumerate(block_times):
            sl = slice(int(bounds[f]), int(bounds[f + 1]))
            keys = [context.new_kv[layer][0][:, sl] for layer in range(self.driver.num_layers)]
            values = [context.new_kv[layer][1][:, sl] for layer in range(self.driver.num_layers)]
            block = self.store.add(keys, values, t, layouts[f])
            if self._tracks_novelty:
                row = len(self.store) - 1
                self._novelty[block] = self._dissimilarity(row, row - 1)
            if f < to_sink:  # the frame sink keeps its own full-precision copy for ingestion
                self._sink_blocks.append(block)
                self._retire(block)
            else:
                self._window.append(block)
        self._slide_window()
        self.frames_seen += len(times)
        self.last_timestamp = times[-1]
        if self.memory_budget is not None:
            self._fit_budget()

    def _retire(self, block: int) -> None:
        """A block no longer read by ingestion: held with `kv_bits` from now on."""
        if self.kv_bits < 16:
            self.store.encode(block, self.kv_bits)

    @property
    def _tracks_novelty(self) -> bool:
        return self.memory_budget is not None and self.eviction == "novelty"

    def _representative(self, row: int) -> Tensor:
        return torch.cat([self.store.representative_keys(layer)[row].flatten() for layer in range(self.driver.num_layers)]).float()

    def _dissimilarity(self, row: int, previous: int) -> float:
        """1 - cosine of two blocks' representative keys over all layers (store rows); inf for
        the first block, which has no predecessor."""
        if previous < 0:
            return float("inf")
        return 1.0 - float(F.cosine_similarity(self._representative(row), self._representative(previous), dim=0))

    def _fit_budget(self) -> None:
        """Lower the oldest evictable blocks to 2 bits, then evict the least novel, until the
        stream's KV fits `memory_budget`; the sink and the window's blocks are never touched."""
        total = self._memory()["total_bytes"]
        while total > self.memory_budget:
            protected = set(self._sink_blocks) | set(self._window)
            candidates = [b for b in self.store.ids if b not in protected]
            if not candidates:
                raise MemoryBudgetError(
                    f"memory_budget {self.memory_budget} bytes cannot hold the sink and the ingestion window "
                    f"({total} bytes): raise it, or lower n_local ({self.n_local}) or sink_frames ({self.sink_frames})")
            wide = next((b for b in candidates if self.store.bits(b) > 2), None)
            if wide is not None:
                self.store.encode(wide, 2)
            else:
                self._evict(candidates[0] if self.eviction == "oldest" else min(candidates, key=self._novelty.__getitem__))
            total = self._memory()["total_bytes"]

    def _evict(self, block: int) -> None:
        if self._tracks_novelty:
            ids = self.store.ids
            row = ids.index(block)
            if row + 1 < len(ids):  # the successor's predecessor changes
                self._novelty[ids[row + 1]] = self._dissimilarity(row + 1, row - 1)
            del self._novelty[block]
        self.store.remove(block)
        self.evicted_blocks += 1

    def _slide_window(self) -> None:
        """Drop the oldest window tokens beyond n_local (the K/V were trimmed the same way)."""
        excess = sum(self.store.tokens(b) for b in self._window) - self._window_skip - self.n_local
        while excess > 0:
            remaining = self.store.tokens(self._window[0]) - self._window_skip
            if remaining <= excess:
                self._retire(self._window.pop(0))
                self._window_skip = 0
                excess -= remaining
            else:
                self._window_skip += excess
                excess = 0

    def _window_layouts(self) -> list[Tensor]:
        layouts = [self.store.layout(b) for b in self._window]
        if layouts and self._window_skip:
            layouts[0] = layouts[0][:, self._window_skip :]
        return layouts

    # -- answering ------------------------------------------------------------------------

    def ask(self, question: str, options=None, max_new_tokens: int | None = None, since: float | None = None,
            min_new_tokens: int = 0) -> SessionAnswer:
        """Answer from the stream so far (greedy). `options` renders a multiple-choice question;
        `since` limits retrieval to frames at or after that time (e.g. a 60-s context);
        `min_new_tokens` keeps decoding past an end token up to that many tokens (benchmarks
        time a fixed decode length this way), while the answer still ends at the first one."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
        with self._lock, self.driver.preserved_state():  # answering leaves the stream unchanged
            return self._answer(question, options, max_new_tokens, since, min_new_tokens)

    @torch.inference_mode()
    def _answer(self, question: str, options, max_new_tokens: int, since: float | None, min_new_tokens: int) -> SessionAnswer:
        device = self.model.device
        t0 = time.perf_counter()
        with self.timer.section("retrieval"):
            retrieved = self._retrieve(question, since)
        synchronize(device)
        t1 = time.perf_counter()
        context = _AnswerAttention(self, retrieved)
        prompt = torch.tensor([self.template.prompt_ids(format_options(question, options))], device=device)
        with self.timer.section("answer_prefill"):
            hidden = self.driver.run(self.driver.embed(prompt), context)
            token = int(self.driver.logits(hidden[:, -1]).argmax(-1))
        synchronize(device)
        t2 = time.perf_counter()
        generated = []
        with self.timer.section("answer_decode"):
            while True:
                generated.append(token)
                if len(generated) >= max_new_tokens or (token in self.eos_ids and len(generated) >= min_new_tokens):
                    break
                hidden = self.driver.run(self.driver.embed(torch.tensor([[token]], device=device)), context)
                token = int(self.driver.logits(hidden[:, -1]).argmax(-1))
        synchronize(device)
        t3 = time.perf_counter()
        ends = [i for i, t in enumerate(generated) if t in self.eos_ids]
        answer_ids = generated[: ends[0]] if ends else generated
        return SessionAnswer(
            text=self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
            token_ids=generated,
            frames_seen=self.frames_seen,
            retrieved=retrieved,
            context_tokens=context.context_tokens(0),
            timings={"retrieval_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0},
        )

    def _retrieve(self, question: str, since: float | None) -> dict[int, list[int]]:
        layers = range(self.driver.num_layers)
        if len(self.store) == 0:
            return {layer: [] for layer in layers}
        times = torch.tensor(self.store.timestamps)
        eligible = times >= since if since is not None else torch.ones(len(times), dtype=torch.bool)
        held = self.store.ids
        if self.topk >= int(eligible.sum()):  # everything eligible fits: no scoring pass needed
            ids = [held[i] for i in eligible.nonzero().flatten().tolist()]
            return {layer: ids for layer in layers}
        ids = torch.tensor([self.template.ids(question)], device=self.model.device)
        context = _StreamAttention(self, into=None)
        with self.driver.preserved_state():  # the answer pass starts from the stream's state
            self.driver.run(self.driver.embed(ids), context)
        eligible = eligible.to(self.model.device)
        return {
            layer: [held[i] for i in _select_blocks(context.queries[layer], self.store.representative_keys(layer), self.topk, eligible)]
            for layer in layers
        }

    # -- reporting ------------------------------------------------------------------------

    def memory(self) -> dict:
        """Bytes held by the stream, per tier: the ingestion sink (header and frame sink) and
        window on the compute device, blocks held as computed and quantized blocks (in the
        store), representative keys (compute device); their sum, the budget and evictions.
        Apart from that sum (the budget's business), the Cacher's references in the vision
        encoder (`vit_reference_bytes`: one per layer, a constant once the first frame is in)."""
        with self._lock:
            return self._memory()

    def _memory(self) -> dict:
        window = sum(t.numel() * t.element_size() for kv in self._layers for t in kv.tensors())
        recurrent = self.driver.recurrent_bytes()
        tiers = self.store.tier_bytes()
        blocks = self.store.nbytes()
        return {
            "frames": self.frames_seen,
            "blocks": len(self.store),
            "block_bytes": blocks,
            "block_bytes_per_frame": blocks / self.frames_seen if self.frames_seen else 0.0,
            "full_precision_block_bytes": tiers["full_precision"],
            "quantized_block_bytes": tiers["quantized"],
            "window_bytes": window,
            "recurrent_state_bytes": recurrent,
            "representative_key_bytes": tiers["representative_keys"],
            "total_bytes": window + blocks + tiers["representative_keys"] + recurrent,
            "memory_budget": self.memory_budget,
            "evicted_blocks": self.evicted_blocks,
            "window_tokens": 0 if self._layers[0].win_k is None else self._layers[0].win_k.shape[1],
            "vit_reference_bytes": sum(stream.cache.nbytes() for stream in self.state.streams),
        }

    @property
    def timestamps(self) -> list[float]:
        return self.store.timestamps
