"""Error and size of each KV quantization scheme on a model's real frame blocks.

Streams a video through the engine (no compression, blocks kept as computed), then quantizes every
stored block's keys and values with each scheme and bit width and reports, over all blocks and
layers, the relative L2 error (||dequantized - original|| / ||original||) and the bytes held per
element relative to 16 bits. Records in docs/memory.md.

    python docs/kv_quant_error.py [--model PRESET_OR_FOLDER] [--video FILE] [--frames N] [--keep-ratio K]
"""

import argparse

import torch

from stc.config import STCConfig
from stc.eval.testbed import TESTBED_DIR
from stc.integrations.engine.session import StreamingSession
from stc.eval.presets import load_model
from stc.integrations.video import sample_video
from stc.kv_quant import quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(TESTBED_DIR))
    parser.add_argument("--video", default="../shared/videos/vtest.avi")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--keep-ratio", type=float, default=None, help="prune with STC first (default: dense)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    model, processor, description = load_model(args.model, "cpu", getattr(torch, args.dtype))
    config = None if args.keep_ratio is None else STCConfig(keep_ratio=args.keep_ratio)
    video = sample_video(args.video, fps=1.0, max_frames=args.frames)
    with StreamingSession(model, processor, config=config, vit_batch=4) as session:
        session.append_frames(video.frames, video.timestamps)
        ids = session.store.ids
        blocks = [session.store.fetch(layer, [i], torch.device("cpu")) for layer in range(session.driver.num_layers)
                  for i in ids]
    k0 = blocks[0][0]
    print(f"{description}; {args.video}, {len(ids)} blocks of {k0.shape[1]} tokens, {len(blocks) // len(ids)} layers, "
          f"K/V [H_kv={k0.shape[0]}, n, D={k0.shape[2]}], {args.dtype}")
    print(f"{'scheme':>6} {'bits':>4} {'key error':>10} {'value error':>12} {'bytes vs 16-bit':>16}")
    for scheme in ("kivi", "qvg"):
        for bits in (8, 4, 2):
            errors = {"keys": [0.0, 0.0], "values": [0.0, 0.0]}
            held = elements = 0
            for keys, values in blocks:
                for kind, x in (("keys", keys), ("values", values)):
                    q = quantize(x, bits, kind, scheme)
                    errors[kind][0] += float((q.dequantize().float() - x.float()).pow(2).sum())
                    errors[kind][1] += float(x.float().pow(2).sum())
                    held += q.nbytes
                    elements += x.numel()
            rel = {kind: (num / den) ** 0.5 for kind, (num, den) in errors.items()}
            print(f"{scheme:>6} {bits:>4} {rel['keys']:>10.4f} {rel['values']:>12.4f} {held / (2 * elements):>16.4f}")


if __name__ == "__main__":
    main()
