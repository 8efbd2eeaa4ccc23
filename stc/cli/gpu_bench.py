"""The GPU benchmark of STC's overhead work, ready for when a GPU is lent (never part of CI).

    python -m stc.cli.gpu_bench --out gpu-bench/

runs `stc bench` on the LLaVA-OV-7B and Qwen2.5-VL-7B presets (random weights, real
architectures, built on the GPU) in bfloat16 over 16 frames of the sample video: dense, the
Cacher eager and compiled (N=2 and N=4), and STC eager and compiled, interleaved, medians of 3
repeats. It writes one bench JSON and one Markdown table per preset, and prints each preset's
wall-clock time. Not yet run on a GPU (none has been lent); frames and repeats are kept small
so that both presets should fit in the 8 minutes the overhead issue allows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PRESETS = ("llava-ov-7b", "qwen2.5-vl-7b")
METHODS = ",".join((
    "dense",
    "stc-cacher",
    "stc-cacher:compile=true",
    "stc-cacher:cache_interval=4",
    "stc-cacher:cache_interval=4:compile=true",
    "stc",
    "stc:compile=true",
    "stc:pipeline=true",
))


def commands(out: Path, frames: int, repeats: int, video: str | None) -> list[list[str]]:
    """The `stc bench` argument lists, one per preset."""
    runs = []
    for preset in PRESETS:
        argv = ["bench", "--model", preset, "--device", "cuda", "--dtype", "bfloat16", "--frames", str(frames),
                "--repeats", str(repeats), "--methods", METHODS, "--markdown", "--json", str(out / f"{preset}.json")]
        runs.append(argv + (["--video", video] if video else []))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stc.cli.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-bench", help="folder for the JSON and Markdown results")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--video", default=None, help="video file (default: the sample video stc bench finds)")
    args = parser.parse_args(argv)

    import torch

    from stc.cli import main as stc_main

    if not torch.cuda.is_available():
        print("python -m stc.cli.gpu_bench: error: no CUDA device (this benchmark measures STC on a GPU; "
              "on a CPU run `stc bench` directly)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", file=sys.stderr)
    for bench_argv in commands(out, args.frames, args.repeats, args.video):
        started = time.perf_counter()
        print("stc " + " ".join(bench_argv), file=sys.stderr)
        table = out / f"{bench_argv[2]}.md"
        with open(table, "w") as handle:
            stdout, sys.stdout = sys.stdout, handle
            try:
                code = stc_main(bench_argv)
            finally:
                sys.stdout = stdout
        print(table.read_text())
        print(f"({bench_argv[2]}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
