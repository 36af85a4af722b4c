"""The latency table: its schema, and that it predicts a pruned model's measured latency."""

import json
import os
import subprocess
import sys

import keras
import pytest

import spvit_tf
from conftest import REPO
from spvit_tf import budget, export, flops, latency_table
from spvit_tf.errors import SpvitError

MODEL = "deit_tiny_patch16_224"
CONFIG = dict(image_size=112)  # DeiT-Ti's widths and depth over 7x7 patches: a short test
PRUNING = dict(method="spvit", locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))


def full_graph(**overrides):
    model = latency_table.trained_like(spvit_tf.create_model(MODEL, **CONFIG, **overrides))
    images = keras.Input((112, 112, 3), batch_size=1)
    return keras.Model(images, model(images))


@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_table_predicts_a_pruned_deit_tiny_within_10_percent(tmp_path, fmt):
    model = latency_table.trained_like(spvit_tf.create_model(MODEL, **CONFIG))
    graphs, stages = latency_table.component_graphs(model)
    graphs["full_dense"], graphs["full_pruned"] = full_graph(), full_graph(pruning=PRUNING)
    paths = latency_table.write_graphs(graphs, tmp_path, fmt)
    # The full models are timed in the same interleaved rounds as the parts, so a burst of
    # load on a shared machine shifts both sides alike.
    times, device = latency_table.time_host(paths, num_threads=1, runs=100, warmup=10, rounds=5)
    table = latency_table.assemble(MODEL, CONFIG, stages, times, "host", device, 1, 100, 5, fmt)
    assert budget.validate_latency_table(table)["tflite_format"] == fmt
    assert table["stages"][0]["tokens"][0] == 2 and 50 in table["stages"][0]["tokens"]
    for name, pruning in (("full_dense", None), ("full_pruned", PRUNING)):
        predicted = budget.architecture_latency_ms(
            table, flops.architecture(MODEL, **CONFIG, pruning=pruning))
        assert abs(predicted / times[name] - 1) <= 0.10, (name, predicted, times[name], table)


def test_int8_parts_are_the_phone_int8_graphs(tmp_path):
    model = spvit_tf.create_model(MODEL, image_size=32, num_classes=10)
    block = latency_table.block_graph(model.blocks[0], 5)
    prune = latency_table.prune_graph(192, 3, 4, 1, (2, 2), False)  # two inputs: tokens, scores
    paths = latency_table.write_graphs({"block": block, "prune": prune}, tmp_path, "int8")
    graph = export.Graph.read(paths[0].read_bytes())
    weights = [graph.tensors[op["inputs"][1]]["dtype"] for op in graph.ops
               if op["type"] == "FULLY_CONNECTED"]
    assert len(weights) == 4 and set(weights) == {"int8"}, weights  # qkv, proj, two MLP layers
    assert [graph.tensors[t]["dtype"] for t in graph.inputs + graph.outputs] == ["float32"] * 2
    assert export.Graph.read(paths[1].read_bytes()).op_counts()["TOPK_V2"] == 1


def run_cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "spvit_tf.latency_table", *flags], cwd=REPO,
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_cli_writes_a_table_the_budget_reads(tmp_path):
    output = tmp_path / "table.json"
    result = run_cli(f"--model={MODEL}", "--image_size=32", "--num_classes=10", "--tokens=2,5",
                     "--num_threads=1", "--runs=5", "--warmup=1", "--rounds=1", "--format=int8",
                     f"--output={output}")
    assert result.returncode == 0, result.stderr
    assert " int8 on " in result.stdout
    table = budget.load_latency_table(output, model=MODEL)
    assert table["tflite_format"] == "int8"
    assert table["model_config"] == {"image_size": 32, "num_classes": 10}
    assert table["target"] == "host" and table["backend"] == "cpu" and table["num_threads"] == 1
    (stage,) = table["stages"]
    assert (stage["dim"], stage["heads"], stage["blocks"]) == (192, 3, list(range(12)))
    assert stage["tokens"] == [2, 5]  # 2x2 patches + the class token: the dense length is 5
    assert set(table["fixed_ms"]) == {"patch_embed", "head"}
    assert json.loads(output.read_text())["format"] == "spvit_tf.latency_table.v1"


def test_token_grid_specs():
    auto = latency_table.token_grid(197)
    assert len(auto) == latency_table.AUTO_POINTS and auto[0] == 2 and auto[-1] == 201
    assert latency_table.token_grid(197, "auto,96-99,150") == sorted({*auto, 96, 97, 98, 99, 150})
    assert latency_table.token_grid(197, "5,3") == [3, 5]
    for bad in ("a,b", "9-7", "0", "-3", "", "2-x"):
        with pytest.raises(SpvitError, match="--tokens must be"):
            latency_table.token_grid(197, bad)


def test_cli_rejects_bad_input_in_one_line(tmp_path):
    for flags, message in [
        ((f"--model={MODEL}",), "--output"),
        ((f"--model={MODEL}", f"--output={tmp_path}/t.json", "--tokens=a,b"), "--tokens"),
        ((f"--model={MODEL}", f"--output={tmp_path}/t.json", "--num_threads=0"), "num_threads"),
        ((f"--model={MODEL}", f"--output={tmp_path}/t.json", "--target=phone"), "--target"),
        ((f"--model={MODEL}", f"--output={tmp_path}/t.json", "--format=fpga_int8"), "format"),
    ]:
        result = run_cli(*flags)
        assert result.returncode == 2 and result.stderr.startswith("error:"), result.stderr
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
        assert not (tmp_path / "t.json").exists()


def test_adb_target_times_through_the_phone_benchmark(tmp_path, monkeypatch):
    from test_android_benchmark import FAKE_ADB  # a phone whose benchmark_model takes 27.9 ms

    adb = tmp_path / "adb"
    adb.write_text(FAKE_ADB.replace("PYTHON", sys.executable))
    adb.chmod(0o755)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(tmp_path / "device"))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "EMU01:device")
    paths = [tmp_path / "stage0_block_5.tflite", tmp_path / "head.tflite"]
    for path in paths:
        path.write_bytes(b"model")
    times, device, serial = latency_table.time_adb(paths, None, 1, 5, 1, binary, adb)
    assert times == {"stage0_block_5": 27.9, "head": 27.9}
    assert serial == "EMU01" and device.startswith("Pixel 7")


def test_trained_like_weights_keep_ops_a_fresh_model_folds_away():
    from spvit_tf import export
    from spvit_tf.layers import LayerNorm

    def ops_of(norm):
        (x,) = latency_table._inputs((5, 8))
        return sum(export.Graph.read(export.convert(keras.Model(x, norm(x)), "fp32"))
                   .op_counts().values())

    fresh, norm = LayerNorm(), LayerNorm()
    fresh.build((None, 5, 8)), norm.build((None, 5, 8))
    assert latency_table.trained_like(norm) is norm
    assert all((w.numpy() != f.numpy()).all()
               for w, f in zip(norm.trainable_weights, fresh.trainable_weights))
    # A unit scale and zero shift are folded away with their MUL and ADD; trained ones stay.
    assert ops_of(norm) == ops_of(fresh) + 2
