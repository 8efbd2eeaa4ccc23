#!/bin/sh
# Accuracy of the bounded-memory options on the shipped testbed model (issue 22), records in docs/memory.md.
# Each run: 100 held-out episodes (seeds 0-99, 32 frames, 1,043 questions); a window of 64 tokens
# (4 frames) unless named, so that 28 of 32 blocks leave the window (and are quantized) before the
# questions. Compare any two with `stc eval compare A.json B.json`.
# Usage: sh docs/memory-eval.sh OUT_DIR
set -e
OUT=${1:?usage: sh docs/memory-eval.sh OUT_DIR}
run() { name=$1; shift; stc eval synthetic --n 100 --no-progress --out "$OUT/$name" --json "$OUT/$name.json" "$@" | tail -1; }
run kv16 --no-stc --n-local 64
for bits in 8 4 2; do run kivi$bits --no-stc --n-local 64 --kv-bits $bits; done
for bits in 4 2; do run qvg$bits --no-stc --n-local 64 --kv-bits $bits --kv-scheme qvg; done
run stc-kv16 --n-local 64 --pruner-scoring dual_anchor  # recorded with the then-default scorer
run stc-kv2 --n-local 64 --kv-bits 2 --pruner-scoring dual_anchor
for n in 16 256; do run window$n --no-stc --n-local $n; done
for s in 2 4; do run window16-sink$s --no-stc --n-local 16 --sink-frames $s; done
# a quarter of the stream at 16 bits: 32 frames x 16 tokens x 4 layers x (K, V) x 4 heads x 32 x 2 bytes / 4
run budget-quarter --no-stc --n-local 16 --memory-budget 262144
# the same budget, evicting the oldest blocks first instead of the least novel
run budget-quarter-oldest --no-stc --n-local 16 --memory-budget 262144 --eviction oldest
# a tighter budget (3/16 of the stream at 16 bits), both policies
run budget-3-16 --no-stc --n-local 16 --memory-budget 196608
run budget-3-16-oldest --no-stc --n-local 16 --memory-budget 196608 --eviction oldest
# long episodes: 128 frames (4x the testbed model's training episodes), 50 held-out episodes,
# 16 of 128 blocks retrieved per question, 4-frame window
long() { name=$1; shift; stc eval synthetic --frames 128 --n 50 --topk 16 --n-local 64 --no-stc --no-progress \
  --out "$OUT/$name" --json "$OUT/$name.json" "$@" | tail -1; }
long long-kv16
long long-kv4 --kv-bits 4
long long-kv2 --kv-bits 2
# a quarter of the stream at 16 bits: 128 x 32768 / 4
long long-budget-quarter --memory-budget 1048576
