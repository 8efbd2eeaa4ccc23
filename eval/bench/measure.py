"""Measuring: every method streams the same frames through a fresh session, interleaved per
repeat; per-stage seconds (CUDA synchronised at every boundary), tokens, memory and ViT error
against the first method; medians over the repeats, with their spread."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import stc
from stc.api import adapter_for
from stc.eval.bench.methods import MethodSpec, parse_methods
from stc.eval.presets import check_memory_budget, load_model
from stc.eval.synthetic.episodes import episode_seed, generate_episode
from stc.eval.synthetic.scene import SceneConfig
from stc.integrations.loading import resolve_dtype
from stc.integrations.video import sample_video

STAGES = (
    "video_decode",
    "preprocess",
    "vit",
    "projector",
    "pooling",
    "selection",
    "llm_prefill",
    "retrieval",
    "answer_prefill",
    "answer_decode",
)

DEFAULT_QUESTION = "What is happening in the video?"
WARM_UP_FRAMES = 4
SAMPLE_VIDEOS = (
    Path("../shared/videos/vtest.avi"),
    Path(__file__).resolve().parents[3] / "shared" / "videos" / "vtest.avi",
    Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
)


@dataclass
class RunResult:
    seconds: dict[str, float]
    ingest_s: float  # wall-clock of append_frames (stages overlap when pipelined)
    frames: int
    tokens_in: int
    tokens_kept: int
    tokens_kept_range: tuple[float, float]  # fewest and most LLM tokens a frame kept
    vit_tokens: int
    vit_tokens_recomputed: int
    vit_rows: int  # frames, or temporal slices for encoders that fold frames (Qwen-VL: 2)
    reference_frames: int  # the Cacher's dense frames (all frames without it)
    cut_references: int  # of which forced by scene cuts
    drift_references: int  # of which forced by drift (the adaptive Cacher)
    cached_recompute_share: float  # tokens recomputed per layer on non-reference frames, mean over layers
    kv_bytes_per_frame: float
    memory: dict  # StreamingSession.memory() at the end: bytes per tier, "total_bytes" the whole stream's KV
    peak_memory_bytes: int
    answer_tokens: int
    vit_features: object = field(default=None, repr=False)


def default_video() -> Path | None:
    for path in SAMPLE_VIDEOS:
        if path.exists():
            return path
    return None


class PeakMemory:
    """Peak device memory (CUDA) or process RSS (CPU, sampled every 5 ms) during a block."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.peak = self._rss()
        self._running = True

        def sample():
            while self._running:
                self.peak = max(self.peak, self._rss())
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def run_method(model, processor, frames, timestamps, spec: MethodSpec, args, capture_vit: bool) -> RunResult:
    """Stream the frames through a fresh session with this method, ask one question."""
    from stc.integrations.engine.session import StreamingSession  # on use: it imports transformers

    captured = []
    vision_output = adapter_for(model).vision_output_module(model)  # its input is the ViT's output
    hook = None
    if capture_vit:
        hook = vision_output.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().float().cpu()))
    try:
        with PeakMemory(model.device) as memory:
            with StreamingSession(
                model, processor, config=spec.config, sample_fps=args.fps, max_new_tokens=args.max_new_tokens,
                vit_batch=args.vit_batch, **(args.stream | spec.session),
            ) as session:
                timer = session.timer
                timer.device = model.device
                timer.reset()
                timer.enabled = True
                t0 = time.perf_counter()
                report = session.append_frames(frames, timestamps=timestamps)
                ingest_s = time.perf_counter() - t0
                answer = session.ask(args.question, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
                timer.enabled = False
                seconds = timer.snapshot()
                stats = stc.stats(model)
                held = session.memory()
    finally:
        if hook is not None:
            hook.remove()
    seconds["pooling"] = max(0.0, seconds.pop("encode", 0.0) - seconds.get("vit", 0.0) - seconds.get("projector", 0.0))
    return RunResult(
        seconds={stage: seconds.get(stage, 0.0) for stage in STAGES if stage != "video_decode"},
        ingest_s=ingest_s,
        frames=report.frames,
        tokens_in=report.tokens_in,
        tokens_kept=report.tokens_kept,
        tokens_kept_range=stc.api.kept_range(stats, session.frames_per_block, report.tokens_kept / max(report.frames, 1)),
        vit_tokens=stats["vit_tokens"],
        vit_tokens_recomputed=stats["vit_tokens_recomputed"],
        vit_rows=report.frames // session.frames_per_block,
        reference_frames=stats["reference_frames"],
        cut_references=stats["cut_references"],
        drift_references=stats["drift_references"],
        cached_recompute_share=stats["cached_recompute_share"],
        kv_bytes_per_frame=held["block_bytes_per_frame"],
        memory=held,
        peak_memory_bytes=memory.peak,
        answer_tokens=len(answer.token_ids),
        vit_features=__import__("torch").cat(captured) if captured else None,
    )


def summarise(runs: list[RunResult], decode_seconds: list[float]) -> dict:
    med = statistics.median
    seconds = {stage: med(r.seconds[stage] for r in runs) for stage in STAGES if stage != "video_decode"}
    seconds["video_decode"] = med(decode_seconds)
    spread = {stage: (max(r.seconds[stage] for r in runs) - min(r.seconds[stage] for r in runs)) / seconds[stage]
              if seconds[stage] else 0.0 for stage in STAGES if stage != "video_decode"}
    last = runs[-1]
    frames = max(last.frames, 1)
    ingest = med(r.ingest_s for r in runs)
    answer = sum(seconds[s] for s in ("retrieval", "answer_prefill", "answer_decode"))
    return {
        "seconds": seconds,
        "spread": spread,  # (max - min) / median over the repeats, per stage
        "ms_per_frame": {stage: 1000 * seconds[stage] / frames for stage in seconds},
        "ingest_fps": frames / ingest if ingest else float("inf"),
        "time_to_answer_s": answer,
        "decode_ms_per_token": 1000 * seconds["answer_decode"] / max(last.answer_tokens - 1, 1),
        "tokens_per_frame": last.tokens_kept / frames,
        "tokens_per_frame_min": last.tokens_kept_range[0],
        "tokens_per_frame_max": last.tokens_kept_range[1],
        "vit_recomputed_share": last.vit_tokens_recomputed / last.vit_tokens if last.vit_tokens else 1.0,
        "reference_frames": last.reference_frames,
        "cut_references": last.cut_references,
        "drift_references": last.drift_references,
        "references_per_100_frames": 100 * last.reference_frames / frames,
        "cached_recompute_share": last.cached_recompute_share,
        "kv_bytes_per_frame": last.kv_bytes_per_frame,
        "stream_bytes": last.memory["total_bytes"],
        "memory": last.memory,
        "peak_memory_bytes": max(r.peak_memory_bytes for r in runs),
        "repeats": len(runs),
    }


def vit_error_per_frame(features, reference, rows: int) -> list[float] | None:
    """Relative L2 error ||features - dense|| / ||dense|| of each frame's (or temporal slice's)
    ViT output tokens; `rows` frames or slices (Qwen's tokens come flat, split evenly)."""
    if features is None or reference is None or features.shape != reference.shape:
        return None
    features, reference = features.reshape(rows, -1), reference.reshape(rows, -1)
    return [float(e) for e in (features - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)]


def vit_fidelity(features, reference) -> float | None:
    """Mean cosine similarity of a method's ViT output tokens to dense ones."""
    if features is None or reference is None or features.shape != reference.shape:
        return None
    return float(torch.nn.functional.cosine_similarity(features, reference, dim=-1).mean())


def bench(args) -> dict:
    specs = parse_methods(args.methods, args.stc_config)
    dtype = resolve_dtype(args.dtype, args.device)
    check_memory_budget(args.model, args.memory_budget, dtype)
    model, processor, description = load_model(args.model, args.device, dtype)
    adapter = adapter_for(model)
    for spec in specs:  # every method this family cannot run is refused before any work
        if spec.config is not None:
            adapter.check_config(model, spec.config)
    video_path = Path(args.video) if args.video else default_video()
    decode_seconds = []

    def decode():
        t0 = time.perf_counter()
        if video_path is None:
            frames, times = synthetic_frames(args.frames)
        else:
            video = sample_video(video_path, fps=args.fps, max_frames=args.frames)
            frames, times = video.frames, video.timestamps
        decode_seconds.append(time.perf_counter() - t0)
        return frames, times

    frames, times = decode()
    source = str(video_path) if video_path else "generated synthetic video (no sample video found)"
    print(f"stc bench: {description} on {args.device} ({dtype}), {len(frames)} frames from {source} at {args.fps:g} fps", file=sys.stderr)
    runs: dict[str, list[RunResult]] = {s.label: [] for s in specs}
    warm_up_seconds: dict[str, float] = {}
    total = len(specs) * (args.repeats + 1)
    done = 0
    started = time.perf_counter()
    # one full encoder call, so that the warm-up meets the shapes of the run (and compiles for them)
    warm = min(max(WARM_UP_FRAMES, args.vit_batch), len(frames))
    for repeat in range(-1, args.repeats):  # -1: warm-up (kernels, allocations, compilation), not recorded
        if repeat >= 0:
            frames, times = decode()
        for spec in specs:
            clip = slice(None) if repeat >= 0 else slice(0, warm)
            t0 = time.perf_counter()
            result = run_method(model, processor, frames[clip], times[clip], spec, args, capture_vit=repeat == 0)
            if repeat < 0:
                warm_up_seconds[spec.label] = time.perf_counter() - t0
            done += 1
            elapsed = time.perf_counter() - started
            print(f"  [{done}/{total}] {'warm-up' if repeat < 0 else f'repeat {repeat + 1}'} {spec.label}: "
                  f"{sum(result.seconds.values()):.2f} s  (ETA {elapsed / done * (total - done):.0f} s)", file=sys.stderr)
            if repeat >= 0:
                runs[spec.label].append(result)
    reference = runs[specs[0].label][0].vit_features
    methods = {}
    for spec in specs:
        summary = summarise(runs[spec.label], decode_seconds[1:])
        summary["vit_fidelity"] = vit_fidelity(runs[spec.label][0].vit_features, reference)
        summary["vit_error_per_frame"] = vit_error_per_frame(runs[spec.label][0].vit_features, reference,
                                                             runs[spec.label][0].vit_rows)
        summary["warm_up_s"] = warm_up_seconds[spec.label]  # includes torch.compile's compilation
        summary["method"] = spec.name
        summary["config"] = None if spec.config is None else getattr(spec.config, "__dict__", str(spec.config))
        methods[spec.label] = summary
    baseline = methods[specs[0].label]
    for summary in methods.values():
        summary["ratios"] = ratios(summary, baseline)
    return {
        "model": description,
        "device": args.device,
        "dtype": str(dtype).replace("torch.", ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""),
        "video": source,
        "frames": len(frames),
        "fps": args.fps,
        "question": args.question,
        "settings": {**args.stream, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                     "vit_batch": args.vit_batch},
        "baseline": specs[0].label,
        "methods": methods,
    }


def ratios(summary: dict, baseline: dict) -> dict:
    def ratio(a, b):
        return a / b if b else None

    out = {f"{stage}": ratio(summary["seconds"][stage], baseline["seconds"][stage]) for stage in STAGES}
    for key in ("ingest_fps", "time_to_answer_s", "tokens_per_frame", "kv_bytes_per_frame", "peak_memory_bytes"):
        out[key] = ratio(summary[key], baseline[key])
    return out


def synthetic_frames(count: int):
    """Frames of a generated synthetic episode (used when no sample video exists)."""
    episode = generate_episode(episode_seed("eval", 0), SceneConfig(frames=max(count, 2 * SceneConfig.min_lifetime)))
    return episode.frames[:count], np.asarray(episode.timestamps[:count])
