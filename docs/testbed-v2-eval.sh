#!/bin/bash
# testbed v2 held-out evaluation: seeds 0-99 (episodes of 32 frames), one method per run.
# Usage: bash docs/testbed-v2-eval.sh MODEL_DIR OUT_DIR   (with `stc` on the PATH)
set -e
M=${1:?usage: bash docs/testbed-v2-eval.sh MODEL_DIR OUT_DIR}
OUT=${2:?usage: bash docs/testbed-v2-eval.sh MODEL_DIR OUT_DIR}
run() { name=$1; shift; echo "=== $name: stc eval synthetic --model $M --seed 0 --n 100 --out $OUT/work $* --json $OUT/$name.json"; /usr/bin/time -f "%e s" stc eval synthetic --model "$M" --seed 0 --n 100 --out "$OUT/work" --no-progress "$@" --json "$OUT/$name.json" 2>&1 | tail -20; }
run oracle-0.3 --method oracle --keep-ratio 0.3
run random-0.3 --method random --keep-ratio 0.3
run uniform-0.3 --method uniform --keep-ratio 0.3
run stc-defaults --method stc --pruner-scoring dual_anchor  # measured when dual_anchor was the default
run stc-pruner-0.3 --method stc-pruner --keep-ratio 0.3 --pruner-scoring dual_anchor
run oracle-0.15 --method oracle --keep-ratio 0.15
run random-0.15 --method random --keep-ratio 0.15
run uniform-0.15 --method uniform --keep-ratio 0.15
run stc-cacher-n4 --method stc-cacher --cache-interval 4
run blind --method dense --blind
echo ALL DONE
