"""MultiWorkerMirroredStrategy for real: two worker processes on 127.0.0.1 (one TF_CONFIG
each) train one tiny SPViT run in one workdir.

What is checked: the two-worker run equals a single process with the same replicas and
global batch (MirroredStrategy over two logical CPUs), only the chief writes the workdir's
files, a worker killed mid-run makes the other stop within a bounded time with one error line,
and restarting both workers resumes from the chief's last checkpoint. Every wait is bounded.
What is not tested here: workers on separate machines, GPUs, TPU pods.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, checkpoint_step
from test_train import ENV, NO_AUG, TINY, assert_same_weights, metrics, run, weights

RUN = [*TINY, *NO_AUG, "--mode=spvit", "--pruning_locations=1", "--keep_ratios=0.5",
       "--drop_path=0", "--warmup_epochs=0", "--lr=0.01", "--backbone_lr_scale=1",
       "--eval_examples=64", "--log_every=1", "--eval_every=0"]
DEADLINE = 300  # seconds any one wait may take on a busy 2-core machine


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args, ports):
    """Both workers of a two-worker cluster on localhost, as subprocesses."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(len(ports)):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "spvit_tf.train", *args, "--strategy=multi_worker"],
            cwd=REPO, env={**ENV, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    return workers


def finish(process, timeout=DEADLINE):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"a worker did not stop within {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


def test_two_workers_equal_one_process_with_the_same_replicas(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = [*RUN, "--steps=4", "--checkpoint_every=2"]
    workers = start_workers([*args, f"--workdir={multi}"], free_ports(2))
    run([*args, f"--workdir={single}", "--strategy=mirrored", "--cpu_replicas=2"])
    for worker in workers:
        code, _, err = finish(worker)
        assert code == 0, err[-3000:]
    one, two = metrics(single), metrics(multi)
    assert [m["step"] for m in two if "total" in m] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("total", "ce", "ratio", "keep_0"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert_same_weights(weights(single), weights(multi), rtol=1e-4, atol=1e-6)
    # Chief-only files: one metrics log (not two interleaved), no worker scratch left behind.
    names = sorted(os.listdir(multi))
    assert not [n for n in names if n.startswith(".worker-")], names
    assert sorted(os.listdir(multi / "checkpoints"))[0] == "checkpoint"
    assert len([m for m in two if m.get("final")]) == 1


def test_a_killed_worker_stops_its_peer_with_one_line_and_both_resume(tmp_path):
    workdir = tmp_path / "run"
    args = [*RUN, "--steps=400", "--checkpoint_every=2", f"--workdir={workdir}"]
    workers = start_workers(args, free_ports(2))
    deadline = time.monotonic() + DEADLINE
    while not (workdir / "checkpoints" / "checkpoint").exists():
        assert time.monotonic() < deadline, "no checkpoint within the deadline"
        assert all(w.poll() is None for w in workers), workers[0].stderr.read()[-3000:]
        time.sleep(1)
    workers[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    code, _, err = finish(workers[0], timeout=DEADLINE)
    waited = time.monotonic() - killed_at
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "peer worker" in errors[0] and "restart every worker" in errors[0]
    print(f"the surviving worker stopped {waited:.0f} s after its peer was killed")
    workers[1].communicate()
    # Both restarted with a shorter run: they resume from the chief's last checkpoint.
    last = checkpoint_step(workdir)
    resumed_args = [a if not a.startswith("--steps=") else f"--steps={last + 2}" for a in args]
    restarted = start_workers(resumed_args, free_ports(2))
    for worker in restarted:
        code, out, err = finish(worker)
        assert code == 0, err[-3000:]
        assert f"resuming {workdir} from step {last}" in out
