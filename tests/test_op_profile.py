"""Per-op profiles: benchmark_model's op-profiler output parsed, attributed and reported.

The profile text is rendered here the way TFLite's StatsCalculator prints it (tab-aligned
fields, or CSV with --op_profiling_output_mode=csv), with the tensor names of the shipped,
really converted SPViT file, so attribution is checked against names the converter writes.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

import conftest
from conftest import REPO, shipped_main_run
from spvit_tf import bench_results
from spvit_tf.tflite import profile

SHIPPED = conftest.SHIPPED / f"cifar10_{shipped_main_run()}_int8.tflite"


def table_line(op_type, ms, name, csv=False, calls=1):
    cells = [op_type, 0.0, ms, ms, 1.0, 1.0, 0.0, calls, name]
    if csv:
        return (f"{op_type}, 0, {ms}, {ms}, 1%, 1%, 0, {calls}, {name}")
    widths = (24, 17, 9, 9, 7, 7, 10, 9)
    out = ""
    for cell, width in zip(cells[:8], widths):
        text = f"{cell:.3f}" if isinstance(cell, float) else str(cell)
        out += "\t" + text.rjust(width) + ("%" if width == 7 else "")
    return out + "\t" + name


def render(ops, csv=False, delegate=()):
    """benchmark_model output with an init profile, the timed runs' profile and summaries.

    `ops` are (op_type, ms, outputs, node); `delegate` (kernel, ms, node) rows form a
    "Delegate internal" table."""
    header = ("node type, start, first, avg_ms, %, cdf%, mem KB, times called, name" if csv else
              "\t[node type]\t[start]\t[first]\t[avg ms]\t[%]\t[cdf%]\t[mem KB]\t[times called]"
              "\t[Name]")
    rows = [table_line(t, ms, f"[{', '.join(outs)}]:{node}", csv) for t, ms, outs, node in ops]
    lines = [
        "INFO: count=50 first=900 curr=880 min=870 max=950 avg=890 std=10",
        "Profiling Info for Benchmark Initialization:",
        "============================== Run Order ==============================", header,
        table_line("AllocateTensors", 5.0, "AllocateTensors/0", csv), "",
        "Timings (microseconds): count=1 curr=5000", "",
        f"{profile.MARKER}:",
        "============================== Run Order ==============================", header,
        *rows, "",
        "============================== Top by Computation Time ==============================",
        header, *rows[:3], "",
        f"Number of nodes executed: {len(rows)}",
        "============================== Summary by node type ==============================",
        "\t[Node type]\t[count]\t[avg ms]\t[avg %]\t[cdf %]\t[mem KB]\t[times called]",
        "\t  FULLY_CONNECTED\t  10\t  1.000\t  50.000%\t  50.000%\t  0.000\t  10", "",
        "Timings (microseconds): count=50 first=900 curr=880 min=870 max=950 avg=890 std=10",
        "Memory (bytes): count=0", f"{len(rows)} nodes observed", "",
    ]  # fmt: skip
    if delegate:
        lines += ["Delegate internal: ",
                  "============================== Run Order ==============================",
                  header, *(table_line("DelegateOpInvoke", ms, f"Delegate/{k}:{n}", csv)
                            for k, ms, n in delegate), ""]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def shipped_ops():
    """(op_type, ms, outputs, node) for every op of the shipped SPViT int8 file, 0.01 ms each
    (0.05 for FULLY_CONNECTED), in graph order."""
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is not in this checkout")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(SHIPPED))
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [(op["op_name"], 0.05 if op["op_name"] == "FULLY_CONNECTED" else 0.01,
             [names[i] for i in op["outputs"]], op["index"])
            for op in interpreter._get_ops_details()]  # fmt: skip


@pytest.mark.parametrize("csv", [False, True], ids=["tab", "csv"])
def test_only_the_timed_runs_run_order_is_parsed(csv):
    ops = [("FULLY_CONNECTED", 0.5, ["m/blocks_0_1/mlp_1/fc1_1/MatMul"], 3),
           ("SOFTMAX", 0.25, ["m/blocks_0_1/attn_1/Softmax", "m/blocks_0_1/attn_1/max"], 4),
           ("GATHER", 0.125, ["functional_1/deit_1/GatherV2"], 5)]
    parsed = profile.parse_op_profile(render(ops, csv))
    assert [(op.op_type, op.ms, op.node) for op in parsed] == [
        ("FULLY_CONNECTED", 0.5, 3), ("SOFTMAX", 0.25, 4), ("GATHER", 0.125, 5)]
    assert parsed[1].outputs == ("m/blocks_0_1/attn_1/Softmax", "m/blocks_0_1/attn_1/max")
    assert [op.region for op in parsed] == ["block 0", "block 0", "model"]


def test_calls_per_invoke_multiply_and_delegate_kernels_are_kept_apart():
    text = render([("TfLiteXNNPackDelegate", 2.0, ["out"], 0)],
                  delegate=[("Fully Connected (NC, F32) GEMM", 1.5, 0), ("Softmax", 0.25, 1)])
    text = text.replace(table_line("TfLiteXNNPackDelegate", 2.0, "[out]:0"),
                        table_line("TfLiteXNNPackDelegate", 1.0, "[out]:0", calls=2))
    parsed = profile.parse_op_profile(text)
    assert [(op.op_type, op.ms, op.delegate) for op in parsed] == [
        ("TfLiteXNNPackDelegate", 2.0, False),
        ("Fully Connected (NC, F32) GEMM", 1.5, True), ("Softmax", 0.25, True)]
    table = profile.summarise(parsed)
    # Shares are of the invoke time: the delegate's kernels are already inside its node.
    assert [(r["op_type"], r["share"]) for r in table] == [
        ("TfLiteXNNPackDelegate", 1.0), ("Fully Connected (NC, F32) GEMM", 0.75),
        ("Softmax", 0.125)]
    assert profile.totals(table, "op_type") == [("TfLiteXNNPackDelegate", 1, 2.0, 1.0)]


def test_output_without_a_profile_has_none():
    assert profile.parse_op_profile("INFO: count=50 first=1 avg=2\nTimings (microseconds):") == []


def test_regions_come_from_the_converters_layer_scopes():
    def region(*names):
        return profile.OpTime(0, "X", 1.0, names).region

    assert region("functional_1_1/deit_tiny_patch16_224_1/blocks_11_1/attn_1/MatMul") == "block 11"
    assert region("functional_1_1/deit_1/selector_3_1/score_0_1/add;convolution/Squeeze") == \
        "selector 3"
    assert region("convolution/Squeeze;functional_1_1/deit_1/blocks_2_1/mlp_1/fc2_1/add") == \
        "block 2"  # the first name that names a layer wins
    assert region("functional_1_1/pit_1/pool_1_1/conv_1/depthwise") == "pool 1"
    assert region("functional_1_1/deit_1/patch_embed_1/convolution") == "patch embed"
    assert region("functional_1_1/deit_1/norm_1/add") == "head"
    assert region("functional_1_1/deit_tiny_patch16_224_1/strided_slice_131") == "model"
    assert region("tfl.quantize3") is None and region() is None


def test_the_shipped_spvit_file_attributes_to_its_blocks_and_selectors(shipped_ops):
    table = profile.summarise(profile.parse_op_profile(render(shipped_ops)))
    regions = {r[0]: r for r in profile.totals(table, "region")}
    assert {f"block {i}" for i in range(6)} | {"selector 1", "selector 3"} <= set(regions)
    nodes = sum(r[1] for r in regions.values())
    assert nodes == len(shipped_ops)
    assert regions.get(None, (None, 0))[1] / nodes < 0.25  # most ops have a layer in the name
    assert sum(r["share"] for r in table) == pytest.approx(1.0, abs=1e-4)  # rounded shares
    by_type = {t[0]: t for t in profile.totals(table, "op_type")}
    fc = sum(1 for op in shipped_ops if op[0] == "FULLY_CONNECTED")
    assert by_type["FULLY_CONNECTED"][1:3] == (fc, pytest.approx(0.05 * fc))


FAKE_BENCHMARK_MODEL = """#!PYTHON
import os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open(os.environ["FAKE_BM_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if "broken" in flags["graph"]:
    print("ERROR: Could not open model")
    sys.exit(1)
sys.stdout.write(open(os.environ["FAKE_BM_OUTPUT"]).read())
"""


def test_host_benchmark_profile_lands_in_every_result_file(tmp_path, shipped_ops):
    fake = tmp_path / "benchmark_model"
    fake.write_text(FAKE_BENCHMARK_MODEL.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    (tmp_path / "profile.txt").write_text(render(shipped_ops))
    out = tmp_path / "bench"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FAKE_BM_LOG": str(tmp_path / "log"),
           "FAKE_BM_OUTPUT": str(tmp_path / "profile.txt")}
    result = subprocess.run(
        [sys.executable, "-m", "spvit_tf.benchmark", f"--models={SHIPPED}", "--runs=3",
         "--warmup=1", "--backends=xnnpack_off", "--num_threads=2", f"--output_dir={out}",
         "--profile", f"--benchmark_model={fake}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (call,) = (tmp_path / "log").read_text().splitlines()
    assert call.split() == [f"--graph={SHIPPED}", "--num_threads=2", "--use_xnnpack=false",
                            "--num_runs=3", "--warmup_runs=1", "--enable_op_profiling=true"]
    (row,), _, meta = bench_results.read_results(out / "results.json")
    assert row.status == "ok" and row.median_ms > 0 and meta["profiler"] == str(fake)
    assert sum(r["nodes"] for r in row.profile) == len(shipped_ops)
    profile_csv = (out / "profile.csv").read_text().splitlines()
    assert profile_csv[0] == ",".join(bench_results.PROFILE_FIELDS)
    assert len(profile_csv) == len(row.profile) + 1
    assert "profile" not in (out / "results.csv").read_text().splitlines()[0]
    assert f"#### Per-op profile: {SHIPPED.stem}" in result.stdout
    assert "| selector 1 |" in (out / "results.md").read_text()


def test_a_signature_is_profiled_and_named_in_every_result_file(tmp_path, shipped_ops):
    """--signature with --profile: benchmark_model profiles that signature of the budgets
    file, the dense reference's one graph, and each row and profile line names what ran."""
    from test_benchmark import _tiny_tflite, _two_signature_tflite

    fake = tmp_path / "benchmark_model"
    fake.write_text(FAKE_BENCHMARK_MODEL.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    (tmp_path / "profile.txt").write_text(render(shipped_ops))
    dense = _tiny_tflite(tmp_path / "dense.tflite", 64)
    budgets = _two_signature_tflite(tmp_path / "budgets.tflite")
    out = tmp_path / "bench"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FAKE_BM_LOG": str(tmp_path / "log"),
           "FAKE_BM_OUTPUT": str(tmp_path / "profile.txt")}
    result = subprocess.run(
        [sys.executable, "-m", "spvit_tf.benchmark", f"--models={dense},{budgets}", "--runs=3",
         "--warmup=1", "--backends=xnnpack_off", "--num_threads=1", f"--output_dir={out}",
         "--signature=keep_0.5", "--profile", f"--benchmark_model={fake}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    dense_call, budgets_call = (call.split() for call in calls)
    assert not any(flag.startswith("--signature") for flag in dense_call)
    assert budgets_call[0] == f"--graph={budgets}"
    assert budgets_call[-2:] == ["--enable_op_profiling=true",
                                 "--signature_to_run_for_benchmark=keep_0.5"]
    rows, _, _ = bench_results.read_results(out / "results.json")
    assert [(r.signature, bool(r.profile)) for r in rows] == [("", True), ("keep_0.5", True)]
    with open(out / "profile.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert {(line["model"], line["signature"]) for line in lines} == {
        ("dense", ""), ("budgets", "keep_0.5")}
    markdown = (out / "results.md").read_text()
    assert "#### Per-op profile: budgets [keep_0.5], " in markdown
    assert "| budgets [keep_0.5] |" in markdown


def test_profile_without_a_host_binary_is_one_line_before_any_timing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spvit_tf.benchmark", f"--models={SHIPPED}",
         f"--output_dir={tmp_path / 'bench'}", "--profile"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --profile needs a host build of TFLite's benchmark_model")
    assert "--benchmark_model=PATH" in line
    assert not (tmp_path / "bench").exists()


def test_schema_1_and_2_results_still_read(tmp_path):
    row = bench_results.BenchResult(model="m", model_path="m.tflite", size_bytes=1,
                                    target="host", device="d", backend="cpu", num_threads=1,
                                    profile=[{"region": None, "op_type": "ADD", "delegate": False,
                                              "nodes": 1, "ms": 1.0, "share": 1.0}])
    document = json.loads(bench_results.format_json([row]))
    assert document["schema_version"] == bench_results.SCHEMA_VERSION == 3
    document["schema_version"] = 2  # v2: profiles, no signature
    for result in document["results"]:
        del result["signature"]
    (tmp_path / "v2.json").write_text(json.dumps(document))
    (v2,), _, _ = bench_results.read_results(tmp_path / "v2.json")
    assert v2.signature == "" and v2.profile == row.profile and v2.label == "m cpu t1"
    document["schema_version"] = 1  # v1: neither
    for result in document["results"]:
        del result["profile"]
    (tmp_path / "old.json").write_text(json.dumps(document))
    (old,), _, _ = bench_results.read_results(tmp_path / "old.json")
    assert old.profile is None and old.signature == "" and old.model == "m"
    document["schema_version"] = 99
    (tmp_path / "new.json").write_text(json.dumps(document))
    with pytest.raises(bench_results.SpvitError, match="schema 99, not one of"):
        bench_results.read_results(tmp_path / "new.json")
