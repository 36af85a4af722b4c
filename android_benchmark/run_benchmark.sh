#!/usr/bin/env sh
# Thin wrapper so the phone benchmark runs from anywhere: same flags as run_benchmark.py.
# PYTHON picks the interpreter (default python3) with spvit_tf installed; no TensorFlow needed.
exec "${PYTHON:-python3}" "$(dirname "$0")/run_benchmark.py" "$@"
