#!/usr/bin/env bash
# Regenerates the CIFAR-10 results section from scratch (or resumes it): the dense teacher,
# every method at the main budget, two more SPViT budgets, the exports, the host benchmark and
# the report. Each step is skipped when its output exists, so a rerun picks up where a killed
# one stopped (training itself resumes from its last checkpoint).
#   bash results/cifar10/run.sh            # from the repo root, ../shared beside it
# Budgets are GFLOPs of the 32x32 model (teacher: 0.0836): main 0.050 (-40%), 0.063, 0.038;
# SPViT at the main budget also with a second seed.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/cifar10
DATA=folder:../shared/data/cifar10-jpeg.tar.gz
TEACHER=$R/teacher/final/model.weights.h5

train() {  # train NAME FLAGS...: one fine-tune (or the teacher) unless it finished
  local name=$1; shift
  [[ -f $R/$name/final/eval.json ]] && return
  python -m spvit_tf.train --workdir=$R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "━" || true
  [[ -f $R/$name/final/eval.json ]] || { echo "training $name failed" >&2; exit 1; }
}
train teacher --flagfile=configs/cifar10_teacher.cfg
finetune() { train "$1" --flagfile=configs/cifar10_finetune.cfg --checkpoint=$TEACHER "${@:2}"; }
finetune spvit_b050 --mode=spvit --budget_gflops=0.050
finetune hard_b050 --mode=hard --budget_gflops=0.050
finetune evit_b050 --mode=evit --budget_gflops=0.050
finetune static_b050 --mode=static --budget_gflops=0.050
finetune spvit_b063 --mode=spvit --budget_gflops=0.063
finetune spvit_b038 --mode=spvit --budget_gflops=0.038
finetune spvit_b050_seed1 --mode=spvit --budget_gflops=0.050 --seed=1  # seed variance
# Diagnostic: the learned runs evaluated with their training-time Gumbel sampling, not top-k.
for run in spvit_b050 spvit_b050_seed1 hard_b050; do
  [[ -f $R/$run/final/eval_gumbel.json ]] || python -m spvit_tf.evaluate --workdir=$R/$run \
    --pruning_mode=gumbel --output=$R/$run/final/eval_gumbel.json
done

export_run() {  # export_run RUN DIR FLAGS...: every .tflite evaluated on the full 10k test set
  [[ -f $2/cifar10_$1_fp32.json ]] && return
  python -m spvit_tf.export --workdir=$R/$1 --name=cifar10_$1 --output_dir=$2 \
    --eval_data=$DATA --eval_examples=10000 --calibration_examples=500 "${@:3}"
}
SHIP=tflite_models/cifar10
export_run teacher $SHIP --formats=fp32,int8,fpga_int8 --gpu_friendly
export_run spvit_b050 $SHIP --formats=fp32,int8,fpga_int8 --gpu_friendly
for run in hard_b050 evit_b050 static_b050 spvit_b063 spvit_b038; do
  export_run $run $R/tflite --formats=fp32,int8
done

# Every file, the teacher's fp32 first: the benchmark compares the others with the first.
models=$(ls $SHIP/cifar10_teacher_fp32.tflite; ls $SHIP/*.tflite $R/tflite/*.tflite | grep -v teacher_fp32)
models=$(echo "$models" | paste -sd, -)
[[ -f $R/bench/results.json ]] || python -m spvit_tf.benchmark --models="$models" \
  --num_threads=1,2 --runs=60 --rounds=5 --output_dir=$R/bench
python -m spvit_tf.visualize --workdir=$R/spvit_b050 --num_images=6 --output=$R/token_keep.png
python -m spvit_tf.report --results=$R --readme=README.md
