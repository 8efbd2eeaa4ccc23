"""Ingestion throughput of `stc serve` for 1, 2, 4, 8 streams on one model (docs/serve.md),
batched (one vision-encoder call and one LLM prefill per round for the streams that can share
them: `stc serve`'s default) and serial
(one stream after another: `--no-batch-streams`).

For each mode and stream count: a `StreamManager` on the model (as `stc serve` builds it, with its default
queue and `vit_batch`), that many synthetic streams played as fast as the model takes them
(realtime off: no frame is dropped), each its own episode; once every stream has been added, the
frames ingested (after a warm-up chunk of each) until every stream has `--frames` more, over the
wall time (whole chunks: a stream may ingest a few more). Also the vision
encoder calls per ingestion round (one round = the ingestion thread going once over the
streams), the frames per call (every ingested frame passes the encoder once) and the LLM prefill
calls (`StreamManager.llm_prefill_calls`). With `--repeats R` the modes take turns R times per
stream count (batched, serial, batched, ...), and the row gives the median frames/s with the
lowest and highest in brackets (the counts are the median repeat's).

    python docs/serve_throughput.py                                  # the shipped model, 1,2,4,8 streams, both modes
    python docs/serve_throughput.py --model llava-ov-0.5b-narrow --streams 1,2,4 --frames 24
    python docs/serve_throughput.py --modes batched --streams 4 --frames 4   # a quick check
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import torch

MODES = ("batched", "serial")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder or preset (default: the shipped testbed model)")
    parser.add_argument("--streams", default="1,2,4,8", help="stream counts, comma-separated (default 1,2,4,8)")
    parser.add_argument("--frames", type=int, default=32, help="frames each stream ingests at least, after a warm-up chunk (default 32)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode per stream count, interleaved (default 1)")
    parser.add_argument("--queue-size", type=int, default=8, help="frames a stream queues (stc serve's default 8)")
    parser.add_argument("--dense", action="store_true", help="STC off (default: stc serve's default STC)")
    parser.add_argument("--modes", default="batched,serial",
                        help="batched (one encoder call per round for all streams), serial (one stream after another), "
                             "or both, comma-separated (default batched,serial)")
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    if not args.modes or any(mode not in MODES for mode in args.modes):
        parser.error(f"--modes must name {' and/or '.join(MODES)}, comma-separated, got {','.join(args.modes)!r}")
    try:
        args.streams = [int(n) for n in args.streams.split(",")]
    except ValueError:
        parser.error(f"--streams must be integers separated by commas, got {args.streams!r}")
    if min(args.streams) < 1 or args.frames < 1 or args.repeats < 1:
        parser.error("--streams, --frames and --repeats must be positive")
    return args


class CallCounter:
    """Counts the model's vision-encoder calls (`model.model.get_video_features`, which the
    patched model wraps on the instance: the wrapper is put back as it was)."""

    def __init__(self, model):
        self.inner, self.calls = model.model, 0
        self.own = vars(self.inner).get("get_video_features")
        original = self.inner.get_video_features

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        self.inner.get_video_features = counted

    def close(self):
        if self.own is None:
            del self.inner.get_video_features
        else:
            self.inner.get_video_features = self.own


def measure(model, processor, count: int, mode: str, args) -> dict:
    from stc.eval.synthetic.source import SyntheticSource
    from stc.integrations.engine.options import SessionOptions
    from stc.integrations.serve.requests import ServerDefaults
    from stc.integrations.serve.shared_model import SharedModel
    from stc.integrations.serve.sources import SourceOpener
    from stc.integrations.serve.streams import StreamManager

    episodes = itertools.count()
    sources = SourceOpener(synthetic=lambda: SyntheticSource(next(episodes)))
    defaults = ServerDefaults(method="dense" if args.dense else "stc", session=SessionOptions(sample_fps=1.0),
                              queue_size=args.queue_size, realtime=False)
    manager = StreamManager(SharedModel(model, processor), sources, defaults, max_streams=count,
                            batch_streams=mode == "batched")
    try:
        streams = [manager.add({"source": "synthetic"}) for _ in range(count)]
        while any(s.session.frames_seen == 0 for s in streams):  # warm-up: a chunk of each stream
            time.sleep(0.01)
        with manager.between_rounds():  # a consistent start
            counter = CallCounter(model)
            start_frames = [s.session.frames_seen for s in streams]
            start_rounds, start_prefills, t0 = manager.ingest_rounds, manager.llm_prefill_calls, time.perf_counter()
        while any(s.session.frames_seen - f < args.frames for s, f in zip(streams, start_frames)):
            if any(s.state != "live" for s in streams):
                raise RuntimeError(f"a stream stopped: {[s.end_message for s in streams]}")
            time.sleep(0.01)
        with manager.between_rounds():
            elapsed = time.perf_counter() - t0
            frames = sum(s.session.frames_seen - f for s, f in zip(streams, start_frames))
            rounds = manager.ingest_rounds - start_rounds
            calls = counter.calls
            prefills = manager.llm_prefill_calls - start_prefills
        counter.close()
        dropped = sum(s.queue.dropped for s in streams)
    finally:
        manager.close()
    return {"mode": mode, "streams": count, "frames": frames, "seconds": elapsed, "fps": frames / elapsed, "vit_calls": calls,
            "rounds": rounds, "calls_per_round": calls / max(rounds, 1), "frames_per_call": frames / max(calls, 1),
            "prefill_calls": prefills, "dropped": dropped}


def main() -> None:
    args = parse_args()
    from stc.cli.demo import default_model
    from stc.eval.presets import load_model

    name = args.model or default_model()[0]
    model, processor, description = load_model(name)
    print(f"model: {description}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'STC off' if args.dense else 'STC on (stc serve default)'}, queue {args.queue_size}, {args.frames} frames per stream\n")
    print("| mode | streams | frames | seconds | total frames/s | ViT calls | rounds | ViT calls per round | frames per call "
          "| LLM prefill calls | dropped |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for count in args.streams:
        runs = {mode: [] for mode in args.modes}
        for _, mode in itertools.product(range(args.repeats), args.modes):  # interleaved: a load spike hits both
            runs[mode].append(measure(model, processor, count, mode, args))
        for mode, rows in runs.items():
            rows.sort(key=lambda r: r["fps"])
            row = rows[len(rows) // 2]
            fps = f"{row['fps']:.1f}" + (f" ({rows[0]['fps']:.1f}-{rows[-1]['fps']:.1f})" if len(rows) > 1 else "")
            print(f"| {row['mode']} | {row['streams']} | {row['frames']} | {row['seconds']:.2f} | {fps} | {row['vit_calls']} | "
                  f"{row['rounds']} | {row['calls_per_round']:.2f} | {row['frames_per_call']:.1f} | {row['prefill_calls']} | "
                  f"{row['dropped']} |", flush=True)

if __name__ == "__main__":
    main()
