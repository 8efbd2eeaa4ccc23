"""Selection cost of each Pruner scorer: milliseconds per frame on random tokens, as a stream
feeds them (one frame per call, the history carried), at 196 and 729 tokens per frame.

Each setting runs `--warmup` calls, then `--calls` timed calls of `stc.pruner.prune_frames` on
one frame each (a fresh stream per setting, chunks cycled from a pool of random ones; the
settings take turns call by call); the median per frame is reported, with the interquartile
range. `--frames-per-call` > 1 times one call on that many frames (ms per frame).
Tokens are what the Pruner sees: projector outputs [n, D] (D = the LLM width; LLaVA-OV-7B: 3584).

    python docs/pruner_cost.py --tokens 196,729 --dim 3584 --calls 300 --threads 1
"""

import argparse
import platform
import statistics
import time

import torch

from stc.pruner import PRUNER_SCORINGS, PrunerHistory, frame_change, prune_frames

POOL = 8  # distinct random chunks per setting


def settings(coverage: float) -> list[tuple[str, str, dict]]:
    """(label, scorer, knobs): every scorer alone, then each with coverage."""
    plain = [(name, name, {}) for name in PRUNER_SCORINGS]
    return plain + [(f"{name}+coverage", name, {"coverage": coverage}) for name in PRUNER_SCORINGS]


def time_settings(chosen: list[tuple[str, str, dict]], tokens: int, dim: int, args) -> dict[str, list[float]]:
    """Milliseconds per frame of each timed call, per setting. The settings take turns call by
    call (each with its own stream), so a load spike on the shared machine hits them alike."""
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(POOL, args.frames_per_call, tokens, dim, generator=g)  # cycled: the cost does not depend on values
    histories = {label: PrunerHistory() for label, _, _ in chosen}
    times = {label: [] for label, _, _ in chosen}
    for i in range(args.warmup + args.calls):
        chunk = pool[i % POOL]
        for label, scoring, knobs in chosen:
            start = time.perf_counter()
            prune_frames(chunk, histories[label], args.keep_ratio, scoring=scoring, **knobs)
            if args.budget:
                frame_change(chunk, histories[label])
            elapsed = time.perf_counter() - start
            if i >= args.warmup:
                times[label].append(1000 * elapsed / args.frames_per_call)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="196,729", help="tokens per frame, comma-separated")
    parser.add_argument("--dim", type=int, default=3584, help="token width (the LLM's hidden size)")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--frames-per-call", type=int, default=1)
    parser.add_argument("--keep-ratio", type=float, default=0.3)
    parser.add_argument("--coverage", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--budget", action="store_true", help="also time the adaptive budget's frame_change")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
          f"D={args.dim}, keep {args.keep_ratio}, {args.frames_per_call} frame(s) per call, "
          f"median of {args.calls} calls after {args.warmup}")
    columns = [int(t) for t in args.tokens.split(",")]
    print("| scorer | " + " | ".join(f"ms/frame at {t} (IQR)" for t in columns) + " |")
    print("|---|" + "---|" * len(columns))
    chosen = settings(args.coverage)
    measured = {tokens: time_settings(chosen, tokens, args.dim, args) for tokens in columns}
    for label, _, _ in chosen:
        cells = []
        for tokens in columns:
            times = measured[tokens][label]
            q1, _, q3 = statistics.quantiles(times, n=4)
            cells.append(f"{statistics.median(times):.2f} ({q1:.2f}-{q3:.2f})")
        print(f"| {label} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
