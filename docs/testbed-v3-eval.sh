#!/usr/bin/env bash
# Evaluate a testbed model trained on generator-3 episodes against every method (issues 33, 35).
#
#   docs/testbed-v3-eval.sh MODEL OUT [N [ER_JSON|- [long]]]
#
# MODEL: the model folder (stc testbed train --recipe v3 --out MODEL); OUT: where everything goes;
# N: held-out episodes (default 100, about 10 questions each); ER_JSON: an `stc eval synthetic
# --evidence --json` file on the same model, generator and episodes (then docs/er_accuracy.py draws
# ER against accuracy; "-" for none); "long" (or LONG=1): also the long-episode retrieval pass.
# Environment: PYTHON (default python: the one with stc installed), KEEPS (default "0.3 0.15"),
# SEED (first held-out episode, default 0), TRAIN_EPISODES (the time-only guesser's, default 4000).
#
# Every model run is `stc eval synthetic --model MODEL --generator 3 --seed SEED --n N --out OUT/work
# --method M --keep-ratio K --json OUT/M-K.json --no-progress` (plus --floor OUT/floor.json); all share
# one dense baseline in OUT/work (answered once, then resumed). A run whose JSON exists is skipped, so
# the same command resumes after a stop. At the end: `stc eval compare` of every run against dense
# (with the shuffled-frames floor) and against stc at the same keep ratio, gathered in OUT/table.md
# (OUT/long/table.md for the long pass). Logs: OUT/logs/. Exit 1 when a run failed.
set -u -o pipefail

if [ $# -lt 2 ] || [ $# -gt 5 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
MODEL=$1 OUT=$2 N=${3:-100} ER_JSON=${4:--} LONG=${LONG:-0}
[ "${5:-}" = long ] && LONG=1
if [ -n "${5:-}" ] && [ "${5:-}" != long ]; then echo "testbed-v3-eval.sh: error: the 5th argument is 'long' or nothing, got '$5'" >&2; exit 2; fi
PYTHON=${PYTHON:-python} KEEPS=${KEEPS:-0.3 0.15} SEED=${SEED:-0} TRAIN_EPISODES=${TRAIN_EPISODES:-4000}
DOCS=$(cd "$(dirname "$0")" && pwd)
[ -d "$MODEL" ] || { echo "testbed-v3-eval.sh: error: MODEL $MODEL is no folder" >&2; exit 2; }
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "testbed-v3-eval.sh: error: N must be an integer >= 1, got '$N'" >&2; exit 2; }
[ "$ER_JSON" = - ] || [ -f "$ER_JSON" ] || { echo "testbed-v3-eval.sh: error: ER_JSON $ER_JSON: no such file" >&2; exit 2; }
STC=("$PYTHON" -m stc)
COMMON=(--model "$MODEL" --generator 3 --seed "$SEED" --n "$N" --out "$OUT/work" --no-progress)

# label|flags, each at every keep ratio of KEEPS (stc-pruner: the default scorer, gaussian)
METHODS=(
  "evidence-oracle|--method evidence-oracle"
  "oracle|--method oracle"
  "random|--method random"
  "uniform|--method uniform"
  "tome|--method tome"
  "visionzip|--method visionzip"
  "vidcom2|--method vidcom2"
  "dycoke|--method dycoke"
  "timechat|--method timechat"
  "evs|--method evs"
  "stc|--method stc"
  "stc-pruner|--method stc-pruner"
  "stc-pruner-dual_anchor|--method stc-pruner --pruner-scoring dual_anchor"
  "stc-gaussian_positional-mix0.3|--method stc --pruner-scoring gaussian_positional --mix-weight 0.3"
)
LONG_METHODS=("stc|--method stc" "stc-pruner|--method stc-pruner" "random|--method random"
              "uniform|--method uniform" "evidence-oracle|--method evidence-oracle")
LONG_KEEP=0.3
# the same methods as `stc eval synthetic --evidence --methods` names them, for an ER JSON that covers every run
ER_METHODS=dense,evidence-oracle,oracle,random,uniform,tome,visionzip,vidcom2,dycoke,timechat,evs,stc,stc-pruner,\
stc-pruner:pruner_scoring=dual_anchor,stc:pruner_scoring=gaussian_positional:mix_weight=0.3,stc-cacher

# the plan: label|keep|JSON|flags, in order; OUT/runs.tsv (and OUT/long/runs.tsv) list what the tables show
read -r -a keeps <<<"$KEEPS"
PLAN=("dense|-|$OUT/dense.json|--no-stc"
      "shuffled frames (floor)|-|$OUT/floor.json|--no-stc --shuffle-frames"
      "time-only guesser|-|$OUT/time-only.json|--time-only --train-episodes $TRAIN_EPISODES"
      "stc-cacher|-|$OUT/stc-cacher.json|--method stc-cacher --floor $OUT/floor.json")
for keep in "${keeps[@]}"; do
  for entry in "${METHODS[@]}"; do
    PLAN+=("${entry%%|*}|$keep|$OUT/${entry%%|*}-$keep.json|${entry#*|} --keep-ratio $keep --floor $OUT/floor.json")
  done
done
if [ "$LONG" = 1 ]; then
  PLAN+=("dense|-|$OUT/long/dense.json|--no-stc --long" "stc-cacher|-|$OUT/long/stc-cacher.json|--method stc-cacher --long")
  for entry in "${LONG_METHODS[@]}"; do
    PLAN+=("${entry%%|*}|$LONG_KEEP|$OUT/long/${entry%%|*}-$LONG_KEEP.json|${entry#*|} --keep-ratio $LONG_KEEP --long")
  done
fi
case "$OUT" in *' '*) echo "testbed-v3-eval.sh: error: OUT must have no spaces (the runs' flags are split on them)" >&2; exit 2;; esac
mkdir -p "$OUT/logs" "$OUT/compare" || exit 1
[ "$LONG" = 1 ] && { mkdir -p "$OUT/long/compare" || exit 1; }
: >"$OUT/runs.tsv"
[ "$LONG" = 1 ] && : >"$OUT/long/runs.tsv"
total=${#PLAN[@]} done_before=0
for entry in "${PLAN[@]}"; do
  IFS='|' read -r label keep file flags <<<"$entry"
  [ -s "$file" ] && done_before=$((done_before + 1))
  case "$label" in dense | "shuffled frames (floor)" | "time-only guesser") ;;
    *) printf '%s\t%s\t%s\n' "$label" "$keep" "$file" >>"$(dirname "$file")/runs.tsv" ;; esac
done
echo "testbed v3 evaluation of $MODEL: $total runs on $N held-out episodes (seed $SEED), keep $KEEPS$([ "$LONG" = 1 ] \
  && echo ", long pass at $LONG_KEEP"); $done_before done before (their JSONs exist), $((total - done_before)) to run"

summary() {  # one line of a run's JSON: accuracy, and against dense
  "$PYTHON" - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
if "value_only" in d:
    print(f"time-only {d['overall']:.1f}%, chance {d['chance']['all']:.1f}% "
          f"({', '.join(f'{c} {v:+.1f}' for c, v in d['above_chance'].items())})")
else:
    line = f"{d['overall']:.1f}% over {d['questions']} questions"
    if d.get("paired"):
        retained = "-" if d["retained"] is None else f"{d['retained']:.1f}%"
        line += f"; dense {d['baseline']['overall']:.1f}%, retained {retained}, p {d['paired']['p_value']:.3g}"
    print(line)
PY
}

failed=0 i=0
for entry in "${PLAN[@]}"; do  # each: one stc eval synthetic run, skipped when its JSON exists
  IFS='|' read -r label keep file flags <<<"$entry"
  i=$((i + 1))
  where=$([ "$(dirname "$file")" = "$OUT/long" ] && echo " (long)")
  log="$OUT/logs/$(basename "$file" .json)${where:+-long}.log"
  if [ -s "$file" ]; then
    echo "[$i/$total] $label $keep$where: done before: $(summary "$file")"
  # shellcheck disable=SC2086  # flags: words without spaces
  elif "${STC[@]}" eval synthetic "${COMMON[@]}" $flags --json "$file.part" >"$log" 2>&1 && mv "$file.part" "$file"; then
    echo "[$i/$total] $label $keep$where: $(summary "$file")"
  else
    echo "[$i/$total] $label $keep$where: FAILED, see $log"
    rm -f "$file.part"
    failed=$((failed + 1))
  fi
done

compare_all() {  # compare_all DIR FLOOR: every run of DIR/runs.tsv against dense and against stc at its keep
  local dir=$1 floor=$2 label keep file name
  while IFS=$'\t' read -r label keep file; do
    [ -s "$file" ] || continue
    name=$(basename "$file" .json)
    "${STC[@]}" eval compare "$dir/dense.json" "$file" --labels dense "$name" ${floor:+--floor "$floor"} \
      --json "$dir/compare/$name-vs-dense.json" >/dev/null 2>>"$OUT/logs/compare.log" ||
      echo "compare $name against dense failed, see $OUT/logs/compare.log"
    if [ "$label" != stc ] && [ "$keep" != - ] && [ -s "$dir/stc-$keep.json" ]; then
      "${STC[@]}" eval compare "$dir/stc-$keep.json" "$file" --labels "stc-$keep" "$name" \
        --json "$dir/compare/$name-vs-stc.json" >/dev/null 2>>"$OUT/logs/compare.log" ||
        echo "compare $name against stc failed, see $OUT/logs/compare.log"
    fi
  done <"$dir/runs.tsv"
}

table() {  # table DIR TITLE: DIR/table.md from the runs' JSONs and their comparisons
  "$PYTHON" - "$1" "$2" "$OUT" <<'PY'
import json, sys
from pathlib import Path

folder, title, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])


def load(path):
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def ci(interval):
    return "-" if not interval else f"[{interval[0]:.1f}, {interval[1]:.1f}]"


def delta(comparison):
    if not comparison or not comparison.get("paired"):
        return "-"
    p = comparison["paired"]
    return f"{p['difference']:+.1f} {ci(p['ci'])}, p {p['p_value']:.3g}"


dense = load(folder / "dense.json")
floor, time_only = load(out / "floor.json"), load(out / "time-only.json")
lines = [f"# {title}", ""]
if dense:
    intervals = dense.get("ci") or {}
    lines.append(f"Model {dense['model']}, generator {dense['generator']} (model trained on "
                 f"{dense.get('model_generator')}), {dense['questions']} questions, {dense['frames']} frames an "
                 f"episode, {dense['tokens_per_frame']} tokens a frame. Dense: {dense['overall']:.1f}% "
                 f"{ci(intervals.get('overall'))}; per category "
                 + ", ".join(f"{c} {v:.1f}" for c, v in dense["categories"].items()) + ".")
if floor and folder == out:
    lines.append(f"Floor (shuffled frames, dense): {floor['overall']:.1f}%.")
if time_only and folder == out:
    lines.append("Time-only guesser against chance: " + ", ".join(
        f"{c} {time_only['chance'][c] + v:.1f} vs {time_only['chance'][c]:.1f} ({v:+.1f})"
        for c, v in time_only["above_chance"].items()) + ".")
lines += ["", "| method | keep | accuracy % | 95% CI | retained % | 95% CI | above floor % | vs dense: diff [CI], p "
          "| vs stc (same keep): diff [CI], p |", "|---|---|---|---|---|---|---|---|---|"]
for row in (folder / "runs.tsv").read_text().splitlines():
    label, keep, file = row.split("\t")
    run = load(Path(file))
    if run is None:
        lines.append(f"| {label} | {keep} | not run | | | | | | |")
        continue
    name = Path(file).stem
    against_dense = load(folder / "compare" / f"{name}-vs-dense.json")
    against_stc = load(folder / "compare" / f"{name}-vs-stc.json")
    overall = (against_dense or {}).get("overall", {})
    above = overall.get("above_floor")
    lines.append(f"| {label} | {keep} | {run['overall']:.1f} | {ci(overall.get('b_ci'))} | "
                 f"{'-' if overall.get('retained') is None else format(overall['retained'], '.1f')} | "
                 f"{ci((against_dense or {}).get('retained_ci'))} | {'-' if above is None else format(above, '.1f')} | "
                 f"{delta(against_dense)} | {'-' if label == 'stc' else delta(against_stc)} |")
lines += ["", "Intervals: 95% percentile bootstrap over episodes; p: paired cluster sign-flip test "
          "(`stc eval compare`). Above floor: (acc - floor) / (dense - floor), the floor being dense on "
          "shuffled frames. Seeded methods (random, the oracles) are one draw, the same seed in every episode."]
(folder / "table.md").write_text("\n".join(lines) + "\n")
print(f"table: {folder / 'table.md'}")
PY
}

compare_all "$OUT" "$OUT/floor.json"
table "$OUT" "Testbed v3: every method at keep $KEEPS"
if [ "$LONG" = 1 ]; then
  compare_all "$OUT/long" ""
  table "$OUT/long" "Testbed v3, long episodes (retrieval): keep $LONG_KEEP"
fi
if [ "$ER_JSON" != - ]; then
  mapfile -t accuracy < <(cut -f3 "$OUT/runs.tsv" | while read -r f; do [ -s "$f" ] && echo "$f"; done)
  "$PYTHON" "$DOCS/er_accuracy.py" "$ER_JSON" "${accuracy[@]}" --skip-unmatched --png "$OUT/er-vs-accuracy.png" \
    --markdown "$OUT/er-accuracy.md" --json "$OUT/er-accuracy.json" \
    --title "ER against accuracy, testbed v3 ($(basename "$MODEL"), $N episodes)" >"$OUT/logs/er-accuracy.log" 2>&1 &&
    echo "ER against accuracy: $OUT/er-accuracy.md, $OUT/er-vs-accuracy.png ($(grep -m1 'Pearson r' "$OUT/er-accuracy.md"))" ||
    { echo "ER against accuracy failed, see $OUT/logs/er-accuracy.log"; failed=$((failed + 1)); }
fi
if [ "$ER_JSON" = - ]; then
  echo "no ER JSON given; for ER against accuracy over these runs, make one (then pass it as the 4th argument):"
  echo "  $PYTHON -m stc eval synthetic --evidence --model $MODEL --generator 3 --seed $SEED --n $N --draws 3" \
    "--budgets $(echo "$KEEPS" | tr ' ' ,) --methods $ER_METHODS --json $OUT/er.json"
fi
echo "done: $((total - failed)) of $total runs; $failed failed"
[ "$failed" = 0 ]
