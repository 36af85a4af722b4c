#!/usr/bin/env bash
# Full fine-tune probe on a cooled mid-run teacher: does the results recipe
# (configs/cifar10_finetune.cfg) bring a method within a point of its teacher at the main
# budget? Uses the cool-down probe's weights (teacher_cooldown.sh), so the answer comes before
# the long teacher run ends; the gap to a cooled mid-run teacher only approximates the gap to
# the finished one.
#   bash results/probes/finetune_cooled.sh STEP MODE [FLAGS...]   # ~45 min on an idle AVX-512 host
# e.g. STEP=13485 MODE=spvit. Output: results/probes/ft<STEP>_<MODE><suffix>/ (flags, metrics log,
# eval.json, rankings.json for learned rankings). SUFFIX names a variant run with extra FLAGS.
# Pause the long teacher run while it runs (kill -STOP its pid, -CONT after).
set -euo pipefail
cd "$(dirname "$0")/../.."
step=$1; mode=$2; shift 2
TEACHER=${PROBE_WORKDIR:-/work/runs/probes}/teacher_step$step/cooldown2/final/model.weights.h5
[[ -f $TEACHER ]] || { echo "no cooled teacher at $TEACHER: run teacher_cooldown.sh at step $step" >&2; exit 2; }
name=ft${step}_${mode}${SUFFIX:-}
W=${PROBE_WORKDIR:-/work/runs/probes}/$name
OUT=results/probes/$name
python -m spvit_tf.train --flagfile=configs/cifar10_finetune.cfg --checkpoint="$TEACHER" \
  --mode="$mode" --budget_gflops=0.054 --workdir="$W" "$@"
files=(final/eval.json flags.txt metrics.jsonl run.json)
if [[ $mode == spvit || $mode == hard ]]; then
  [[ -f $W/final/rankings.json ]] || python -m spvit_tf.evaluate --workdir="$W" \
    --rankings=own,random,inverted,centre,evit --output="$W/final/rankings.json"
  files+=(final/rankings.json)
fi
rm -rf "$OUT"; mkdir -p "$OUT"
for f in "${files[@]}"; do cp "$W/$f" "$OUT/"; done
python -c 'import json,sys; e=json.load(open(sys.argv[1])); print(sys.argv[1], "top-1", e.get("eval_top1", e.get("top1")))' "$OUT/eval.json"
