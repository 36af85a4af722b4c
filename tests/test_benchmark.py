"""The host benchmark CLI on tiny real .tflite files, and the shared result schema."""

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from spvit_tf import bench_results
from spvit_tf.bench_results import BenchResult
from spvit_tf.errors import SpvitError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_tflite(path, features):
    """A uint8-image classifier head: cast, scale, matmul; `features` sets its cost."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.uint8)])
    def classify(image):
        x = tf.reshape(tf.cast(image, tf.float32) / 255.0, [1, 768])
        return tf.matmul(
            tf.nn.relu(tf.matmul(x, tf.ones([768, features]))), tf.ones([features, 10])
        )

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [classify.get_concrete_function()], classify
    )
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    dense = _tiny_tflite(folder / "dense.tflite", 256)
    pruned = _tiny_tflite(folder / "pruned.tflite", 64)
    (folder / "dense.json").write_text(json.dumps({"name": "dense", "gflops": 2.0}))
    (folder / "pruned.json").write_text(json.dumps({"gflops": 1.0}))
    return dense, pruned


def run_cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "spvit_tf.benchmark", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_cli_times_every_model_backend_and_thread_count(models, tmp_path):
    dense, pruned = models
    result = run_cli(
        f"--models={dense},{pruned}",
        "--num_threads=1,2",
        "--backends=cpu,xnnpack_off",
        "--runs=7",
        "--warmup=2",
        f"--output_dir={tmp_path}",
        "--flops=pruned:0.5",  # overrides pruned.json; dense.json's 2.0 stays
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"results.md", "results.csv", "results.json"}

    rows, comparisons, meta = bench_results.read_results(tmp_path / "results.json")
    assert [(r.model, r.backend, r.num_threads) for r in rows] == [
        (m, b, t) for m in ("dense", "pruned") for b in ("cpu", "xnnpack_off") for t in (1, 2)
    ]
    for row in rows:
        assert row.status == "ok" and row.error == "" and row.target == "host"
        assert row.runs == 7
        assert row.size_bytes == (dense if row.model == "dense" else pruned).stat().st_size
        assert 0 < row.min_ms <= row.median_ms <= row.p90_ms
        assert row.min_ms <= row.mean_ms
        assert row.init_ms > 0 and row.first_ms > 0
        assert 0 <= row.peak_memory_mb < 500
    assert meta["gflops"] == {"dense": 2.0, "pruned": 0.5}
    assert meta["runs"] == 7 and meta["warmup"] == 2

    by = {(r.model, r.backend, r.num_threads): r for r in rows}
    assert len(comparisons) == 4
    for c in comparisons:
        assert (c.dense, c.pruned, c.metric) == ("dense", "pruned", "median_ms")
        assert c.flops_ratio == pytest.approx(0.25)
        dense_row, pruned_row = (
            by["dense", c.backend, c.num_threads],
            by["pruned", c.backend, c.num_threads],
        )
        assert c.latency_ratio == pytest.approx(pruned_row.median_ms / dense_row.median_ms)

    with open(tmp_path / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 8 and list(table[0]) == bench_results.FIELDS
    assert float(table[0]["median_ms"]) == pytest.approx(rows[0].median_ms)
    markdown = (tmp_path / "results.md").read_text()
    assert "Ratios are pruned / dense;" in markdown
    pair_lines = [line for line in markdown.splitlines() if line.startswith("| dense | pruned |")]
    assert len(pair_lines) == 5 and all("| median |" in line for line in pair_lines[1:])
    cells = pair_lines[1].strip("| ").split(" | ")
    latency, flop, per_flop = (float(v) for v in cells[-3:])
    assert per_flop == pytest.approx(latency / flop, rel=0.01)
    assert "| pruned |" in result.stdout and "latency ratio" in result.stdout


def test_rounds_interleave_and_keep_the_median_of_round_medians(models, tmp_path):
    result = run_cli(f"--models={models[1]}", "--runs=3", "--warmup=1", "--rounds=3",
                     f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (row,), _, meta = bench_results.read_results(tmp_path / "results.json")
    assert row.status == "ok" and row.runs == 9 and meta["rounds"] == 3


def test_combine_rounds():
    from spvit_tf.benchmark import combine_rounds

    def result(median, p90, mean, low, memory):
        return dict(runs=5, median_ms=median, p90_ms=p90, mean_ms=mean, min_ms=low,
                    init_ms=median * 10, first_ms=median * 2, peak_memory_mb=memory)

    slow_round = result(50.0, 90.0, 60.0, 40.0, 3.0)
    combined = combine_rounds([result(10.0, 12.0, 11.0, 9.0, 5.0), slow_round,
                               result(11.0, 13.0, 13.0, 8.0, 4.0)])
    assert combined == dict(runs=15, median_ms=11.0, p90_ms=13.0, mean_ms=28.0, min_ms=8.0,
                            init_ms=110.0, first_ms=22.0, peak_memory_mb=5.0)


def test_benchmark_log_entries_name_host_load_and_details_and_append(tmp_path):
    from spvit_tf.benchmark import append_log, host_description, log_header

    header = log_header("batch 128", "budget 0.054 GFLOPs")
    assert header.startswith("# ") and host_description() in header
    assert header.endswith(", batch 128, budget 0.054 GFLOPs")
    assert ", load " in header
    log = tmp_path / "bench.log"
    append_log(log, [header, "step 99.0 img/s"])
    append_log(log, ["# second", "row"])
    assert log.read_text() == f"{header}\nstep 99.0 img/s\n\n# second\nrow\n\n"


def test_models_the_runtime_rejects_are_failed_rows_and_exit_1(models, tmp_path):
    """A file the runtime rejects is a failed row, the good model is still timed, and the exit
    status is 1 with one line naming it, unless --allow_failures. (Truncated and bit-flipped
    files, each alone, are cases of tests/test_bad_inputs.py.)"""
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    flags = [f"--models={models[1]},{empty}", "--runs=1", "--warmup=0"]
    result = run_cli(*flags, f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1, result.stderr
    # LiteRT's workers may log their own INFO lines; ours is the last, and the only error.
    *_, line = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and result.stderr.count("error: ") == 1
    assert line.startswith("error: 1 of 2 runs failed (empty cpu t1), e.g. empty: ")
    assert f"{tmp_path / 'out' / 'results.md'}" in line and "--allow_failures" in line
    rows, comparisons, _ = bench_results.read_results(tmp_path / "out" / "results.json")
    assert [(r.model, r.status) for r in rows] == [("pruned", "ok"), ("empty", "failed")]
    assert rows[1].error and rows[1].median_ms is None
    assert len(comparisons) == 0  # a failed row pairs with nothing

    allowed = run_cli(*flags, f"--output_dir={tmp_path / 'allowed'}", "--allow_failures")
    assert allowed.returncode == 0 and "error: " not in allowed.stderr, allowed.stderr
    assert (tmp_path / "allowed" / "results.json").is_file()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--models=missing.tflite"], "model missing.tflite does not exist"),
        (["--models=notes.txt"], "notes.txt is not a .tflite file"),
        (["--models=MODEL", "--num_threads=1,x"], "bad --num_threads '1,x'"),
        (["--models=MODEL", "--num_threads=0"], "bad --num_threads '0'"),
        (["--models=MODEL", "--backends=gpu"], "bad --backends ['gpu']"),
        (["--models=MODEL", "--rounds=0"], "--rounds must be at least 1"),
        (["--models=MODEL", "--flops=other:1"], "--flops names ['other'] match no model"),
        (["--models=MODEL", "--flops=dense:many"], "bad --flops entry 'dense:many'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, flags, message):
    flags = [f.replace("MODEL", str(models[0])) for f in flags]
    result = run_cli(*flags, f"--output_dir={tmp_path}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not any(tmp_path.iterdir())


def test_light_modules_do_not_import_tensorflow():
    code = (
        "import sys, spvit_tf.bench_results, spvit_tf.benchmark; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def row(model, median, backend="cpu", threads=1, status="ok", mean=None):
    return BenchResult(
        model=model,
        model_path=f"{model}.tflite",
        size_bytes=1000,
        target="android",
        device="Pixel 7",
        backend=backend,
        num_threads=threads,
        runs=50,
        median_ms=median,
        mean_ms=mean,
        status=status,
        error="" if status == "ok" else "boom",
    )


def test_compare_pairs_matching_conditions_only():
    rows = [
        row("dense", 40.0),
        row("dense", 12.0, threads=4),
        row("dense", 10.0, backend="gpu"),
        row("dense", 50.0, backend="nnapi"),
        row("pruned", 30.0),
        row("pruned", 10.8, threads=4),
        row("pruned", None, backend="gpu", status="failed"),
        row("pruned", 45.0, backend="nnapi", threads=2),
    ]
    comparisons = bench_results.compare(rows, "dense", "pruned", 4.6, 3.22)
    assert [(c.backend, c.num_threads) for c in comparisons] == [("cpu", 1), ("cpu", 4)]
    assert comparisons[0].latency_ratio == pytest.approx(0.75)
    assert comparisons[1].latency_ratio == pytest.approx(0.9)
    assert comparisons[0].flops_ratio == pytest.approx(0.7)
    assert bench_results.compare(rows, "dense", "pruned")[0].flops_ratio is None


def test_compare_falls_back_to_the_mean_without_medians():
    rows = [row("dense", 40.0, mean=41.0), row("pruned", None, mean=20.5)]
    (comparison,) = bench_results.compare_to_first(rows, ["dense", "pruned"], {"dense": 2.0})
    assert comparison.metric == "mean_ms" and comparison.latency_ratio == pytest.approx(0.5)
    assert comparison.flops_ratio is None


def test_writers_round_trip_and_leave_no_temporary_files(tmp_path):
    rows = [row("dense", 40.0), row("pruned | v2", None, status="failed")]
    rows[1].error = "exit 1: ERROR: Failed to apply\nGPU delegate."
    paths = bench_results.write_results(tmp_path / "new", rows, meta={"serial": "EMU01"})
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "results.csv", "results.json", "results.md",
    ]  # fmt: skip
    read_rows, comparisons, meta = bench_results.read_results(paths["json"])
    assert read_rows == rows and comparisons == [] and meta == {"serial": "EMU01"}
    markdown = paths["md"].read_text()
    assert (
        "pruned \\| v2" in markdown
        and "failed: exit 1: ERROR: Failed to apply GPU delegate." in markdown
    )
    assert len(markdown.splitlines()) == 4
    assert paths["csv"].read_text().splitlines()[2].split(",")[8] == ""  # median None -> empty


def test_failed_writes_keep_the_old_files(tmp_path, monkeypatch):
    bench_results.write_results(tmp_path, [row("dense", 40.0)])
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    bad = dataclasses.replace(row("dense", 41.0), median_ms=object())  # not JSON-serializable
    with pytest.raises(TypeError):
        bench_results.write_results(tmp_path, [bad])

    def no_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)  # what atomic_write renames with
    with pytest.raises(OSError, match="disk full"):
        bench_results.write_results(tmp_path, [row("dense", 41.0)])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_status_is_checked():
    with pytest.raises(ValueError, match="status"):
        row("dense", 1.0, status="skipped")


def test_gflops_from_cards_and_flag(tmp_path):
    dense, pruned, bare = (tmp_path / f"{n}.tflite" for n in ("dense", "pruned", "bare"))
    for model in (dense, pruned, bare):
        model.write_bytes(b"x")
    (tmp_path / "dense.json").write_text(json.dumps({"gflops": 4.6, "input": {}}))
    (tmp_path / "pruned.json").write_text(json.dumps({"input": {}}))
    assert bench_results.model_gflops([dense, pruned, bare]) == {"dense": 4.6}
    assert bench_results.model_gflops([dense, pruned], ["pruned.tflite:3"]) == {
        "dense": 4.6,
        "pruned": 3.0,
    }
    (tmp_path / "bare.json").write_text("[1, 2]")
    with pytest.raises(SpvitError, match="bare.json is not a JSON object"):
        bench_results.model_gflops([bare])


def _two_signature_tflite(path):
    """One file, two signatures (as `export --budgets` writes them): heads of two widths."""
    import keras

    from spvit_tf.tflite.convert import convert_signatures

    def head(features):
        inputs = keras.Input((16, 16, 3), batch_size=1, dtype="uint8")
        x = keras.ops.reshape(keras.ops.cast(inputs, "float32") / 255.0, (1, 768))
        return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(features)(x)))

    path.write_bytes(convert_signatures({"keep_1": head(64), "keep_0.5": head(16)}))
    return path


def test_signature_runs_that_signature_and_files_with_one_graph_run_theirs(models, tmp_path):
    from spvit_tf import benchmark

    dense = models[0]
    budgets = _two_signature_tflite(tmp_path / "budgets.tflite")
    assert benchmark.resolve_signatures([dense, budgets], "keep_0.5") == {budgets: "keep_0.5"}
    with pytest.raises(SpvitError, match="has no signature 'keep_9'; its signatures: keep_0.5"):
        benchmark.resolve_signatures([budgets], "keep_9")
    out = tmp_path / "out"
    result = run_cli(f"--models={dense},{budgets}", "--signature=keep_0.5", "--runs=3",
                     "--warmup=1", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr
    rows, comparisons, meta = bench_results.read_results(out / "results.json")
    assert [(r.model, r.signature, r.status) for r in rows] == [
        ("dense", "", "ok"), ("budgets", "keep_0.5", "ok")]
    assert meta["signature"] == "keep_0.5" and len(comparisons) == 1  # still paired
    assert "| budgets [keep_0.5] |" in (out / "results.md").read_text()
    bad = run_cli(f"--models={budgets}", "--signature=keep 0.5", f"--output_dir={out}")
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad --signature")


def test_the_phone_script_finds_signatures_in_the_cards(tmp_path):
    budgets, dense = tmp_path / "budgets.tflite", tmp_path / "dense.tflite"
    (tmp_path / "budgets.json").write_text(json.dumps(
        {"gflops": 2.0, "signatures": {"keep_0.7": {"gflops": 2.0}, "keep_0.4": {"gflops": 1.0}}}))
    assert bench_results.card_signatures([budgets, dense], "keep_0.4") == {budgets: "keep_0.4"}
    assert bench_results.card_signatures([budgets], "") == {}
    with pytest.raises(SpvitError, match="its card lists keep_0.4, keep_0.7"):
        bench_results.card_signatures([budgets], "keep_0.5")
    for model in (budgets, dense):
        model.write_bytes(b"x")
    gflops = bench_results.model_gflops([budgets], signatures={budgets: "keep_0.4"})
    assert gflops == {"budgets [keep_0.4]": 1.0}  # the signature's, not the file's first
    gflops = bench_results.model_gflops([dense, budgets], ["budgets:5"],
                                        signatures={budgets: ["keep_0.7", "keep_0.4"]})
    assert gflops == {"budgets [keep_0.7]": 5.0, "budgets [keep_0.4]": 5.0}  # the flag: the file


def test_all_signatures_times_every_signature_as_a_row_of_its_own(models, tmp_path):
    """--all_signatures: one row per signature of a multi-budget file, each with its own FLOPs
    from the card and its own comparison with the dense reference; one-graph files run theirs."""
    from spvit_tf import benchmark

    dense = models[0]
    budgets = _two_signature_tflite(tmp_path / "budgets.tflite")
    (tmp_path / "budgets.json").write_text(json.dumps(
        {"gflops": 0.25, "signatures": {"keep_0.5": {"gflops": 0.25}, "keep_1": {"gflops": 1.0}}}))
    assert benchmark.every_signature([dense, budgets]) == {budgets: ["keep_0.5", "keep_1"]}
    out = tmp_path / "out"
    result = run_cli(f"--models={dense},{budgets}", "--all_signatures", "--num_threads=1,2",
                     "--runs=3", "--warmup=1", "--rounds=2", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr
    rows, comparisons, meta = bench_results.read_results(out / "results.json")
    assert [(r.model, r.signature, r.num_threads) for r in rows] == [
        ("dense", "", 1), ("dense", "", 2), ("budgets", "keep_0.5", 1), ("budgets", "keep_0.5", 2),
        ("budgets", "keep_1", 1), ("budgets", "keep_1", 2)]
    assert all(r.status == "ok" and r.runs == 6 and r.median_ms > 0 for r in rows)
    assert meta["all_signatures"] is True and meta["gflops"] == {
        "dense": 2.0, "budgets [keep_0.5]": 0.25, "budgets [keep_1]": 1.0}
    assert [(c.pruned, c.num_threads, c.flops_ratio) for c in comparisons] == [
        ("budgets [keep_0.5]", 1, 0.125), ("budgets [keep_0.5]", 2, 0.125),
        ("budgets [keep_1]", 1, 0.5), ("budgets [keep_1]", 2, 0.5)]
    by_name = {(r.name, r.num_threads): r.median_ms for r in rows}
    for c in comparisons:  # each signature against the dense row, not the other signature's
        assert c.pruned_ms == by_name[c.pruned, c.num_threads]
        assert c.dense_ms == by_name["dense", c.num_threads]
    markdown = (out / "results.md").read_text()
    assert "| budgets [keep_0.5] |" in markdown and "| dense | budgets [keep_1] |" in markdown
    both = run_cli(f"--models={budgets}", "--all_signatures", "--signature=keep_1",
                   f"--output_dir={tmp_path / 'both'}")
    assert both.returncode == 2 and both.stderr.startswith("error: pass --signature=keep_1")
    assert not (tmp_path / "both").exists()


def test_merge_keeps_earlier_rows_and_replaces_the_ones_timed_again():
    earlier_rows = [row("dense", 40.0), row("pruned", 30.0), row("pruned", 20.0, threads=2)]
    earlier = (earlier_rows, bench_results.compare(earlier_rows, "dense", "pruned", 4.0, 2.0),
               {"created": "first", "gflops": {"dense": 4.0, "pruned": 2.0}})
    now_rows = [row("pruned", 31.0), dataclasses.replace(row("multi", 9.0), signature="keep_1")]
    rows, comparisons, meta = bench_results.merge_results(
        earlier, (now_rows, [], {"created": "second", "gflops": {"multi [keep_1]": 1.0}}))
    assert [(r.name, r.num_threads, r.median_ms) for r in rows] == [
        ("dense", 1, 40.0), ("pruned", 1, 31.0), ("pruned", 2, 20.0), ("multi [keep_1]", 1, 9.0)]
    assert comparisons == []  # the earlier pairs involved "pruned", timed again
    assert meta["created"] == "second" and meta["timed"] == ["pruned cpu t1", "multi [keep_1] cpu t1"]
    assert meta["gflops"] == {"dense": 4.0, "pruned": 2.0, "multi [keep_1]": 1.0}
    assert meta["earlier_runs"] == [{"created": "first", "gflops": {"dense": 4.0, "pruned": 2.0}}]
    again = bench_results.merge_results((rows, comparisons, meta),
                                        ([row("other", 1.0)], [], {"created": "third"}))
    assert [m["created"] for m in again[2]["earlier_runs"]] == ["first", "second"]  # oldest first
    assert "earlier_runs" not in again[2]["earlier_runs"][1] and len(again[0]) == 5
    kept = bench_results.merge_results(earlier, ([row("new", 1.0)], [], {}))[1]
    assert kept == earlier[1]  # pairs of rows not timed again stay


def test_merge_cli_adds_a_new_file_to_the_results_in_the_output_dir(models, tmp_path):
    dense, pruned = models
    out = tmp_path / "out"
    first = run_cli(f"--models={dense},{pruned}", "--runs=2", "--warmup=0", f"--output_dir={out}")
    assert first.returncode == 0, first.stderr
    before, _, before_meta = bench_results.read_results(out / "results.json")
    budgets = _two_signature_tflite(tmp_path / "budgets.tflite")
    merged = run_cli(f"--models={budgets}", "--all_signatures", "--merge", "--runs=3",
                     "--warmup=0", f"--output_dir={out}")
    assert merged.returncode == 0, merged.stderr
    assert "(2 rows timed now, merged with 2 earlier ones)" in merged.stdout
    rows, _, meta = bench_results.read_results(out / "results.json")
    assert rows[:2] == before and [(r.name, r.runs) for r in rows[2:]] == [
        ("budgets [keep_0.5]", 3), ("budgets [keep_1]", 3)]
    assert meta["earlier_runs"] == [before_meta] and meta["gflops"]["dense"] == 2.0
    markdown = (out / "results.md").read_text()
    assert "| dense |" in markdown and "| budgets [keep_1] |" in markdown
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "results.json").write_text("{")
    bad = run_cli(f"--models={budgets}", "--merge", f"--output_dir={tmp_path / 'damaged'}")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "results.json" in bad.stderr
    assert (tmp_path / "damaged" / "results.json").read_text() == "{"
