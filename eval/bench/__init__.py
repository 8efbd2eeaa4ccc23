"""`stc bench`: per-stage latency and memory of STC and peer methods, side by side in one run.

Every method streams the same frames through the same model in the ReKV-style engine, then
answers one question. Methods are interleaved per repeat (A B C A B C ...) after a short warm-up
run each (the first few frames), and medians are reported, with every figure also as a ratio to the first method (dense)
from the same run. Methods are named as for `--method` (see `stc.methods.METHODS`): STC's (dense,
stc, stc-cacher, stc-pruner) and the peer methods of `stc.peers` (tome, visionzip, vidcom2, dycoke,
timechat, evs, uniform, random), each optionally with `:key=value` overrides (STCConfig fields for
STC's, keep_ratio or the method's options for peers). Every stage is measured for every method:
a method that does not reduce ViT work shows the full ViT time.

Stages (seconds; CUDA synchronised at every boundary):
  video_decode    decoding and sampling the video (shared by all methods)
  preprocess      frames -> pixel values
  vit             the vision tower (with the Cacher or a ViT-side reducer inside)
  projector       the multimodal projector
  pooling         the rest of the video-feature path (LLaVA-OV's 2x2 pooling)
  selection       post-encoder token selection (the Pruner or a peer selector)
  llm_prefill     ingesting the kept tokens into the stream (sink + window attention)
  retrieval       question retrieval pass
  answer_prefill  prompt prefill over [sink][retrieved frames][prompt]
  answer_decode   greedy decoding of exactly --max-new-tokens tokens (an end token does not stop
                  it, so every method decodes the same length)
Ingestion frames/s is frames over the wall-clock of `append_frames` (with `:pipeline=true` the
encoder and prefill stages overlap, so their times add up to more than that).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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


# per-method StreamingSession settings in --methods (e.g. `stc:kv_bits=2`); the rest of a
# method's overrides are its own options
SESSION_SETTINGS = {"pipeline": bool, "n_local": int, "kv_bits": int, "kv_scheme": str, "sink_frames": int,
                    "memory_budget": int, "eviction": str}


@dataclass
class MethodSpec:
    """A method as named on the command line, e.g. `stc-cacher:cache_interval=4`."""

    label: str
    name: str
    config: object  # STCConfig, None (dense) or a peer method config
    session: dict = field(default_factory=dict)  # StreamingSession overrides: SESSION_SETTINGS


@dataclass
class RunResult:
    seconds: dict[str, float]
    ingest_s: float  # wall-clock of append_frames (stages overlap when pipelined)
    frames: int
    tokens_in: int
    tokens_kept: int
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


def parse_methods(text: str, base) -> list[MethodSpec]:
    """Comma-separated method names, each optionally with `:key=value` overrides: STCConfig
    fields for STC's methods, keep_ratio or the method's options for peer methods (e.g.
    `stc-cacher:cache_interval=4`, `timechat:threshold=0.5`, `evs:keep_ratio=0.25`), and for any
    method the session settings `pipeline=true` (pipelined ingestion), `n_local`, `kv_bits`,
    `kv_scheme`, `sink_frames`, `memory_budget` (bytes) (e.g. `stc:kv_bits=2`)."""
    from stc.config import STCConfig
    from stc.methods import PEERS, method_config, options_used
    from stc.peers import MethodConfig

    specs = []
    for item in [part.strip() for part in text.split(",") if part.strip()]:
        name, *overrides = item.split(":")
        changes = {}
        for override in overrides:
            key, _, value = override.partition("=")
            changes[key] = _parse_value(value)
        session = {key: changes.pop(key) for key in SESSION_SETTINGS if key in changes}
        for key, value in session.items():
            kind = SESSION_SETTINGS[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                expected = {bool: "true or false", int: "an integer", str: "a name"}[kind]
                raise ValueError(f"{key} must be {expected} in method {item!r}")
        if name in PEERS:
            keep_ratio = changes.pop("keep_ratio", base.keep_ratio)
            config = MethodConfig(name, keep_ratio=keep_ratio, options=changes)
        else:
            unknown = [key for key in changes if key not in STCConfig.__dataclass_fields__]
            if unknown:
                raise ValueError(f"unknown setting {unknown[0]!r} in method {item!r}")
            config = method_config(name, base.replace(**changes))
            used = options_used(config)
            unused = [key for key in changes if key not in used]
            if unused:
                uses = ", ".join(used) or "none: no STC setting applies to dense"
                raise ValueError(f"{unused[0]} has no effect in method {item!r} (it uses {uses})")
        specs.append(MethodSpec(label=item, name=name, config=config, session=session))
    if not specs:
        raise ValueError("no methods given")
    return specs


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def default_video() -> Path | None:
    for path in SAMPLE_VIDEOS:
        if path.exists():
            return path
    return None


class PeakMemory:
    """Peak device memory (CUDA) or process RSS (CPU, sampled every 5 ms) during a block."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        import torch

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
        import torch

        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def run_method(model, processor, frames, timestamps, spec: MethodSpec, args, capture_vit: bool) -> RunResult:
    """Stream the frames through a fresh session with this method, ask one question."""
    import stc
    from stc.api import adapter_for
    from stc.integrations.engine.session import StreamingSession

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
    last = runs[-1]
    frames = max(last.frames, 1)
    ingest = med(r.ingest_s for r in runs)
    answer = sum(seconds[s] for s in ("retrieval", "answer_prefill", "answer_decode"))
    return {
        "seconds": seconds,
        "ms_per_frame": {stage: 1000 * seconds[stage] / frames for stage in seconds},
        "ingest_fps": frames / ingest if ingest else float("inf"),
        "time_to_answer_s": answer,
        "decode_ms_per_token": 1000 * seconds["answer_decode"] / max(last.answer_tokens - 1, 1),
        "tokens_per_frame": last.tokens_kept / frames,
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
    import torch

    if features is None or reference is None or features.shape != reference.shape:
        return None
    return float(torch.nn.functional.cosine_similarity(features, reference, dim=-1).mean())


def bench(args) -> dict:
    import platform

    import torch

    from stc.api import adapter_for
    from stc.integrations.loading import resolve_dtype
    from stc.eval.presets import load_model
    from stc.integrations.video import sample_video

    specs = parse_methods(args.methods, args.stc_config)
    dtype = resolve_dtype(args.dtype, args.device)
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
    import numpy as np

    from stc.eval.synthetic.episodes import episode_seed, generate_episode
    from stc.eval.synthetic.scene import SceneConfig

    episode = generate_episode(episode_seed("eval", 0), SceneConfig(frames=max(count, 2 * SceneConfig.min_lifetime)))
    return episode.frames[:count], np.asarray(episode.timestamps[:count])


ROWS = (
    ("vit", "ViT ms/frame"),
    ("projector", "projector ms/frame"),
    ("pooling", "pooling ms/frame"),
    ("selection", "selection ms/frame"),
    ("llm_prefill", "LLM prefill ms/frame"),
    ("preprocess", "preprocess ms/frame"),
    ("video_decode", "video decode ms/frame"),
)


def table_rows(result: dict) -> list[tuple[str, list[str]]]:
    methods = result["methods"]
    rows = []
    for stage, title in ROWS:
        rows.append((title, [f"{m['ms_per_frame'][stage]:.1f} ({_r(m['ratios'][stage])})" for m in methods.values()]))
    rows.append(("retrieval ms", [f"{1000 * m['seconds']['retrieval']:.1f}" for m in methods.values()]))
    rows.append(("answer prefill ms", [f"{1000 * m['seconds']['answer_prefill']:.1f} ({_r(m['ratios']['answer_prefill'])})" for m in methods.values()]))
    rows.append(("decode ms/token", [f"{m['decode_ms_per_token']:.1f}" for m in methods.values()]))
    rows.append(("ingestion frames/s", [f"{m['ingest_fps']:.2f} ({_r(m['ratios']['ingest_fps'])})" for m in methods.values()]))
    rows.append(("time to answer s", [f"{m['time_to_answer_s']:.2f} ({_r(m['ratios']['time_to_answer_s'])})" for m in methods.values()]))
    rows.append(("LLM tokens/frame", [f"{m['tokens_per_frame']:.1f}" for m in methods.values()]))
    rows.append(("ViT tokens computed", [f"{100 * m['vit_recomputed_share']:.0f}%" for m in methods.values()]))
    rows.append(("ViT fidelity (cos)", ["-" if m["vit_fidelity"] is None else f"{m['vit_fidelity']:.4f}" for m in methods.values()]))
    rows.append(("ViT error, worst frame", ["-" if not m["vit_error_per_frame"] else f"{max(m['vit_error_per_frame']):.3f}"
                                             for m in methods.values()]))
    rows.append(("ViT error, mean frame", ["-" if not m["vit_error_per_frame"] else
                                            f"{sum(m['vit_error_per_frame']) / len(m['vit_error_per_frame']):.3f}"
                                            for m in methods.values()]))
    rows.append(("reference frames (cuts)", [f"{m['reference_frames']} ({m['cut_references']})" for m in methods.values()]))
    rows.append(("references /100 frames (drift)", [f"{m['references_per_100_frames']:.0f} ({m['drift_references']})"
                                                    for m in methods.values()]))
    rows.append(("ViT recomputed/layer, cached", [f"{100 * m['cached_recompute_share']:.0f}%" for m in methods.values()]))
    rows.append(("warm-up s (compiles)", [f"{m['warm_up_s']:.1f}" for m in methods.values()]))
    rows.append(("KV KiB/frame (blocks)", [f"{_kib(m['kv_bytes_per_frame'])} ({_r(m['ratios']['kv_bytes_per_frame'])})" for m in methods.values()]))
    rows.append(("stream KV KiB (all tiers)", [f"{_kib(m['stream_bytes'])}" for m in methods.values()]))
    rows.append(("ViT references KiB (Cacher)", [f"{_kib(m['memory']['vit_reference_bytes'])}" for m in methods.values()]))
    memory_name = "peak GPU MiB allocated" if result["device"].startswith("cuda") else "peak process RSS MiB"
    rows.append((memory_name, [f"{m['peak_memory_bytes'] / 2**20:.0f}" for m in methods.values()]))
    return rows


def _kib(value: float) -> str:
    kib = value / 1024
    return f"{kib:.0f}" if kib >= 10 else f"{kib:.2f}"


def _r(value) -> str:
    return "-" if value is None else f"x{value:.2f}"


def format_text(result: dict) -> str:
    labels = list(result["methods"])
    rows = table_rows(result)
    width = max(len(t) for t, _ in rows) + 2
    cols = [max(len(label), *(len(v[i]) for _, v in rows)) + 2 for i, label in enumerate(labels)]
    lines = [_header(result), "", "".ljust(width) + "".join(l.rjust(c) for l, c in zip(labels, cols))]
    for title, values in rows:
        lines.append(title.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols)))
    lines.append(f"(medians of {result['settings']['repeats']} interleaved repeats; (xR) = ratio to {result['baseline']})")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    labels = list(result["methods"])
    lines = [_header(result), "", "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for title, values in table_rows(result):
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    lines.append("")
    lines.append(f"Medians of {result['settings']['repeats']} interleaved repeats; (xR) = ratio to {result['baseline']} in the same run.")
    return "\n".join(lines)


def _header(result: dict) -> str:
    return (f"stc bench: {result['model']}; {result['frames']} frames of {result['video']} at {result['fps']:g} fps; "
            f"{result['device']} {result['dtype']}; {result['machine']}")


def plot(result: dict, path: str, accuracy: dict[str, float] | None = None) -> None:
    """Stacked per-stage time per method (ms per frame for ingestion, ms for answering), and a
    trade-off plot (time to answer + ingestion vs accuracy) when accuracies are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["methods"])
    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 + 1.2 * len(labels) + 5 * (panels - 1), 5), squeeze=False)
    ax = axes[0][0]
    bottom = [0.0] * len(labels)
    for stage in STAGES:
        values = [result["methods"][l]["ms_per_frame"][stage] for l in labels]
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("ms per frame (ingestion + answering, amortised)")
    ax.set_title("Per-stage time")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", rotation=30)
    if accuracy:
        ax2 = axes[0][1]
        for label in labels:
            if label in accuracy:
                x = 1000 / result["methods"][label]["ingest_fps"]
                ax2.scatter(x, accuracy[label])
                ax2.annotate(label, (x, accuracy[label]), fontsize=8)
        ax2.set_xlabel("ingestion ms per frame")
        ax2.set_ylabel("accuracy (%)")
        ax2.set_title("Trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
