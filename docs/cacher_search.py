"""Search the adaptive STC-Cacher's default by deterministic quantities only (issue 34): for a grid
of Cacher settings, per video, the per-frame ViT error against dense (mean and worst, rel L2, as
`stc bench` computes it), the references made (schedule, drift, cuts), the share of tokens
recomputed per layer on cached frames, and a compute estimate in counted FLOPs. No timing.

Each setting runs the patched model's `get_video_features` once over the video's frames (one
stream, `--vit-batch` frames per encoder call, Cacher only); dense is the unpatched model. The
results go to OUT/<video>.json (a rerun measures only the settings not there yet, so grids
run in several invocations add up) and OUT/search.md, which reports every setting measured. `--similarities` prints, per video, the distribution of the first-layer key
similarity of each frame to the frame d samples before (what drift and cuts compare) and stops.

    nice -n 19 env OMP_NUM_THREADS=1 python docs/cacher_search.py --out docs/results/cacher/search \\
        --videos ../shared/videos/vtest.avi,../shared/videos/Megamind.avi --frames 16 --fps 2

Compute estimate, x dense ViT: refs/frames + (1 - refs/frames) * cost(cached frame), where a cost
counts multiply-adds of the ViT's matrix products (patch embedding, Q/K/V/out projections,
attention scores and weighted sums, MLP; LayerNorms, gathers and copies are O(T*C) and not
counted). A cached layer runs K on every token (or, with shared selection after the first layer,
on the recomputed ones only), and Q, V, the out projection, the attention rows and the MLP on the
recomputed share s; the cut/drift/gate detection adds K on every 4th token of layer 0.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import stc
from stc.api import adapter_for
from stc.cacher import CUT_SAMPLE_STRIDE
from stc.eval.bench.measure import vit_error_per_frame
from stc.eval.presets import load_model
from stc.integrations.video import sample_video

FIXED = "2:0.25,4:0.25,4:0.1,8:0.25,8:0.1"
FIXED_DEFAULT = "cache_interval=2:update_ratio=0.25"


def fixed_settings(text: str) -> list[str]:
    """'N:r,...' -> method overrides 'cache_interval=N:update_ratio=r'."""
    out = []
    for item in filter(None, text.split(",")):
        n, r = item.split(":")
        out.append(f"cache_interval={n}:update_ratio={r}")
    return out


def adaptive_settings(args) -> list[str]:
    """N_max x drift x change gate (x ceiling x refresh), with shared selection."""
    out = []
    for n in args.n_max.split(","):
        for drift in args.drift.split(","):
            for change in args.change.split(","):
                for ceiling in args.ceiling.split(","):
                    for refresh in args.refresh.split(","):
                        parts = [f"cache_interval={n}", f"update_ratio={ceiling}", f"drift_threshold={drift}"]
                        if change != "off":
                            parts.append(f"change_threshold={change}")
                        parts.append("share_selection=true")
                        if refresh == "on":
                            parts.append("refresh_tokens=true")
                        out.append(":".join(parts))
    return out


def parse_setting(text: str) -> dict:
    """'key=value:key=value' -> STCConfig overrides (values as `stc bench --methods` reads them)."""
    from stc.eval.bench.methods import _parse_value

    return {key: _parse_value(value) for key, _, value in (part.partition("=") for part in text.split(":") if part)}


def vision_geometry(model) -> dict:
    v = model.config.vision_config
    return {"tokens": (v.image_size // v.patch_size) ** 2, "width": v.hidden_size, "mlp": v.intermediate_size,
            "layers": v.num_hidden_layers, "patch_in": 3 * v.patch_size ** 2}


def cached_cost(share: float, geometry: dict, shared: bool, detects: bool) -> float:
    """Multiply-adds of one cached frame over one dense frame (see the module docstring)."""
    t, c, m, layers = geometry["tokens"], geometry["width"], geometry["mlp"], geometry["layers"]
    embed = t * geometry["patch_in"] * c
    dense_layer = t * (4 * c * c + 2 * t * c + 2 * c * m)
    recomputed = share * t * (3 * c * c + 2 * t * c + 2 * c * m)  # Q, V, out proj, attention rows, MLP
    first = t * c * c + recomputed  # K on every token (it selects)
    later = (share * t if shared else t) * c * c + recomputed
    detection = (t / CUT_SAMPLE_STRIDE) * c * c if detects else 0.0
    return (embed + first + (layers - 1) * later + detection) / (embed + layers * dense_layer)


def estimate(refs: int, frames: int, share: float, geometry: dict, overrides: dict) -> float:
    config = stc.STCConfig(pruner=False).replace(**overrides)
    detects = any(x is not None for x in (config.cut_threshold, config.drift_threshold, config.change_threshold))
    cost = cached_cost(share, geometry, config.share_selection, detects)
    return refs / frames + (1 - refs / frames) * cost


def run(model, pixels: torch.Tensor, config, vit_batch: int) -> tuple[torch.Tensor, dict | None]:
    """The ViT output of every frame (what `stc bench` captures) and the Cacher's counters."""
    captured = []
    hook = adapter_for(model).vision_output_module(model).register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0].detach().float().cpu()))
    stats = None
    try:
        with torch.inference_mode():
            if config is None:
                for start in range(0, pixels.shape[1], vit_batch):
                    model.model.get_video_features(pixels[:, start:start + vit_batch], return_dict=True)
            else:
                with stc.patched(model, config), stc.stream(model):
                    for start in range(0, pixels.shape[1], vit_batch):
                        model.model.get_video_features(pixels[:, start:start + vit_batch], return_dict=True)
                    stats = stc.stats(model)
    finally:
        hook.remove()
    return torch.cat(captured), stats


def first_layer_similarities(model, pixels: torch.Tensor, lags: int) -> dict[int, list[float]]:
    """lag d -> mean cosine similarity of frame t's first-layer keys to frame t-d's, over t
    (every `CUT_SAMPLE_STRIDE`-th token, as drift and cut detection read them)."""
    tower = model.model.vision_tower
    layer = tower.encoder.layers[0]
    with torch.inference_mode():
        x = tower.embeddings(pixels[0])
        keys = F.normalize(layer.self_attn.k_proj(layer.layer_norm1(x[:, ::CUT_SAMPLE_STRIDE])).float(), dim=-1)
    out = {}
    for d in range(1, min(lags, len(keys) - 1) + 1):
        out[d] = [float(v) for v in (keys[d:] * keys[:-d]).sum(-1).mean(-1)]
    return out


def row(label: str, features, dense, stats, frames: int, geometry: dict, overrides: dict) -> dict:
    errors = vit_error_per_frame(features, dense, frames)
    if stats is None:  # dense
        refs, share, drift, cuts = frames, 0.0, 0, 0
    else:
        refs, share = stats["reference_frames"], stats["cached_recompute_share"]
        drift, cuts = stats["drift_references"], stats["cut_references"]
    return {"setting": label, "mean_error": sum(errors) / len(errors), "worst_error": max(errors),
            "errors": errors, "references": refs, "drift_references": drift, "cut_references": cuts,
            "schedule_references": refs - drift - cuts, "cached_recompute_share": share,
            "estimate": 1.0 if stats is None else estimate(refs, frames, share, geometry, overrides)}


def markdown(results: dict[str, dict], bars: dict) -> str:
    lines = ["| video | setting | mean error | worst | refs (drift, cuts) | recomputed/layer, cached | "
             "estimate x dense | x fixed default | meets the error bars |",
             "|---|---|---|---|---|---|---|---|---|"]
    for video, result in results.items():
        fixed = result["rows"].get(FIXED_DEFAULT)
        for label, r in sorted(result["rows"].items(), key=lambda kv: kv[1]["estimate"]):
            versus = f"{r['estimate'] / fixed['estimate']:.2f}" if fixed else "-"
            ok = "yes" if label in bars.get(video, ()) else ""
            lines.append(f"| {video} | {label} | {r['mean_error']:.4f} | {r['worst_error']:.3f} | "
                         f"{r['references']} ({r['drift_references']}, {r['cut_references']}) | "
                         f"{100 * r['cached_recompute_share']:.1f}% | {r['estimate']:.3f} | {versus} | {ok} |")
    return "\n".join(lines) + "\n"


def meets_bars(results: dict[str, dict], worst_bar: float) -> dict[str, set[str]]:
    """Per video, the settings whose mean error is at most the fixed default's and worst frame at most worst_bar."""
    out = {}
    for video, result in results.items():
        fixed = result["rows"].get(FIXED_DEFAULT)
        if fixed is None:
            continue
        out[video] = {label for label, r in result["rows"].items()
                      if r["mean_error"] <= fixed["mean_error"] + 1e-12 and r["worst_error"] <= worst_bar}
    return out


def summary(results: dict[str, dict], bars: dict[str, set[str]]) -> str:
    """Settings that meet the bars on every video, by their mean estimate over the videos."""
    videos = list(results)
    common = set.intersection(*(bars[v] for v in videos)) if videos and all(v in bars for v in videos) else set()
    lines = [f"settings meeting the error bars on all {len(videos)} videos, by mean estimate "
             "(x dense; x fixed default, mean over videos; worst video's x fixed default):"]
    scored = []
    for label in common:
        est = [results[v]["rows"][label]["estimate"] for v in videos]
        rel = [results[v]["rows"][label]["estimate"] / results[v]["rows"][FIXED_DEFAULT]["estimate"] for v in videos]
        scored.append((sum(est) / len(est), sum(rel) / len(rel), max(rel), label))
    for est, rel, worst, label in sorted(scored):
        lines.append(f"  {est:.3f}  {rel:.2f}  {worst:.2f}  {label}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="comma-separated video files")
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSONs and search.md")
    parser.add_argument("--model", default="llava-ov-0.5b-narrow")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--vit-batch", type=int, default=16, help="frames per encoder call (refresh acts between calls)")
    parser.add_argument("--fixed", default=FIXED, help="fixed settings N:r, comma-separated (default %(default)s)")
    parser.add_argument("--n-max", default="4,8,16", help="adaptive: cache_interval (N_max) values")
    parser.add_argument("--drift", default="0.95", help="adaptive: drift_threshold values")
    parser.add_argument("--change", default="off,0.05,0.1", help="adaptive: change_threshold values ('off': no gate)")
    parser.add_argument("--ceiling", default="0.25", help="adaptive: update_ratio (the gate's ceiling) values")
    parser.add_argument("--refresh", default="off", help="adaptive: refresh_tokens values (on, off)")
    parser.add_argument("--extra", default="", help="more settings, ';'-separated, each key=value:key=value")
    parser.add_argument("--no-adaptive", action="store_true", help="only the fixed grid and --extra")
    parser.add_argument("--worst-bar", type=float, default=0.15)
    parser.add_argument("--similarities", type=int, default=0, metavar="LAGS",
                        help="print the first-layer key similarity at lags 1..LAGS per video and stop")
    args = parser.parse_args()
    videos = [Path(v) for v in args.videos.split(",") if v]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        print(f"cacher_search: error: no such video: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = fixed_settings(args.fixed) + ([] if args.no_adaptive else adaptive_settings(args))
    settings += [s for s in args.extra.split(";") if s]
    settings = list(dict.fromkeys(settings))
    try:
        for s in settings:
            stc.STCConfig(pruner=False).replace(**parse_setting(s))
    except (TypeError, ValueError) as error:
        print(f"cacher_search: error: {error}", file=sys.stderr)
        return 2
    model, processor, description = load_model(args.model, "cpu", getattr(torch, args.dtype))
    adapter = adapter_for(model)
    geometry = vision_geometry(model)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for index, video in enumerate(videos, 1):
        frames = sample_video(video, fps=args.fps, max_frames=args.frames).frames
        pixels = adapter.preprocess(model, processor, frames.numpy() if hasattr(frames, "numpy") else frames)
        count = pixels.shape[1]
        if args.similarities:
            for lag, values in first_layer_similarities(model, pixels, args.similarities).items():
                q = torch.tensor(values).quantile(torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])).tolist()
                print(f"{video.name} lag {lag}: min {q[0]:.3f} p10 {q[1]:.3f} median {q[2]:.3f} p90 {q[3]:.3f} max {q[4]:.3f}")
            continue
        path = args.out / f"{video.stem}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        key = {"model": description, "dtype": args.dtype, "frames": count, "fps": args.fps, "vit_batch": args.vit_batch}
        if result.get("key") != key:
            result = {"key": key, "geometry": geometry, "rows": {}}
        dense = None
        todo = [s for s in settings if s not in result["rows"]]
        print(f"[{index}/{len(videos)}] {video.name}: {len(todo)} settings to run", file=sys.stderr)
        if todo:
            dense, _ = run(model, pixels, None, args.vit_batch)
        for label in todo:
            overrides = parse_setting(label)
            features, stats = run(model, pixels, stc.STCConfig(pruner=False).replace(**overrides), args.vit_batch)
            result["rows"][label] = row(label, features, dense, stats, count, geometry, overrides)
            r = result["rows"][label]
            print(f"  {label}: mean {r['mean_error']:.4f} worst {r['worst_error']:.3f} refs {r['references']} "
                  f"share {r['cached_recompute_share']:.3f} estimate {r['estimate']:.3f}", file=sys.stderr)
            path.write_text(json.dumps(result, indent=1))
        results[video.name] = result
    if args.similarities:
        return 0
    bars = meets_bars(results, args.worst_bar)
    text = markdown(results, bars) + "\n" + summary(results, bars)
    (args.out / "search.md").write_text(f"# Cacher search ({description}, {args.dtype}, vit_batch {args.vit_batch})\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
