"""Host latency benchmark of .tflite models with the LiteRT interpreter.

    python -m spvit_tf.benchmark --models=dense.tflite,pruned.tflite --num_threads=1,2 \\
        --runs=50 --warmup=10 --rounds=5 --output_dir=bench/host [--flops=dense:4.6,pruned:3.1]

Every model x backend x thread count runs in a fresh spawned process, so that one run's
thread pools, allocator state and peak memory do not leak into the next. With --rounds=R
all of them run R times in turn and each row keeps the median of its per-round medians: on a
shared or frequency-scaling host the load moves by several percent within minutes, and
interleaving spreads that drift over every model instead of skewing one model's row.
Results go to results.md/.csv/.json in the schema of `spvit_tf.bench_results`, shared with
the phone runs of `spvit_tf.adb_benchmark`. The first model is the dense reference:
with two models, or with FLOPs known (--flops or a `<model>.json` card with "gflops"), the
table ends with each later model's latency ratio next to its FLOPs ratio and their quotient.
A model the runtime cannot run (an empty, truncated or corrupted file) becomes a failed row
with its error, and the run exits with status 1 once the results are written, unless
--allow_failures: a script or CI job must not read a broken model as benchmarked.

--profile adds each row's per-op profile (time by op type and by block/selector, see
`spvit_tf.tflite.profile`) from a host build of TFLite's benchmark_model given by
--benchmark_model: the LiteRT Python interpreter has no per-op profiler. Profiling runs
after the timed runs, in its own invokes, so it does not slow the timings.

--signature=KEY times signature KEY of the files that have several (one file, several token
budgets: `export --budgets`); a file with one graph, such as the dense reference, runs that
graph, so one budget compares with its reference in one run. --all_signatures instead times
every signature of such files, one row each (`<model> [<key>]`), interleaved with the other
rows like any model, so one run covers every budget of a multi-budget file next to the
one-graph files. A signature call includes the runner's input and output copies, which a
plain invoke leaves out.

--merge adds this run's rows to the results already in --output_dir (`bench_results.
merge_results`: a row timed again replaces its old one, the others stay, and the meta records
which rows each run timed), e.g. to time a newly exported file without timing again files
that are no longer at hand. Rows of different runs were not interleaved: compare them with
care, and the run says so when they name different devices.
"""

import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from spvit_tf import bench_results
from spvit_tf.errors import SpvitError, first_line, parse_flags, run_cli
from spvit_tf.tflite import profile
from spvit_tf.workdir import check_output_dir

BACKENDS = ("cpu", "xnnpack_off")

FLAGS = flags.FLAGS
# ru_maxrss is in kilobytes on Linux and in bytes on macOS.
_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


def _random_value(detail, rng, shape=None):
    """A random array of an input's dtype and `shape` (default: the detail's)."""
    import numpy as np

    shape = detail["shape"] if shape is None else shape
    dtype = np.dtype(detail["dtype"])
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)  # full range for 8-bit pixels, small ids for wider ints
        low, high = (info.min, info.max) if dtype.itemsize == 1 else (0, 255)
        return rng.integers(low, high, shape, endpoint=True).astype(dtype)
    return rng.random(shape).astype(dtype)


def _random_inputs(interpreter, rng):
    """Random tensors of each input's dtype and shape (dynamic dims set to 1)."""
    for detail in interpreter.get_input_details():
        shape = [d if d > 0 else 1 for d in detail["shape_signature"]] or list(detail["shape"])
        if list(detail["shape"]) != shape:
            interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _random_value(detail, rng))


def _signature_call(interpreter, signature, rng):
    """A call of signature `signature` on random inputs (dynamic dims set to 1)."""
    from spvit_tf.tflite.runner import signature_runner

    runner = signature_runner(interpreter, signature)
    feeds = {name: _random_value(detail, rng, [d if d > 0 else 1
                                               for d in detail["shape_signature"]])
             for name, detail in runner.get_input_details().items()}
    return lambda: runner(**feeds)


def measure(model_path, num_threads, backend, runs, warmup, seed, signature=""):
    """Times one configuration; meant to run in a fresh process (see `peak_memory_mb`).

    init_ms covers loading the model and allocating tensors (a signature's runner allocates
    on its first call instead); first_ms is the first invoke, which pays for lazy weight
    packing. `signature`: the signature key to call, "" for the first subgraph.
    peak_memory_mb is the growth of this process's peak RSS from just before loading to the
    end: weights, arena, packed weights, and the runtime's own pages (about 10 MB on x86-64
    even for a trivial model), so compare it between models rather than read it as a
    model's footprint.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {
        "cpu": OpResolverType.AUTO,
        "xnnpack_off": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    }[backend]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    interpreter = Interpreter(
        model_path=model_path, num_threads=num_threads, experimental_op_resolver_type=resolver
    )
    if signature:
        invoke = _signature_call(interpreter, signature, np.random.default_rng(seed))
    else:
        _random_inputs(interpreter, np.random.default_rng(seed))
        invoke = interpreter.invoke
    init_ms = (time.perf_counter() - start) * 1e3
    times = []
    for _ in range(warmup + runs):
        start = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - start) * 1e3)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timed = times[warmup:]
    return {
        "runs": runs,
        "median_ms": statistics.median(timed),
        "p90_ms": float(np.percentile(timed, 90)),
        "mean_ms": statistics.fmean(timed),
        "min_ms": min(timed),
        "init_ms": init_ms,
        "first_ms": times[0],
        "peak_memory_mb": (rss_after - rss_before) * _MAXRSS_BYTES / 2**20,
    }


def host_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = (line.split(":", 1)[1] for line in cpuinfo if line.startswith("model name"))
            cpu = next(names).strip()
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cpus, {platform.system()} {platform.machine()}"


def log_header(*details):
    """The first line of a benchmark log entry: when, at which commit, on which host and how
    loaded it was (other processes on a small host halve a throughput, so the load belongs
    with every number), then DETAILS, comma-separated."""
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.abspath(__file__))
                            ).stdout.strip() or "no git"
    return ", ".join([f"# {time.strftime('%Y-%m-%d %H:%M')} {commit} {host_description()}",
                      f"load {os.getloadavg()[0]:.2f}", *details])


def append_log(path, lines):
    """Appends one entry (LINES, then a blank line) to the benchmark log at PATH in one write,
    so that an interrupted benchmark leaves no partial entry."""
    with open(path, "a", encoding="utf-8") as log:
        log.write("\n".join(lines) + "\n\n")


def combine_rounds(results):
    """One row's numbers from per-round `measure` results: medians of the per-round latency
    statistics (one slow round moves nothing), the fastest run, the largest memory growth."""
    median = lambda name: statistics.median(r[name] for r in results)  # noqa: E731
    return {
        "runs": sum(r["runs"] for r in results),
        "median_ms": median("median_ms"),
        "p90_ms": median("p90_ms"),
        "mean_ms": statistics.fmean(r["mean_ms"] for r in results),
        "min_ms": min(r["min_ms"] for r in results),
        "init_ms": median("init_ms"),
        "first_ms": median("first_ms"),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in results),
    }


def run_all(models, threads, backends, runs, warmup, seed, rounds=1, signatures=None):
    """One row per model x backend x thread count, each timed in `rounds` interleaved rounds
    (round r uses input seed `seed + r`); a failing model gives a failed row. `signatures`:
    {model: signature key, or a list of keys} of the models to run signatures of
    (`resolve_signatures`, `every_signature`); a model gets rows for each of its keys."""
    device = host_description()
    context = multiprocessing.get_context("spawn")
    rows, results = [], []
    for model in models:
        for signature in bench_results.signature_keys(signatures, model):
            for backend in backends:
                for num_threads in threads:
                    rows.append(bench_results.BenchResult.for_model(
                        model, target="host", device=device, backend=backend,
                        num_threads=num_threads, signature=signature,
                    ))
                    results.append([])
    for round_ in range(rounds):
        for row, done in zip(rows, results):
            if row.status != "ok":
                continue
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                job = pool.submit(measure, row.model_path, row.num_threads, row.backend, runs,
                                  warmup, seed + round_, row.signature)
                try:
                    done.append(job.result())
                except Exception as error:  # a broken model must not stop the others
                    row.status = "failed"
                    row.error = f"{type(error).__name__}: {first_line(error, 300)}"
    for row, done in zip(rows, results):
        if row.status == "ok":
            for name, value in combine_rounds(done).items():
                setattr(row, name, value)
    return rows


def check_profiler(path):
    """The host benchmark_model binary that --profile runs, checked before any timing."""
    if not path:
        raise SpvitError(
            "--profile needs a host build of TFLite's benchmark_model (the LiteRT Python "
            "interpreter has no per-op profiler): download linux_x86-64_benchmark_model "
            "(android_benchmark/README.md) and pass --benchmark_model=PATH"
        )
    binary = pathlib.Path(path).expanduser()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        state = "is not an executable file" if binary.exists() else "does not exist"
        raise SpvitError(f"--benchmark_model={path} {state}; pass the benchmark_model binary")
    return binary


def profile_rows(rows, binary, runs, warmup, timeout_s=600):
    """Fills each measured row's `profile` from benchmark_model's op profiler (a row timed at
    a signature profiles that signature); returns the reasons rows could not be profiled
    (their timings stay)."""
    problems = []
    for row in rows:
        if row.status != "ok":
            continue
        command = [
            str(binary), f"--graph={row.model_path}", f"--num_threads={row.num_threads}",
            *profile.BACKEND_FLAGS[row.backend], f"--num_runs={runs}", f"--warmup_runs={warmup}",
            *profile.PROFILE_FLAGS, *profile.signature_flags(row.signature),
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
            output = result.stdout + result.stderr
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append(f"{row.label}: {error}")
            continue
        ops = profile.parse_op_profile(output)
        if result.returncode != 0 or not ops:
            last = output.strip().splitlines()[-1:] or ["no output"]
            problems.append(f"{row.label}: benchmark_model "
                            f"exit {result.returncode}, no op profile ({last[0][:200]})")
            continue
        row.profile = profile.summarise(ops)
    return problems


def resolve_signatures(models, signature):
    """{model: the signature key to time} for --signature (module doc): `signature` where the
    file has it, nothing for a file with one graph; one clear error for a file with several
    graphs but not that one. A file the runtime cannot load is left to its failed row."""
    if not signature:
        return {}
    resolved = {}
    for model in models:
        keys = file_signatures(model)
        if keys is None:
            resolved[model] = signature
            continue
        keys = sorted(keys)
        if signature in keys:
            resolved[model] = signature
        elif len(keys) > 1:
            raise SpvitError(f"{model} has no signature {signature!r}; its signatures: "
                             f"{', '.join(keys)}")
    return resolved


def every_signature(models):
    """{model: its signature keys in the file's order} of the files with several signatures,
    for --all_signatures (module doc); a file with one graph runs it, and a file the runtime
    cannot load is left to its failed row."""
    resolved = {}
    for model in models:
        keys = file_signatures(model)
        if keys is not None and len(keys) > 1:
            resolved[model] = keys
    return resolved


def file_signatures(model):
    """The signature keys of a .tflite in the file's order, or None when the runtime cannot
    load it (a broken file: `measure` records why in its row)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        return list(Interpreter(model_path=str(model)).get_signature_list())
    except Exception:
        return None


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; pass options as --name=value")
    models = bench_results.check_models(FLAGS.models)
    signature = bench_results.check_signature(FLAGS.signature)
    if signature and FLAGS.all_signatures:
        raise SpvitError(f"pass --signature={signature} (one signature) or --all_signatures "
                         "(every signature), not both")
    threads = bench_results.parse_threads(FLAGS.num_threads)
    unknown = sorted(set(FLAGS.backends) - set(BACKENDS))
    if unknown or not FLAGS.backends:
        raise SpvitError(f"bad --backends {unknown or '(none)'}; choose from {', '.join(BACKENDS)}")
    if FLAGS.runs < 1 or FLAGS.warmup < 0 or FLAGS.rounds < 1:
        raise SpvitError("--runs and --rounds must be at least 1 and --warmup at least 0")
    if not FLAGS.output_dir:
        raise SpvitError("pass --output_dir=DIR for results.md/.csv/.json")
    check_output_dir(FLAGS.output_dir, "--output_dir")
    earlier_path = pathlib.Path(FLAGS.output_dir) / "results.json"
    earlier = (bench_results.read_results(earlier_path)  # a damaged file fails before timing
               if FLAGS.merge and earlier_path.is_file() else None)
    profiler = check_profiler(FLAGS.benchmark_model) if FLAGS.profile else None
    signatures = (every_signature(models) if FLAGS.all_signatures
                  else resolve_signatures(models, signature))
    gflops = bench_results.model_gflops(models, FLAGS.flops, signatures)

    rows = run_all(models, threads, FLAGS.backends, FLAGS.runs, FLAGS.warmup, FLAGS.seed,
                   FLAGS.rounds, signatures)
    unprofiled = profile_rows(rows, profiler, FLAGS.runs, FLAGS.warmup) if profiler else []
    comparisons = bench_results.cli_comparisons(rows, models, gflops, bool(FLAGS.flops))
    from ai_edge_litert import __version__ as litert_version

    meta = {
        "tool": "spvit_tf.benchmark",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "litert_version": litert_version,
        "python": platform.python_version(),
        "runs": FLAGS.runs,
        "warmup": FLAGS.warmup,
        "rounds": FLAGS.rounds,
        "seed": FLAGS.seed,
        "signature": signature,
        "all_signatures": FLAGS.all_signatures,
        "gflops": gflops,
    }
    if profiler:
        meta["profiler"] = str(profiler)
    timed = rows
    if earlier:
        rows, comparisons, meta = bench_results.merge_results(earlier, (rows, comparisons, meta))
    paths = bench_results.write_results(FLAGS.output_dir, rows, comparisons, meta)
    print(bench_results.format_markdown(rows, comparisons), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}"
          + (f" ({len(timed)} rows timed now, merged with {len(rows) - len(timed)} earlier ones)"
             if earlier else ""))
    devices = sorted({row.device for row in rows if row.target == "host"})
    if earlier and len(devices) > 1:
        print(f"note: {earlier_path} now holds host rows of {len(devices)} devices "
              f"({'; '.join(devices)}); compare rows of one device only", file=sys.stderr)
    failed = bench_results.failure_line(timed, FLAGS.output_dir)
    if unprofiled:
        failed = failed or (f"error: {len(unprofiled)} run(s) have no op profile: "
                            f"{'; '.join(unprofiled)}")
    if failed and not FLAGS.allow_failures:
        print(failed, file=sys.stderr)
        return 1
    return 0


def _define_flags():
    """Defined only when run as a script, so importing `measure` claims no flag names."""
    flags.DEFINE_list("models", [], "Comma-separated .tflite files; the first is the dense reference.")
    flags.DEFINE_list("num_threads", ["1"], "Comma-separated interpreter thread counts.")
    flags.DEFINE_list(
        "backends", ["cpu"], "cpu (LiteRT default, XNNPACK) and/or xnnpack_off (builtin kernels)."
    )
    flags.DEFINE_integer("runs", 50, "Timed invokes per configuration and round.")
    flags.DEFINE_integer("warmup", 10, "Untimed invokes before the timed ones.")
    flags.DEFINE_integer(
        "rounds", 1, "Interleaved rounds over all configurations; rows keep the median of the "
        "per-round medians and count runs x rounds timed invokes."
    )
    flags.DEFINE_string("output_dir", None, "Folder for results.md, results.csv and results.json.")
    flags.DEFINE_list("flops", [], "Optional name:gflops pairs; default: each model's <model>.json.")
    flags.DEFINE_integer("seed", 0, "Seed of the random inputs.")
    flags.DEFINE_bool("profile", False, "Also record each row's per-op profile (by op type and "
                      "block/selector) with --benchmark_model.")
    flags.DEFINE_string("benchmark_model", None, "A host build of TFLite's benchmark_model, "
                        "for --profile (e.g. linux_x86-64_benchmark_model).")
    flags.DEFINE_string("signature", "", "Signature key to time in files with several "
                        "(export --budgets), e.g. keep_0.4; files with one graph run it.")
    flags.DEFINE_bool("all_signatures", False, "Time every signature of files with several "
                      "(export --budgets), one row each; files with one graph run it.")
    flags.DEFINE_bool("merge", False, "Add the rows to --output_dir's results.json (a row "
                      "timed again replaces its old one) instead of replacing the file.")
    flags.DEFINE_bool("allow_failures", False, "Exit 0 even when a run failed (its row still "
                      "records the error); by default any failed run is exit status 1.")


if __name__ == "__main__":
    _define_flags()
    app.run(run_cli(main), flags_parser=parse_flags)
