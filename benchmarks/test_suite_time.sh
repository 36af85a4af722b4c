#!/usr/bin/env bash
# Wall time of the README's test command (its pytest part) at given commits, on this machine,
# to compare a change with the tree before it (only figures from one machine compare).
#   bash benchmarks/test_suite_time.sh COMMIT [COMMIT...]   # from anywhere in the repo
# Each commit goes into a scratch worktree beside the checkout (so ../shared resolves as in
# CI), is installed editable without dependencies into a scratch virtualenv that sees this
# Python's packages (the same TensorFlow, LiteRT, pytest and plugins for every commit), and
# runs `python -m pytest -q` with that commit's own pytest options. Appends one line per
# commit to benchmarks/test_suite_time.log: date, commit, load before, pytest's summary, wall
# seconds. Stop other work first: on 2 cores another process halves it.
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
log=$repo/benchmarks/test_suite_time.log
(( $# )) || { echo "usage: bash benchmarks/test_suite_time.sh COMMIT [COMMIT...]" >&2; exit 2; }
for commit in "$@"; do
  git -C "$repo" rev-parse --verify -q "$commit^{commit}" >/dev/null \
    || { echo "$commit is not a commit of $repo" >&2; exit 2; }
done
for commit in "$@"; do
  short=$(git -C "$repo" rev-parse --short "$commit")
  tree=$(dirname "$repo")/.suite_time_$short
  venv=$(mktemp -d)
  git -C "$repo" worktree add --detach "$tree" "$commit" >/dev/null
  python -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --no-deps -e "$tree"
  load=$(cut -d' ' -f1 /proc/loadavg)
  start=$(date +%s)
  summary=$(cd "$tree" && "$venv/bin/python" -m pytest -q -p no:cacheprovider 2>&1 | tail -n 1) || true
  end=$(date +%s)
  printf '%s commit=%s load=%s wall_s=%d pytest: %s\n' "$(date -u +%FT%TZ)" "$short" "$load" \
    $((end - start)) "$summary" >> "$log"
  git -C "$repo" worktree remove --force "$tree"
  rm -rf "$venv"
done
tail -n $# "$log"
