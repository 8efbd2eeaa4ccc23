"""ReKV-style streaming engine: frames in, answers out, at any time (`StreamingSession`).

Behaviour (../shared/docs/rekv-and-benchmarks.md):
- a header prompt (the chat template up to the video) is prefilled first; its tokens are the
  attention sink;
- frames are ingested as they arrive (`ingest`): the vision encoder (with STC-Cacher) and the
  Pruner turn each frame into visual tokens, which attend to the sink plus a sliding window of the
  last `n_local` tokens (`kv`, `attention`); every frame becomes one block (un-rotated keys and
  values per layer plus a representative key) in a block store (for adapters whose encoder folds
  several frames into one temporal slice, e.g. Qwen-VL's 2, a block is one slice:
  `adapter.frames_per_block`);
- a question first runs alone through the LLM (`retrieval`): at every layer the `topk` blocks
  whose representative keys best match its queries, in time order, are that layer's context; the
  prompt (`prompt`) is then answered greedily over [sink][retrieved blocks, re-positioned
  contiguously][prompt], and its KV is dropped, so the stream is unchanged by answering.
With n_local >= stream length and topk >= frames this is ordinary full attention over
[header][frames][prompt].
Hybrid language models (Qwen3.5): the engine's layers are the full-attention ones; the gated
linear-attention layers carry one recurrent state through the whole stream (the decoder driver
keeps it, and restores it after the retrieval pass and after every answer).
Bounded memory (all off by default; `budget`): a frame sink, quantized blocks, a memory budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import stc
from stc.api import adapter_of, is_patched, state_of
from stc.config import STCConfig
from stc.errors import MemoryBudgetError
from stc.peers import MethodConfig
from stc.timing import synchronize

from stc.integrations.adapters.contract import ClipBlocks
from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.engine.attention import AnswerAttention, StreamAttention
from stc.integrations.engine.block_store import BlockStore, TensorBlockStore
from stc.integrations.engine.budget import MemoryPolicy
from stc.integrations.engine.ingest import IngestJob, IngestReport, Ingestion
from stc.integrations.engine.kv import StreamKV
from stc.integrations.engine.options import DEFAULTS, SessionOptions
from stc.integrations.engine.prompt import (MC_INSTRUCTION, QUESTION_MARK, AnswerText, BlockText, PromptTemplate,
                                            answer_ids, continue_greedy, eos_ids, format_options, next_token)
from stc.integrations.engine.retrieval import Retriever
from stc.integrations.processing import as_frames, tokenizer_of

__all__ = [  # the engine's public names, importable from here as before the split
    "StreamingSession", "SessionAnswer", "IngestJob", "IngestReport", "PromptTemplate", "BlockText",
    "QUESTION_MARK", "MC_INSTRUCTION", "format_options", "MemoryBudgetError", "MEMORY_TIERS",
]

MEMORY_TIERS = ("sink_bytes", "window_bytes", "block_bytes", "representative_key_bytes", "recurrent_state_bytes")
"""The entries of `StreamingSession.memory()` that add up to its "total_bytes"."""


@dataclass
class SessionAnswer:
    """One answer: its text (up to the first end token), every token generated (the end token
    included, and past it up to `min_new_tokens`), the frames it saw, the blocks each layer read
    and the stage timings."""

    text: str
    token_ids: list[int]
    frames_seen: int
    retrieved: dict[int, list[int]]  # layer -> block ids (= frame indices, or slice indices), time order
    context_tokens: int  # sink + retrieved tokens at layer 0
    timings: dict[str, float] = field(default_factory=dict)


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
        self._patched_here = not is_patched(model)
        stc.patch(model, config if config is not None else STCConfig.off())
        self.adapter = adapter_of(model)
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
        self.eos_ids = eos_ids(model, self.tokenizer)
        self.kv = StreamKV(self.store, self.driver.num_layers, n_local, self.sink_blocks)
        self.policy = MemoryPolicy(self.kv, options, lambda: self._memory()["total_bytes"])
        self.ingestion = Ingestion(model, processor, self.adapter, self.state, self.driver, self.kv, self.policy,
                                   BlockText(self.template, self.driver), options, self._lock)
        self.retriever = Retriever(self.kv, self.adapter, self.driver, self.template, topk, model.device)
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------

    @torch.inference_mode()
    def reset(self) -> None:
        """Start a new stream: forget frames, blocks and STC state; prefill the header (sink)."""
        self.wait()
        self.state.reset()
        header = torch.tensor([self.template.header_ids()], device=self.model.device)
        self.kv.reset(header.shape[1])
        self.driver.reset_recurrent()
        self.policy.reset()
        self.ingestion.reset()
        self.driver.run(self.driver.embed(header), StreamAttention(self.kv, self.adapter, self.driver, into="sink"))

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

    def append_frames(self, frames, timestamps=None, background: bool = False) -> IngestReport | IngestJob:
        """Ingest frames [F, H, W, 3] (or one [H, W, 3]) uint8 RGB, numpy or torch, in time order.

        background=True returns at once with an `IngestJob` (its `result()` is the report) while
        a thread ingests; questions asked meanwhile see the chunks prefilled so far. Appends are
        always applied in call order (a new one first waits for a running one)."""
        video = as_frames(frames)
        self.wait()
        return self.ingestion.start(video, self.ingestion.timestamps(len(video), timestamps), background)

    def append_encoded(self, blocks: ClipBlocks, timestamps, tokens_in: int, encode_s: float = 0.0) -> IngestReport:
        """Prefill one chunk of this stream that was encoded elsewhere (several streams' frames in
        one vision-encoder call: `stc.integrations.engine.batch`), after checking its timestamps
        as `append_frames` does; `tokens_in` are the visual tokens the selection was offered. The
        report is the one `append_frames` gives for the same chunk."""
        self.wait()
        times = self.ingestion.timestamps(len(timestamps), timestamps)
        return self.ingestion.append_encoded(blocks, times, tokens_in, encode_s)

    def wait(self) -> IngestReport | None:
        """Wait for a background `append_frames` (if any) and return its report; its error, if it
        failed, is raised here."""
        return self.ingestion.wait()

    @property
    def frames_seen(self) -> int:
        return self.ingestion.frames_seen

    @property
    def last_timestamp(self) -> float | None:
        return self.ingestion.last_timestamp

    @property
    def sink_tokens(self) -> int:
        """Tokens of the header (the sink every question sees)."""
        return self.kv.header_tokens

    @property
    def timestamps(self) -> list[float]:
        return self.store.timestamps

    @property
    def evicted_blocks(self) -> int:
        return self.policy.evicted_blocks

    # -- answering ------------------------------------------------------------------------

    def ask(self, question: str, options=None, max_new_tokens: int | None = None, since: float | None = None,
            min_new_tokens: int = 0, on_text: Callable[[str], None] | None = None) -> SessionAnswer:
        """Answer from the stream so far (greedy). `options` renders a multiple-choice question;
        `since` limits retrieval to frames at or after that time (e.g. a 60-s context);
        `min_new_tokens` keeps decoding past an end token up to that many tokens (benchmarks
        time a fixed decode length this way), while the answer still ends at the first one.
        `on_text` is called with each new piece of the answer's text while it is decoded
        (`AnswerText`: the pieces concatenate to the answer's `text`); an exception it raises
        stops the decoding and leaves `ask` with it, the stream unchanged."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
        with self._lock, self.driver.preserved_state():  # answering leaves the stream unchanged
            return self._answer(question, options, max_new_tokens, since, min_new_tokens, on_text)

    @torch.inference_mode()
    def retrieve(self, question: str, since: float | None = None) -> dict[int, list[int]]:
        """The blocks each layer would read to answer `question` now: `ask`'s retrieval step alone
        (layer -> block ids in time order, as `SessionAnswer.retrieved`), nothing decoded, the
        stream unchanged. For measurements of what a question can see (evidence retention)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        with self._lock, self.driver.preserved_state():
            return self.retriever.retrieve(question, since)

    @torch.inference_mode()
    def _answer(self, question: str, options, max_new_tokens: int, since: float | None, min_new_tokens: int,
                on_text: Callable[[str], None] | None) -> SessionAnswer:
        device = self.model.device
        t0 = time.perf_counter()
        with self.timer.section("retrieval"):
            retrieved = self.retriever.retrieve(question, since)
        synchronize(device)
        t1 = time.perf_counter()
        context = AnswerAttention(self.kv, self.adapter, self.driver, retrieved)
        prompt = torch.tensor([self.template.prompt_ids(format_options(question, options))], device=device)
        with self.timer.section("answer_prefill"):
            token = next_token(self.driver, context, self.driver.embed(prompt))
        synchronize(device)
        t2 = time.perf_counter()
        pieces = None if on_text is None else AnswerText(self.tokenizer, self.eos_ids)
        on_token = None if pieces is None else lambda t: _send(on_text, pieces.push(t))
        with self.timer.section("answer_decode"):
            generated = continue_greedy(self.driver, context, token, max_new_tokens, min_new_tokens, self.eos_ids, device,
                                        on_token)
        synchronize(device)
        t3 = time.perf_counter()
        text = self.tokenizer.decode(answer_ids(generated, self.eos_ids), skip_special_tokens=True).strip()
        if pieces is not None:
            _send(on_text, pieces.finish(text))
        return SessionAnswer(
            text=text,
            token_ids=generated,
            frames_seen=self.frames_seen,
            retrieved=retrieved,
            context_tokens=context.context_tokens(0),
            timings={"retrieval_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0},
        )

    # -- reporting ------------------------------------------------------------------------

    def stats(self) -> dict:
        """The stream's STC counters (`stc.stats`), also after `close` has unpatched the model."""
        return self.state.stats.as_dict()

    def memory(self) -> dict:
        """Bytes held by the stream, per tier; each byte is counted once, under one tier, and the
        tiers (`MEMORY_TIERS`) add up to "total_bytes", which the budget bounds:
        - "sink_bytes": the header sink and the frame sink's K/V (compute device);
        - "window_bytes": the sliding window's K/V, the last `n_local` tokens (compute device);
        - "block_bytes": every block in the store, "full_precision_block_bytes" as computed plus
          "quantized_block_bytes" as encoded. The frame sink's and the window's blocks are among
          them: ingestion reads its own copy on the compute device, questions read the store's
          (which stays when a block slides out), so on a short stream the window's bytes and the
          blocks' are about the same, two copies of the same frames;
        - "representative_key_bytes": one mean key per block and layer (compute device);
        - "recurrent_state_bytes": the linear-attention layers' state (hybrid models; else 0).
        Besides: the frame and block counts, the budget and evictions, the window's tokens, and
        the Cacher's references in the vision encoder (`vit_reference_bytes`: one per layer, a
        constant once the first frame is in), which are not the stream's KV."""
        with self._lock:
            return self._memory()

    def _memory(self) -> dict:
        device_tiers = self.kv.tier_bytes()
        store_tiers = self.store.tier_bytes()
        blocks = self.store.nbytes()
        tiers = {
            "sink_bytes": device_tiers["sink"],
            "window_bytes": device_tiers["window"],
            "block_bytes": blocks,
            "representative_key_bytes": store_tiers["representative_keys"],
            "recurrent_state_bytes": self.driver.recurrent_bytes(),
        }
        return {
            "frames": self.frames_seen,
            "blocks": len(self.store),
            **tiers,
            "block_bytes_per_frame": blocks / self.frames_seen if self.frames_seen else 0.0,
            "full_precision_block_bytes": store_tiers["full_precision"],
            "quantized_block_bytes": store_tiers["quantized"],
            "total_bytes": sum(tiers.values()),
            "memory_budget": self.memory_budget,
            "evicted_blocks": self.evicted_blocks,
            "window_tokens": self.kv.layer(0).window_tokens,
            "vit_reference_bytes": sum(stream.cache.nbytes() for stream in self.state.streams),
        }


def _send(on_text: Callable[[str], None], piece: str) -> None:
    if piece:
        on_text(piece)
