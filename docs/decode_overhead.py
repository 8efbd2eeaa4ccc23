"""Does patching slow decoding? `model.generate` decode ms/token, unpatched vs patched with STC's
defaults, interleaved repeats, medians (the record in docs/overhead.md).

    python docs/decode_overhead.py [--model llava-ov-0.5b-narrow] [--tokens 64] [--repeats 7]
"""

import argparse
import statistics
import time

import torch

import stc
from stc.eval.presets import load_model


def decode_ms_per_token(model, ids, tokens: int) -> float:
    """Decode time per token: a generate of `tokens` tokens minus one of 1 token (the prefill)."""
    def run(n):
        t0 = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0

    return 1000 * (run(tokens) - run(1)) / (tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-ov-0.5b-narrow")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model, _, description = load_model(args.model, "cpu", torch.float32)
    ids = torch.randint(10, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    times = {"unpatched": [], "patched": []}
    with torch.inference_mode():
        decode_ms_per_token(model, ids, 4)  # warm-up
        for _ in range(args.repeats):
            times["unpatched"].append(decode_ms_per_token(model, ids, args.tokens))
            with stc.patched(model, stc.STCConfig()):
                times["patched"].append(decode_ms_per_token(model, ids, args.tokens))
    base = statistics.median(times["unpatched"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{description}, {name}: {median:.2f} ms/token (x{median / base:.3f}), {args.repeats} repeats "
              f"of {args.tokens} tokens, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
