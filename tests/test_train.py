"""Training end to end on tiny models: the workdir contract, one step on two replicas,
kill-and-resume, the NaN stop, every config (the ImageNet ones on TFDS mock data), one-line CLI
errors and the schedule search.

Where the CLI itself is under test (its summary, absl flags, SIGTERM and exit codes, logical CPU
devices, which need a fresh TensorFlow) a run goes through a subprocess (`python -m
spvit_tf.train`); everything else calls `spvit_tf.train.fit(TrainConfig)` in this process,
with the same flags parsed by `TrainConfig.from_argv`.
"""

import concurrent.futures
import dataclasses
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, checkpoint_step
from spvit_tf.errors import SpvitError
from spvit_tf.train_config import TrainConfig

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
TINY = [
    "--model=deit_tiny_patch16_224",
    "--model_options=patch_size=8,embed_dim=24,depth=3,num_heads=2",
    "--image_size=32",
    "--data=cifar10_embedded",
    "--batch_size=32",
    "--crop_ratio=1.0",
]
# Augmentation off; at scale 1 the random resized crop always takes the whole image.
NO_AUG = ["--randaugment_ops=0", "--mixup=0", "--cutmix=0", "--noflip", "--min_crop_scale=1.0"]
# SPViT with Gumbel decisions, drop path and both optimizers (backbone at full LR to learn fast),
# over an epoch boundary (31 steps at batch 128): a resume must continue the seed states as well
# as the data position and the optimizers.
DEMO = [
    *TINY, *NO_AUG, "--batch_size=128", "--mode=spvit", "--pruning_locations=1,2",
    "--keep_ratios=0.7,0.49", "--drop_path=0.1", "--lr=0.02", "--backbone_lr_scale=1",
    "--warmup_epochs=0.05", "--steps=40", "--checkpoint_every=5", "--log_every=2",
    "--eval_examples=0",
]
IMAGENET_CONFIGS = ["deit_t", "deit_s", "deit_b", "pit_ti", "pit_xs", "pit_s", "pit_b"]
SLOW = {"deit_b", "pit_b"}  # about 30 s each on 2 CPU cores

# Trains on `tfds.testing.mock_data` in this process, with a prepared-looking imagenet2012
# (metadata only: 4 examples per split): the ImageNet path offline, manual dir untouched.
MOCK_IMAGENET_TRAIN = """
import os, sys
import tensorflow_datasets as tfds
from spvit_tf import train
from spvit_tf.train_config import TrainConfig

data_dir, argv = sys.argv[1], sys.argv[2:]
builder = tfds.builder("imagenet2012", data_dir=data_dir)
builder.info.set_splits(tfds.core.SplitDict([
    tfds.core.SplitInfo(name=s, shard_lengths=[4], num_bytes=0) for s in ("train", "validation")]))
os.makedirs(builder.data_dir)
builder.info.write_to_directory(builder.data_dir)
with tfds.testing.mock_data(num_examples=4, data_dir=data_dir,
                            policy=tfds.testing.MockPolicy.USE_FILES):
    config = TrainConfig.from_argv(argv)
    train.print_summary(config, train.fit(config))
"""


def run(args, *, module="spvit_tf.train", check=True):
    """`python -m module *args` (`module=None`: `python *args`) in the repository."""
    result = subprocess.run([sys.executable, *(["-m", module] if module else []), *args], cwd=REPO,
                            env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


# A short TensorFlow run keeps about one core busy (start-up and tracing are single-threaded):
# independent runs go two at a time.
POOL = concurrent.futures.ThreadPoolExecutor(2)


def run_all(arg_lists, **kwargs):
    return list(POOL.map(lambda args: run(args, **kwargs), arg_lists))


def parse_flags(argv):
    """The checked config of CLI arguments, as `python -m spvit_tf.train` would run it."""
    config = TrainConfig.from_argv(argv)
    config.check()
    return config


def fit(args):
    """`python -m spvit_tf.train *args`, in this process: the final evaluation dict (`fit`
    checks the config itself)."""
    from spvit_tf import train

    return train.fit(TrainConfig.from_argv(args))


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(workdir):
    arrays = {}
    with h5py.File(os.path.join(workdir, "final", "model.weights.h5")) as f:
        f.visititems(lambda k, v: arrays.update({k: v[()]}) if isinstance(v, h5py.Dataset)
                     else None)
    return arrays


def assert_same_weights(a, b, **tolerance):
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_allclose(a[key], b[key], err_msg=key, **tolerance)


def error_line(result):
    """The one `error:` line of a failed run (absl's own log lines aside), no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo") / "run")
    result = run([*DEMO, f"--workdir={workdir}"])
    return workdir, result


def test_training_lowers_the_loss_and_fills_the_workdir(demo, tmp_path):
    import tensorflow as tf

    workdir, result = demo
    log = metrics(workdir)
    steps = [r for r in log if "total" in r]
    assert [r["step"] for r in steps] == list(range(2, 41, 2))
    for key in ("total", "ce"):  # steps 2-4 against the last 20 (batches vary: ~0.05 noise)
        values = [r[key] for r in steps]
        assert np.mean(values[-10:]) < np.mean(values[:2]) - 0.06, (key, values)
    assert steps[-1]["lr"] < steps[2]["lr"]  # cosine decay after the warm-up
    assert [r["step"] for r in log if "eval_top1" in r and "final" not in r] == [31]  # epoch 1
    for name in ("run.json", "flags.txt", "metrics.jsonl", "final/model.weights.h5",
                 "final/eval.json", "checkpoints/checkpoint", "checkpoints/ckpt-40.index"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    (events,) = glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value}
    assert {"total", "ce", "ratio", "keep_0", "lr", "eval_top1"} <= tags
    run_json = json.load(open(os.path.join(workdir, "run.json")))
    assert run_json["model_config"]["pruning"]["keep_ratios"] == [0.7, 0.49]
    assert len(run_json["class_names"]) == 10 and run_json["preprocessing"]["image_size"] == 32
    assert {k: run_json[k] for k in ("run_id", "method", "budget", "seed")} == {
        "run_id": "run", "method": "spvit", "budget": None, "seed": 0}
    training = run_json["training"]  # the schedule as run, for the report's setup line
    assert training["examples"] // 128 == training["steps_per_epoch"] == 31  # eval at step 31
    assert (training["batch_size"], training["steps"], training["frozen_backbone_steps"]) == (
        128, 40, 0)

    final = json.load(open(os.path.join(workdir, "final", "eval.json")))
    assert final["step"] == 40 and final["eval_examples"] == 1000
    assert final["eval_top1"] > 0.15  # chance is 0.1; 40 steps of a 3-block model learn a bit
    assert final["gflops"] < final["dense_gflops"]
    assert final["keep_ratios"] == [0.7, 0.49] and final["kept_tokens"] == [11, 8]
    summary = {key: value.strip() for key, _, value in
               (line.partition("  ") for line in result.stdout.splitlines())}
    assert summary["eval top-1"] == f"{final['eval_top1']:.4f} (1000 images)"
    assert summary["GFLOPs"].startswith(f"{final['gflops']:.4f} (dense")
    assert summary["keep ratios (inference)"] == "0.7, 0.49"

    evaluated = json.loads(run([f"--workdir={workdir}"], module="spvit_tf.evaluate").stdout)
    assert evaluated["examples"] == 1000
    assert evaluated["top1"] == pytest.approx(final["eval_top1"], abs=0.002)
    assert evaluated["top5"] == pytest.approx(final["eval_top5"], abs=0.002)
    assert evaluated["gflops"] == pytest.approx(final["gflops"])
    assert evaluated["keep_ratios"] == final["keep_ratios"]
    assert evaluated["kept_tokens"] == final["kept_tokens"]
    assert evaluated["pruning_mode"] == "gather"
    # The same tokens kept in masked form; the training-time sampling keeps other ones.
    masked = json.loads(run([f"--workdir={workdir}", "--pruning_mode=mask"],
                            module="spvit_tf.evaluate").stdout)
    assert masked["top1"] == pytest.approx(evaluated["top1"], abs=0.002)
    output = tmp_path / "gumbel.json"
    sampled = json.loads(run([f"--workdir={workdir}", "--pruning_mode=gumbel",
                              f"--output={output}"], module="spvit_tf.evaluate").stdout)
    assert json.loads(output.read_text()) == sampled and sampled["pruning_mode"] == "gumbel"


def test_flags_txt_is_a_flagfile_that_resumes_the_run(demo, capsys):
    workdir, _ = demo
    parsed = parse_flags([f"--flagfile={workdir}/flags.txt"])
    assert parsed == parse_flags([*DEMO, f"--workdir={workdir}"])  # every flag, as given
    assert parsed.workdir == workdir and parsed.steps == 40
    assert parsed.keep_ratios == ("0.7", "0.49") and parsed.lr == 0.02
    assert TrainConfig.from_argv([f"--flagfile={workdir}/flags.txt"]).to_flagfile() == \
        open(f"{workdir}/flags.txt").read()
    fit([f"--flagfile={workdir}/flags.txt"])  # finished: resumes at the end, re-evaluates
    assert f"resuming {workdir} from step 40" in capsys.readouterr().out


def test_one_step_on_two_replicas_equals_one_device(tmp_path):
    """MirroredStrategy over 2 logical CPUs: same initial weights and batch -> same update."""
    args = [*TINY, *NO_AUG, "--mode=evit", "--pruning_locations=1,2", "--keep_ratios=0.7,0.49",
            "--drop_path=0", "--steps=3", "--log_every=1", "--warmup_epochs=0", "--lr=0.01",
            "--backbone_lr_scale=1", "--eval_examples=64"]
    mirrored = ["--strategy=mirrored", "--cpu_replicas=2"]
    _, two = run_all([[*args, f"--workdir={tmp_path}/one"],
                      [*args, f"--workdir={tmp_path}/two", *mirrored]])
    assert "CPU:1" in two.stderr  # absl logs the strategy's devices
    one_log, two_log = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for a, b in zip(one_log[:3], two_log[:3]):
        assert a["step"] == b["step"]
        for key in ("total", "ce", "ratio", "keep_0", "keep_1"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"), rtol=1e-4, atol=1e-6)


def test_baselines_fine_tune_the_backbone_at_the_pruned_recipe_lr(tmp_path):
    """EViT/static have no selectors, yet their backbone learns at lr x backbone_lr_scale like
    SPViT's: one recipe for every method compared."""
    args = [*TINY, *NO_AUG, "--mode=static", "--pruning_locations=1", "--keep_ratios=0.5",
            "--steps=4", "--log_every=1", "--warmup_epochs=0", "--lr=0.01",
            "--backbone_lr_scale=0.5", "--min_lr=0", "--eval_examples=32",
            f"--workdir={tmp_path}"]
    fit(args)
    peak = 0.01 * 32 / 512  # per 512 images, scaled to batch 32
    logged = [m["lr"] for m in metrics(tmp_path) if "lr" in m]
    # SPViT's backbone rate: min(lr x backbone_lr_scale, the cosine at the same step).
    capped = [min(0.5 * peak, peak * 0.5 * (1 + math.cos(math.pi * step / 4))) for step in (1, 2, 3, 4)]
    np.testing.assert_allclose(logged, capped, rtol=1e-5, atol=1e-12)


def test_a_training_free_method_runs_with_no_training_step(tmp_path):
    """--epochs=0: the run evaluates the checkpoint with the method (ToMe needs no training),
    so the report finds it like any other run."""
    dense = tmp_path / "dense"
    fit([*TINY, *NO_AUG, "--mode=dense", "--steps=2", "--eval_examples=32", f"--workdir={dense}"])
    workdir = tmp_path / "tome"
    fit([*TINY, "--mode=tome", "--epochs=0", "--pruning_locations=1,2", "--keep_ratios=0.7,0.49",
         f"--checkpoint={dense}/final/model.weights.h5", "--eval_examples=64",
         f"--workdir={workdir}"])
    result = json.loads((workdir / "final" / "eval.json").read_text())
    assert result["step"] == 0 and result["eval_examples"] == 64
    assert result["gflops"] < result["dense_gflops"] and result["keep_ratios"] == [0.7, 0.49]
    assert not [m for m in metrics(workdir) if "total" in m]


def test_a_frozen_backbone_waits_then_learns_at_the_capped_rate(tmp_path):
    """SPViT's recipe: selectors alone for the first steps (backbone weights untouched), then
    the backbone at min(lr x backbone_lr_scale, the selectors' cosine at the same step)."""
    args = [*TINY, *NO_AUG, "--mode=spvit", "--pruning_locations=1", "--keep_ratios=0.5",
            "--steps=4", "--log_every=1", "--warmup_epochs=0", "--lr=0.01", "--min_lr=0",
            "--backbone_lr_scale=0.5", "--freeze_backbone_steps=2", "--eval_examples=32",
            f"--workdir={tmp_path}"]
    fit(args)
    peak = 0.01 * 32 / 512
    logged = [m for m in metrics(tmp_path) if "lr" in m]
    cosine = [peak * 0.5 * (1 + math.cos(math.pi * step / 4)) for step in (1, 2, 3, 4)]
    np.testing.assert_allclose([m["lr"] for m in logged], cosine, rtol=1e-5, atol=1e-12)
    # Each logged rate is the next step's: the backbone's third step is its first.
    want = [0.0, min(0.5 * peak, cosine[1]), min(0.5 * peak, cosine[2]), min(0.5 * peak, cosine[3])]
    np.testing.assert_allclose([m["backbone_lr"] for m in logged], want, rtol=1e-5, atol=1e-12)


def test_sigterm_saves_and_the_same_command_resumes_exactly(demo, tmp_path):
    workdir = str(tmp_path / "run")
    command = [sys.executable, "-m", "spvit_tf.train", *DEMO, f"--workdir={workdir}"]
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.index")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stdout[-2000:] + stderr[-4000:]
    assert "SIGTERM: saved" in stdout and "rerun the same command to resume" in stdout
    saved = checkpoint_step(workdir)
    assert 5 <= saved < 40
    assert not os.path.exists(os.path.join(workdir, "final"))

    resumed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming {workdir} from step {saved}" in resumed.stdout
    assert json.load(open(os.path.join(workdir, "final", "eval.json")))["step"] == 40
    # Data position, optimizer and LR schedule state, Gumbel and drop-path seeds all continue:
    # the result is the uninterrupted run's.
    assert_same_weights(weights(workdir), weights(demo[0]), rtol=1e-5, atol=1e-6)


def test_a_nan_loss_stops_the_run_with_the_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    workdir = tmp_path / "run"
    with pytest.raises(SpvitError) as error:
        fit([*TINY, "--mode=dense", "--lr=1e30", "--warmup_epochs=0", "--steps=5",
             "--checkpoint_every=1", f"--workdir={workdir}"])
    line = str(error.value)
    assert "\n" not in line
    assert "the loss became nan at step 2" in line and "ckpt-1" in line and "--lr" in line
    checkpoints = workdir / "checkpoints"
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-1")
    assert not glob.glob(str(checkpoints / "ckpt-2*"))
    reader = tf.train.load_checkpoint(str(checkpoints / "ckpt-1"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 1
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.isfinite(reader.get_tensor(name)).all(), name
    assert not (workdir / "final").exists()


def test_every_config_parses():
    from spvit_tf.budget import schedule_for_budget
    from spvit_tf.flops import model_cost

    configs = sorted(glob.glob(str(REPO / "configs" / "*.cfg")))
    assert len(configs) == 3 + len(IMAGENET_CONFIGS)  # + CIFAR-10 demo, teacher and fine-tune
    for path in configs:  # the fine-tune has no --workdir
        flags = dataclasses.asdict(parse_flags([f"--flagfile={path}", "--workdir=unused"]))
        options = dict(o.split("=") for o in flags["model_options"])
        options = {k: int(v) for k, v in options.items()}
        dense = model_cost(flags["model"], image_size=flags["image_size"], **options)
        if flags["mode"] == "dense":
            assert dense.gflops > 0 and not flags["keep_ratios"], path
            continue
        locations = [int(v) for v in flags["pruning_locations"]]
        ratios = [float(v) for v in flags["keep_ratios"]]
        if flags["budget_gflops"] is not None:  # the budget sets the ratios
            assert not ratios, path
            ratios = schedule_for_budget(
                flags["model"], budget=flags["budget_gflops"], locations=locations,
                method=flags["mode"], overrides=dict(options, image_size=flags["image_size"]),
            ).keep_ratios
        if not ratios:  # results/cifar10/run.sh gives each fine-tune its --budget_gflops
            assert path.endswith("cifar10_finetune.cfg") and "--budget_gflops=" in (
                REPO / "results" / "cifar10" / "run.sh").read_text(), path
            continue
        pruning = dict(method=flags["mode"], locations=locations, keep_ratios=ratios)
        pruned = model_cost(flags["model"], image_size=flags["image_size"], pruning=pruning,
                            **options)
        assert 0.3 < pruned.gflops / dense.gflops < 1.0, path


def test_cifar10_demo_config_runs(tmp_path):
    result = fit(["--flagfile=configs/cifar10_demo.cfg", "--steps=2", f"--workdir={tmp_path}",
                  "--eval_examples=64"])
    assert result["step"] == 2 and result["keep_ratios"] == [0.566, 0.32]  # 0.054 GFLOPs


@pytest.fixture(scope="module")
def imagenet_runs(request, tmp_path_factory):
    """Starts every selected ImageNet config run at once (two at a time): {config: (run, dir)}.

    Only size and speed are overridden: model, image size, schedule and recipe are the config's.
    """
    test = "test_imagenet_config_trains_on_tfds_mock_data"
    selected = [item.callspec.params["config"] for item in request.session.items
                if getattr(item, "originalname", None) == test]
    runs = {}
    for config in selected:
        tmp = tmp_path_factory.mktemp(config)
        args = ["-c", MOCK_IMAGENET_TRAIN, str(tmp / "tfds"), f"--flagfile=configs/{config}.cfg",
                "--batch_size=2", "--steps=2", "--checkpoint=", f"--workdir={tmp / 'run'}",
                "--strategy=default", "--jit_compile=false", "--precision=float32",
                "--eval_examples=2"]
        runs[config] = POOL.submit(run, args, module=None), tmp
    yield runs
    for future, _ in runs.values():  # after a failure with -x: start no more
        future.cancel()


@pytest.mark.parametrize(
    "config",
    [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in IMAGENET_CONFIGS],
)
def test_imagenet_config_trains_on_tfds_mock_data(config, imagenet_runs):
    future, tmp_path = imagenet_runs[config]
    result = future.result()
    final = json.load(open(tmp_path / "run" / "final" / "eval.json"))
    assert final["step"] == 2 and final["eval_examples"] == 2
    assert final["gflops"] < final["dense_gflops"]
    run_json = json.load(open(tmp_path / "run" / "run.json"))
    assert run_json["data"] == "tfds:imagenet2012" and run_json["preprocessing"]["image_size"] == 224
    assert len(run_json["class_names"]) == 1000
    losses = [r["total"] for r in metrics(tmp_path / "run") if "total" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    assert "tfds:imagenet2012" in result.stdout


def test_error_lines(tmp_path, demo):
    """Each bad input: one `error:` line, exit status 2, no traceback."""
    import spvit_tf

    teacher = tmp_path / "teacher5.weights.h5"
    spvit_tf.create_model("deit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=24,
                          depth=3, num_heads=2, num_classes=5).save_weights(teacher)
    (tmp_path / "manual").mkdir()
    work = f"--workdir={tmp_path / 'run'}"
    spvit = [*TINY, "--mode=spvit", "--pruning_locations=1,2", "--steps=2", work]
    cases = {
        "flagfile": (["--flagfile=/nonexistent/run.cfg"],
                     ["Unable to open flagfile", "/nonexistent"]),
        "flag": ([*TINY, "--learning_rate=1", work], ["Unknown command line flag 'learning_rate'"]),
        "model": ([*spvit, "--keep_ratios=0.7,0.49", "--model=deit_nano"],
                  ["unknown model 'deit_nano'", "deit_tiny_patch16_224"]),
        "folder": ([*spvit, "--keep_ratios=0.7,0.49", "--data=folder:/nonexistent"],
                   ["/nonexistent does not exist"]),
        "manual_dir": ([*spvit, "--keep_ratios=0.7,0.49", "--data=tfds:imagenet2012",
                        f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={tmp_path / 'manual'}"],
                       ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                        str(tmp_path / "manual")]),
        "teacher": ([*spvit, "--keep_ratios=0.7,0.49", f"--teacher_checkpoint={teacher}"],
                    ["cannot load the teacher", str(teacher), "10 classes", "--mode=dense"]),
        "budget": ([*spvit, "--budget_gflops=0.0001"], ["budget 0.0001 below what any"]),
        "ratios": (spvit, ["--mode=spvit needs --keep_ratios=... or a budget"]),
        "replicas": ([*spvit, "--keep_ratios=0.7,0.49", "--cpu_replicas=2"],
                     ["--cpu_replicas needs --strategy=mirrored"]),
        "align": ([*spvit, "--keep_ratios=0.7,0.49", "--align_to_latency_steps=2"],
                  ["--align_to_latency_steps needs --latency_table"]),
        "align_dense": ([*TINY, "--mode=dense", "--steps=2", work, "--align_to_latency_steps=2",
                         "--latency_table=t.json"], ["--mode=dense has none"]),
        "workdir": ([*TINY, "--mode=dense", "--steps=2", f"--workdir={demo[0]}"],
                    ["holds a different run", "mode differ", "flags.txt"]),
        "untrained_selectors": ([*spvit[:-2], "--steps=0", "--epochs=0", work,
                                 "--keep_ratios=0.7,0.49"],
                                ["--mode=spvit has selectors to train", "--mode=tome"]),
    }
    results = run_all([args for args, _ in cases.values()], check=False)
    for (name, (_, expected)), result in zip(cases.items(), results):
        line = error_line(result)
        for text in expected:
            assert text in line, (name, line)
    assert not (tmp_path / "run" / "checkpoints").exists()
    line = error_line(run(["--workdir=/nonexistent", "--top=1"], module="spvit_tf.evaluate",
                          check=False))
    assert "Unknown command line flag 'top'" in line


def test_keep_ratios_aligned_to_the_latency_steps_of_a_table(tmp_path, capsys):
    """A table whose blocks pay per started tile of 4 rows: keeping 8 of 16 patches puts
    1 + 8 + package = 10 tokens in blocks 1-2, two past a tile; both are dropped."""
    from spvit_tf import latency_table

    options = dict(patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=10,
                   image_size=32)
    tokens = list(range(1, 21))
    table = {
        "format": latency_table.TABLE_FORMAT, "model": "deit_tiny_patch16_224",
        "model_config": options, "target": "host", "device": "test", "backend": "cpu",
        "num_threads": 1, "fixed_ms": {"patch_embed": 0.1, "head": 0.01},
        "stages": [{"dim": 24, "heads": 2, "blocks": [0, 1, 2], "tokens": tokens,
                    "block_ms": [0.1 + 0.001 * n + 0.05 * -(-n // 4) for n in tokens],
                    "selector_ms": [0.01] * 20, "prune_ms": [0.01] * 20}],
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    argv = [*TINY, "--mode=spvit", "--pruning_locations=1", "--keep_ratios=0.5",
            f"--latency_table={path}", "--align_to_latency_steps=2", "--workdir=unused"]
    from spvit_tf.train_config import resolve_pruning

    pruning = resolve_pruning(parse_flags(argv), dict(options), 3)
    assert "aligned to latency steps: keep_ratios=0.375 ((6,) tokens" in capsys.readouterr().out
    assert list(pruning["keep_ratios"]) == [0.375]  # run.json holds it as a list

    path.write_text(json.dumps({**table, "tflite_format": "int8"}))  # dense: 1.211 ms
    argv = [*TINY, "--mode=spvit", "--pruning_locations=1", "--budget_ms=1.1",
            f"--latency_table={path}", "--workdir=unused"]
    resolve_pruning(parse_flags(argv), dict(options), 3)
    out = capsys.readouterr().out
    assert "<= budget; dense 1.211 ms int8 on host)" in out, out


def test_search_writes_a_schedule_that_parses_and_meets_the_budget(tmp_path, capsys):
    from spvit_tf.flops import model_cost

    budget = 0.0004  # dense: 0.000468 GFLOPs
    fit([*TINY, "--mode=search", f"--budget_gflops={budget}", "--steps=8",
         "--eval_examples=64", f"--workdir={tmp_path}"])
    out = capsys.readouterr().out
    schedule = tmp_path / "schedule.cfg"
    assert "searched schedule" in out and schedule.read_text() in out
    assert json.load(open(tmp_path / "final" / "eval.json"))["layer_keep_ratios"]
    flags = parse_flags([*TINY, f"--flagfile={schedule}", "--workdir=unused"])
    assert flags.mode == "spvit" and flags.keep_ratios and flags.budget_gflops is None
    locations = [int(v) for v in flags.pruning_locations]
    ratios = [float(v) for v in flags.keep_ratios]
    assert len(locations) == len(ratios) and all(1 <= loc <= 2 for loc in locations)
    cost = model_cost("deit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=24, depth=3,
                      num_heads=2, num_classes=10,
                      pruning=dict(method="spvit", locations=locations, keep_ratios=ratios))
    assert cost.gflops <= budget
