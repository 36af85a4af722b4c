"""The long-run controls (results/longrun.sh and `results/cifar10/run.sh start|stop`): a stop
saves the training run in progress, its latest checkpoint alone becomes the committed snapshot,
and on a machine without the workdir the same start resumes from that snapshot.

The trainer is a stand-in `python` on PATH that behaves like `python -m spvit_tf.train` in what
the scripts rely on (a checkpoint index in WORKDIR/checkpoints, SIGTERM saves and exits 0), so
these tests exercise the shell logic only, in seconds; the real trainer's SIGTERM and resume are
tested in test_train.py.
"""

import os
import pathlib
import shutil
import stat
import subprocess
import time

import pytest

from conftest import REPO

FAKE_TRAINER = r"""#!/usr/bin/env bash
# logs "start STEP" to WORKDIR/calls, saves ckpt-(STEP+1) now and again on SIGTERM, else waits
for a in "$@"; do case $a in --workdir=*) W=${a#--workdir=} ;; esac; done
mkdir -p "$W/checkpoints"
step=$(sed -n 's/^model_checkpoint_path: "ckpt-\([0-9]*\)"$/\1/p' "$W/checkpoints/checkpoint" 2>/dev/null)
step=${step:-0}
echo "start $step" >> "$W/calls"
save() {
  step=$((step + 1))
  echo i > "$W/checkpoints/ckpt-$step.index"
  echo d > "$W/checkpoints/ckpt-$step.data-00000-of-00001"
  printf 'model_checkpoint_path: "ckpt-%s"\nall_model_checkpoint_paths: "ckpt-%s"\n' \
    "$step" "$step" > "$W/checkpoints/checkpoint"
}
trap 'save; exit 0' TERM
save
echo '{"step": 0}' > "$W/run.json"; echo "--seed=0" > "$W/flags.txt"; : > "$W/metrics.jsonl"
while true; do sleep 0.05; done
"""


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "RUNS": str(tmp_path / "runs"), "SNAPSHOTS": str(tmp_path / "snapshots")}


def run_sh(env, *args):
    return subprocess.run(["bash", str(REPO / "results/cifar10/run.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def wait_for(path, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_snapshots_the_run_in_progress_and_start_resumes_it_elsewhere(env):
    if not (REPO / "results/cifar10/teacher/final/eval.json").exists():
        pytest.skip("run.sh would train the teacher first")  # its first fine-tune is under test
    runs, snapshots = pathlib.Path(env["RUNS"]), pathlib.Path(env["SNAPSHOTS"])
    first = next(line.split()[1] for line in (REPO / "results/cifar10/run.sh").read_text()
                 .splitlines() if line.startswith("finetune "))  # the first fine-tune
    for attempt, step in enumerate([1, 2]):
        start = run_sh(env, "start")
        assert start.returncode == 0, start.stderr
        calls = runs / first / "calls"
        wait_for(runs / "trainer.pid")
        wait_for(calls)
        # seeded from the snapshot on the second start: it resumes where the stop saved
        assert calls.read_text().split() == ["start", str([0, 2][attempt])]
        pid = int((runs / "run.pid").read_text())
        stop = run_sh(env, "stop")
        assert stop.returncode == 0, stop.stderr
        assert not alive(pid)
        snap = snapshots / first
        saved = step * 2  # the start's checkpoint, then the one SIGTERM saved
        assert sorted(p.name for p in snap.iterdir()) == sorted([
            "checkpoint", f"ckpt-{saved}.index", f"ckpt-{saved}.data-00000-of-00001",
            "flags.txt", "metrics.jsonl", "run.json"])
        assert f'"ckpt-{saved}"' in (snap / "checkpoint").read_text()
        assert f"ckpt-{saved - 1}" not in (snap / "checkpoint").read_text()
        assert not (REPO / "results/cifar10" / first).exists()  # not finished: nothing copied
        shutil.rmtree(runs)  # a new machine: only the committed snapshot is left


def test_a_workdir_with_checkpoints_is_not_reseeded(tmp_path):
    work, snap = tmp_path / "work", tmp_path / "snap"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    snap.mkdir()
    (snap / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    (snap / "ckpt-3.index").write_text("i")
    out = subprocess.run(["bash", "-c", f'source {REPO}/results/longrun.sh; '
                          f'longrun_seed "{work}" "{snap}"'], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ckpt-9" in (work / "checkpoints" / "checkpoint").read_text()
    assert not (work / "checkpoints" / "ckpt-3.index").exists()


def test_a_snapshot_without_a_checkpoint_says_so_and_keeps_the_old_one(tmp_path):
    work, snap = tmp_path / "work", tmp_path / "snap"
    work.mkdir()
    snap.mkdir()
    (snap / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    out = subprocess.run(["bash", "-c", f'source {REPO}/results/longrun.sh; '
                          f'longrun_snapshot "{work}" "{snap}"'], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"no checkpoint in {work}/checkpoints: nothing to snapshot"
    assert (snap / "checkpoint").exists()
