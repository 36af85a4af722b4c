#!/usr/bin/env bash
# The CIFAR-10 results section, from scratch or resumed: the dense teacher, every method at the
# main budget, two more SPViT budgets, the diagnostics, the exports, the host benchmark and the
# report. Every step is skipped when its output exists and training resumes from its last
# checkpoint, so a rerun picks up where a stopped one left off.
#   bash results/cifar10/run.sh           # everything, in the foreground (../shared beside the repo)
#   bash results/cifar10/run.sh start     # the training phase in the background (log $RUNS/run.log)
#   bash results/cifar10/run.sh status    # what runs, what is trained, the last log lines
#   bash results/cifar10/run.sh snapshot  # each unfinished run's latest checkpoint -> its stage dir
#   bash results/cifar10/run.sh stop      # before a session ends: the run in progress saves a
#                                         # checkpoint, the pipeline exits, then `snapshot`
#   bash results/cifar10/run.sh promote   # the staged round replaces the committed one (below)
# Training takes many hours on 2 CPU cores, so it spans sessions: `start`, then `stop` and commit
# before a session ends; the next `start`, on any machine, resumes. Workdirs (checkpoints) live in
# $RUNS, outside the work tree; what must survive a machine is committed under $STAGE/NAME: an
# unfinished run's latest checkpoint (a snapshot, replaced at each stop; a workdir with none is
# seeded from it), then the finished run's logs and final/.
# A new round (no committed teacher, or $STAGE/teacher exists: to retrain everything, create it)
# trains entirely in $STAGE, so the committed round (results/cifar10, tflite_models/cifar10, the
# README) stays whole and consistent while it trains. Once every run is trained, the foreground
# run promotes it (the committed round's runs, exports, benchmark and figures go, git keeps
# them) and rebuilds the exports, benchmark and report from it: about an hour, to finish within
# one session, since results/cifar10 and the README disagree until the report is rewritten.
# Budgets are GFLOPs of the 32x32 model (teacher: 0.0836): main 0.054 (-35.4%, the least the
# results claim allows: at least 35% below the teacher), and 0.063 and 0.046 for the curve.
# At the main budget: SPViT and hard-drop over 3 seeds, EViT and static over 2, ToMe (no training).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RESULTS:-results/cifar10}        # the committed round: the README and tests read it
SHIP=${SHIP:-tflite_models/cifar10}  # its shipped files
STAGE=${STAGE:-results/staging/cifar10}  # committed snapshots, and a new round until promoted
RUNS=${RUNS:-/work/runs/cifar10}     # training workdirs, outside the work tree
DATA=folder:../shared/data/cifar10-jpeg.tar.gz

new_round() { [[ -d $STAGE/teacher || ! -f $R/teacher/final/eval.json ]]; }
if new_round; then OUT=$STAGE; else OUT=$R; fi  # where trained runs land
TEACHER=$OUT/teacher/final/model.weights.h5

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }  # alive PIDFILE
installed() {  # the package and its dependencies import, or one line on how to install them
  python -c 'from spvit_tf import train' 2>/dev/null && return 0
  echo "spvit_tf does not import in $(command -v python): install it first with pip install -e ." >&2
  return 1
}

seed() {  # seed NAME: an empty workdir starts from the committed snapshot of NAME, if any
  local work=$RUNS/$1 snap=$STAGE/$1
  [[ -d $work/checkpoints && -n $(ls -A "$work/checkpoints") ]] && return 0
  [[ -f $snap/checkpoint ]] || return 0
  mkdir -p "$work/checkpoints"
  cp "$snap"/ckpt-* "$snap/checkpoint" "$work/checkpoints/"
  cp "$snap"/{run.json,flags.txt,metrics.jsonl} "$work/"
  echo "seeded $work from $snap ($(sed -n 1p "$snap/checkpoint"))"
}

snapshot() {  # each unfinished workdir's latest checkpoint alone (index rewritten) -> $STAGE/NAME
  local work name latest tmp
  for work in "$RUNS"/*/; do
    name=$(basename "$work")
    [[ -f $work/checkpoints/checkpoint && ! -f $work/final/eval.json ]] || continue
    latest=$(sed -n 's/^model_checkpoint_path: "\(.*\)"$/\1/p' "$work/checkpoints/checkpoint")
    tmp=$STAGE/$name.tmp
    rm -rf "$tmp"; mkdir -p "$tmp"
    cp "$work/checkpoints/$latest".* "$tmp/"
    printf 'model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n' "$latest" "$latest" \
      > "$tmp/checkpoint"
    cp "$work"/{run.json,flags.txt,metrics.jsonl} "$tmp/"
    rm -rf "${STAGE:?}/$name"; mv "$tmp" "$STAGE/$name"  # the old one goes once this is whole
    echo "snapshot: $STAGE/$name <- $latest"
  done
}

promote() {  # the staged round (every run trained) replaces the committed one
  new_round && [[ -d $STAGE/teacher ]] || return 0
  local run
  rm -rf "$STAGE"/*.tmp  # a copy a killed snapshot or training step left half-made
  if [[ ! -f $STAGE/PROMOTING ]]; then  # a killed promote resumes after this
    for run in "$STAGE"/*/; do
      [[ -f $run/final/eval.json ]] || { echo "$run is not trained: cannot promote" >&2; exit 1; }
    done
    rm -rf "$R"/*/ "$R"/*.png "$R"/results.md "$SHIP"/cifar10_*
    touch "$STAGE/PROMOTING"
  fi
  mkdir -p "$R"
  for run in "$STAGE"/*/; do  # the teacher last: while it is staged, this is a new round
    run=$(basename "$run")
    [[ $run == teacher ]] && continue
    # the fine-tunes name the teacher's weights by path: where it now lives
    sed -i "s#$STAGE/teacher/#$R/teacher/#g" "$STAGE/$run"/{flags.txt,run.json}
    mv "$STAGE/$run" "$R/"
  done
  mv "$STAGE/teacher" "$R/"
  rm -f "$STAGE/PROMOTING"; rmdir "$STAGE" 2>/dev/null || true
  rmdir "$(dirname "$STAGE")" 2>/dev/null || true
  echo "promoted the staged round into $R"
}

case ${1:-all} in
  start)
    if alive "$RUNS/run.pid"; then echo "already running (pid $(cat "$RUNS/run.pid"))"; exit 0; fi
    installed || exit 2
    mkdir -p "$RUNS"
    # its own session (process group), so that stop can end a step that cannot checkpoint
    setsid nohup bash results/cifar10/run.sh train >> "$RUNS/run.log" 2>&1 < /dev/null &
    echo $! > "$RUNS/run.pid"
    echo "started pid $!; log $RUNS/run.log"
    exit 0 ;;
  status)
    alive "$RUNS/run.pid" && echo "running (pid $(cat "$RUNS/run.pid"))" || echo "not running"
    echo "results land in $OUT"
    for run in "$OUT"/*/; do
      [[ -f $run/final/eval.json ]] && echo "trained: $(basename "$run") $(grep -o '"eval_top1": [0-9.]*' "$run/final/eval.json")"
    done
    [[ -f $RUNS/run.log ]] && tail -n 3 "$RUNS/run.log"
    if alive "$RUNS/trainer.pid" && [[ -f $RUNS/training ]]; then  # the run in progress
      metrics=$RUNS/$(cat "$RUNS/training")/metrics.jsonl
      grep -h '"eval_top1"' "$metrics" | tail -n 2 || true
      tail -n 1 "$metrics"
    fi
    exit 0 ;;
  snapshot) snapshot; exit 0 ;;
  stop)
    if alive "$RUNS/run.pid"; then
      pid=$(cat "$RUNS/run.pid")
      touch "$RUNS/STOP"
      if alive "$RUNS/trainer.pid"; then
        kill -TERM "$(cat "$RUNS/trainer.pid")"  # it saves a checkpoint, then run.sh exits
      elif [[ $(ps -o pgid= -p "$pid" | tr -d ' ') == "$pid" ]]; then
        kill -TERM -- "-$pid"  # an evaluation, export or benchmark: reruns from its start
      else
        kill -TERM "$pid"
      fi
      for _ in $(seq 180); do alive "$RUNS/run.pid" || break; sleep 1; done
      alive "$RUNS/run.pid" && { echo "still running after 180 s" >&2; exit 1; }
    fi
    snapshot
    exit 0 ;;
  promote) promote; exit 0 ;;
  train|all) PHASE=$1 ;;
  *) echo "usage: bash results/cifar10/run.sh [all|train|start|status|snapshot|stop|promote]" >&2
     exit 2 ;;
esac

installed || exit 2
mkdir -p "$RUNS"
echo $$ > "$RUNS/run.pid"
rm -f "$RUNS/STOP"
train() {  # train NAME FLAGS...: one run unless it finished; its logs and final/ -> $OUT/NAME
  local name=$1; shift
  if [[ -f $OUT/$name/final/eval.json ]]; then return; fi
  seed "$name"
  mkdir -p "$RUNS/$name"
  echo "$(date -u +%FT%TZ) training $name (log $RUNS/$name/train.log)"
  # --workdir last: it overrides any a flagfile names
  python -m spvit_tf.train "$@" --workdir="$RUNS/$name" >> "$RUNS/$name/train.log" 2>&1 &
  echo $! > "$RUNS/trainer.pid"
  echo "$name" > "$RUNS/training"
  local rc=0
  wait $! || rc=$?
  rm -f "$RUNS/trainer.pid"
  if [[ -f $RUNS/STOP ]]; then echo "stopped during $name: rerun to resume"; exit 0; fi
  [[ -f $RUNS/$name/final/eval.json ]] || {
    echo "training $name failed (exit $rc): see $RUNS/$name/train.log" >&2; exit 1; }
  rm -rf "$OUT/$name.tmp"; mkdir -p "$OUT/$name.tmp"
  cp -r "$RUNS/$name"/{final,flags.txt,run.json,metrics.jsonl} "$OUT/$name.tmp/"
  rm -rf "${OUT:?}/$name"; mv "$OUT/$name.tmp" "$OUT/$name"
  [[ $OUT == "$STAGE" ]] || rm -rf "${STAGE:?}/$name"  # its snapshot, if any
  echo "$(date -u +%FT%TZ) finished $name: $(grep -o '"eval_top1": [0-9.]*' "$OUT/$name/final/eval.json")"
}
train teacher --flagfile=configs/cifar10_teacher.cfg
finetune() { train "$1" --flagfile=configs/cifar10_finetune.cfg --checkpoint=$TEACHER "${@:2}"; }
# SPViT's first seed, then the gates: its own ranking must beat a random ranking on the same
# fine-tuned model by a clear margin (>= 1 point of top-1 on the 10k test images), and it must
# be within reach of the teacher, before any compute goes to baselines and more seeds.
finetune spvit_b054 --mode=spvit --budget_gflops=0.054
rank_check() {  # rank_check RUN: the ranking diagnostic, and the gate on it
  [[ -f $OUT/$1/final/rankings.json ]] || python -m spvit_tf.evaluate --workdir=$OUT/$1 \
    --rankings=own,random,inverted,centre,evit --output=$OUT/$1/final/rankings.json
  python - "$OUT/$1/final/rankings.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["rankings"]
gap = r["own"] - r["random"]
print(f"{sys.argv[1]}: own {r['own']:.4f} random {r['random']:.4f} gap {gap:+.4f}")
sys.exit(0 if gap >= 0.01 else f"the selectors do not rank (own - random = {gap:+.4f} < 0.01): "
         "fix the recipe before training the baselines")
PY
}
rank_check spvit_b054
gap_check() {  # gap_check RUN: RUN within reach of the teacher
  # The claim needs SPViT's seed mean within 1.0 point of the teacher; one seed more than
  # GAP_GATE (default 1.25: a 1.0 mean stays plausible within seed noise) below it means the
  # recipe misses, and the 11 runs after it would all be redone under a new one.
  python - "$OUT/teacher/final/eval.json" "$OUT/$1/final/eval.json" "${GAP_GATE:-1.25}" <<'PY'
import json, sys
teacher, run = (json.load(open(p))["eval_top1"] for p in sys.argv[1:3])
gap = 100 * (teacher - run)
print(f"{sys.argv[2]}: top-1 {run:.4f}, {gap:.2f} points under the teacher ({teacher:.4f})")
sys.exit(0 if gap <= float(sys.argv[3]) else f"{gap:.2f} points under the teacher (> {sys.argv[3]}): "
         "fix the recipe (configs/cifar10_finetune.cfg) before the baselines and more seeds")
PY
}
gap_check spvit_b054
finetune hard_b054 --mode=hard --budget_gflops=0.054
rank_check hard_b054
finetune evit_b054 --mode=evit --budget_gflops=0.054
finetune static_b054 --mode=static --budget_gflops=0.054
# ToMe is training-free: the teacher's weights merged down to the same budget, evaluated only.
train tome_b054 --flagfile=configs/cifar10_finetune.cfg --checkpoint=$TEACHER --mode=tome \
  --budget_gflops=0.054 --epochs=0
for seed in 1 2; do  # seed variance: SPViT and hard-drop 3 seeds, EViT and static 2
  finetune spvit_b054_seed$seed --mode=spvit --budget_gflops=0.054 --seed=$seed
  finetune hard_b054_seed$seed --mode=hard --budget_gflops=0.054 --seed=$seed
done
finetune evit_b054_seed1 --mode=evit --budget_gflops=0.054 --seed=1
finetune static_b054_seed1 --mode=static --budget_gflops=0.054 --seed=1
finetune spvit_b063 --mode=spvit --budget_gflops=0.063
finetune spvit_b046 --mode=spvit --budget_gflops=0.046
# Diagnostic: the learned runs evaluated with their training-time Gumbel sampling, not top-k.
for run in spvit_b054 spvit_b054_seed1 spvit_b054_seed2 hard_b054; do
  [[ -f $OUT/$run/final/eval_gumbel.json ]] || python -m spvit_tf.evaluate --workdir=$OUT/$run \
    --pruning_mode=gumbel --output=$OUT/$run/final/eval_gumbel.json
done
if [[ $PHASE == train ]]; then
  echo "$(date -u +%FT%TZ) every run is trained (in $OUT): bash results/cifar10/run.sh promotes"
  echo "them and rebuilds the exports, benchmark and report (about an hour, within one session)"
  rm -f "$RUNS/run.pid"
  exit 0
fi
promote

export_run() {  # export_run RUN DIR FLAGS...: every .tflite evaluated on the full 10k test set
  # skipped when its card is newer than the run's weights (a new teacher means new exports)
  [[ $2/cifar10_$1_fp32.json -nt $R/$1/final/model.weights.h5 ]] && return
  python -m spvit_tf.export --workdir=$R/$1 --name=cifar10_$1 --output_dir=$2 \
    --eval_data=$DATA --eval_examples=10000 --calibration_examples=500 "${@:3}"
}

export_run teacher $SHIP --formats=fp32,int8,fpga_int8 --gpu_friendly
export_run spvit_b054 $SHIP --formats=fp32,int8,fpga_int8 --gpu_friendly

keep_ratios() {  # keep_ratios RUN: the run's trained keep ratios joined by ':', a --budgets entry
  python -c 'import json, sys; print(":".join(f"{r:g}" for r in json.load(open(sys.argv[1]))["keep_ratios"]))' \
    "$R/$1/final/eval.json"
}
export_budgets() {  # export_budgets RUN DIR OTHER...: RUN's weights at its own keep ratios and at
  # those of the OTHER runs, one signature each, in DIR/cifar10_RUN_budgets_fp32.tflite (its card
  # lists each signature's accuracy on the 10k test images and its size against RUN's fp32 file;
  # host latency is the benchmark's, below). Skipped when its card is newer than RUN's weights
  # and than the OTHER runs' eval.json, whose keep ratios it takes. The exporter writes the
  # one-budget fp32 file too, for that size ratio: it goes to a scratch folder, not over DIR's.
  local card=$2/cifar10_$1_budgets_fp32.json fresh=1 run
  [[ $card -nt $R/$1/final/model.weights.h5 ]] || fresh=0
  for run in "${@:3}"; do [[ $card -nt $R/$run/final/eval.json ]] || fresh=0; done
  (( fresh )) && return
  local budgets scratch
  budgets=$(keep_ratios "$1")
  for run in "${@:3}"; do budgets+=",$(keep_ratios "$run")"; done
  scratch=$(mktemp -d)
  python -m spvit_tf.export --workdir=$R/$1 --name=cifar10_$1 --output_dir="$scratch" \
    --eval_data=$DATA --eval_examples=10000 --formats=fp32 --budgets="$budgets" --latency_runs=0
  for ext in tflite md json; do  # the card last: its mtime marks a finished export
    mv "$scratch/cifar10_$1_budgets_fp32.$ext" "$2/"
  done
  rm -rf "$scratch"
}
# SPViT's main run at its own budget (0.054) and at the keep ratios trained for 0.063 and 0.046
export_budgets spvit_b054 $SHIP spvit_b063 spvit_b046
for run in $(ls $R); do  # every other run and seed: fp32 and int8
  [[ -f $R/$run/final/eval.json && $run != teacher && $run != spvit_b054 ]] || continue
  export_run $run $R/tflite --formats=fp32,int8
done

# Every file, the teacher's fp32 first: the benchmark compares the others with the first.
# --all_signatures: every budget of the multi-budget file is a row of its own. Files exported
# after the benchmark ran (none of their rows in results.json) are timed and merged into it.
shopt -s nullglob  # $R/tflite/*_fp32.tflite are not committed: a checkout has the int8 files only
models=$SHIP/cifar10_teacher_fp32.tflite
for file in $SHIP/*.tflite $R/tflite/*.tflite; do
  [[ $file == */cifar10_teacher_fp32.tflite ]] || models+=",$file"
done
shopt -u nullglob
bench() { python -m spvit_tf.benchmark --all_signatures --num_threads=1,2 --runs=60 --rounds=5 \
  --output_dir=$R/bench "$@"; }
if [[ ! -f $R/bench/results.json ]]; then
  bench --models="$models"
else
  new=$(python - "$R/bench/results.json" "${models//,/ }" <<'PY'
import json, pathlib, sys
timed = {row["model"] for row in json.load(open(sys.argv[1]))["results"]}
print(",".join(m for m in sys.argv[2].split() if pathlib.Path(m).stem not in timed))
PY
)
  [[ -z $new ]] || bench --models="$new" --merge
fi
python -m spvit_tf.visualize --workdir=$R/spvit_b054 --num_images=6 --output=$R/token_keep.png
python -m spvit_tf.report --results=$R --readme=README.md
rm -f "$RUNS/run.pid"
