"""The latency table: its schema, its arithmetic on hand-written timings, the CLI.

How well a measured table predicts a real model's latency is a timing claim, and a busy
machine moves timings: benchmarks/latency_table_prediction.py measures and logs it.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

import spvit_tf
from conftest import REPO
from spvit_tf import budget, flops, latency_table
from spvit_tf.tflite.convert import convert
from spvit_tf.tflite.graph import Graph
from spvit_tf.errors import SpvitError

MODEL = "deit_tiny_patch16_224"
CONFIG = dict(image_size=112)  # DeiT-Ti's widths and depth over 7x7 patches: a short test
PRUNING = dict(method="spvit", locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))


# Hand-written timings (ms) for DeiT-Ti at 112 px: 7x7 patches + the class token = 50 tokens
# in every dense block. Lone parts are linear in tokens, so the interpolated values between
# grid points are exact and every prediction below is a sum one can do by hand.
EMBED, HEAD, EXCESS = 0.3, 0.05, 0.04  # EXCESS: a block's extra ms inside the model


def block_alone(t):
    return 0.2 + 0.01 * t


def selector(t):
    return 0.01 + 0.001 * t


def prune(t):
    return 0.005 + 0.0005 * t


def deit_tiny_stages():
    """`component_graphs`' stage list for DeiT-Ti at 112 px (one stage of 12 blocks)."""
    tokens = sorted(set(latency_table.token_grid(50)) | {50})
    return [{"dim": 192, "heads": 3, "blocks": list(range(12)), "tokens": tokens,
             "dense_tokens": 50}]


def synthetic_times(stages):
    """The timings `time_host` would return for every part `component_graphs` names."""
    times = {"patch_embed": EMBED, "head": HEAD}
    for t in stages[0]["tokens"]:
        times.update({f"stage0_block_{t}": block_alone(t), f"stage0_selector_{t}": selector(t),
                      f"stage0_prune_{t}": prune(t)})
    # The dense model timed up to the end of the stage: embedding + 12 blocks, each slower
    # inside the model than alone by EXCESS (weights streamed back into the caches).
    times["stage0_in_model"] = EMBED + 12 * (block_alone(50) + EXCESS)
    return times


def test_table_assembles_lone_parts_and_the_in_model_excess():
    stages = deit_tiny_stages()
    times = synthetic_times(stages)
    table = latency_table.assemble(MODEL, CONFIG, stages, times, "host", "test", 1, 100, 5, "int8")
    assert latency_table.validate_latency_table(table)["tflite_format"] == "int8"
    (stage,) = table["stages"]
    assert stage["tokens"][0] == 2 and 50 in stage["tokens"] and "dense_tokens" not in stage
    assert stage["in_model_ms_per_block"] == pytest.approx(EXCESS)
    assert stage["block_ms"] == pytest.approx([block_alone(t) + EXCESS for t in stage["tokens"]])
    assert stage["selector_ms"] == [selector(t) for t in stage["tokens"]]
    assert stage["prune_ms"] == [prune(t) for t in stage["tokens"]]
    assert table["fixed_ms"] == {"patch_embed": EMBED, "head": HEAD}
    assert (table["runs"], table["rounds"], table["num_threads"]) == (100, 5, 1)


def test_table_predicts_dense_and_pruned_deit_tiny_as_the_hand_computed_sums():
    stages = deit_tiny_stages()
    times = synthetic_times(stages)
    table = latency_table.assemble(MODEL, CONFIG, stages, times, "host", "test", 1, 100, 5)
    dense = budget.architecture_latency_ms(table, flops.architecture(MODEL, **CONFIG))
    # The dense model is exactly what was timed in one piece, plus the head.
    assert dense == pytest.approx(times["stage0_in_model"] + HEAD)
    assert dense == pytest.approx(EMBED + HEAD + 12 * (0.2 + 0.01 * 50 + EXCESS))

    pruned = budget.architecture_latency_ms(
        table, flops.architecture(MODEL, **CONFIG, pruning=PRUNING))
    # Keep ratios 0.7/0.49/0.343 of 49 patches at blocks 3/6/9: 34, 24 and 17 patches, one
    # package token more at each location, so blocks run 50, 36, 27 and 21 tokens; the
    # selectors and selection steps see 49, 34 and 24 patch tokens.
    blocks = 3 * sum(block_alone(t) + EXCESS for t in (50, 36, 27, 21))
    locations = sum(selector(n) + prune(n) for n in (49, 34, 24))
    assert pruned == pytest.approx(EMBED + HEAD + blocks + locations)
    assert pruned == pytest.approx(7.4555)


def test_stage_excess_discounts_the_pool_and_never_makes_a_block_negative():
    """Two stages (PiT-like): a stage's in-model time counts from the previous stage's end,
    less its pool; an excess below zero lowers the lone block times, clamped at zero."""
    stages = [{"dim": 8, "heads": 1, "blocks": [0, 1], "tokens": [2, 5], "dense_tokens": 5},
              {"dim": 16, "heads": 2, "blocks": [2, 3], "tokens": [2, 3], "dense_tokens": 3}]
    times = {"patch_embed": 1.0, "pool_1": 0.5, "head": 0.1,
             "stage0_block_2": 0.5, "stage0_block_5": 1.0,
             "stage1_block_2": 0.05, "stage1_block_3": 0.4,
             "stage0_in_model": 1.0 + 2 * (1.0 + 0.25),  # +0.25 ms per block inside the model
             "stage1_in_model": 3.5 + 0.5 + 2 * (0.4 - 0.1)}  # -0.1: faster than alone
    for s, stage in enumerate(stages):
        for t in stage["tokens"]:
            times.update({f"stage{s}_selector_{t}": 0.01, f"stage{s}_prune_{t}": 0.02})
    table = latency_table.assemble("pit_ti_224", {}, stages, times)
    first, second = table["stages"]
    assert first["in_model_ms_per_block"] == pytest.approx(0.25)
    assert first["block_ms"] == pytest.approx([0.75, 1.25])
    assert second["in_model_ms_per_block"] == pytest.approx(-0.1)
    assert second["block_ms"] == pytest.approx([0.0, 0.3])  # 0.05 - 0.1 clamps to 0
    assert table["fixed_ms"] == {"patch_embed": 1.0, "pool_1": 0.5, "head": 0.1}


def test_int8_parts_are_the_phone_int8_graphs(tmp_path):
    model = spvit_tf.create_model(MODEL, image_size=32, num_classes=10)
    block = latency_table.block_graph(model.blocks[0], 5)
    prune = latency_table.prune_graph(192, 3, 4, 1, (2, 2), False)  # two inputs: tokens, scores
    paths = latency_table.write_graphs({"block": block, "prune": prune}, tmp_path, "int8")
    graph = Graph.read(paths[0].read_bytes())
    weights = [graph.tensors[op["inputs"][1]]["dtype"] for op in graph.ops
               if op["type"] == "FULLY_CONNECTED"]
    assert len(weights) == 4 and set(weights) == {"int8"}, weights  # qkv, proj, two MLP layers
    assert [graph.tensors[t]["dtype"] for t in graph.inputs + graph.outputs] == ["float32"] * 2
    assert Graph.read(paths[1].read_bytes()).op_counts()["TOPK_V2"] == 1


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
    table = latency_table.load_latency_table(output, model=MODEL)
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
    # The child `python -m spvit_tf.adb_benchmark` imports this checkout's package.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    paths = [tmp_path / "stage0_block_5.tflite", tmp_path / "head.tflite"]
    for path in paths:
        path.write_bytes(b"model")
    times, device, serial = latency_table.time_adb(paths, None, 1, 5, 1, binary, adb)
    assert times == {"stage0_block_5": 27.9, "head": 27.9}
    assert serial == "EMU01" and device.startswith("Pixel 7")


def test_trained_like_weights_keep_ops_a_fresh_model_folds_away():
    from spvit_tf.layers import LayerNorm

    def ops_of(norm):
        (x,) = latency_table._inputs((5, 8))
        return sum(Graph.read(convert(keras.Model(x, norm(x)), "fp32"))
                   .op_counts().values())

    fresh, norm = LayerNorm(), LayerNorm()
    fresh.build((None, 5, 8)), norm.build((None, 5, 8))
    assert latency_table.trained_like(norm) is norm
    assert all((w.numpy() != f.numpy()).all()
               for w, f in zip(norm.trainable_weights, fresh.trainable_weights))
    # A unit scale and zero shift are folded away with their MUL and ADD; trained ones stay.
    assert ops_of(norm) == ops_of(fresh) + 2
