"""`stc bench`'s command line: the options, and the figures printed, written and plotted
(the measuring is stc.eval.bench)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stc.cli.options import add_stream_options, positive, user_errors
from stc.errors import ConfigError, InputError
import stc.eval.bench as measuring
from stc.eval.bench import DEFAULT_QUESTION, bench, format_markdown, format_text, plot


def register(subparsers, add_stc_options) -> None:
    from stc.methods import METHODS

    parser = subparsers.add_parser("bench", help="per-stage latency and memory of STC and peer methods",
                                   description=measuring.__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-ov-0.5b-narrow",
                        help="preset name (random weights, real architecture) or checkpoint folder (default llava-ov-0.5b-narrow)")
    parser.add_argument("--video", default=None, help="video file (default: OpenCV's vtest.avi if found)")
    parser.add_argument("--fps", type=positive(float), default=1.0, help="frames sampled per second of video (default %(default)s)")
    parser.add_argument("--frames", type=positive(int), default=16, help="frames streamed per run (default %(default)s)")
    parser.add_argument("--methods", default="dense,stc,stc-cacher,stc-pruner",
                        help=f"comma-separated methods ({', '.join(METHODS)}), each optionally with :key=value "
                             "(e.g. stc-cacher:cache_interval=4, timechat:threshold=0.5); peer methods keep --keep-ratio "
                             "of the tokens per frame")
    parser.add_argument("--repeats", type=positive(int), default=3,
                        help="interleaved repeats per method, medians reported (default %(default)s)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="question asked at the end (default: %(default)r)")
    parser.add_argument("--max-new-tokens", type=positive(int), default=16, help="answer tokens decoded, exactly (default %(default)s)")
    parser.add_argument("--vit-batch", type=positive(int), default=16, help="frames per vision-encoder call (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a per-stage time plot")
    parser.add_argument("--accuracy", action="append", default=[], metavar="LABEL=PERCENT_OR_JSON",
                        help="accuracy of a method for the trade-off plot (a number or a score JSON with 'overall')")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_stc_options(parser)
    add_stream_options(parser)
    parser.set_defaults(func=main)


def read_accuracy(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        label, _, value = item.partition("=")
        try:
            out[label] = float(value)
        except ValueError:
            out[label] = float(json.loads(Path(value).read_text())["overall"])
    return out


def main(args: argparse.Namespace) -> int:
    if args.no_stc or args.method != "stc":
        raise ConfigError("--method and --no-stc do not apply here: name the methods to compare with --methods "
                          "(e.g. --methods dense,random)")
    with user_errors():
        accuracy = read_accuracy(args.accuracy)
        result = bench(args)
    print(format_markdown(result) if args.markdown else format_text(result))
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"wrote {args.json}", file=sys.stderr)
        if args.plot:
            plot(result, args.plot, accuracy or None)
            print(f"wrote {args.plot}", file=sys.stderr)
    except OSError as exc:
        raise InputError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return 0
