"""Load test of `stc serve` on loopback (issue 36; figures in docs/serve.md).

Starts `stc serve` as a subprocess on a free 127.0.0.1 port (so its RSS is the real server's,
from /proc/PID/status), adds --streams streams (synthetic by default: endless, 1 frame/s in
real time, so frames flow for the whole run), each with its own --memory-budget and --n-local
(small, so that blocks are really evicted during the run), then --clients threads ask
--questions questions in all, spread evenly over --minutes (plain /ask, OpenAI chat
completions and SSE; `stc.integrations.serve.loadtest`), while a sampler records the server's
RSS and each stream's figures every --sample-s seconds. Writes to --out: samples.csv,
summary.json, serve-load.png (RSS and each stream's memory against its budget), serve.log.

Exit 1 if a question was lost (no response, or neither an answer nor a one-line JSON error), a
stream's memory exceeded its budget in a sample, or a stream stopped being live. Not resumable:
a load test that stops is run again.

    python docs/serve_load.py --out /tmp/serve-load                      # 4 streams, 8 clients, 200 questions, 10 min
    python docs/serve_load.py --streams 2 --clients 3 --questions 12 --minutes 0.5 --out /tmp/short
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from stc.cli.options import byte_size
from stc.integrations.serve.loadtest import (LoadPlan, LoadTest, failures, summarize, write_samples_csv,
                                             write_summary_json)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder or preset (default: stc serve's, the shipped testbed model)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", required=True, type=Path, help="folder for samples.csv, summary.json, serve-load.png, serve.log")
    parser.add_argument("--source", default="synthetic", help="each stream's source (default synthetic; a file needs --media-root)")
    parser.add_argument("--media-root", default=None, help="passed to stc serve, for file sources")
    parser.add_argument("--memory-budget", type=byte_size, default=byte_size("2MiB"), help="each stream's (default 2MiB)")
    parser.add_argument("--n-local", type=int, default=128, help="each stream's ingestion window in tokens (default 128)")
    parser.add_argument("--fps", type=float, default=1.0, help="stc serve --fps (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="per question (default 16)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="a question with no response by then is lost (default 120)")
    args = parser.parse_args()
    try:
        args.plan = LoadPlan(streams=args.streams, clients=args.clients, questions=args.questions,
                             seconds=args.minutes * 60, max_new_tokens=args.max_new_tokens, sample_s=args.sample_s,
                             timeout_s=args.timeout_s,
                             stream_body={"source": args.source, "memory_budget": args.memory_budget,
                                          "n_local": args.n_local, "realtime": True})
    except ValueError as exc:
        parser.error(str(exc))
    return args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args, port: int, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "stc", "serve", "--port", str(port), "--fps", str(args.fps),
               "--max-streams", str(max(args.streams, 8)), "--max-new-tokens", str(args.max_new_tokens)]
    command += ["--model", args.model] if args.model else []
    command += ["--media-root", args.media_root] if args.media_root else []
    print(" ".join(command), flush=True)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"stc serve exited with {process.returncode} before serving; see its log")
        try:
            if httpx.get(f"{url}/v1/server", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"stc serve did not answer within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def plot(samples: list[dict], summary: dict, path: Path) -> None:
    """RSS (top) and each stream's memory with its budget (bottom), against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    read = [s for s in samples if s["rss_bytes"] is not None]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot([s["t_s"] / 60 for s in read], [s["rss_bytes"] / 2**20 for s in read], color="black")
    top.set_ylabel("server RSS (MiB)")
    top.set_ylim(bottom=0)
    top.set_title(f"stc serve: {summary['plan']['streams']} streams, {summary['plan']['clients']} clients, "
                  f"{summary['sent']} questions ({summary['answered']} answered, {summary['refused']} refused, "
                  f"{summary['lost']} lost)", fontsize=9)
    for name, stream in summary["streams"].items():
        memory = [(s["t_s"] / 60, s["streams"][name]["memory_bytes"] or 0) for s in samples if name in s["streams"]]
        line, = bottom.plot([m for m, _ in memory], [b / 2**20 for _, b in memory], label=name)
        if stream["memory_budget"]:
            bottom.axhline(stream["memory_budget"] / 2**20, color=line.get_color(), linestyle="--", linewidth=0.8)
    bottom.set_ylabel("stream KV memory (MiB)\n(dashed: budget)")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(bottom=0)
    bottom.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(args.out / "serve.log", "w") as log:
        process = start_server(args, port, log)
        try:
            wait_until_serving(url, process)
            test = LoadTest(url, process.pid, args.plan, progress=lambda line: print(line, flush=True))
            outcomes, samples = test.run()
        except RuntimeError as exc:  # a stream the server would not add
            print(f"serve_load: error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_server(process)
    summary = summarize(outcomes, samples, args.plan)
    summary["failures"] = failures(summary)
    summary["cpu_count"] = os.cpu_count()
    write_samples_csv(samples, args.out / "samples.csv")
    write_summary_json(summary, args.out / "summary.json")
    plot(samples, summary, args.out / "serve-load.png")
    print(f"sent {summary['sent']}: answered {summary['answered']}, refused {summary['refused']}, lost {summary['lost']}")
    for endpoint, figures in summary["latency"].items():
        if figures["answered"]:
            print(f"  {endpoint}: {figures['answered']} answered, p50 {figures['p50_s']:.2f} s, "
                  f"p95 {figures['p95_s']:.2f} s, max {figures['max_s']:.2f} s")
    rss = summary["rss"] or {"start": 0, "end": 0, "max": 0}
    print(f"RSS MiB: start {rss['start'] / 2**20:.0f}, end {rss['end'] / 2**20:.0f}, max {rss['max'] / 2**20:.0f}")
    for name, stream in summary["streams"].items():
        print(f"  {name}: memory max {stream['memory_max']:,} of {stream['memory_budget']:,}, frames {stream['frames']}, "
              f"dropped {stream['dropped_frames']}, evicted blocks {stream['evicted_blocks']}, {stream['state']}")
    for failure in summary["failures"]:
        print(f"FAILED: {failure}")
    print(f"wrote {args.out}/samples.csv, summary.json, serve-load.png, serve.log")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
