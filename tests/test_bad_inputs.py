"""Every CLI against bad input: one parametrised battery over train, evaluate, export,
benchmark, latency_table, flops, visualize, report and the adb script.

The promise each case checks (`check`): the CLI ends with exactly one `error: ` line on stderr,
the last one, saying what is wrong and how to fix it; a non-zero exit; no Python traceback;
nothing written into its output location or its inputs. Three cases promise something else
on purpose: a corrupt JPEG in a *training* folder is skipped, named once, and counted at the
epoch's end (a scraped folder should not stop a run), and a truncated or bit-flipped
`.tflite` given to the benchmark becomes a failed row in complete results with exit status 1
(a script must not read it as measured, and the other models' rows are kept).

The case definitions are also what `benchmarks/bad_inputs.py` runs to write the README's
table, so the table and the tests cannot drift apart. Inputs are small and built once per
module (`build_inputs`); each case runs its CLI once as a subprocess.
"""

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import types

import pytest

from conftest import REPO
from test_benchmark import _tiny_tflite
from test_budget import synthetic_table
from test_export import CIFAR, make_workdir
from test_report import fake_run
from test_train import ENV, NO_AUG, TINY

MODEL = "deit_tiny_patch16_224"
ADB_SCRIPT = "android_benchmark/run_benchmark.py"
TRAIN = ["-m", "spvit_tf.train", *TINY, "--mode=dense", "--steps=1"]
LATENCY = ["--mode=spvit", "--pruning_locations=1", "--budget_ms=1"]
PICKLE_RAN = "pickle_ran"  # the file the malicious .pth's payload would create


@dataclasses.dataclass(frozen=True)
class Case:
    """One (CLI, bad input) pair. `argv(i, out)` is the command after `python`, from the
    inputs `i` (`build_inputs`) and an empty output folder; `says(i, out)` the parts the
    error line must contain. `expect`: "error" (the promise above), "skip" (the corrupt
    training JPEG) or "failed_row" (the benchmark's damaged model)."""

    id: str
    cli: str
    kind: str
    argv: object
    says: object
    expect: str = "error"


def _m(module, *flags):
    return ["-m", f"spvit_tf.{module}", *flags]


CASES = [
    # -- a missing file or folder, an empty file
    Case("report-missing-results", "report", "missing file or folder",
         lambda i, o: _m("report", f"--results={i.root / 'no_results'}"),
         lambda i, o: [f"--results={i.root / 'no_results'} does not exist",
                       "pass the folder of training workdirs"]),
    Case("report-empty-eval-json", "report", "empty file",
         lambda i, o: _m("report", f"--results={i.empty_eval}", f"--tflite_dirs={o}"),
         lambda i, o: [f"{i.empty_eval / 'teacher' / 'final' / 'eval.json'} is corrupt",
                       "restore it or rerun the training"]),
    Case("export-empty-weights", "export", "empty file",
         lambda i, o: _m("export", f"--workdir={i.empty_h5}", f"--output_dir={o / 'tflite'}"),
         lambda i, o: [f"{i.empty_h5 / 'final' / 'model.weights.h5'} is not a readable Keras",
                       "restore it from a copy or train again"]),
    # -- truncated and bit-flipped files
    Case("benchmark-truncated-tflite", "benchmark", "truncated .tflite",
         lambda i, o: _m("benchmark", f"--models={i.truncated_tflite}", "--runs=1", "--warmup=0",
                         f"--output_dir={o / 'bench'}"),
         lambda i, o: ["1 of 1 runs failed (truncated cpu t1)", "--allow_failures"],
         expect="failed_row"),
    Case("benchmark-flipped-tflite", "benchmark", "bit-flipped .tflite",
         lambda i, o: _m("benchmark", f"--models={i.flipped_tflite}", "--runs=1", "--warmup=0",
                         f"--output_dir={o / 'bench'}"),
         lambda i, o: ["1 of 1 runs failed (flipped cpu t1)", "--allow_failures"],
         expect="failed_row"),
    Case("train-truncated-safetensors", "train", "truncated .safetensors",
         lambda i, o: [*TRAIN, f"--checkpoint={i.truncated_safetensors}", f"--workdir={o / 'run'}"],
         lambda i, o: [f"checkpoint {i.truncated_safetensors} is corrupt or truncated"]),
    Case("export-flipped-safetensors", "export", "bit-flipped .safetensors",
         lambda i, o: _m("export", f"--model={MODEL}", "--image_size=32",
                         f"--checkpoint={i.flipped_safetensors}", f"--output_dir={o / 'tflite'}"),
         lambda i, o: [f"checkpoint {i.flipped_safetensors} is corrupt or truncated"]),
    Case("evaluate-truncated-weights", "evaluate", "truncated .weights.h5",
         lambda i, o: _m("evaluate", f"--workdir={i.truncated_h5}", f"--output={o / 'eval.json'}"),
         lambda i, o: [f"{i.truncated_h5 / 'final' / 'model.weights.h5'} is not a readable",
                       "truncated or damaged"]),
    Case("visualize-flipped-weights", "visualize", "bit-flipped .weights.h5",
         lambda i, o: _m("visualize", f"--workdir={i.flipped_h5}", f"--output={o / 'keep.png'}"),
         lambda i, o: [f"{i.flipped_h5 / 'final' / 'model.weights.h5'} is not a readable",
                       "bad local heap signature", "restore it from a copy or train again"]),
    Case("train-truncated-latency-table", "train", "truncated latency table",
         lambda i, o: [*TRAIN, *LATENCY, f"--latency_table={i.truncated_table}",
                       f"--workdir={o / 'run'}"],
         lambda i, o: [f"latency table {i.truncated_table} is not valid JSON",
                       "python -m spvit_tf.latency_table"]),
    Case("train-flipped-latency-table", "train", "bit-flipped latency table",
         lambda i, o: [*TRAIN, *LATENCY, f"--latency_table={i.flipped_table}",
                       f"--workdir={o / 'run'}"],
         lambda i, o: [f"latency table {i.flipped_table}: stage 0 needs keys",
                       "'clock_ms'", "python -m spvit_tf.latency_table"]),
    # -- a workdir from another model, wrong and missing flag values
    Case("evaluate-other-model", "evaluate", "workdir from another model",
         lambda i, o: _m("evaluate", f"--workdir={i.other_model}"),
         lambda i, o: [f"{i.other_model / 'final' / 'model.weights.h5'} is not the model "
                       f"{i.other_model / 'run.json'} describes", "tensors stored",
                       "put that run's own weights back"]),
    Case("benchmark-wrong-flag-value", "benchmark", "wrong flag value",
         lambda i, o: _m("benchmark", f"--models={i.tflite}", "--runs=many",
                         f"--output_dir={o / 'bench'}"),
         lambda i, o: ["--runs=many", "--helpfull"]),
    Case("flops-wrong-flag-value", "flops", "wrong flag value",
         lambda i, o: _m("flops", f"--model={MODEL}", "--image_size=big"),
         lambda i, o: ["--image_size=big", "--helpfull"]),
    Case("flops-missing-flag-value", "flops", "missing flag value",
         lambda i, o: _m("flops", "--model="),
         lambda i, o: ["--model is required"]),
    Case("adb-wrong-flag-value", "adb script", "wrong flag value",
         lambda i, o: [ADB_SCRIPT, f"--models={i.tflite}", "--timeout_s=soon",
                       f"--output_dir={o / 'phone'}"],
         lambda i, o: ["--timeout_s=soon", "--helpfull"]),
    # -- image folders
    Case("train-corrupt-jpeg", "train", "corrupt JPEG in an image folder",
         lambda i, o: ["-m", "spvit_tf.train", *TINY, *NO_AUG, "--mode=dense",
                       f"--data=folder:{i.scraped}", "--batch_size=6", "--steps=3",
                       "--eval_every=0", f"--workdir={o / 'run'}"],
         lambda i, o: [f"warning: skipped {path}: not a readable image" for path in i.scraped_bad]
         + ["epoch 1: skipped 2 unreadable training image(s)"],
         expect="skip"),
    Case("evaluate-corrupt-jpeg", "evaluate", "corrupt JPEG in an image folder",
         lambda i, o: _m("evaluate", f"--workdir={i.workdir}", f"--data=folder:{i.cifar_val}"),
         lambda i, o: [f"{i.cifar_val_bad} in the val split cannot be read as an image",
                       "remove or replace it"]),
    Case("visualize-corrupt-jpeg", "visualize", "corrupt JPEG in an image folder",
         lambda i, o: _m("visualize", f"--workdir={i.workdir}", f"--images={i.cifar_val_bad.parent}",
                         f"--output={o / 'keep.png'}"),
         lambda i, o: [f"{i.cifar_val_bad} is not a readable JPEG/PNG image", "remove it"]),
    Case("train-no-classes", "train", "image folder with no classes",
         lambda i, o: [*TRAIN, f"--data=folder:{i.no_classes}", f"--workdir={o / 'run'}"],
         lambda i, o: ["split 'train' is empty", "train/<class>/*.jpg"]),
    # -- output locations: read-only, or under a regular file
    Case("evaluate-read-only-output", "evaluate", "read-only output directory",
         lambda i, o: _m("evaluate", f"--workdir={i.workdir}", f"--output={i.read_only / 'e.json'}"),
         lambda i, o: [f"--output={i.read_only / 'e.json'} cannot be written",
                       f"{i.read_only} is not writable"]),
    Case("report-read-only-results", "report", "read-only output directory",
         lambda i, o: _m("report", f"--results={i.read_only_results}", f"--tflite_dirs={o}"),
         lambda i, o: [f"--results={i.read_only_results} cannot be used",
                       "is not writable; pass a writable directory"]),
    Case("adb-read-only-output", "adb script", "read-only output directory",
         lambda i, o: [ADB_SCRIPT, f"--models={i.tflite}", f"--output_dir={i.read_only / 'phone'}"],
         lambda i, o: [f"--output_dir={i.read_only / 'phone'} cannot be created",
                       f"{i.read_only} is not writable"]),
    Case("train-output-under-a-file", "train", "output path under a regular file",
         lambda i, o: [*TRAIN, f"--workdir={i.blocker / 'run'}"],
         lambda i, o: [f"--workdir={i.blocker / 'run'}", f"{i.blocker} is a regular file"]),
    Case("export-output-under-a-file", "export", "output path under a regular file",
         lambda i, o: _m("export", f"--model={MODEL}", f"--output_dir={i.blocker / 'tflite'}"),
         lambda i, o: [f"--output_dir={i.blocker / 'tflite'}", f"{i.blocker} is a regular file"]),
    Case("benchmark-output-under-a-file", "benchmark", "output path under a regular file",
         lambda i, o: _m("benchmark", f"--models={i.tflite}", f"--output_dir={i.blocker / 'b'}"),
         lambda i, o: [f"--output_dir={i.blocker / 'b'}", f"{i.blocker} is a regular file"]),
    Case("visualize-output-under-a-file", "visualize", "output path under a regular file",
         lambda i, o: _m("visualize", f"--workdir={i.workdir}", f"--output={i.blocker / 'k.png'}"),
         lambda i, o: [f"--output={i.blocker / 'k.png'}", f"{i.blocker} is a regular file"]),
    Case("latency-table-output-under-a-file", "latency_table", "output path under a regular file",
         lambda i, o: _m("latency_table", f"--model={MODEL}", f"--output={i.blocker / 't.json'}"),
         lambda i, o: [f"--output={i.blocker / 't.json'}", f"{i.blocker} is a regular file"]),
    # -- a checkpoint that would run code when unpickled
    Case("train-malicious-pth", "train", ".pth whose pickle runs code",
         lambda i, o: [*TRAIN, f"--checkpoint={i.malicious_pth}", f"--workdir={o / 'run'}"],
         lambda i, o: [f"{i.malicious_pth}", "safetensors"]),
]
BY_ID = {case.id: case for case in CASES}


# ---- the inputs, built once ------------------------------------------------------------------


def flip(data, at, bit=0):
    """`data` with one bit flipped at byte `at`."""
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1:]


def _jpeg(value):
    from PIL import Image
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _images(folder, classes, per_class):
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            (folder / name / f"{k}.jpg").write_bytes(_jpeg(20 * c + 5 * k))


def _workdir_variant(source, folder, weights):
    """A copy of `source`'s run.json with other final weights (bytes, or a model to save)."""
    (folder / "final").mkdir(parents=True)
    shutil.copy(source / "run.json", folder / "run.json")
    target = folder / "final" / "model.weights.h5"
    if isinstance(weights, bytes):
        target.write_bytes(weights)
    else:
        weights.save_weights(target)
    return folder


class _Payload:
    """Unpickling this runs `open(PATH, "w")`: what a malicious checkpoint does on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'w')",))


@contextlib.contextmanager
def _read_only(folder):
    """A folder this process cannot write in (populated first by the caller's block).

    As root (CI) the permission bits do not stop a write, so the folder is a tmpfs remounted
    read-only; elsewhere it is chmod 555. Yields False where neither works."""
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    state = {"ok": mounted or os.geteuid() != 0}

    def lock():
        if mounted:
            state["ok"] = subprocess.run(["mount", "-o", "remount,ro", str(folder)],
                                         capture_output=True).returncode == 0
        elif state["ok"]:
            for path in (folder, *folder.rglob("*")):
                if path.is_dir():
                    path.chmod(0o555)

    try:
        yield lock, state
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            for path in (folder, *folder.rglob("*")):
                if path.is_dir():
                    path.chmod(0o755)


def build_inputs(root, stack):
    """Every input the cases read, under `root`; `stack` (an ExitStack) undoes the read-only
    mount. Small: a tiny pruned workdir and damaged or foreign copies of it, a tiny .tflite,
    a checkpoint, a latency table and image folders, each also truncated or bit-flipped where
    a case needs it. A bit flip hits the file's structure (a signature, a dtype, a key): a
    flip inside weight values loads as other weights, as none of these formats checksums its
    data."""
    import keras
    import numpy as np
    from safetensors.numpy import save_file

    import spvit_tf

    root = pathlib.Path(root)
    i = types.SimpleNamespace(root=root)
    i.workdir = make_workdir(root / "run")
    weights = (i.workdir / "final" / "model.weights.h5").read_bytes()
    i.truncated_h5 = _workdir_variant(i.workdir, root / "run_truncated", weights[:len(weights) // 2])
    i.flipped_h5 = _workdir_variant(i.workdir, root / "run_flipped",
                                    flip(weights, weights.index(b"HEAP")))
    i.empty_h5 = _workdir_variant(i.workdir, root / "run_empty", b"")
    keras.utils.set_random_seed(0)
    other = spvit_tf.create_model(MODEL, image_size=32, patch_size=8, embed_dim=24, depth=2,
                                  num_heads=2, num_classes=10)
    i.other_model = _workdir_variant(i.workdir, root / "run_of_another_model", other)

    save_file({"cls_token": np.zeros((1, 1, 24), np.float32)}, str(root / "good.safetensors"))
    tensors = (root / "good.safetensors").read_bytes()
    i.truncated_safetensors = root / "truncated.safetensors"
    i.truncated_safetensors.write_bytes(tensors[:len(tensors) // 2])
    i.flipped_safetensors = root / "flipped.safetensors"  # dtype "F32" -> "G32"
    i.flipped_safetensors.write_bytes(flip(tensors, tensors.index(b'"F32"') + 1))

    i.tflite = _tiny_tflite(root / "model.tflite", 16)
    model = i.tflite.read_bytes()
    i.truncated_tflite = root / "truncated.tflite"
    i.truncated_tflite.write_bytes(model[:len(model) // 2])
    i.flipped_tflite = root / "flipped.tflite"  # file identifier "TFL3" -> "TFL2"
    i.flipped_tflite.write_bytes(flip(model, 7))

    table = json.dumps(synthetic_table(), indent=1).encode()
    i.truncated_table = root / "truncated_table.json"
    i.truncated_table.write_bytes(table[:len(table) // 2])
    i.flipped_table = root / "flipped_table.json"  # key "block_ms" -> "clock_ms"
    i.flipped_table.write_bytes(flip(table, table.index(b'"block_ms"') + 1))

    i.malicious_pth = root / "malicious.pth"
    i.malicious_pth.write_bytes(pickle.dumps({"model": _Payload(root / PICKLE_RAN)}, protocol=2))

    i.scraped = root / "scraped"  # two classes of 8 images, and two that do not decode
    _images(i.scraped / "train", ("ant", "bee"), 8)
    _images(i.scraped / "val", ("ant", "bee"), 2)
    i.scraped_bad = [i.scraped / "train" / "ant" / "9_truncated.jpg",
                     i.scraped / "train" / "bee" / "9_error_page.jpg"]
    i.scraped_bad[0].write_bytes(_jpeg(0)[:200])
    i.scraped_bad[1].write_bytes(b"<html><body>404 Not Found</body></html>")
    i.cifar_val = root / "cifar_val"  # the workdir's classes, the last image truncated
    _images(i.cifar_val / "val", CIFAR, 1)
    i.cifar_val_bad = i.cifar_val / "val" / CIFAR[-1] / "9_truncated.jpg"
    i.cifar_val_bad.write_bytes(_jpeg(0)[:200])
    i.no_classes = root / "no_classes"
    for split in ("train", "val"):
        (i.no_classes / split).mkdir(parents=True)

    i.blocker = root / "blocker"
    i.blocker.write_text("a file where a folder was meant to go\n")
    i.empty_eval = root / "results_empty_eval"
    fake_run(i.empty_eval, "teacher", "dense", 0.8, 0.08)
    (i.empty_eval / "teacher" / "final" / "eval.json").write_bytes(b"")
    i.read_only = root / "read_only"
    lock, state = stack.enter_context(_read_only(i.read_only))
    i.read_only_results = i.read_only / "results"
    fake_run(i.read_only_results, "teacher", "dense", 0.8, 0.08)
    lock()
    i.read_only_works = state["ok"]
    return i


# ---- running and checking a case -------------------------------------------------------------


def tree(folder):
    """Every path under `folder` with its bytes (None for folders): what a case must not touch."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@dataclasses.dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    inputs_changed: list
    written: dict  # relative path -> bytes, under the case's output folder


def run_case(case, inputs, out):
    """Runs `case` once; `out` is an empty folder for whatever the case may write."""
    before = tree(inputs.root)
    # PYTHONPATH: the adb script (not `-m`) imports this checkout's spvit_tf too, not another
    # installed one.
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), ENV.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, *case.argv(inputs, out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    after = tree(inputs.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Outcome(result.returncode, result.stdout, result.stderr, changed, tree(out))


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def last_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check(case, outcome, inputs, out):
    """The promises `case` breaks in `outcome` (an empty list when it keeps them all)."""
    problems = []
    if "Traceback" in outcome.stderr:
        problems.append("a Python traceback on stderr")
    if outcome.inputs_changed:
        problems.append(f"inputs changed: {outcome.inputs_changed}")
    if PICKLE_RAN in outcome.inputs_changed:
        problems.append("the pickled payload ran")
    says = case.says(inputs, out)
    if case.expect == "skip":
        if outcome.returncode != 0:
            problems.append(f"exit status {outcome.returncode}, not 0")
        if error_lines(outcome.stderr):
            problems.append(f"error lines {error_lines(outcome.stderr)}")
        for text in says:
            if sum(text in line for line in outcome.stderr.splitlines()) != 1:
                problems.append(f"not said exactly once: {text!r}")
        result = json.loads(outcome.written.get("run/final/eval.json") or "{}")
        if result.get("unreadable_train_images") != 2:
            problems.append(f"eval.json records {result.get('unreadable_train_images')} skipped")
        return problems
    errors = error_lines(outcome.stderr)
    if len(errors) != 1 or last_line(outcome.stderr) != errors[0]:
        problems.append(f"not one error line ending stderr: {outcome.stderr[-1500:]!r}")
    line = errors[-1] if errors else ""
    problems += [f"the line lacks {text!r}" for text in says if text not in line]
    if case.expect == "failed_row":
        if outcome.returncode != 1:
            problems.append(f"exit status {outcome.returncode}, not 1")
        names = sorted(outcome.written)
        if names != ["bench", "bench/results.csv", "bench/results.json", "bench/results.md"]:
            problems.append(f"wrote {names}, not the three complete results files")
        else:
            rows = json.loads(outcome.written["bench/results.json"])["results"]
            if [r["status"] for r in rows] != ["failed"] or not rows[0]["error"]:
                problems.append(f"results rows {rows}")
        return problems
    if outcome.returncode == 0:
        problems.append("exit status 0")
    if outcome.written:
        problems.append(f"wrote {sorted(outcome.written)}")
    return problems


# ---- the battery -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    with contextlib.ExitStack() as stack:
        yield build_inputs(tmp_path_factory.mktemp("inputs"), stack)


@pytest.fixture(scope="module")
def runs(inputs, request, tmp_path_factory):
    """{case id: (output folder, future outcome)} of the selected cases, started in order two
    at a time: a CLI's start-up (imports, tracing) keeps about one core busy."""
    params = [getattr(getattr(item, "callspec", None), "params", {})
              for item in request.session.items if item.module is request.module]
    selected = [p["case_id"] for p in params if "case_id" in p]
    root = tmp_path_factory.mktemp("outputs")
    pool = concurrent.futures.ThreadPoolExecutor(2)
    started = {}
    for case_id in selected:
        case = BY_ID[case_id]
        if case.kind == "read-only output directory" and not inputs.read_only_works:
            continue
        (root / case_id).mkdir()
        started[case_id] = root / case_id, pool.submit(run_case, case, inputs, root / case_id)
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_bad_input(case_id, inputs, runs):
    if case_id not in runs:
        pytest.skip("no read-only folder here: running as root without a tmpfs mount")
    out, future = runs[case_id]
    outcome = future.result()
    problems = check(BY_ID[case_id], outcome, inputs, out)
    assert not problems, "\n".join(problems) + f"\nstderr:\n{outcome.stderr[-3000:]}"


def test_every_cli_and_every_case_is_covered_and_listed_in_the_readme():
    clis = {"train", "evaluate", "export", "benchmark", "latency_table", "flops", "visualize",
            "report", "adb script"}
    kinds = {"missing file or folder", "empty file", "truncated .tflite", "bit-flipped .tflite",
             "truncated .safetensors", "bit-flipped .safetensors", "truncated .weights.h5",
             "bit-flipped .weights.h5", "truncated latency table", "bit-flipped latency table",
             "workdir from another model", "wrong flag value", "missing flag value",
             "corrupt JPEG in an image folder", "image folder with no classes",
             "read-only output directory", "output path under a regular file",
             ".pth whose pickle runs code"}
    assert {case.cli for case in CASES} == clis
    assert {case.kind for case in CASES} == kinds
    readme = (REPO / "README.md").read_text()
    missing = [case.id for case in CASES if f"`{case.id}`" not in readme]
    assert not missing, f"README's reliability table lacks {missing}: rerun benchmarks/bad_inputs.py"
