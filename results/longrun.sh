# Shared by the long runs that outlast a session (results/cifar10/teacher.sh, run.sh); source it.
# A training workdir lives outside the work tree; before a session stops, its latest checkpoint
# is copied into the repo as a snapshot (replacing the previous one) and committed, and a
# workdir with no checkpoints is seeded from that snapshot, so a new machine loses nothing and
# the same training command resumes. A snapshot holds the latest checkpoint only (the index
# rewritten to name it alone) plus run.json, flags.txt and metrics.jsonl.

longrun_seed() {  # longrun_seed WORKDIR SNAPSHOT: seed WORKDIR from SNAPSHOT unless it has checkpoints
  local workdir=$1 snapshot=$2
  [[ -d $workdir/checkpoints && -n $(ls -A "$workdir/checkpoints") ]] && return 0
  [[ -f $snapshot/checkpoint ]] || return 0
  mkdir -p "$workdir/checkpoints"
  cp "$snapshot"/ckpt-* "$snapshot/checkpoint" "$workdir/checkpoints/"
  local f
  for f in run.json flags.txt metrics.jsonl; do
    [[ -f $snapshot/$f ]] && cp "$snapshot/$f" "$workdir/"
  done
  echo "seeded $workdir from $snapshot ($(sed -n 1p "$snapshot/checkpoint"))"
}

longrun_snapshot() {  # longrun_snapshot WORKDIR SNAPSHOT: WORKDIR's latest checkpoint -> SNAPSHOT
  local workdir=$1 snapshot=$2 latest
  latest=$(sed -n 's/^model_checkpoint_path: "\(.*\)"$/\1/p' "$workdir/checkpoints/checkpoint" 2>/dev/null)
  [[ -n $latest ]] || { echo "no checkpoint in $workdir/checkpoints: nothing to snapshot" >&2; return 1; }
  local tmp=$snapshot.tmp f
  rm -rf "$tmp"; mkdir -p "$tmp"
  cp "$workdir/checkpoints/$latest".* "$tmp/"
  printf 'model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n' "$latest" "$latest" \
    > "$tmp/checkpoint"
  for f in run.json flags.txt metrics.jsonl; do
    [[ -f $workdir/$f ]] && cp "$workdir/$f" "$tmp/"
  done
  rm -rf "$snapshot"; mv "$tmp" "$snapshot"  # the previous snapshot goes only once this is whole
  echo "snapshot: $snapshot <- $latest"
}

longrun_alive() {  # longrun_alive PIDFILE: its process is running
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}
