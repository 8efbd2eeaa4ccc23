"""The figures of a `stc bench` result as a text or Markdown table, and as a plot."""

from __future__ import annotations

from stc.eval.bench.measure import STAGES


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
    rows.append(("LLM tokens/frame (fewest-most)", [f"{m['tokens_per_frame']:.1f} ({m['tokens_per_frame_min']:g}-"
                                                    f"{m['tokens_per_frame_max']:g})" for m in methods.values()]))
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
    rows.append(("KV per frame (blocks)", [f"{size(m['kv_bytes_per_frame'])} ({_r(m['ratios']['kv_bytes_per_frame'])})" for m in methods.values()]))
    rows.append(("stream KV (all tiers)", [size(m["stream_bytes"]) for m in methods.values()]))
    rows.append(("ViT references (fixed/stream)", [size(m["memory"]["vit_reference_bytes"]) for m in methods.values()]))
    memory_name = "peak GPU MiB allocated" if result["device"].startswith("cuda") else "peak process RSS MiB"
    rows.append((memory_name, [f"{m['peak_memory_bytes'] / 2**20:.0f}" for m in methods.values()]))
    return rows


def size(value: float) -> str:
    """Bytes in the unit a person reads: 512 B, 64.0 KiB, 62.5 MiB, 1.50 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            amount = value / scale
            return f"{amount:.2f} {unit}" if amount < 10 else f"{amount:.1f} {unit}"
    return f"{value:.0f} B"


NOISY_SPREAD = 0.25  # repeats whose (max - min) / median exceeds this disagree
TIMER_FLOOR_S = 1e-4  # stages shorter than this (median over a whole stream) are timer and call overhead


def notes(result: dict) -> list[str]:
    """What a reader must know before trusting a ratio: stages too short to time, stages whose
    repeats disagree (their ratios are within the noise), and what the fixed costs are."""
    lines = []
    baseline = result["methods"][result["baseline"]]
    short = [s for s in STAGES if 0 < baseline["seconds"][s] < TIMER_FLOOR_S]
    if short:
        takes, ratios = ("takes", "its ratio is") if len(short) == 1 else ("take", "their ratios are")
        lines.append(f"note: {', '.join(short)} {takes} under {1e6 * TIMER_FLOOR_S:.0f} us per stream here: {ratios} "
                     "timer and call overhead, not the method")
    noisy = {}
    for label, m in result["methods"].items():
        for stage, spread in m.get("spread", {}).items():
            if spread > NOISY_SPREAD and m["seconds"][stage] >= TIMER_FLOOR_S:
                noisy[stage] = max(noisy.get(stage, 0.0), spread)
    if noisy:
        listed = ", ".join(f"{s} ({100 * v:.0f}%)" for s, v in noisy.items())
        lines.append(f"note: repeats disagree by more than {100 * NOISY_SPREAD:.0f}% (max - min over median) on {listed}: "
                     "ratios of those stages closer to 1 than that are noise; use more --repeats or --frames")
    lines.append("note: ViT references are the Cacher's per-layer features of the reference frame, a fixed cost per "
                 "stream (not per frame)")
    return lines



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
    return "\n".join(lines + notes(result))


def format_markdown(result: dict) -> str:
    labels = list(result["methods"])
    lines = [_header(result), "", "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for title, values in table_rows(result):
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    lines.append("")
    lines.append(f"Medians of {result['settings']['repeats']} interleaved repeats; (xR) = ratio to {result['baseline']} in the same run.")
    return "\n".join(lines + [""] + [f"- {n.removeprefix('note: ')}" for n in notes(result)])


def _header(result: dict) -> str:
    return (f"stc bench: {result['model']}; {result['frames']} frames of {result['video']} at {result['fps']:g} fps; "
            f"{result['device']} {result['dtype']}; {result['machine']}")


def plot(result: dict, path: str, accuracy: dict[str, float] | None = None) -> None:
    """Stacked per-stage time per method (ms per frame for ingestion, ms for answering), and a
    trade-off plot (time to answer + ingestion vs accuracy) when accuracies are given."""
    import matplotlib  # on use: matplotlib takes seconds to load; only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["methods"])
    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(8 + 1.2 * len(labels) + 5 * (panels - 1), 5), squeeze=False)
    ax = axes[0][0]
    bottom = [0.0] * len(labels)
    for stage in STAGES:
        values = [result["methods"][l]["ms_per_frame"][stage] for l in labels]
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("ms per frame (ingestion + answering, amortised)")
    ax.set_title(f"Per-stage time: {result['model']}, {result['frames']} frames, {result['device']} {result['dtype']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over one
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
