"""Tokens the Pruner kept per frame, per method and budget, over held-out synthetic episodes
streamed through the engine with the shipped testbed model (as `stc eval synthetic --evidence`
streams them): mean, fewest and most per frame. It checks what the ER table's methods spent: the
adaptive budget never more than the fixed one (`stc.pruner.budget`).

    OMP_NUM_THREADS=1 python docs/pruner_budget_spend.py --n 100 --budgets 0.5,0.3,0.15 \
        --methods stc-pruner,stc-pruner:pruner_budget=adaptive
"""

import argparse

from stc.config import STCConfig
from stc.eval.bench.methods import parse_methods
from stc.eval.presets import load_model
from stc.eval.synthetic.retention import held_out_episodes
from stc.eval.testbed import TESTBED_DIR
from stc.integrations.engine.session import StreamingSession
from stc.integrations.loading import resolve_dtype
from stc.pruner import keep_count


def spend(model, processor, config, episodes) -> tuple[int, float, int, int]:
    """(tokens per frame offered, mean, fewest, most kept per frame) over every frame of the episodes."""
    counts, offered = [], 0
    for episode in episodes:
        with StreamingSession(model, processor, config=config, sample_fps=episode.config.fps) as session:
            report = session.append_frames(episode.frames)
        offered = report.tokens_in // report.frames
        counts += [len(p) for p in report.kept] if report.kept is not None else [report.tokens_in // report.frames] * report.frames
    return offered, sum(counts) / len(counts), min(counts), max(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="held-out episodes (seeds 0..n-1)")
    parser.add_argument("--budgets", default="0.5,0.3,0.15")
    parser.add_argument("--methods", default="stc-pruner,stc-pruner:pruner_budget=adaptive")
    args = parser.parse_args()
    model, processor, _ = load_model(TESTBED_DIR, "cpu", resolve_dtype("auto", "cpu"))
    episodes = held_out_episodes(0, args.n)
    print("| method | keep | fixed count | mean | fewest | most |\n|---|---|---|---|---|---|")
    for spec in parse_methods(args.methods, STCConfig()):
        for budget in (float(b) for b in args.budgets.split(",")):
            config = spec.config.replace(keep_ratio=budget)
            offered, mean, fewest, most = spend(model, processor, config, episodes)
            print(f"| {spec.label} | {budget:g} | {keep_count(offered, budget)} | {mean:.3f} | {fewest} | {most} |",
                  flush=True)


if __name__ == "__main__":
    main()
