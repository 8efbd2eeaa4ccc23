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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import stc
from stc.api import adapter_for, is_patched, state_of
from stc.config import STCConfig
from stc.peers import MethodConfig
from stc.timing import synchronize

from .block_store import BlockStore, TensorBlockStore
from .decoder import DecoderDriver
from .processing import as_frames, tokenizer_of

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


class _PromptTemplate:
    """The chat template split around the video: header (the sink) and question suffix."""

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
    """Sink and sliding window of one layer: un-rotated keys/values [H_kv, n, D]."""

    def __init__(self):
        self.sink_k = self.sink_v = self.win_k = self.win_v = None


def _sliding_mask(queries: int, sink: int, window: int, n_local: int, device) -> Tensor:
    """[queries, sink + window + queries] bool: sink always visible; query i (stream index
    window + i within window+chunk) sees chunk/window tokens j with w+i-n_local < j <= w+i."""
    q = torch.arange(queries, device=device).view(-1, 1) + window
    j = torch.arange(window + queries, device=device).view(1, -1)
    local = (j <= q) & (j > q - n_local)
    return torch.cat([torch.ones(queries, sink, dtype=torch.bool, device=device), local], dim=1)


class _StreamAttention:
    """Ingestion (and the retrieval pass): attention over sink + sliding window + new tokens.

    `new_layouts` are the position layouts of the frames being ingested (None for text: the
    header when `into="sink"`, the question in the retrieval pass)."""

    def __init__(self, session: StreamingSession, into: str | None, new_layouts: list[Tensor] | None = None):
        self.session = session
        self.into = into  # "sink", "window" (store blocks) or None (retrieval pass: no change)
        self.new_layouts = new_layouts
        self.new_kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.queries: dict[int, Tensor] = {}
        self._positions: Tensor | None = None

    def positions(self, count: int, device) -> Tensor:
        """[rows, sink + window + count] positions, the same at every layer: the sink, the
        window's frames re-positioned from the sink's end, then the new tokens."""
        if self._positions is None:
            s = self.session
            sink = s.adapter.text_positions(0, s.sink_tokens) if self.into != "sink" else None
            layouts = s._window_layouts()
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
        parts_k = [t for t in (kv.sink_k, kv.win_k) if t is not None] + [k[0]]
        parts_v = [t for t in (kv.sink_v, kv.win_v) if t is not None] + [v[0]]
        sink = 0 if kv.sink_k is None else kv.sink_k.shape[1]
        window = 0 if kv.win_k is None else kv.win_k.shape[1]
        count = q.shape[2]
        keys, values = torch.cat(parts_k, dim=1)[None], torch.cat(parts_v, dim=1)[None]
        positions = self.positions(count, q.device)
        q_rot = s.driver.rotate(q, positions[:, sink + window :])
        k_rot = s.driver.rotate(keys, positions)
        mask = _sliding_mask(count, sink, window, s.n_local, q.device)
        out = F.scaled_dot_product_attention(q_rot, k_rot, values, attn_mask=mask, scale=scale, enable_gqa=True)
        if self.into == "sink":
            kv.sink_k, kv.sink_v = k[0], v[0]
        elif self.into == "window":
            kv.win_k = torch.cat([kv.win_k, k[0]], dim=1)[:, -s.n_local :] if kv.win_k is not None else k[0][:, -s.n_local :]
            kv.win_v = torch.cat([kv.win_v, v[0]], dim=1)[:, -s.n_local :] if kv.win_v is not None else v[0][:, -s.n_local :]
            self.new_kv[layer] = (k[0], v[0])
        else:
            self.queries[layer] = q[0]
        return out


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
        visual, extent = s.adapter.visual_positions(s.sink_tokens, [s._layouts[i] for i in ids])
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
    """Top-k blocks by mean question query · representative key (summed over heads), time order.
    queries [H, L, D] un-rotated; reps [N, H_kv, D]; eligible [N] bool."""
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
    """

    def __init__(
        self,
        model,
        processor,
        config: STCConfig | MethodConfig | None = None,
        n_local: int = 15000,
        topk: int = 64,
        sample_fps: float = 1.0,
        block_store: BlockStore | None = None,
        max_new_tokens: int = 64,
        system_prompt: str | None = None,
        vit_batch: int = 16,
    ):
        for name, value in (("n_local", n_local), ("topk", topk), ("max_new_tokens", max_new_tokens), ("vit_batch", vit_batch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(sample_fps, (int, float)) or not sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {sample_fps!r}")
        if config is not None and not isinstance(config, (STCConfig, MethodConfig)):
            raise TypeError(f"config must be an stc.STCConfig, an stc.MethodConfig or None, got {type(config).__name__}")
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.n_local, self.topk, self.sample_fps = n_local, topk, float(sample_fps)
        self.max_new_tokens, self.vit_batch = max_new_tokens, vit_batch
        self.adapter = adapter_for(model)
        self._patched_here = not is_patched(model)
        stc.patch(model, config if config is not None else STCConfig.off())
        self.config = config
        self.state = state_of(model)
        self.state.streaming = True
        self.timer = self.state.timer  # stage sections; enabled by benchmarks
        self.frames_per_block = int(getattr(self.adapter, "frames_per_block", 1))
        if hasattr(self.adapter, "set_sample_fps"):  # temporal positions that depend on the frame rate
            self.adapter.set_sample_fps(self.sample_fps)
        self.driver: DecoderDriver = self.adapter.decoder_driver(model)
        self.store = block_store or TensorBlockStore(self.driver.num_layers, model.device)
        self.template = _PromptTemplate(self.tokenizer, self.adapter.video_placeholder, system_prompt)
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
        self.state.reset()
        self.store.clear()
        self._layers = [_LayerKV() for _ in range(self.driver.num_layers)]
        self._layouts: list[Tensor] = []  # per block: the adapter's position layout of its tokens
        self._window: list[int] = []  # blocks with tokens in the sliding window, oldest first
        self._window_skip = 0  # tokens of the oldest window block that slid out
        self.frames_seen = 0
        self.last_timestamp: float | None = None
        header = torch.tensor([self.template.header_ids()], device=self.model.device)
        self.sink_tokens = header.shape[1]
        self.driver.run(self.driver.embed(header), _StreamAttention(self, into="sink"))

    def close(self) -> None:
        """Leave the model as it was before the session (unpatched if the session patched it)."""
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

    @torch.inference_mode()
    def append_frames(self, frames, timestamps=None) -> IngestReport:
        """Ingest frames [F, H, W, 3] (or one [H, W, 3]) uint8 RGB, numpy or torch, in time order."""
        video = as_frames(frames)
        times = self._timestamps(len(video), timestamps)
        report = IngestReport(frames=0, tokens_in=0, tokens_kept=0, encode_s=0.0, prefill_s=0.0)
        step = max(self.frames_per_block, self.vit_batch - self.vit_batch % self.frames_per_block)
        for start in range(0, len(video), step):
            chunk = video[start : start + step]
            before = dict(self.state.stats.as_dict())
            t0 = time.perf_counter()
            with self.timer.section("preprocess"):
                pixels = self.adapter.preprocess(self.model, self.processor, chunk.numpy())
            tokens, layouts = self.adapter.stream_tokens(self.model, self.state, pixels)
            synchronize(self.model.device)
            t1 = time.perf_counter()
            with self.timer.section("llm_prefill"):
                self._ingest(tokens, layouts, times[start : start + len(chunk)])
            synchronize(self.model.device)
            t2 = time.perf_counter()
            after = self.state.stats.as_dict()
            report.frames += len(chunk)
            report.tokens_in += after["llm_tokens_in"] - before["llm_tokens_in"]
            report.tokens_kept += after["llm_tokens_kept"] - before["llm_tokens_kept"]
            report.encode_s += t1 - t0
            report.prefill_s += t2 - t1
        return report

    def _ingest(self, tokens: list[Tensor], layouts: list[Tensor], times: list[float]) -> None:
        """Prefill frames' tokens (one [k_i, D] tensor per block: a frame, or a temporal slice of
        `frames_per_block` frames, timed by its first frame) and store one block each."""
        block_times = times[:: self.frames_per_block]
        if len(block_times) != len(tokens):
            raise RuntimeError(f"{len(times)} frames gave {len(tokens)} blocks; expected {len(block_times)}")
        context = _StreamAttention(self, into="window", new_layouts=layouts)
        self.driver.run(torch.cat(tokens)[None].to(self.model.dtype), context)
        bounds = np.cumsum([0] + [len(t) for t in tokens])
        for f, t in enumerate(block_times):
            sl = slice(int(bounds[f]), int(bounds[f + 1]))
            keys = [context.new_kv[layer][0][:, sl] for layer in range(self.driver.num_layers)]
            values = [context.new_kv[layer][1][:, sl] for layer in range(self.driver.num_layers)]
            self._window.append(self.store.add(keys, values, t))
            self._layouts.append(layouts[f])
        self._slide_window()
        self.frames_seen += len(times)
        self.last_timestamp = times[-1]

    def _slide_window(self) -> None:
        """Drop the oldest window tokens beyond n_local (the K/V were trimmed the same way)."""
        excess = sum(self.store.tokens(b) for b in self._window) - self._window_skip - self.n_local
        while excess > 0:
            remaining = self.store.tokens(self._window[0]) - self._window_skip
            if remaining <= excess:
                self._window.pop(0)
                self._window_skip = 0
                excess -= remaining
            else:
                self._window_skip += excess
                excess = 0

    def _window_layouts(self) -> list[Tensor]:
        layouts = [self._layouts[b] for b in self._window]
        if layouts and self._window_skip:
            layouts[0] = layouts[0][:, self._window_skip :]
        return layouts

    # -- answering ------------------------------------------------------------------------

    @torch.inference_mode()
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
        if self.topk >= int(eligible.sum()):  # everything eligible fits: no scoring pass needed
            ids = eligible.nonzero().flatten().tolist()
            return {layer: ids for layer in layers}
        ids = torch.tensor([self.template.ids(question)], device=self.model.device)
        context = _StreamAttention(self, into=None)
        self.driver.run(self.driver.embed(ids), context)
        eligible = eligible.to(self.model.device)
        return {
            layer: _select_blocks(context.queries[layer], self.store.representative_keys(layer), self.topk, eligible)
            for layer in layers
        }

    # -- reporting ------------------------------------------------------------------------

    def memory(self) -> dict:
        """Bytes held by the stream: frame blocks (in the store), sink + window (compute
        device), representative keys (compute device)."""
        window = sum(
            t.numel() * t.element_size()
            for kv in self._layers
            for t in (kv.sink_k, kv.sink_v, kv.win_k, kv.win_v)
            if t is not None
        )
        reps = 0
        if len(self.store):
            reps = sum(self.store.representative_keys(l).numel() for l in range(self.driver.num_layers))
            reps *= self.store.representative_keys(0).element_size()
        blocks = self.store.nbytes()
        return {
            "frames": self.frames_seen,
            "block_bytes": blocks,
            "block_bytes_per_frame": blocks / self.frames_seen if self.frames_seen else 0.0,
            "window_bytes": window,
            "representative_key_bytes": reps,
            "window_tokens": 0 if self._layers[0].win_k is None else self._layers[0].win_k.shape[1],
        }

    @property
    def timestamps(self) -> list[float]:
        return self.store.timestamps
