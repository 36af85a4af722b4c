"""The training workdir contract shared by train, evaluate, export and visualize, and the
output-location checks of every CLI.

    <workdir>/run.json                   what the model is and how its inputs look (below)
    <workdir>/flags.txt                  the exact flags of the run (a valid --flagfile)
    <workdir>/metrics.jsonl              one JSON object per logged step / evaluation
    <workdir>/tb/                        TensorBoard events
    <workdir>/checkpoints/               tf.train.Checkpoint files (resume state)
    <workdir>/final/model.weights.h5     final weights of the model `run.json` describes

`run.json` holds `model` (registry name), `model_config` (the `create_model` overrides,
pruning included), `run_id`, `method`, `budget` and `seed` (who the run is: `run_identity`),
`class_names`, `preprocessing` (the input contract: image size, crop ratio
and mean/std on their stated 0-1 scale, as `spvit_tf.preprocessing.Preprocessor.to_json` writes
it; `Preprocessor.from_run` also reads the top-level keys earlier versions wrote) and `data`
(the source spec). Files are written atomically.

Every CLI that writes (train's workdir, export's and the benchmarks' --output_dir, the
--output of visualize and latency_table) checks its output location first with
`check_output_dir` / `check_output_file`: a location that cannot be created is one error
line before any model or data is loaded, not a traceback after minutes of work.
"""

import contextlib
import json
import os
import tempfile

from spvit_tf.errors import SpvitError

RUN_FILE = "run.json"
FINAL_WEIGHTS = os.path.join("final", "model.weights.h5")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` that ends like it (Keras picks a weights format
    by the suffix), for a writer that takes a file name; the file is renamed onto `path`
    (`os.replace`) when the block completes and removed when it fails, so `path` is never
    half-written. A file-system error (a full disk, no permission) is re-raised as the same
    OSError with `path` as its file name, so that `run_cli` reports the file, not the
    temporary name. The one atomic writer of the project: `atomic_write` is built on it."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
        os.close(fd)
    except OSError as error:
        raise OSError(error.errno, error.strerror, os.fspath(path)) from error
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        raise


def atomic_write(path, data, mode="w"):
    """Writes `data` (text, or bytes with mode="wb") to `path` through `atomic_path`, synced
    to disk before the rename makes it visible."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _unusable(path):
    """Why `path` cannot be (or become) a directory this process writes in, or None.

    Walks up to the nearest existing ancestor, without creating anything: a regular file
    there (or the path itself being one) blocks every folder below it, and an existing
    folder must let this process create entries.
    """
    target = os.path.abspath(path)
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        kind = "a regular file" if os.path.isfile(existing) else "not a directory"
        return existing, f"{existing} is {kind}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, f"{existing} is not writable"
    return None


def check_output_dir(path, flag):
    """Raises a one-line `SpvitError` unless `path` is, or can be created as, a writable
    directory; creates nothing, so a CLI can call it before any expensive work and still
    leave no empty folder behind when a later check fails. `flag` names the option."""
    problem = _unusable(path)
    if problem is None:
        return
    blocker, reason = problem
    if blocker == os.path.abspath(path):
        raise SpvitError(f"{flag}={path} cannot be used: {reason}; pass a writable directory")
    raise SpvitError(f"{flag}={path} cannot be created: {reason}; pass a writable directory")


def ensure_output_dir(path, flag):
    """`check_output_dir`, then creates `path` (and its parents); returns `path`."""
    check_output_dir(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:  # e.g. a read-only file system, or a race with another process
        raise SpvitError(
            f"{flag}={path} cannot be created: {error.strerror}; pass a writable directory"
        ) from None
    return path


def check_output_file(path, flag):
    """Raises a one-line `SpvitError` unless a file can be written at `path`: not a folder,
    and its folder exists or can be created, writable. Creates nothing."""
    if os.path.isdir(path):
        raise SpvitError(f"{flag}={path} is a directory; pass a file path inside it")
    problem = _unusable(os.path.dirname(os.path.abspath(path)))
    if problem is not None:
        raise SpvitError(f"{flag}={path} cannot be written: {problem[1]}; pass a path in a "
                         "writable directory")


def write_run(workdir, run):
    atomic_write(os.path.join(workdir, RUN_FILE), json.dumps(run, indent=2, sort_keys=True))


def read_json(path, fix):
    """The JSON document at `path`; a file that cannot be read or parsed (empty, truncated,
    damaged) is one `SpvitError` naming it, ending in `fix` (what the user can do)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise SpvitError(f"{path} is corrupt (not valid JSON: {error.msg} at line "
                         f"{error.lineno}); {fix}") from None
    except UnicodeDecodeError:
        raise SpvitError(f"{path} is corrupt (not UTF-8 text); {fix}") from None
    except OSError as error:
        raise SpvitError(f"{path} cannot be read ({error.strerror}); {fix}") from None


def read_run(workdir):
    """`run.json` of `workdir`, or a clear error when it is not a training workdir."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(workdir) else f"has no {RUN_FILE}"
        raise SpvitError(
            f"{workdir} is not a training workdir (it {what}); pass the --workdir of a "
            "python -m spvit_tf.train run"
        )
    run = read_json(path, "rerun training or restore it")
    if not isinstance(run, dict):
        raise SpvitError(f"{path} is corrupt (not a JSON object); rerun training or restore it")
    return run


def run_name(workdir):
    """A run's id as a new run.json records it: its workdir's folder name (trailing slash or
    not), the one rule for every writer and for workdirs from before run_id existed."""
    return os.path.basename(os.path.normpath(workdir))


def run_identity(workdir, run=None):
    """{"run_id", "method", "budget", "seed"} of a training workdir: who the run is, for the
    report and the model cards to join on. run.json holds them since `spvit_tf.train` wrote
    them; for a workdir from before, the one legacy rule: its folder name, its mode, and
    --budget_gflops/--budget_ms and --seed from its flags.txt."""
    run = read_run(workdir) if run is None else run
    if "run_id" in run:
        return {key: run[key] for key in ("run_id", "method", "budget", "seed")}
    flags = {}
    flagfile = os.path.join(workdir, "flags.txt")
    if os.path.isfile(flagfile):
        with open(flagfile) as f:
            flags = dict(line.strip()[2:].split("=", 1) for line in f
                         if line.startswith("--") and "=" in line)
    budget = ({"gflops": float(flags["budget_gflops"])} if flags.get("budget_gflops") else
              {"ms": float(flags["budget_ms"])} if flags.get("budget_ms") else None)
    return {"run_id": run_name(workdir), "method": run["mode"],
            "budget": budget, "seed": int(flags.get("seed", 0))}


def load_model(workdir, weights=None):
    """(model, run) with the final weights (or `weights`) of a training workdir loaded."""
    from spvit_tf.models import create_model

    run = read_run(workdir)
    weights = weights or os.path.join(workdir, FINAL_WEIGHTS)
    if not os.path.isfile(weights):
        raise SpvitError(
            f"{weights} not found: the run in {workdir} has not finished; resume it with "
            f"python -m spvit_tf.train --flagfile={os.path.join(workdir, 'flags.txt')}"
        )
    from spvit_tf.checkpoint import WeightsMismatch

    try:
        model = create_model(run["model"], checkpoint=weights, **run["model_config"])
    except WeightsMismatch as error:  # e.g. final weights copied in from another run
        raise SpvitError(f"{weights} is not the model {os.path.join(workdir, RUN_FILE)} describes "
                         f"({error.problem}): put that run's own weights back or pass the "
                         "workdir they came from") from None
    return model, run
