#!/usr/bin/env bash
# Cool-down probe of the CIFAR-10 teacher mid-run: is >= 85% at the end of its run within
# reach? Takes the committed snapshot (results/staging/cifar10/teacher; `run.sh snapshot`
# refreshes it), evaluates it as it is, then anneals a copy of its weights to ~0 over 2 epochs
# (fresh AdamW, a 0.1-epoch warm-up to the LR the long run is at, cosine to 1e-6; everything
# else the teacher's config). A short cool-down recovers most of what the rest of a cosine
# would add at that point, so its accuracy is a rough lower bound on the finished teacher's.
# The long run is untouched.
#   bash results/probes/teacher_cooldown.sh     # from anywhere; ~15 min on 2 idle cores
# Output: results/probes/teacher_step<N>/ (as-is eval) and teacher_step<N>_cooldown2/ (flags,
# metrics log, eval.json). Pause the long run while it runs
# (kill -STOP "$(cat /work/runs/cifar10/trainer.pid)", -CONT after).
set -euo pipefail
cd "$(dirname "$0")/../.."
SNAPSHOT=results/staging/cifar10/teacher
step=$(sed -n 's/^model_checkpoint_path: "ckpt-\(.*\)"$/\1/p' "$SNAPSHOT/checkpoint")
W=${PROBE_WORKDIR:-/work/runs/probes}/teacher_step$step
OUT=results/probes/teacher_step$step
mkdir -p "$W/at/checkpoints"
cp "$SNAPSHOT"/ckpt-* "$SNAPSHOT/checkpoint" "$W/at/checkpoints/"
cp "$SNAPSHOT"/{run.json,flags.txt,metrics.jsonl} "$W/at/"
# --steps equal to the checkpoint's step: nothing left to train, the run only writes final/
python -m spvit_tf.train --flagfile=configs/cifar10_teacher.cfg --workdir="$W/at" --steps="$step"
lr=$(python - "$W/at/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"lr"' in l]
print(f"{rows[-1]['lr'] * 4:.4g}")  # the long run's current real LR, as --lr (per 512 images)
PY
)
python -m spvit_tf.train --flagfile=configs/cifar10_teacher.cfg --workdir="$W/cooldown2" \
  --checkpoint="$W/at/final/model.weights.h5" --epochs=2 --warmup_epochs=0.1 --lr="$lr" \
  --min_lr=1e-6 --eval_every=0
for run in at cooldown2; do
  dst=$OUT; [[ $run == at ]] || dst=${OUT}_$run
  rm -rf "$dst"; mkdir -p "$dst"
  cp "$W/$run/final/eval.json" "$dst/"
  [[ $run == at ]] || cp "$W/$run"/{flags.txt,metrics.jsonl,run.json} "$dst/"
done
python - "$OUT/eval.json" "${OUT}_cooldown2/eval.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    print(f"{path}: top-1 {json.load(open(path))['eval_top1']:.4f}")
PY
