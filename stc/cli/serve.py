"""`stc serve`: many live streams on one model, behind an HTTP API and a web page.

The server is `stc.integrations.serve`; this module reads the options, refuses unsafe ones
(a non-loopback address without a token), loads the model and runs uvicorn.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import os
import sys

DESCRIPTION = """Serve live streams (cameras, video files under --media-root, stream URLs, the synthetic
stream) on one model: add, list and remove them, read each stream's live figures and ask it
questions over HTTP (JSON, and OpenAI-style chat completions whose `model` names the stream), or
open the web page at / to see each stream's picture with the demo's overlay and ask from there.
STC and streaming-engine options below are every stream's defaults; a stream's request can set
its own (docs/serve.md)."""

EPILOG = """examples:
  stc serve --stream synthetic --stream synthetic              two synthetic streams, http://127.0.0.1:8000/
  stc serve --media-root ~/videos --memory-budget 256MiB --server-memory-budget 1GiB
  STC_SERVE_TOKEN=secret stc serve --host 0.0.0.0               reachable from other machines, token required
  curl -X POST localhost:8000/v1/streams -d '{"source": "clip.mp4", "keep_ratio": 0.5}'
  curl -X POST localhost:8000/v1/streams/stream-1/ask -d '{"question": "What is in the video?"}'

security: binds 127.0.0.1 unless --host says otherwise; any other address needs --token (or
STC_SERVE_TOKEN), and then every request but the page's needs "Authorization: Bearer TOKEN";
file sources only under --media-root (none without it)."""

TOKEN_VARIABLE = "STC_SERVE_TOKEN"
MISSING_EXTRA = "the server needs the serve extra: pip install 'stc-videollm[serve]'"


def register(subparsers, add_stc_options) -> None:
    from stc.cli.options import add_stream_options, byte_size, positive

    parser = subparsers.add_parser(
        "serve", help="serve many live streams on one model: HTTP API, OpenAI-style chat, a web page",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token", default=None,
                        help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_VARIABLE} if set); needed for "
                             "any --host other than a loopback address")
    parser.add_argument("--media-root", default=None, metavar="FOLDER",
                        help="video files may be named as sources only under this folder (default: no file sources)")
    parser.add_argument("--model", default=None, help="checkpoint folder or preset name (default: the shipped testbed model)")
    parser.add_argument("--stream", action="append", default=[], metavar="SOURCE", dest="streams",
                        help="a stream to start with (camera index, 'synthetic', URL, or file under --media-root); repeatable")
    parser.add_argument("--fps", type=positive(float), default=1.0, help="frames sampled per second of stream (default 1)")
    parser.add_argument("--max-new-tokens", type=positive(int), default=32, help="longest answer in tokens (default 32)")
    parser.add_argument("--queue-size", type=positive(int), default=8,
                        help="frames a stream queues while the model is busy; older ones are dropped (default 8)")
    parser.add_argument("--max-streams", type=positive(int), default=8, help="streams served at once (default 8)")
    parser.add_argument("--server-memory-budget", type=byte_size, default=None, metavar="BYTES",
                        help="cap on the sum of the streams' memory budgets (default: none); streams then get "
                             "--memory-budget, or this divided by --max-streams")
    parser.add_argument("--batch-streams", action=argparse.BooleanOptionalAction, default=True,
                        help="encode the frames of the streams that share an STC config, chunk length and frame size "
                             "in one vision-encoder call per round, and prefill the new blocks of equal token count "
                             "in one LLM call, with the results of one by one (default on; "
                             "--no-batch-streams: one stream after another)")
    add_stc_options(parser)
    add_stream_options(parser)
    parser.set_defaults(func=main)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def main(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and token is None:
        print(f"stc serve: error: --host {args.host} is not a loopback address: give --token (or set {TOKEN_VARIABLE}) "
              "so that only clients with it are served", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"stc serve: error: --port must be in [1, 65535], got {args.port}", file=sys.stderr)
        return 2
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        print(f"stc serve: error: {MISSING_EXTRA}", file=sys.stderr)
        return 2
    from stc.cli.demo import default_model
    from stc.eval.presets import load_model
    from stc.eval.synthetic.source import SyntheticSource
    from stc.integrations.engine.options import SessionOptions
    from stc.integrations.loading import CheckpointError, resolve_dtype
    from stc.integrations.serve.app import create_app
    from stc.integrations.serve.requests import ServerDefaults
    from stc.integrations.serve.shared_model import SharedModel
    from stc.integrations.serve.sources import SourceOpener
    from stc.integrations.serve.streams import StreamManager

    stream_budget = args.stream["memory_budget"]
    if args.server_memory_budget is not None and stream_budget is None:
        stream_budget = args.server_memory_budget // args.max_streams
    session = SessionOptions(**{**args.stream, "memory_budget": stream_budget}, sample_fps=args.fps,
                             max_new_tokens=args.max_new_tokens)
    episodes = itertools.count()  # each synthetic stream starts at the next episode
    sources = SourceOpener(args.media_root, synthetic=lambda: SyntheticSource(next(episodes)))
    model_name, note = (args.model, None) if args.model else default_model()
    if note:
        print(note)
    try:
        model, processor, description = load_model(model_name, args.device, resolve_dtype(args.dtype, args.device))
    except (CheckpointError, ValueError) as exc:
        print(f"stc serve: error: {exc}", file=sys.stderr)
        return 2
    defaults = ServerDefaults(method=_method(args), base=_base(args), session=session, queue_size=args.queue_size)
    manager = StreamManager(SharedModel(model, processor), sources, defaults, args.max_streams, args.server_memory_budget,
                            batch_streams=args.batch_streams)
    try:
        for spec in args.streams:
            stream = manager.add({"source": int(spec) if spec.isdigit() else spec})
            print(f"stream {stream.id}: {stream.source.name}")
        print(f"model: {description} on {args.device}")
        print(f"serving http://{args.host}:{args.port}/ ({'token required' if token else 'no token: this machine only'})")
        uvicorn.run(create_app(manager, token), host=args.host, port=args.port, log_level="warning")
    finally:
        manager.close()
    return 0


def _method(args) -> str:
    return "dense" if args.no_stc else args.method


def _base(args):
    """The STC knobs of the command line, for streams that set only some of their own."""
    config = args.stc_config
    from stc.config import STCConfig

    return config if isinstance(config, STCConfig) else STCConfig(keep_ratio=args.keep_ratio)
