"""Bounded memory over a long stream: the stream's KV bytes and the process RSS after every frame.

Streams FRAMES frames (the video's frames at 10 fps, looped) one at a time through the shipped
testbed model with a memory budget, records after each frame the stream's KV bytes
(`StreamingSession.memory()["total_bytes"]`), the blocks held and evicted, and the process's
resident memory (/proc/self/statm), asks a question every 1,000 frames, and writes a CSV and a
PNG of both curves. Fails (exit 1) if the KV ever exceeds the budget. Records in docs/memory.md.

    python docs/bounded_memory.py --frames 10000 --budget 2MiB --out bounded-memory
"""

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from stc.eval.testbed import TESTBED_DIR
from stc.integrations.engine.session import StreamingSession
from stc.eval.presets import load_model
from stc.integrations.video import sample_video
from stc.cli.options import byte_size


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--budget", type=byte_size, default=2 * 2**20)
    parser.add_argument("--kv-bits", type=int, default=4)
    parser.add_argument("--n-local", type=int, default=64)
    parser.add_argument("--sink-frames", type=int, default=4)
    parser.add_argument("--video", default="../shared/videos/vtest.avi")
    parser.add_argument("--out", default="bounded-memory")
    parser.add_argument("--size", type=int, default=96, help="frame side in pixels (the testbed model's input: 96)")
    parser.add_argument("--report-every", type=int, default=1000, help="frames between printed lines (and questions)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model, processor, description = load_model(str(TESTBED_DIR), "cpu", torch.float32)
    frames = sample_video(args.video, fps=10.0).frames
    side = args.size  # decoded frames shrunk once, up front, to the model's input size
    frames = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in frames])
    rows, exceeded = [], 0
    t0 = time.perf_counter()
    with StreamingSession(model, processor, kv_bits=args.kv_bits, n_local=args.n_local, sink_frames=args.sink_frames,
                          memory_budget=args.budget, topk=16, max_new_tokens=4) as session:
        for i in range(args.frames):
            session.append_frames(frames[i % len(frames)], timestamps=[i / 10.0])
            memory = session.memory()
            exceeded += memory["total_bytes"] > args.budget
            rows.append((i + 1, memory["total_bytes"], memory["blocks"], memory["evicted_blocks"], rss_bytes()))
            if (i + 1) % args.report_every == 0:
                answer = session.ask("what is in the video ?")
                print(f"{i + 1:>6} frames  KV {memory['total_bytes'] / 2**20:.3f} MiB  blocks {memory['blocks']}  "
                      f"evicted {memory['evicted_blocks']}  RSS {rows[-1][4] / 2**20:.0f} MiB  "
                      f"{(time.perf_counter() - t0) / (i + 1) * 1000:.1f} ms/frame  answer {answer.text!r}", flush=True)
    with open(out / "bounded-memory.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "kv_bytes", "blocks", "evicted_blocks", "rss_bytes"])
        writer.writerows(rows)
    plot(rows, args, description, out / "bounded-memory.png")
    rss = [r[4] for r in rows]
    print(f"{description}; budget {args.budget} bytes, kv_bits {args.kv_bits}, n_local {args.n_local}, "
          f"sink_frames {args.sink_frames}; max KV {max(r[1] for r in rows)} bytes; frames over budget {exceeded}; "
          f"RSS after frame 1000 {rss[min(999, len(rss) - 1)] / 2**20:.1f} MiB, last {rss[-1] / 2**20:.1f} MiB, "
          f"max {max(rss) / 2**20:.1f} MiB")
    return 1 if exceeded else 0


def plot(rows, args, description, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = [r[0] for r in rows]
    fig, (kv, rss) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    kv.plot(frame, [r[1] / 2**20 for r in rows], label="stream KV (all tiers)")
    kv.axhline(args.budget / 2**20, color="red", linestyle="--", label="memory budget")
    kv.set_ylabel("MiB")
    kv.legend(loc="lower right")
    kv.set_title(f"{args.frames} frames, {args.kv_bits}-bit blocks, budget {args.budget / 2**20:.1f} MiB")
    rss.plot(frame, [r[4] / 2**20 for r in rows], color="black")
    rss.set_ylabel("process RSS MiB")
    rss.set_xlabel("frames streamed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
