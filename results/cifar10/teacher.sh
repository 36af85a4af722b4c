#!/usr/bin/env bash
# The CIFAR-10 teacher's long run, across sessions (configs/cifar10_teacher.cfg: many hours on
# 2 CPU cores). Run from anywhere; the workdir lives outside the work tree.
#   bash results/cifar10/teacher.sh start     # in the background (nohup); resumes from the last
#                                             # checkpoint, or seeds a new workdir from the
#                                             # committed snapshot, so a new machine loses nothing
#   bash results/cifar10/teacher.sh status    # step, epoch, last eval, throughput
#   bash results/cifar10/teacher.sh stop      # SIGTERM: the trainer saves a checkpoint and exits,
#                                             # then the snapshot is refreshed
#   bash results/cifar10/teacher.sh snapshot  # the latest checkpoint -> results/snapshots/cifar10_teacher
#                                             # (replacing the previous one; commit it)
#   bash results/cifar10/teacher.sh finish    # a finished run's logs and weights -> results/cifar10/teacher;
#                                             # the runs and shipped files built on the previous
#                                             # teacher are removed
# TEACHER_WORKDIR overrides the workdir (default /work/runs/cifar10_teacher).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKDIR=${TEACHER_WORKDIR:-/work/runs/cifar10_teacher}
SNAPSHOT=results/snapshots/cifar10_teacher  # outside results/cifar10: the report reads every run there
FINAL=results/cifar10/teacher
CMD=(python -m spvit_tf.train --flagfile=configs/cifar10_teacher.cfg --workdir="$WORKDIR")

source results/longrun.sh
running() { longrun_alive "$WORKDIR/train.pid"; }
seed_from_snapshot() { longrun_seed "$WORKDIR" "$SNAPSHOT"; }
snapshot() { longrun_snapshot "$WORKDIR" "$SNAPSHOT"; }

case ${1:-} in
  start)
    if running; then echo "already running (pid $(cat "$WORKDIR/train.pid"))"; exit 0; fi
    mkdir -p "$WORKDIR"
    seed_from_snapshot
    nohup "${CMD[@]}" >> "$WORKDIR/train.log" 2>&1 &
    echo $! > "$WORKDIR/train.pid"
    echo "started pid $! ; log $WORKDIR/train.log" ;;
  status)
    running && echo "running (pid $(cat "$WORKDIR/train.pid"))" || echo "not running"
    grep -h '"eval_top1"' "$WORKDIR/metrics.jsonl" | tail -n 3 || true
    tail -n 1 "$WORKDIR/metrics.jsonl" ;;
  stop)
    if running; then
      kill -TERM "$(cat "$WORKDIR/train.pid")"
      for _ in $(seq 120); do running || break; sleep 1; done
      running && { echo "still running after 120 s" >&2; exit 1; }
    fi
    snapshot ;;
  snapshot) snapshot ;;
  finish)
    [[ -f $WORKDIR/final/eval.json ]] || { echo "the run has not finished: no $WORKDIR/final/eval.json" >&2; exit 1; }
    mkdir -p "$FINAL/final"
    cp "$WORKDIR/run.json" "$WORKDIR/flags.txt" "$WORKDIR/metrics.jsonl" "$FINAL/"
    cp "$WORKDIR/final/eval.json" "$WORKDIR/final/model.weights.h5" "$FINAL/final/"
    echo "copied the finished teacher into $FINAL"
    # Every fine-tune, export and benchmark under results/cifar10 came from the previous
    # teacher: they go (git history keeps them), so run.sh rebuilds them from this one.
    for stale in results/cifar10/*/; do
      [[ $stale == "$FINAL/" ]] && continue
      rm -rf "$stale"; echo "removed stale $stale"
    done
    # The shipped files too (run.sh exports the new teacher and main SPViT run again; the main
    # run's name follows its budget, so the old one's files would otherwise stay behind).
    rm -f tflite_models/cifar10/cifar10_*; echo "removed the shipped exports of the previous teacher"
    # and run.sh's unfinished fine-tunes of it, with their snapshots
    rm -rf "${RUNS:-/work/runs/cifar10}" results/snapshots/cifar10_runs
    echo "removed run.sh's workdirs and snapshots of the previous teacher" ;;
  *) echo "usage: bash results/cifar10/teacher.sh start|status|stop|snapshot|finish" >&2; exit 2 ;;
esac
