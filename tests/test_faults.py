"""Faults while writing: a full disk during a checkpoint or an export, SIGKILL at random
points of a training run, and two exports into one folder at once.

The full disk is a real one: a 4 MiB tmpfs mounted for the test (the suite runs as root here
and in CI). Where mounting is not allowed, the test injects ENOSPC at the write instead, and
says so in its output. Every wait is bounded.
"""

import contextlib
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, checkpoint_step
from test_export import make_workdir
from spvit_tf.errors import SpvitError
from test_train import ENV, NO_AUG, TINY, error_line, fit, metrics, run

RUN = [*TINY, *NO_AUG, "--mode=dense", "--drop_path=0", "--warmup_epochs=0", "--lr=0.01",
       "--eval_examples=32", "--eval_every=0", "--log_every=1", "--checkpoint_every=1"]


@contextlib.contextmanager
def small_disk(path, size="4m"):
    """A tmpfs of `size` at `path`; yields False (and a plain folder) where mounting fails."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder, leave=2048):
    """Fills the file system of `folder` up to `leave` free bytes."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(os.path.join(folder, "filler"), "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path):
    with small_disk(tmp_path / "disk") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")  # the ENOSPC injection test below covers it
        workdir = tmp_path / "disk" / "run"
        run([*RUN, "--steps=2", f"--workdir={workdir}"])
        assert checkpoint_step(workdir) == 2
        fill(tmp_path / "disk", leave=64 * 1024)  # room for run.json and logs, not a checkpoint
        result = run([*RUN, "--steps=6", f"--workdir={workdir}"], check=False)
        line = error_line(result)
        assert "cannot write checkpoint 3" in line and "ckpt-2" in line, line
        assert checkpoint_step(workdir) == 2  # the index still names the last complete checkpoint
        os.unlink(tmp_path / "disk" / "filler")
        resumed = run([*RUN, "--steps=3", f"--workdir={workdir}"])
        assert f"resuming {workdir} from step 2" in resumed.stdout


def test_checkpoint_write_errors_are_one_line_naming_the_last_checkpoint(tmp_path, monkeypatch):
    """The same contract without a small disk: ENOSPC injected into the checkpoint write."""
    import tensorflow as tf

    real = tf.train.CheckpointManager.save

    def save(self, *args, **kwargs):
        if kwargs.get("checkpoint_number", 0) > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    workdir = tmp_path / "run"
    with pytest.raises(SpvitError) as error:
        fit([*RUN, "--steps=5", f"--workdir={workdir}"])
    line = str(error.value)
    assert "\n" not in line and "No space left on device" in line and "ckpt-2" in line
    assert checkpoint_step(workdir) == 2


def test_a_full_disk_during_an_export_leaves_no_torn_file(tmp_path):
    workdir = make_workdir(tmp_path / "src" / "tiny")
    with small_disk(tmp_path / "disk", size="1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        out = tmp_path / "disk" / "out"
        fill(tmp_path / "disk", leave=32 * 1024)  # room for labels.txt, not the model
        result = subprocess.run(
            [sys.executable, "-m", "spvit_tf.export", f"--workdir={workdir}", "--formats=fp32",
             f"--output_dir={out}", "--eval_examples=20"],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "No space left" in errors[0], result.stderr[-3000:]
        assert ".tflite" in errors[0] or ".json" in errors[0] or ".md" in errors[0], errors[0]
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert not [name for name in left if name.endswith(".tflite") or ".tmp-" in name], left


def test_sigkill_at_random_points_never_leaves_an_unloadable_checkpoint(tmp_path):
    import tensorflow as tf

    workdir = tmp_path / "run"
    args = [*RUN, "--steps=100000", f"--workdir={workdir}"]  # never finishes by itself
    rng = random.Random(0)
    steps = []
    for trial in range(3):
        process = subprocess.Popen([sys.executable, "-m", "spvit_tf.train", *args], cwd=REPO,
                                   env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        index = workdir / "checkpoints" / "checkpoint"
        start = checkpoint_step(workdir) if index.exists() else 0
        while not index.exists() or checkpoint_step(workdir) == start:
            assert process.poll() is None and time.monotonic() < deadline, f"trial {trial}"
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the following steps and saves
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        step = checkpoint_step(workdir)
        reader = tf.train.load_checkpoint(str(workdir / "checkpoints" / f"ckpt-{step}"))
        assert reader.get_variable_to_shape_map()  # loads, every tensor indexed
        steps.append(step)
    assert steps == sorted(steps) and steps[-1] > steps[0]
    end = steps[-1] + 2
    finished = run([*args[:-2], f"--steps={end}", args[-1]])
    assert f"resuming {workdir} from step {steps[-1]}" in finished.stdout
    assert [m["step"] for m in metrics(workdir) if "total" in m][-1] == end


def test_two_exports_into_one_folder_at_once_both_succeed_intact(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    workdir = make_workdir(tmp_path / "src" / "tiny")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "spvit_tf.export", f"--workdir={workdir}", "--formats=fp32",
               f"--output_dir={out}", "--eval_examples=20"]
    both = [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in both:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    interpreter = Interpreter(model_path=str(out / "tiny_fp32.tflite"))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
