"""The Cacher's Pareto picture: ViT time against ViT error for a grid of fixed (N, r) settings
and for adaptive settings, one `stc bench` run and one PNG per video (issue 34, point 5).

For each video, runs `stc bench` once with dense first and then every setting (interleaved
repeats, medians; ratios against dense in the same run), Cacher only (`stc-cacher`), and keeps
its JSON in OUT/<video>.json: a rerun skips the videos already measured (resumes), and
`--plot-only` redraws from the JSONs. Each PNG plots the ViT time ratio (× dense) against the
mean per-frame ViT error (rel L2 to dense), with the fixed grid's Pareto front as a line, the
adaptive points as stars, and the worst frame's error in each label. OUT/pareto.md gets the
table of every point.

    python docs/cacher_pareto.py --out docs/results/cacher/pareto \\
        --videos ../shared/videos/vtest.avi,../shared/videos/Megamind.avi --frames 16 --fps 2
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

NOISY_SPREAD = 0.25  # as stc bench's report: repeats that disagree by more than this are not a timing
FIXED = "2:0.25,2:0.5,4:0.1,4:0.25,8:0.1,8:0.25"
ADAPTIVE = ("change_threshold=0.05:share_selection=true;"
            "cache_interval=8:drift_threshold=0.96;"
            "cache_interval=8:drift_threshold=0.96:change_threshold=0.05:share_selection=true")


def settings(fixed: str, adaptive: str) -> list[tuple[str, str, bool]]:
    """(label, stc bench method spec, adaptive?) for every point, dense first."""
    points = [("dense", "dense", False)]
    for item in filter(None, fixed.split(",")):
        n, r = item.split(":")
        points.append((f"N={n} r={r}", f"stc-cacher:cache_interval={n}:update_ratio={r}", False))
    for item in filter(None, adaptive.split(";")):
        points.append((item.replace(":", " "), f"stc-cacher:{item}", True))
    return points


def measure(video: Path, out: Path, points, args) -> None:
    command = [sys.executable, "-m", "stc", "bench", "--model", args.model, "--video", str(video),
               "--fps", str(args.fps), "--frames", str(args.frames), "--repeats", str(args.repeats),
               "--max-new-tokens", "1", "--json", str(out), "--markdown",
               "--methods", ",".join(spec for _, spec, _ in points)] + args.bench_args
    print("running:", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)


def rows(result: dict, points) -> list[dict]:
    """One row per point: time ratio, mean and worst frame error, references, recompute share."""
    table = []
    for (label, spec, adaptive), (key, m) in zip(points, result["methods"].items()):
        errors = m["vit_error_per_frame"] or [0.0]
        table.append({"label": label, "spec": key, "adaptive": adaptive, "vit_ratio": m["ratios"]["vit"],
                      "vit_ms_per_frame": m["ms_per_frame"]["vit"], "mean_error": sum(errors) / len(errors),
                      "worst_error": max(errors), "references_per_100": m["references_per_100_frames"],
                      "cached_recompute_share": m["cached_recompute_share"], "spread": m["spread"]["vit"]})
    return table


def front(points: list[dict]) -> list[dict]:
    """The fixed settings no other fixed setting beats on both time and error."""
    fixed = sorted((p for p in points if not p["adaptive"]), key=lambda p: (p["mean_error"], p["vit_ratio"]))
    best, out = float("inf"), []
    for p in fixed:
        if p["vit_ratio"] < best:
            out.append(p)
            best = p["vit_ratio"]
    return out


def plot(table: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    edge = front(table)
    ax.plot([p["mean_error"] for p in edge], [p["vit_ratio"] for p in edge], "-", color="grey", label="fixed (N, r) front")
    keys = []  # the adaptive settings' full names, under the plot (their points carry A1, A2, ...)
    for p in table:
        style = dict(marker="*", s=160, color="tab:red") if p["adaptive"] else dict(marker="o", s=40, color="tab:blue")
        ax.scatter(p["mean_error"], p["vit_ratio"], zorder=3, **style)
        name = p["label"]
        if p["adaptive"]:
            keys.append(f"A{len(keys) + 1}: {name}")
            name = f"A{len(keys)}"
        ax.annotate(f"{name} (worst {p['worst_error']:.3f})", (p["mean_error"], p["vit_ratio"]),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.scatter([], [], marker="*", s=160, color="tab:red", label="adaptive")
    ax.set_xlabel("ViT error, mean frame (rel L2 to dense)")
    ax.set_ylabel("ViT time (x dense, medians, same run)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(x=0.15, y=0.08)
    if keys:
        ax.text(0, -0.16, "\n".join(keys), transform=ax.transAxes, fontsize=7, va="top")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(tables: dict[str, list[dict]], model: str) -> str:
    lines = [f"# Cacher Pareto points ({model})", "",
             "| video | setting | ViT × dense | ViT ms/frame | mean error | worst | refs/100 | recomputed/layer, cached | spread |",
             "|---|---|---|---|---|---|---|---|---|"]
    for video, table in tables.items():
        for p in table:
            lines.append(f"| {video} | {p['label']}{' (adaptive)' if p['adaptive'] else ''} | {p['vit_ratio']:.2f} | "
                         f"{p['vit_ms_per_frame']:.0f} | {p['mean_error']:.4f} | {p['worst_error']:.3f} | "
                         f"{p['references_per_100']:.0f} | {100 * p['cached_recompute_share']:.0f}% | {p['spread']:.2f} |")
    noisy = [f"{video} {p['label']}" for video, table in tables.items() for p in table if p["spread"] > NOISY_SPREAD]
    if noisy:
        lines += ["", f"**Noisy timings** (ViT (max - min) / median over the repeats above {NOISY_SPREAD}): "
                  + "; ".join(noisy) + ". Rerun on a quiet machine before reading their ratios."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="comma-separated video files")
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSONs, PNGs and pareto.md")
    parser.add_argument("--model", default="llava-ov-0.5b-narrow")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed", default=FIXED, help="fixed settings N:r, comma-separated (default %(default)s)")
    parser.add_argument("--adaptive", default=ADAPTIVE, help="adaptive settings, ';'-separated, each key=value:key=value")
    parser.add_argument("--plot-only", action="store_true", help="redraw from the JSONs already in --out")
    parser.add_argument("bench_args", nargs="*", help="after --: more `stc bench` options (e.g. -- --dtype bfloat16 --compile)")
    args = parser.parse_args()
    videos = [Path(v) for v in args.videos.split(",") if v]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        print(f"cacher_pareto: error: no such video: {', '.join(missing)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    points = settings(args.fixed, args.adaptive)
    tables = {}
    for index, video in enumerate(videos, 1):
        result_path = args.out / f"{video.stem}.json"
        print(f"[{index}/{len(videos)}] {video.name}", file=sys.stderr)
        if not result_path.exists():
            if args.plot_only:
                print(f"  no {result_path}: skipped", file=sys.stderr)
                continue
            measure(video, result_path, points, args)
        else:
            print(f"  {result_path} exists: not measured again", file=sys.stderr)
        result = json.loads(result_path.read_text())
        if list(result["methods"]) != [spec for _, spec, _ in points]:
            print(f"cacher_pareto: error: {result_path} holds other settings than those asked for "
                  f"({', '.join(result['methods'])}): delete it or pass the --fixed and --adaptive it was made with",
                  file=sys.stderr)
            return 2
        tables[video.name] = rows(result, points)
        title = f"{video.name}: {result['model']}, {result['dtype']}, {result['frames']} frames at {result['fps']:g} fps"
        plot(tables[video.name], title, args.out / f"{video.stem}.png")
        print(f"  wrote {args.out / f'{video.stem}.png'}", file=sys.stderr)
    (args.out / "pareto.md").write_text(markdown(tables, args.model))
    print(markdown(tables, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
