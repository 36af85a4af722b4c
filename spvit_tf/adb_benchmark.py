"""Benchmarks .tflite models on an Android phone over adb with TFLite's `benchmark_model`.

    python -m spvit_tf.adb_benchmark --models=dense.tflite,pruned.tflite \\
        --backends=cpu,gpu,nnapi,xnnpack_off --num_threads=1,4 --output_dir=bench/phone

(`android_benchmark/run_benchmark.py` is the same CLI from a checkout, with the same flags.)
Pushes the binary and the models to a scratch folder on the phone, runs every model on every
backend (cpu and xnnpack_off once per thread count, gpu and nnapi once, with the largest
thread count for the ops they leave to the CPU), and removes the folder again even when a
run fails. A backend that fails on the phone becomes a "failed" row with the tool's error
and the remaining runs go on; once the results are written, any failed row makes the exit
status 1 (unless --allow_failures), so that a script does not read it as measured. Results
use the schema of `spvit_tf.bench_results`, the same as the host benchmark; each run's full
output is kept in logs/. With --op_profiling each row also carries its per-op profile
(`spvit_tf.tflite.profile`: time by op type and by block/selector), in results.md/.json and
profile.csv. --signature=KEY runs (and profiles) signature KEY of the files whose card lists
it (one file, several token budgets: `export --budgets`); files with one graph run theirs.
Needs only Python, absl-py and adb: no TensorFlow.
"""

import datetime
import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys

from absl import app, flags

from spvit_tf import bench_results
from spvit_tf.errors import SpvitError, parse_flags, run_cli
from spvit_tf.tflite.profile import (
    BACKEND_FLAGS, PROFILE_FLAGS, parse_op_profile, signature_flags, summarise,
)
from spvit_tf.workdir import check_output_dir

REMOTE_DIR = "/data/local/tmp/spvit_bench"
REMOTE_BINARY = f"{REMOTE_DIR}/benchmark_model"
PER_THREAD_BACKENDS = ("cpu", "xnnpack_off")
DEVICE_PROPS = (
    "ro.product.model",
    "ro.soc.model",
    "ro.board.platform",
    "ro.hardware",
    "ro.build.version.release",
    "ro.product.cpu.abi",
)
BINARY_NAMES = ("android_aarch64_benchmark_model", "benchmark_model")
ADB_TIMEOUT_S = 120

FLAGS = flags.FLAGS

class Adb:
    """adb bound to one device (or none, for `adb devices`)."""

    def __init__(self, path, serial=None):
        self.path = path
        self.serial = serial

    def command(self, *args):
        return [self.path, *(["-s", self.serial] if self.serial else []), *args]

    def run(self, *args, timeout_s=ADB_TIMEOUT_S):
        """The finished process; raises subprocess.TimeoutExpired past `timeout_s`."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, errors="replace", timeout=timeout_s
        )

    def check(self, *args):
        """stdout of a command that must succeed: anything else is a setup problem."""
        command = " ".join(self.command(*args))
        try:
            result = self.run(*args)
        except subprocess.TimeoutExpired:
            raise SpvitError(
                f"`{command}` timed out after {ADB_TIMEOUT_S} s; is the phone awake?"
            ) from None
        if result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise SpvitError(
                f"`{command}` failed (exit {result.returncode}): {output[-1] if output else ''}"
            )
        return result.stdout


def find_adb(path=None):
    """--adb if given, else adb on PATH, else the SDK's platform-tools."""
    if path:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise SpvitError(f"--adb={path} is not an executable file")
        return path
    candidates = [shutil.which("adb")]
    for variable in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        if os.environ.get(variable):
            candidates.append(os.path.join(os.environ[variable], "platform-tools", "adb"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SpvitError(
        "adb not found on PATH or in $ANDROID_HOME/platform-tools; install Android "
        "platform-tools or pass --adb=/path/to/adb"
    )


def pick_device(adb_path, serial=None):
    """The serial to use: --serial, else the only device; it must be authorized and online."""
    devices = {}
    listing = False
    for line in Adb(adb_path).check("devices").splitlines():
        if line.startswith("List of devices attached"):
            listing = True
        elif listing and line.strip() and not line.startswith("*"):
            name, _, state = line.partition("\t")
            devices[name.strip()] = state.strip() or "unknown"
    listed = ", ".join(f"{s} ({state})" for s, state in sorted(devices.items())) or "none"
    if serial and serial not in devices:
        raise SpvitError(f"device {serial} is not connected; `adb devices` lists: {listed}")
    if not serial:
        if not devices:
            raise SpvitError(
                "no Android device found by `adb devices`; connect the phone by USB with USB "
                "debugging enabled (see android_benchmark/README.md)"
            )
        if len(devices) > 1:
            raise SpvitError(f"several devices are connected: {listed}; choose one with --serial")
        serial = next(iter(devices))
    state = devices[serial]
    if state == "unauthorized":
        raise SpvitError(
            f"device {serial} is unauthorized; unlock it and accept the 'Allow USB debugging' "
            "prompt"
        )
    if state != "device":
        raise SpvitError(f"device {serial} is {state}; reconnect it or run `adb kill-server`")
    return serial


def device_info(adb):
    """The getprop values that identify the phone, and a one-line description for rows."""
    props = {name: adb.check("shell", "getprop", name).strip() for name in DEVICE_PROPS}
    soc = props["ro.soc.model"] or props["ro.board.platform"] or props["ro.hardware"]
    description = (
        f"{props['ro.product.model'] or adb.serial} ({soc or 'unknown SoC'}, "
        f"Android {props['ro.build.version.release']}, {props['ro.product.cpu.abi']})"
    )
    return props, description


_NUMBER = r"([-+]?[0-9.]+(?:[eE][-+]?\d+)?)"
_TIMINGS = re.compile(
    rf"Inference timings in us: Init: {_NUMBER}, First inference: {_NUMBER}, "
    rf"Warmup \(avg\): {_NUMBER}, Inference \(avg\): {_NUMBER}"
)
# The run statistics lines; the op profile's "Timings (microseconds): count=" must not match.
_COUNT = re.compile(r"^(?:[A-Z]+: )?count=\d+", re.MULTILINE)
_MEMORY = re.compile(
    rf"Memory footprint delta from the start of the tool \(MB\): init={_NUMBER} overall={_NUMBER}"
)
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUMBER}")
_DELEGATED = re.compile(
    r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node, "
    r"yielding (\d+) partitions"
)
_NOT_DELEGATED = re.compile(
    r"Though (\w+) delegate is explicitly applied, the model graph will not be executed"
)
_ERROR_LINE = re.compile(r"\bERROR\b|[Ff]ailed|not supported")  # the cause, e.g. an op


def parse_output(text):
    """The numbers of one benchmark_model run, in ms and MB, keyed like BenchResult."""
    parsed = {}
    timings = _TIMINGS.search(text)
    if timings:
        init, first, _, mean = (float(x) / 1e3 for x in timings.groups())
        parsed.update(init_ms=init, first_ms=first, mean_ms=mean)
    counts = list(_COUNT.finditer(text))
    if counts:  # the last one is the timed runs; the first is the warm-up
        line = text[counts[-1].start() :].splitlines()[0]
        stats = {key: float(value) for key, value in re.findall(rf"(\w+)={_NUMBER}", line)}
        parsed["runs"] = int(stats["count"])
        parsed["min_ms"] = stats["min"] / 1e3 if "min" in stats else None
        parsed["median_ms"] = stats["median"] / 1e3 if "median" in stats else None
    memory = _MEMORY.search(text)
    if memory:
        parsed["peak_memory_mb"] = float(memory.group(2))
    notes = [
        f"{d}: {n}/{total} nodes, {p} partitions" for n, total, d, p in _DELEGATED.findall(text)
    ]
    peak = _PEAK.search(text)
    if peak:
        notes.append(f"monitored peak footprint {float(peak.group(1)):.1f} MB")
    parsed["note"] = "; ".join(notes)
    return parsed


def failure(backend, returncode, text):
    """Why a run did not measure `backend`, or None when it did."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = list(dict.fromkeys(line for line in lines if _ERROR_LINE.search(line)))
    if returncode != 0 or any("to apply" in line for line in errors):
        message = "; ".join(errors[:3]) or (lines[-1] if lines else "no output")
        return f"exit {returncode}: {message}" if returncode else message
    not_delegated = _NOT_DELEGATED.search(text)
    if backend in ("gpu", "nnapi") and not_delegated:
        return f"{not_delegated.group(1)} delegate took no node; the graph would run on the CPU"
    if not _TIMINGS.search(text):
        return "benchmark_model printed no inference timings"
    return None


def run_one(adb, row, remote_model, extra_flags, timeout_s, log_path):
    """Runs one configuration and fills `row` in, marking it failed instead of raising."""
    command = [
        "shell", REMOTE_BINARY, f"--graph={remote_model}", f"--num_threads={row.num_threads}",
        *BACKEND_FLAGS[row.backend], *extra_flags,
        *signature_flags(row.signature),
    ]  # fmt: skip
    try:
        result = adb.run(*command, timeout_s=timeout_s)
        text = result.stdout + result.stderr
        error = failure(row.backend, result.returncode, text)
    except subprocess.TimeoutExpired as timeout:  # its output is bytes even with text=True
        text = timeout.stdout or b""
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        error = f"timed out after {timeout_s} s"
    log_path.write_text(" ".join(adb.command(*command)) + "\n\n" + text, encoding="utf-8")
    if error:
        row.status, row.error = "failed", error[:300]
        return row
    for name, value in parse_output(text).items():
        setattr(row, name, value)
    ops = parse_op_profile(text)
    if ops:
        row.profile = summarise(ops)
    return row


def run_benchmarks(adb, binary, models, backends, threads, extra_flags, timeout_s, device, log_dir,
                   signatures=None):
    """Pushes, runs every configuration and always removes the scratch folder again.

    `signatures`: {model: the signature key benchmark_model runs of it}."""
    remote = {
        model: f"{REMOTE_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', model.name)}" for model in models
    }
    if len(set(remote.values())) < len(models):
        raise SpvitError("two model file names map to the same name on the phone; rename one")
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        adb.check("shell", "mkdir", "-p", REMOTE_DIR)
        adb.check("push", str(binary), REMOTE_BINARY)
        adb.check("shell", "chmod", "+x", REMOTE_BINARY)
        for model in models:
            adb.check("push", str(model), remote[model])
        for model in models:
            for backend in backends:
                for num_threads in threads if backend in PER_THREAD_BACKENDS else [max(threads)]:
                    row = bench_results.BenchResult.for_model(
                        model, target="android", device=device, backend=backend,
                        num_threads=num_threads, signature=(signatures or {}).get(model, ""),
                    )
                    log_path = log_dir / f"{model.stem}_{backend}_t{num_threads}.log"
                    rows.append(run_one(adb, row, remote[model], extra_flags, timeout_s, log_path))
                    print(f"{row.label}: {row.status} {row.error}".rstrip())
    finally:
        try:
            cleanup = adb.run("shell", "rm", "-rf", REMOTE_DIR)
            if cleanup.returncode != 0:
                print(
                    f"warning: could not remove {REMOTE_DIR}: {cleanup.stderr.strip()}",
                    file=sys.stderr,
                )
        except (subprocess.TimeoutExpired, OSError) as error:
            print(f"warning: could not remove {REMOTE_DIR}: {error}", file=sys.stderr)
    return rows


def default_binary_dirs():
    """Where `find_binary` looks without --benchmark_binary when run as `python -m`: the
    current folder and its android_benchmark/ (a checkout's root, where README step 1 puts it)."""
    return [pathlib.Path.cwd(), pathlib.Path.cwd() / "android_benchmark"]


def find_binary(path=None, dirs=None):
    """--benchmark_binary if given, else a downloaded binary in one of `dirs` (default:
    `default_binary_dirs()`)."""
    if path:
        candidates = [pathlib.Path(path)]
    else:
        dirs = default_binary_dirs() if dirs is None else dirs
        candidates = [pathlib.Path(d) / name for d in dirs for name in BINARY_NAMES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SpvitError(
        f"benchmark_model not found at {', '.join(map(str, candidates))}; download "
        "android_aarch64_benchmark_model or build it (android_benchmark/README.md) and pass "
        "--benchmark_binary=PATH"
    )


def main(argv, binary_dirs=None):
    """The CLI; `binary_dirs`: where to look for benchmark_model without --benchmark_binary."""
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; pass options as --name=value")
    models = bench_results.check_models(FLAGS.models)
    signatures = bench_results.card_signatures(
        models, bench_results.check_signature(FLAGS.signature))
    threads = bench_results.parse_threads(FLAGS.num_threads)
    backends = list(dict.fromkeys(FLAGS.backends))
    unknown = sorted(set(backends) - set(BACKEND_FLAGS))
    if unknown or not backends:
        raise SpvitError(
            f"bad --backends {unknown or '(none)'}; choose from {', '.join(BACKEND_FLAGS)}"
        )
    if FLAGS.runs < 1 or FLAGS.warmup_runs < 0:
        raise SpvitError("--runs must be at least 1 and --warmup_runs at least 0")
    if not FLAGS.output_dir:
        raise SpvitError("pass --output_dir=DIR for results.md/.csv/.json")
    check_output_dir(FLAGS.output_dir, "--output_dir")  # before anything reaches the phone
    gflops = bench_results.model_gflops(models, FLAGS.flops, signatures)
    binary = find_binary(FLAGS.benchmark_binary, binary_dirs)
    adb_path = find_adb(FLAGS.adb)
    adb = Adb(adb_path, pick_device(adb_path, FLAGS.serial))
    props, device = device_info(adb)

    extra_flags = [f"--num_runs={FLAGS.runs}", f"--warmup_runs={FLAGS.warmup_runs}"]
    if FLAGS.op_profiling:
        extra_flags += PROFILE_FLAGS
    if FLAGS.memory:
        extra_flags.append("--report_peak_memory_footprint=true")
    output_dir = pathlib.Path(FLAGS.output_dir)
    rows = run_benchmarks(
        adb,
        binary,
        models,
        backends,
        threads,
        extra_flags,
        FLAGS.timeout_s,
        device,
        output_dir / "logs",
        signatures,
    )
    comparisons = bench_results.cli_comparisons(rows, models, gflops, bool(FLAGS.flops))
    meta = {
        "tool": "spvit_tf.adb_benchmark",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "serial": adb.serial,
        "device_props": props,
        "benchmark_binary": str(binary),
        "benchmark_flags": extra_flags,
        "signature": FLAGS.signature,
        "gflops": gflops,
    }
    paths = bench_results.write_results(output_dir, rows, comparisons, meta)
    print(bench_results.format_markdown(rows, comparisons), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    failed = bench_results.failure_line(rows, output_dir)
    if failed and not FLAGS.allow_failures:
        print(failed, file=sys.stderr)
        return 1
    return 0


def _define_flags():
    """Defined only when run as a CLI, so importing the module claims no flag names."""
    flags.DEFINE_list("models", [], "Comma-separated .tflite files; the first is the dense "
                      "reference.")
    flags.DEFINE_list("backends", ["cpu", "gpu"], f"Any of {', '.join(BACKEND_FLAGS)}.")
    flags.DEFINE_list("num_threads", ["1", "4"], "CPU thread counts.")
    flags.DEFINE_string("output_dir", None, "Folder for results.md/.csv/.json and logs/.")
    flags.DEFINE_string("adb", None, "adb executable; default: adb on PATH or in $ANDROID_HOME.")
    flags.DEFINE_string("serial", None, "Device serial from `adb devices`; needed with several.")
    flags.DEFINE_string(
        "benchmark_binary",
        None,
        f"benchmark_model for the phone; default: {' or '.join(BINARY_NAMES)} next to "
        "android_benchmark/run_benchmark.py when run as that script, else in the current "
        "folder or its android_benchmark/.",
    )
    flags.DEFINE_integer("runs", 50, "benchmark_model --num_runs (a minimum: it also runs >= 1 s).")
    flags.DEFINE_integer("warmup_runs", 10, "benchmark_model --warmup_runs.")
    flags.DEFINE_bool("op_profiling", False, "Per-op profile (benchmark_model's op profiler): a "
                      "table by op type and block/selector in results.md/.json and profile.csv; "
                      "slows the timed runs.")
    flags.DEFINE_bool("memory", False, "Also sample the peak memory footprint (adds a thread).")
    flags.DEFINE_list("flops", [], "Optional name:gflops pairs; default: each model's "
                      "<model>.json.")
    flags.DEFINE_integer("timeout_s", 600, "Limit for one benchmark_model run, in seconds.")
    flags.DEFINE_string("signature", "", "Signature key to run in files with several (export "
                        "--budgets), by their cards; files with one graph run it.")
    flags.DEFINE_bool("allow_failures", False, "Exit 0 even when a run failed (its row still "
                      "records the error); by default any failed run is exit status 1.")


def run(binary_dirs=None):
    """Runs the CLI on sys.argv (`python -m spvit_tf.adb_benchmark`, and the checkout's
    android_benchmark/run_benchmark.py, which passes its own folder as `binary_dirs`)."""
    _define_flags()
    app.run(run_cli(functools.partial(main, binary_dirs=binary_dirs)), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
