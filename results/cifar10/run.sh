#!/usr/bin/env bash
# Regenerates the CIFAR-10 results section from scratch (or resumes it): the dense teacher,
# every method at the main budget, two more SPViT budgets, the exports, the host benchmark and
# the report. Each step is skipped when its output exists, so a rerun picks up where a killed
# one stopped (training itself resumes from its last checkpoint).
#   bash results/cifar10/run.sh            # from the repo root, ../shared beside it
# Budgets are GFLOPs of the 32x32 model (teacher: 0.0836): main 0.050 (-40%), 0.063, 0.038.
# At the main budget: SPViT and hard-drop over 3 seeds, EViT and static over 2, ToMe (no training).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/cifar10
DATA=folder:../shared/data/cifar10-jpeg.tar.gz
TEACHER=$R/teacher/final/model.weights.h5

RUNS=${RUNS:-/work/runs/cifar10}  # training workdirs (checkpoints) live outside the work tree

train() {  # train NAME FLAGS...: one run unless it finished; its logs and final/ -> $R/NAME
  local name=$1; shift
  [[ -f $R/$name/final/eval.json ]] && return
  python -m spvit_tf.train --workdir=$RUNS/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "━" || true
  [[ -f $RUNS/$name/final/eval.json ]] || { echo "training $name failed" >&2; exit 1; }
  rm -rf "$R/$name.tmp"; mkdir -p "$R/$name.tmp"
  cp -r "$RUNS/$name"/{final,flags.txt,run.json,metrics.jsonl} "$R/$name.tmp/"
  rm -rf "$R/$name"; mv "$R/$name.tmp" "$R/$name"
}
train teacher --flagfile=configs/cifar10_teacher.cfg
finetune() { train "$1" --flagfile=configs/cifar10_finetune.cfg --checkpoint=$TEACHER "${@:2}"; }
# SPViT's first seed, then the gate: its own ranking must beat a random ranking on the same
# fine-tuned model by a clear margin (>= 1 point of top-1 on the 10k test images) before any
# compute goes to baselines and more seeds.
finetune spvit_b050 --mode=spvit --budget_gflops=0.050
rank_check() {  # rank_check RUN: the ranking diagnostic, and the gate on it
  [[ -f $R/$1/final/rankings.json ]] || python -m spvit_tf.evaluate --workdir=$R/$1 \
    --rankings=own,random,inverted,centre,evit --output=$R/$1/final/rankings.json
  python - "$R/$1/final/rankings.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["rankings"]
gap = r["own"] - r["random"]
print(f"{sys.argv[1]}: own {r['own']:.4f} random {r['random']:.4f} gap {gap:+.4f}")
sys.exit(0 if gap >= 0.01 else f"the selectors do not rank (own - random = {gap:+.4f} < 0.01): "
         "fix the recipe before training the baselines")
PY
}
rank_check spvit_b050
finetune hard_b050 --mode=hard --budget_gflops=0.050
rank_check hard_b050
finetune evit_b050 --mode=evit --budget_gflops=0.050
finetune static_b050 --mode=static --budget_gflops=0.050
# ToMe is training-free: the teacher's weights merged down to the same budget, evaluated only.
train tome_b050 --flagfile=configs/cifar10_finetune.cfg --checkpoint=$TEACHER --mode=tome \
  --budget_gflops=0.050 --epochs=0
for seed in 1 2; do  # seed variance: SPViT and hard-drop 3 seeds, EViT and static 2
  finetune spvit_b050_seed$seed --mode=spvit --budget_gflops=0.050 --seed=$seed
  finetune hard_b050_seed$seed --mode=hard --budget_gflops=0.050 --seed=$seed
done
finetune evit_b050_seed1 --mode=evit --budget_gflops=0.050 --seed=1
finetune static_b050_seed1 --mode=static --budget_gflops=0.050 --seed=1
finetune spvit_b063 --mode=spvit --budget_gflops=0.063
finetune spvit_b038 --mode=spvit --budget_gflops=0.038
# Diagnostic: the learned runs evaluated with their training-time Gumbel sampling, not top-k.
for run in spvit_b050 spvit_b050_seed1 spvit_b050_seed2 hard_b050; do
  [[ -f $R/$run/final/eval_gumbel.json ]] || python -m spvit_tf.evaluate --workdir=$R/$run \
    --pruning_mode=gumbel --output=$R/$run/final/eval_gumbel.json
done

export_run() {  # export_run RUN DIR FLAGS...: every .tflite evaluated on the full 10k test set
  # skipped when its card is newer than the run's weights (a new teacher means new exports)
  [[ $2/cifar10_$1_fp32.json -nt $R/$1/final/model.weights.h5 ]] && return
  python -m spvit_tf.export --workdir=$R/$1 --name=cifar10_$1 --output_dir=$2 \
    --eval_data=$DATA --eval_examples=10000 --calibration_examples=500 "${@:3}"
}
SHIP=tflite_models/cifar10
export_run teacher $SHIP --formats=fp32,int8,fpga_int8 --gpu_friendly
export_run spvit_b050 $SHIP --formats=fp32,int8,fpga_int8 --gpu_friendly
for run in $(ls $R); do  # every other run and seed: fp32 and int8
  [[ -f $R/$run/final/eval.json && $run != teacher && $run != spvit_b050 ]] || continue
  export_run $run $R/tflite --formats=fp32,int8
done

# Every file, the teacher's fp32 first: the benchmark compares the others with the first.
models=$(ls $SHIP/cifar10_teacher_fp32.tflite; ls $SHIP/*.tflite $R/tflite/*.tflite | grep -v teacher_fp32)
models=$(echo "$models" | paste -sd, -)
[[ -f $R/bench/results.json ]] || python -m spvit_tf.benchmark --models="$models" \
  --num_threads=1,2 --runs=60 --rounds=5 --output_dir=$R/bench
python -m spvit_tf.visualize --workdir=$R/spvit_b050 --num_images=6 --output=$R/token_keep.png
python -m spvit_tf.report --results=$R --readme=README.md
