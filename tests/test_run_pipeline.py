"""The results pipeline's controls across sessions (`results/cifar10/run.sh start|stop|promote`):
a stop saves the training run in progress and commits its latest checkpoint alone as a
snapshot; on a machine without the workdir the same start resumes from that snapshot; a new
round trains in the stage and replaces the committed round only once every run is trained.

The trainer is a stand-in `python` on PATH that behaves like `python -m spvit_tf.train` in
what the script relies on (a checkpoint index in WORKDIR/checkpoints; SIGTERM saves and exits
0) and hands every other command to the real Python, so these tests exercise the shell logic
in seconds. The real trainer's SIGTERM and resume are tested in test_train.py.
"""

import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPO

RUN_SH = REPO / "results" / "cifar10" / "run.sh"
FAKE_TRAINER = r"""#!/usr/bin/env bash
[[ " $* " == *" spvit_tf.train "* ]] || exec "$REAL_PYTHON" "$@"
# logs "start STEP" to WORKDIR/calls, saves ckpt-(STEP+1) now and again on SIGTERM, then waits
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
echo '{"step": 0}' > "$W/run.json"; echo "$*" > "$W/flags.txt"; : > "$W/metrics.jsonl"
while true; do sleep 0.05; done
"""


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "REAL_PYTHON": sys.executable, "RUNS": str(tmp_path / "runs"),
           "STAGE": str(tmp_path / "stage"), "RESULTS": str(tmp_path / "results"),
           "SHIP": str(tmp_path / "ship")}
    yield env
    pid_file = tmp_path / "runs" / "run.pid"  # a failed test leaves no pipeline running
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # start gives it its own group
        except (ProcessLookupError, ValueError):
            pass


def run_sh(env, *args):
    """run.sh ARGS to its end; a hung one is killed with everything it started (its own group)."""
    process = subprocess.Popen(["bash", str(RUN_SH), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


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


def trained(root, name, **files):
    """A finished run as the pipeline keeps it: logs and final/eval.json."""
    run = pathlib.Path(root) / name
    (run / "final").mkdir(parents=True)
    (run / "final" / "eval.json").write_text('{"eval_top1": 0.5}')
    for file in ("run.json", "metrics.jsonl"):
        (run / file).write_text("{}\n")
    (run / "flags.txt").write_text(files.get("flags", "--mode=dense\n"))
    return run


def snapshot_files(step):
    return sorted(["checkpoint", f"ckpt-{step}.index", f"ckpt-{step}.data-00000-of-00001",
                   "flags.txt", "metrics.jsonl", "run.json"])


def start_stop(env, name):
    """start, wait for the trainer of NAME, stop: (its calls log, the stopped pipeline's pid)."""
    runs = pathlib.Path(env["RUNS"])
    start = run_sh(env, "start")
    assert start.returncode == 0, start.stderr
    wait_for(runs / "trainer.pid")
    wait_for(runs / name / "calls")
    calls = (runs / name / "calls").read_text().split()
    pid = int((runs / "run.pid").read_text())
    stop = run_sh(env, "stop")
    assert stop.returncode == 0, stop.stderr
    assert not alive(pid)
    return calls


def test_stop_commits_the_run_in_progress_and_a_new_machine_resumes_it(env):
    trained(env["RESULTS"], "teacher")  # the committed round: its first fine-tune trains next
    first = next(line.split()[1] for line in RUN_SH.read_text().splitlines()
                 if line.startswith("finetune "))
    stage, runs = pathlib.Path(env["STAGE"]), pathlib.Path(env["RUNS"])
    for resumed_from, saved in [(0, 2), (2, 4)]:  # start saves one checkpoint, SIGTERM the next
        assert start_stop(env, first) == ["start", str(resumed_from)]
        snap = stage / first
        assert sorted(p.name for p in snap.iterdir()) == snapshot_files(saved)
        assert (snap / "checkpoint").read_text().count("ckpt-") == 2  # names the latest alone
        assert f'"ckpt-{saved}"' in (snap / "checkpoint").read_text()
        assert "--checkpoint=" + env["RESULTS"] + "/teacher/" in (snap / "flags.txt").read_text()
        assert not (pathlib.Path(env["RESULTS"]) / first).exists()  # unfinished: not a result
        shutil.rmtree(runs)  # a new machine: only what is committed is left


def test_a_new_round_trains_its_teacher_in_the_stage_and_the_committed_round_stays(env):
    old = trained(env["RESULTS"], "teacher")
    snap = pathlib.Path(env["STAGE"]) / "teacher"  # a new round, its teacher at step 5
    snap.mkdir(parents=True)
    (snap / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    for name in ("ckpt-5.index", "ckpt-5.data-00000-of-00001", "run.json", "flags.txt",
                 "metrics.jsonl"):
        (snap / name).write_text("x")
    assert start_stop(env, "teacher") == ["start", "5"]
    assert sorted(p.name for p in snap.iterdir()) == snapshot_files(7)
    assert (old / "final" / "eval.json").exists()


def test_promote_replaces_the_committed_round_with_the_trained_stage(env):
    results, ship, stage = (pathlib.Path(env[k]) for k in ("RESULTS", "SHIP", "STAGE"))
    trained(results, "teacher")
    trained(results, "spvit_b050")
    (results / "bench").mkdir()
    (results / "results.md").write_text("old")
    ship.mkdir()
    for name in ("cifar10_teacher_fp32.tflite", "cifar10_spvit_b050_int8.json", "labels.txt",
                 "README.md"):
        (ship / name).write_text("x")
    trained(stage, "teacher")
    weights = f"{stage}/teacher/final/model.weights.h5"
    trained(stage, "spvit_b054", flags=f"--checkpoint={weights}\n--mode=spvit\n")
    (stage / "hard_b054").mkdir()  # not trained yet: promoting now would lose the round
    refused = run_sh(env, "promote")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"{stage}/hard_b054/ is not trained: cannot promote"
    assert (results / "spvit_b050").exists() and (ship / "cifar10_teacher_fp32.tflite").exists()

    shutil.rmtree(stage / "hard_b054")
    trained(stage, "hard_b054")
    promoted = run_sh(env, "promote")
    assert promoted.returncode == 0, promoted.stderr
    assert sorted(p.name for p in results.iterdir()) == ["hard_b054", "spvit_b054", "teacher"]
    assert sorted(p.name for p in ship.iterdir()) == ["README.md", "labels.txt"]
    assert not stage.exists()
    flags = (results / "spvit_b054" / "flags.txt").read_text()
    assert flags == f"--checkpoint={results}/teacher/final/model.weights.h5\n--mode=spvit\n"


def test_a_killed_promote_resumes_without_deleting_what_it_moved(env):
    results, stage = pathlib.Path(env["RESULTS"]), pathlib.Path(env["STAGE"])
    trained(results, "spvit_b054")  # moved before the kill
    trained(stage, "teacher")
    trained(stage, "hard_b054")
    (stage / "PROMOTING").touch()  # the committed round was already removed
    promoted = run_sh(env, "promote")
    assert promoted.returncode == 0, promoted.stderr
    assert sorted(p.name for p in results.iterdir()) == ["hard_b054", "spvit_b054", "teacher"]
    assert not stage.exists()


def test_start_without_the_package_installed_says_how_to_install_it(env, tmp_path):
    """A fresh machine where `pip install` was not run: one line on how, no pipeline started."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "python").write_text("#!/usr/bin/env bash\necho 'No module named absl' >&2; exit 1\n")
    (bare / "python").chmod(0o755)
    env = {**env, "PATH": f"{bare}:{env['PATH']}"}
    for command in ("start", "train"):
        result = run_sh(env, command)
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0
        assert "pip install" in result.stderr and "Traceback" not in result.stderr
        assert not (pathlib.Path(env["RUNS"]) / "run.pid").exists()
