"""spvit_tf.adb_benchmark (and its checkout entry android_benchmark/run_benchmark.py) against a
fake adb that keeps a fake phone in tmp_path.

The fake logs every invocation, so the tests pin the exact adb commands (pushes, flags per
backend and thread count, cleanup, no pull) as well as the parsed numbers and the failures.
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import types

import pytest

from spvit_tf import bench_results

REPO = pathlib.Path(__file__).resolve().parents[1]
MODULE = ("-m", "spvit_tf.adb_benchmark")
SCRIPT = (str(REPO / "android_benchmark" / "run_benchmark.py"),)  # the thin checkout entry
REMOTE = "/data/local/tmp/spvit_bench"
BINARY = f"{REMOTE}/benchmark_model"

# A phone where dense runs 40 ms and pruned 28 ms on one thread (scaling with threads), the
# builtin kernels are 1.5x slower, GPU is 4x faster but fails on the pruned graph, and NNAPI
# takes no node. Numbers follow benchmark_model's real output format.
FAKE_ADB = r"""#!PYTHON
import json, os, pathlib, shutil, sys

args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
root = pathlib.Path(os.environ["FAKE_ADB_ROOT"])
devices = [d.split(":") for d in os.environ["FAKE_ADB_DEVICES"].split(",") if d]
props = {"ro.product.model": "Pixel 7", "ro.board.platform": "gs201",
         "ro.hardware": "panther", "ro.build.version.release": "14",
         "ro.product.cpu.abi": "arm64-v8a"}

def local(remote):
    return root / remote.lstrip("/")

if args == ["devices"]:
    print("* daemon not running; starting now at tcp:5037")
    print("* daemon started successfully")
    print("List of devices attached")
    for serial, state in devices:
        print(f"{serial}\t{state}")
    print()
    sys.exit(0)
if args[0] != "-s" or [args[1], "device"] not in devices:
    print(f"adb: device not found: {args}", file=sys.stderr)
    sys.exit(1)
command = args[2:]
if command[0] == "push":
    local(command[2]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(command[1], local(command[2]))
    print(f"{command[1]}: 1 file pushed, 0 skipped. 9.8 MB/s (12 bytes in 0.001s)")
    sys.exit(0)
if command[0] != "shell":
    print(f"fake adb does not support {command}", file=sys.stderr)
    sys.exit(1)
shell = command[1:]
if shell[0] == "getprop":
    print(props.get(shell[1], ""))
elif shell[:2] == ["mkdir", "-p"]:
    local(shell[2]).mkdir(parents=True, exist_ok=True)
elif shell[:2] == ["chmod", "+x"]:
    local(shell[2]).chmod(0o755)
elif shell[:2] == ["rm", "-rf"]:
    shutil.rmtree(local(shell[2]), ignore_errors=True)
elif shell[0].endswith("benchmark_model"):
    if not os.access(local(shell[0]), os.X_OK):
        print(f"/system/bin/sh: {shell[0]}: can't execute: Permission denied")
        sys.exit(126)
    flags = dict(a[2:].split("=", 1) for a in shell[1:])
    graph = flags["graph"]
    print("INFO: STARTING!")
    print(f"INFO: Graph: [{graph}]")
    if not local(graph).is_file():
        print(f"ERROR: Could not open '{graph}'.")
        sys.exit(1)
    print(f"INFO: Loaded model {graph}")
    base = (40000 if "dense" in graph else 28000) / int(flags["num_threads"])
    if flags.get("use_gpu") == "true":
        print("INFO: Created TensorFlow Lite delegate for GPU.")
        if "pruned" in graph:
            print("ERROR: Following operations are not supported by GPU delegate:")
            print("GATHER: Operation is not supported.")
            print("ERROR: Failed to apply GPU delegate.")
            print("ERROR: Benchmarking failed.")
            sys.exit(1)
        print("INFO: Replacing 90 out of 90 node(s) with delegate (TfLiteGpuDelegateV2) node, "
              "yielding 1 partitions for the whole graph.")
        base = 10000
    elif flags.get("use_nnapi") == "true":
        print("INFO: Created TensorFlow Lite delegate for NNAPI.")
        print("INFO: Though NNAPI delegate is explicitly applied, the model graph will not be "
              "executed by the delegate.")
    elif flags.get("use_xnnpack") == "false":
        base *= 1.5
    else:
        print("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    runs = int(flags["num_runs"])
    print("INFO: Initialized session in 152.5ms.")
    print("INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but "
          "terminate if exceeding 150 seconds.")
    print(f"INFO: count=10 first={base * 1.5:g} curr={base:g} min={base - 300:g} "
          f"max={base * 1.5:g} avg={base * 1.02:g} std=900 p5={base - 300:g} "
          f"median={base:g} p95={base * 1.5:g}\n")
    print(f"INFO: Running benchmark for at least {runs} iterations and at least 1 seconds but "
          "terminate if exceeding 150 seconds.")
    print(f"INFO: count={runs} first={base:g} curr={base:g} min={base - 500:g} "
          f"max={base + 900:g} avg={base:g} std=120 p5={base - 400:g} median={base - 100:g} "
          f"p95={base + 700:g}\n")
    if flags.get("enable_op_profiling") == "true":
        print("Operator-wise Profiling Info for Regular Benchmark Runs:")
        print("============================== Run Order ==============================")
        print("\t[node type]\t[start]\t[first]\t[avg ms]\t[%]\t[cdf%]\t[mem KB]\t[times called]\t[Name]")
        print("\t FULLY_CONNECTED\t 0.000\t 3.000\t 3.000\t 75.000%\t 75.000%\t 0.000\t 1\t"
              "[functional_1/deit_1/blocks_0_1/mlp_1/fc1_1/MatMul]:7")
        print("\t GATHER\t 3.000\t 1.000\t 1.000\t 25.000%\t 100.000%\t 0.000\t 1\t"
              "[functional_1/deit_1/GatherV2]:8")
        print()
        print("Timings (microseconds): count=999 first=1 curr=1 min=1 max=1 avg=1 std=0")
        print("Memory (bytes): count=0")
    print(f"INFO: Inference timings in us: Init: 152500, First inference: {base * 1.5:g}, "
          f"Warmup (avg): {base * 1.02:g}, Inference (avg): {base:g}")
    print("INFO: Note: as the benchmark tool itself affects memory footprint, the following "
          "is only APPROXIMATE to the actual memory footprint of the model at runtime. Take "
          "the information at your discretion.")
    print("INFO: Memory footprint delta from the start of the tool (MB): init=20.5 "
          "overall=31.25")
    if flags.get("report_peak_memory_footprint") == "true":
        print("INFO: Overall peak memory footprint (MB) via periodic monitoring: 35.5")
else:
    print(f"fake adb does not support shell {shell}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def phone(tmp_path):
    """A fake adb on PATH, a fake phone filesystem, two models and a benchmark binary."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.replace("PYTHON", sys.executable))
    adb.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    (models / "dense.tflite").write_bytes(b"dense model" * 10)
    (models / "pruned.tflite").write_bytes(b"pruned")
    (models / "dense.json").write_text(json.dumps({"gflops": 4.6}))
    (models / "pruned.json").write_text(json.dumps({"gflops": 3.1}))
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    env = {k: v for k, v in os.environ.items() if k not in ("ANDROID_HOME", "ANDROID_SDK_ROOT")}
    env.update(
        PATH=str(bin_dir),
        FAKE_ADB_LOG=str(tmp_path / "adb.log"),
        FAKE_ADB_ROOT=str(tmp_path / "device"),
        FAKE_ADB_DEVICES="EMU01:device",
        # The spvit_tf of this checkout, also where another one is installed (editable or not).
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    out = tmp_path / "out"

    def run(*flags, cwd=REPO, entry=MODULE, output_dir=out, binary_flag=True):
        args = [
            f"--models={models / 'dense.tflite'},{models / 'pruned.tflite'}",
            *([f"--benchmark_binary={binary}"] if binary_flag else []),
            f"--output_dir={output_dir}",
            *flags,
        ]
        return subprocess.run(
            [sys.executable, *entry, *args], cwd=cwd, env=env, capture_output=True, text=True
        )

    def calls():
        log = tmp_path / "adb.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return types.SimpleNamespace(
        run=run, calls=calls, env=env, out=out, models=models, binary=binary, root=tmp_path
    )


def shell_runs(calls):
    """The benchmark_model command lines, without `-s SERIAL shell BINARY`."""
    return [c[4:] for c in calls if c[2:4] == ["shell", BINARY]]


def test_full_run_issues_exact_commands_and_records_numbers(phone):
    result = phone.run(
        "--backends=cpu,gpu,nnapi,xnnpack_off", "--num_threads=1,4", "--runs=30", "--warmup_runs=5"
    )
    # Three runs fail on the phone: their rows are written, and the exit status says so.
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: 3 of 12 runs failed (dense nnapi t4, pruned gpu t4, pruned "
                           "nnapi t4), e.g. dense: NNAPI delegate took no node")
    assert line.endswith(f"their rows are in {phone.out / 'results.md'}; pass --allow_failures "
                         "to exit 0 with failed rows")
    calls = phone.calls()
    d, p = phone.models / "dense.tflite", phone.models / "pruned.tflite"
    s = ["-s", "EMU01"]
    props = ["ro.product.model", "ro.soc.model", "ro.board.platform", "ro.hardware"]
    props += ["ro.build.version.release", "ro.product.cpu.abi"]
    setup = [["devices"], *[[*s, "shell", "getprop", prop] for prop in props]]
    setup += [
        [*s, "shell", "mkdir", "-p", REMOTE],
        [*s, "push", str(phone.binary), BINARY],
        [*s, "shell", "chmod", "+x", BINARY],
        [*s, "push", str(d), f"{REMOTE}/dense.tflite"],
        [*s, "push", str(p), f"{REMOTE}/pruned.tflite"],
    ]
    assert calls[: len(setup)] == setup
    assert calls[-1] == [*s, "shell", "rm", "-rf", REMOTE]
    assert not any("pull" in c for c in calls)
    assert len(calls) == len(setup) + 2 * 6 + 1

    common = ["--num_runs=30", "--warmup_runs=5"]
    expected = []
    for name in ("dense", "pruned"):
        graph = f"--graph={REMOTE}/{name}.tflite"
        expected += [
            [graph, "--num_threads=1", "--use_xnnpack=true", *common],
            [graph, "--num_threads=4", "--use_xnnpack=true", *common],
            [graph, "--num_threads=4", "--use_gpu=true", *common],
            [graph, "--num_threads=4", "--use_nnapi=true", *common],
            [graph, "--num_threads=1", "--use_xnnpack=false", *common],
            [graph, "--num_threads=4", "--use_xnnpack=false", *common],
        ]
    assert shell_runs(calls) == expected
    assert not (phone.root / "device" / REMOTE.lstrip("/")).exists()

    rows, comparisons, meta = bench_results.read_results(phone.out / "results.json")
    by = {(r.model, r.backend, r.num_threads): r for r in rows}
    assert len(rows) == 12
    cpu = by["dense", "cpu", 1]
    assert cpu.status == "ok" and cpu.target == "android"
    assert cpu.device == "Pixel 7 (gs201, Android 14, arm64-v8a)"
    assert cpu.size_bytes == 110 and cpu.runs == 30
    assert cpu.mean_ms == pytest.approx(40.0)
    assert cpu.median_ms == pytest.approx(39.9)
    assert cpu.min_ms == pytest.approx(39.5)
    assert cpu.init_ms == pytest.approx(152.5)
    assert cpu.first_ms == pytest.approx(60.0)
    assert cpu.peak_memory_mb == pytest.approx(31.25)
    assert cpu.p90_ms is None  # benchmark_model prints no p90
    assert by["pruned", "cpu", 4].mean_ms == pytest.approx(7.0)
    assert by["dense", "xnnpack_off", 4].mean_ms == pytest.approx(15.0)
    gpu = by["dense", "gpu", 4]
    assert gpu.status == "ok" and gpu.mean_ms == pytest.approx(10.0)
    assert gpu.note == "TfLiteGpuDelegateV2: 90/90 nodes, 1 partitions"

    failed = by["pruned", "gpu", 4]
    assert failed.status == "failed" and failed.mean_ms is None
    assert failed.error.startswith("exit 1: ERROR: Following operations are not supported")
    assert "GATHER: Operation is not supported." in failed.error
    assert "Failed to apply GPU delegate" in failed.error
    for name in ("dense", "pruned"):
        nnapi = by[name, "nnapi", 4]
        assert nnapi.status == "failed" and "NNAPI delegate took no node" in nnapi.error

    assert meta["serial"] == "EMU01" and meta["device_props"]["ro.product.model"] == "Pixel 7"
    assert meta["gflops"] == {"dense": 4.6, "pruned": 3.1}
    pairs = {(c.backend, c.num_threads): c for c in comparisons}
    assert set(pairs) == {("cpu", 1), ("cpu", 4), ("xnnpack_off", 1), ("xnnpack_off", 4)}
    assert pairs["cpu", 1].latency_ratio == pytest.approx(27.9 / 39.9)
    assert pairs["cpu", 1].flops_ratio == pytest.approx(3.1 / 4.6)

    with open(phone.out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["status"] for r in table].count("failed") == 3
    assert float(table[0]["mean_ms"]) == pytest.approx(40.0) and table[0]["p90_ms"] == ""
    markdown = (phone.out / "results.md").read_text()
    assert "failed: exit 1: ERROR: Following operations" in markdown
    assert "| dense | pruned | Pixel 7" in markdown
    assert (phone.out / "logs" / "pruned_gpu_t4.log").read_text().count("Failed to apply") == 1


def test_profiling_and_memory_flags_reach_the_tool_and_parse(phone):
    result = phone.run("--backends=cpu", "--num_threads=2", "--op_profiling", "--memory")
    assert result.returncode == 0, result.stderr
    for command in shell_runs(phone.calls()):
        assert command[-2:] == ["--enable_op_profiling=true", "--report_peak_memory_footprint=true"]
    rows, _, _ = bench_results.read_results(phone.out / "results.json")
    # The op profile's own "count=999" line must not be taken for the timed runs.
    assert [r.runs for r in rows] == [50, 50]
    assert rows[0].median_ms == pytest.approx(19.9)
    assert rows[0].note == "monitored peak footprint 35.5 MB"
    assert [(p["region"], p["op_type"], p["ms"], p["share"]) for p in rows[0].profile] == [
        ("block 0", "FULLY_CONNECTED", 3.0, 0.75), ("model", "GATHER", 1.0, 0.25)]
    assert (phone.out / "profile.csv").read_text().count("FULLY_CONNECTED") == 2
    assert "Timings (microseconds)" in (phone.out / "logs" / "dense_cpu_t2.log").read_text()


def test_signature_reaches_the_tool_for_the_files_whose_card_lists_it(phone):
    (phone.models / "pruned.json").write_text(json.dumps(
        {"gflops": 3.1, "signatures": {"keep_0.7": {"gflops": 3.1}, "keep_0.4": {"gflops": 2.0}}}))
    result = phone.run("--backends=cpu", "--num_threads=1", "--signature=keep_0.4")
    assert result.returncode == 0, result.stderr
    dense, pruned = shell_runs(phone.calls())
    assert not any(flag.startswith("--signature") for flag in dense)  # one graph: runs it
    assert pruned[-1] == "--signature_to_run_for_benchmark=keep_0.4"
    rows, comparisons, _ = bench_results.read_results(phone.out / "results.json")
    assert [r.signature for r in rows] == ["", "keep_0.4"]
    assert comparisons[0].pruned_gflops == 2.0  # the signature's FLOPs, from its card
    missing = phone.run("--backends=cpu", "--signature=keep_0.5")
    assert missing.returncode == 2 and "its card lists keep_0.4, keep_0.7" in missing.stderr


def test_a_signature_run_carries_its_op_profile(phone):
    (phone.models / "pruned.json").write_text(json.dumps(
        {"gflops": 3.1, "signatures": {"keep_0.7": {"gflops": 3.1}, "keep_0.4": {"gflops": 2.0}}}))
    result = phone.run("--backends=cpu", "--num_threads=1", "--signature=keep_0.4",
                       "--op_profiling")
    assert result.returncode == 0, result.stderr
    dense, pruned = shell_runs(phone.calls())
    assert "--enable_op_profiling=true" in dense and "--enable_op_profiling=true" in pruned
    assert pruned[-1] == "--signature_to_run_for_benchmark=keep_0.4"
    rows, _, _ = bench_results.read_results(phone.out / "results.json")
    assert [(r.signature, bool(r.profile)) for r in rows] == [("", True), ("keep_0.4", True)]
    with open(phone.out / "profile.csv", newline="") as handle:
        assert {(line["model"], line["signature"]) for line in csv.DictReader(handle)} == {
            ("dense", ""), ("pruned", "keep_0.4")}
    assert "#### Per-op profile: pruned [keep_0.4], Pixel 7" in result.stdout
    assert "pruned [keep_0.4] cpu t1: ok" in result.stdout  # the progress line names it


def test_allow_failures_keeps_the_failed_row_and_exits_0(phone):
    result = phone.run("--backends=gpu", "--num_threads=1", "--allow_failures")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rows, _, _ = bench_results.read_results(phone.out / "results.json")
    assert [(r.model, r.status) for r in rows] == [("dense", "ok"), ("pruned", "failed")]


def test_an_output_dir_that_cannot_be_created_stops_before_adb(phone):
    blocker = phone.root / "results"
    blocker.write_text("a file")
    result = phone.run("--backends=cpu", "--num_threads=1", f"--output_dir={blocker / 'phone'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"error: --output_dir={blocker / 'phone'} cannot be created: {blocker} is a "
                    "regular file; pass a writable directory")
    assert phone.calls() == [] and blocker.read_text() == "a file"


@pytest.mark.parametrize("entry", [MODULE, SCRIPT], ids=["module", "script"])
def test_serial_picks_one_of_several_devices_and_runs_from_elsewhere(phone, entry):
    phone.env["FAKE_ADB_DEVICES"] = "EMU01:device,R5CT:device"
    result = phone.run("--backends=cpu", "--num_threads=1", "--serial=R5CT", cwd=phone.root,
                       entry=entry)
    assert result.returncode == 0, result.stderr
    assert all(c[:2] == ["-s", "R5CT"] for c in phone.calls()[1:])
    _, _, meta = bench_results.read_results(phone.out / "results.json")
    assert meta["tool"] == "spvit_tf.adb_benchmark"


def test_default_binary_next_to_the_script_or_under_the_current_folder(phone):
    """Without --benchmark_binary the checkout's script looks beside itself (a copy of it
    here) and `python -m` in the current folder and its android_benchmark/."""
    script = phone.root / "checkout" / "android_benchmark" / "run_benchmark.py"
    script.parent.mkdir(parents=True)
    shutil.copy(SCRIPT[0], script)
    shutil.copy(phone.binary, script.parent / "android_aarch64_benchmark_model")
    flags = ("--backends=cpu", "--num_threads=1")
    result = phone.run(*flags, cwd=phone.root, entry=(str(script),), binary_flag=False)
    assert result.returncode == 0, result.stderr
    assert [c[3] for c in phone.calls() if c[2:3] == ["push"]][0] == str(
        script.parent / "android_aarch64_benchmark_model")
    result = phone.run(*flags, cwd=script.parents[1], binary_flag=False)
    assert result.returncode == 0, result.stderr
    result = phone.run(*flags, cwd=script.parent, binary_flag=False)
    assert result.returncode == 0, result.stderr
    empty = (phone.root / "empty").resolve()
    empty.mkdir()
    result = phone.run(*flags, cwd=empty, binary_flag=False)
    assert result.returncode == 2 and "benchmark_model not found at" in result.stderr
    assert str(empty / "android_benchmark" / "benchmark_model") in result.stderr


def test_a_plain_install_runs_from_any_directory(phone, tmp_path):
    """A non-editable `pip install .` carries the benchmark: with only the installed copy on
    the path and an unrelated working folder, `python -m spvit_tf.adb_benchmark`, the
    checkout's thin script and latency_table's adb timing all run."""
    source = tmp_path / "source"  # a copy: the build's build/ and egg-info stay out of the tree
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "spvit_tf", source / "spvit_tf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    phone.env["PYTHONPATH"] = str(site)  # dependencies from this environment's site-packages

    def python(*args):
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=phone.env,
                              capture_output=True, text=True)

    # The installed copy, not this checkout or an editable install, is what runs.
    where = python("-c", "import spvit_tf.adb_benchmark as m; print(m.__file__)")
    assert where.returncode == 0, where.stderr
    assert pathlib.Path(where.stdout.strip()).is_relative_to(site), where.stdout
    for name, entry in (("module", MODULE), ("script", SCRIPT)):
        result = phone.run("--backends=cpu", "--num_threads=1", cwd=elsewhere, entry=entry,
                           output_dir=tmp_path / name)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert (tmp_path / name / "results.json").is_file()
    timed = python("-c", "import pathlib, sys; from spvit_tf.latency_table import time_adb; "
                   "print(time_adb([pathlib.Path(sys.argv[1])], None, 1, 5, 1, *sys.argv[2:])[0])",
                   str(phone.models / "dense.tflite"), str(phone.binary),
                   phone.env["PATH"] + "/adb")
    assert timed.returncode == 0, timed.stderr
    assert timed.stdout.strip() == "{'dense': 39.9}"


def test_explicit_adb_path(phone):
    adb = phone.env["PATH"] + "/adb"
    phone.env["PATH"] = str(phone.root)
    assert phone.run("--backends=cpu", "--num_threads=1", f"--adb={adb}").returncode == 0


@pytest.mark.parametrize(
    "devices, flags, message",
    [
        ("", [], "no Android device found"),
        ("EMU01:device,R5CT:device", [], "several devices are connected: EMU01 (device), R5CT"),
        ("EMU01:device", ["--serial=XYZ"], "device XYZ is not connected"),
        ("EMU01:unauthorized", [], "accept the 'Allow USB debugging' prompt"),
        ("EMU01:offline", [], "device EMU01 is offline"),
    ],
)
def test_device_selection_errors(phone, devices, flags, message):
    phone.env["FAKE_ADB_DEVICES"] = devices
    result = phone.run(*flags)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert phone.calls() == [["devices"]]
    assert not phone.out.exists()


def test_missing_adb(phone):
    phone.env["PATH"] = str(phone.root / "nowhere")
    result = phone.run()
    assert result.returncode == 2
    assert "adb not found on PATH" in result.stderr and "--adb=" in result.stderr
    assert phone.calls() == []


def test_missing_binary_and_bad_backend(phone):
    result = phone.run(f"--benchmark_binary={phone.root / 'nope'}")
    assert result.returncode == 2 and "benchmark_model not found" in result.stderr
    result = phone.run("--backends=cpu,tpu")
    assert result.returncode == 2 and "bad --backends ['tpu']" in result.stderr
    assert phone.calls() == []


def test_cleanup_runs_when_a_push_fails(phone):
    adb = pathlib.Path(phone.env["PATH"]) / "adb"
    adb.write_text(adb.read_text().replace('if command[0] == "push":', FAIL_PRUNED_PUSH))
    result = phone.run("--backends=cpu", "--num_threads=1")
    assert result.returncode == 2 and "failed (exit 1): adb: error: failed" in result.stderr
    assert phone.calls()[-1] == ["-s", "EMU01", "shell", "rm", "-rf", REMOTE]


FAIL_PRUNED_PUSH = textwrap.dedent(
    """\
    if command[0] == "push" and command[1].endswith("pruned.tflite"):
        print("adb: error: failed to copy: remote couldn't create file", file=sys.stderr)
        sys.exit(1)
    if command[0] == "push":"""
)
