"""ER against accuracy on the synthetic testbed: the table, Pearson r with its episode-bootstrap
interval, the calibration line accuracy = a + b * ER, and a scatter PNG (issue 33).

    python docs/er_accuracy.py ER.json ACC.json [ACC.json ...] [--png FILE] [--markdown FILE] [--json FILE]
                               [--skip-unmatched]

ER.json: `stc eval synthetic --evidence --json` (its --methods and --budgets covering the
accuracy runs); each ACC.json: `stc eval synthetic --method M --keep-ratio K --json`, all on the
same episodes (--seed, --n, --generator). The statistics are `stc.eval.synthetic.correlation`'s;
this script reads the files and draws the plot. A mismatched file: one line, exit 2.
"""

import argparse
import json
import sys
from pathlib import Path

from stc.errors import STCError
from stc.eval.reporting import read_json
from stc.eval.synthetic.correlation import correlate, correlation_table, match_points

PROG = "er_accuracy.py"


def plot(result, path: Path, title: str) -> None:
    """Accuracy against ER, one labelled point per (method, budget), dense as a star, the line drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for point, er, accuracy in zip(result.points, result.er, result.accuracy):
        if point.dense:
            if er is not None:
                ax.scatter([er], [accuracy], marker="*", s=160, color="black", zorder=3, label="dense")
            else:
                ax.axhline(accuracy, color="black", linestyle=":", linewidth=1, label="dense (no ER run)")
            continue
        ax.scatter([er], [accuracy], s=18, color="tab:blue", zorder=2)
        ax.annotate(point.method if point.keep is None else f"{point.method} {point.keep:g}", (er, accuracy), xytext=(3, 2), textcoords="offset points",
                    fontsize=6)
    xs = [er for point, er in zip(result.points, result.er) if not point.dense]
    line_x = [min(xs), 100.0]
    ax.plot(line_x, [result.a + result.b * x for x in line_x], color="tab:red", linewidth=1,
            label=f"accuracy = {result.a:.1f} + {result.b:.3f} ER (r = {result.r:.2f})")
    ax.set_xlabel("evidence retention (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("er", help="the ER JSON (stc eval synthetic --evidence --json)")
    parser.add_argument("accuracy", nargs="+",
                        help="accuracy JSONs (stc eval synthetic --method M --keep-ratio K --json)")
    parser.add_argument("--png", help="write the scatter plot here")
    parser.add_argument("--markdown", help="also write the table as markdown")
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument("--title", default="ER against accuracy, synthetic testbed")
    parser.add_argument("--skip-unmatched", action="store_true",
                        help="leave out (and name) accuracy JSONs whose method and keep ratio the ER JSON has no run "
                             "of, instead of refusing them")
    args = parser.parse_args(argv)
    unmatched = [] if args.skip_unmatched else None
    try:
        points = match_points(read_json(args.er), {path: read_json(path) for path in args.accuracy}, args.er, unmatched)
        result = correlate(points)
    except (STCError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for source in unmatched or ():
        print(f"{PROG}: left out {source}: the ER JSON has no run of its method at its keep ratio", file=sys.stderr)
    print(correlation_table(result))
    if args.markdown:
        Path(args.markdown).write_text(correlation_table(result, markdown=True) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if args.png:
        plot(result, Path(args.png), args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
