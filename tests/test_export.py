"""The exporter on a tiny trained-run stand-in: every format, its checks, cards, metadata and
errors."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import spvit_tf
from conftest import REPO
from spvit_tf import export
from spvit_tf.data import load_pixels
from spvit_tf.preprocessing import Preprocessor
from spvit_tf.tflite.convert import FORMATS, MOBILE_INT8_OPS, convert, serving_model
from spvit_tf.tflite.gpu import GPU_FORMATS, gpu_compatibility, gpu_twin
from spvit_tf.tflite.graph import Graph
from spvit_tf.tflite.runner import keras_logits, run_tflite
from spvit_tf.workdir import FINAL_WEIGHTS, write_run

CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
VIT = dict(image_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=10)
PIT = dict(image_size=32, patch_size=4, stride=2, num_classes=10, base_dims=(16, 16, 16),
           depth=(2, 2, 2), heads=(1, 2, 4))
PRUNING = dict(method="spvit", locations=[1, 2, 3], keep_ratios=[0.75, 0.5, 0.25])
PREPROCESSOR = Preprocessor(32, crop_ratio=1.0)  # ImageNet mean/std, as the CIFAR runs train
EXAMPLES = 100


def make_workdir(path, method="spvit"):
    """A finished run's workdir as `spvit_tf.train` writes it (run.json, final weights)."""
    keras.utils.set_random_seed(0)
    config = dict(VIT, pruning=dict(PRUNING, method=method))
    model = spvit_tf.create_model("deit_tiny_patch16_224", **config)
    (path / "final").mkdir(parents=True)
    model.save_weights(path / FINAL_WEIGHTS)
    write_run(path, {
        "model": "deit_tiny_patch16_224", "model_config": config, "mode": method,
        "data": "cifar10_embedded", "class_names": list(CIFAR),
        "preprocessing": PREPROCESSOR.to_json(),
    })
    return path


def pruning_methods():
    """Every registered pruning method, so that a new one is covered without editing a test."""
    from spvit_tf.pruning.methods import method_names

    return tuple(method_names())


def run_cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "spvit_tf.export", *flags], cwd=REPO, capture_output=True,
        text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One CLI export of every format (and the GPU variants) of a tiny pruned DeiT."""
    workdir = make_workdir(tmp_path_factory.mktemp("run") / "cifar_demo")
    out = tmp_path_factory.mktemp("tflite")
    result = run_cli(f"--workdir={workdir}", f"--formats={','.join(FORMATS)}",
                     "--gpu_friendly", f"--output_dir={out}", f"--eval_examples={EXAMPLES}",
                     "--calibration_examples=50")
    assert result.returncode == 0, result.stderr
    cards = {p.stem.removeprefix("cifar_demo_"): json.loads(p.read_text())
             for p in out.glob("*.json") if not p.name.endswith(".fpga_report.json")}
    return workdir, out, cards


def tflite_ops(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def test_every_format_has_a_model_file_card_and_summary(exported):
    _, out, cards = exported
    assert set(cards) == set(FORMATS) | {"gpu_fp32", "gpu_fp16"}
    assert (out / "labels.txt").read_text().splitlines() == list(CIFAR)
    for name, card in cards.items():
        path = out / f"cifar_demo_{name}.tflite"
        assert card["file"] == path.name and card["size_bytes"] == path.stat().st_size
        assert (out / f"cifar_demo_{name}.md").read_text().startswith(f"# {path.name}")
        assert card["model"] == "deit_tiny_patch16_224" and card["family"] == "vit"
        assert card["pruning"]["locations"] == [1, 2, 3] and card["labels"] == "labels.txt"
        assert card["gflops"] > 0 and card["params"] > 0 and card["ops"]
        assert set(card["converter"]) >= {"tensorflow", "keras", "ai_edge_litert"}
        assert card["input"]["shape"] == [1, 32, 32, 3] and card["input"]["layout"] == "NHWC, RGB"
        np.testing.assert_array_equal(card["input"]["mean"], PREPROCESSOR.pixel_mean)
        np.testing.assert_array_equal(card["input"]["std"], PREPROCESSOR.pixel_std)
        assert Preprocessor.from_json(card["input"]["preprocessor"]) == PREPROCESSOR
        evaluation = card["evaluation"]
        assert evaluation["examples"] == EXAMPLES and evaluation["data"] == "cifar10_embedded"
        assert 0 <= evaluation["top1_agreement"] <= 1
        assert evaluation["accuracy_drop"] == pytest.approx(
            evaluation["keras_accuracy"] - evaluation["tflite_accuracy"])
    # uint8 camera bytes in: cast (float formats) or a scale-1 quantize (int8) in the graph
    assert cards["fp32"]["input"]["dtype"] == "uint8" and cards["fp32"]["output"]["dtype"] == "float32"
    assert cards["int8"]["input"]["dtype"] == "uint8"
    assert (cards["int8"]["input"]["scale"], cards["int8"]["input"]["zero_point"]) == (1.0, 0)
    assert cards["fpga_int8"]["input"]["dtype"] == cards["fpga_int8"]["output"]["dtype"] == "int8"
    # the GPU files take float pixels: the delegate has no uint8 input CAST
    assert cards["gpu_fp32"]["input"]["dtype"] == cards["gpu_fp16"]["input"]["dtype"] == "float32"
    assert cards["gpu_fp32"]["input"]["value_range"] == [0, 255]
    assert cards["gpu_fp32"]["gflops"] > cards["fp32"]["gflops"]  # matmul selection costs MACs


def test_float_exports_match_keras(exported):
    workdir, out, cards = exported
    assert cards["fp32"]["checks"]["max_abs_logit_diff"] <= 1e-4
    assert cards["gpu_fp32"]["checks"]["max_abs_logit_diff"] <= 1e-4
    assert cards["fp16"]["checks"]["median_abs_logit_diff"] <= 1e-2
    assert cards["fp32"]["evaluation"]["top1_agreement"] == 1.0
    # and independently of the exporter's own check
    source = export.source_from_workdir(str(workdir))
    assert source.preprocessor == PREPROCESSOR
    model = export.build_model(source)
    pixels, _, _ = load_pixels("cifar10_embedded", "eval", 16, source.preprocessor)
    reference = keras_logits(model, pixels, source.preprocessor)
    content = (out / "cifar_demo_fp32.tflite").read_bytes()
    logits = run_tflite(content, pixels, "uint8")
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0)
    content = (out / "cifar_demo_gpu_fp32.tflite").read_bytes()  # float pixels in
    logits = run_tflite(content, pixels, "pixels")
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0)


def test_quantized_exports_report_agreement_and_stay_integer(exported):
    _, out, cards = exported
    for name in ("dynamic", "int8", "int16x8", "fpga_int8"):
        assert "top1_agreement" in cards[name]["evaluation"]
    assert cards["fpga_int8"]["float_islands"] == {}
    for name in ("int8", "fpga_int8"):  # int8 DIV aborts on a divisor near zero: none allowed
        assert "DIV" not in cards[name]["ops"], cards[name]["ops"]
    assert "TOPK_V2" in cards["int16x8"]["float_islands"]  # ai-edge-quantizer keeps it float
    assert cards["int8"]["evaluation"]["top1_agreement"] > 0.6  # chance is 0.1


def delegate_partitions(path):
    interpreter = tflite_ops(path)
    interpreter.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def test_phone_int8_quantizes_the_weighted_ops_and_keeps_xnnpack_in_one_piece(exported):
    _, out, cards = exported
    graph = Graph.read((out / "cifar_demo_int8.tflite").read_bytes())
    weighted = [op for op in graph.ops if op["type"] in MOBILE_INT8_OPS]
    assert {op["type"] for op in weighted} == {"FULLY_CONNECTED", "CONV_2D"}
    for op in weighted:  # activations in, weights and results all int8
        assert {graph.tensors[t]["dtype"] for t in op["inputs"][:2] + op["outputs"]} == {"int8"}
    islands = cards["int8"]["float_islands"]
    assert {"GELU", "SOFTMAX", "BATCH_MATMUL"} <= set(islands)
    assert not set(islands) & set(MOBILE_INT8_OPS)
    assert "float by design" in islands["GELU"]["why"]
    # The float islands are what XNNPACK runs: the delegate splits no more than for fp32,
    # while the integer-only graph leaves ops it has no int8 kernel for outside it.
    partitions = {f: delegate_partitions(out / f"cifar_demo_{f}.tflite")
                  for f in ("fp32", "int8", "fpga_int8")}
    assert partitions["int8"] <= partitions["fp32"] < partitions["fpga_int8"], partitions


def test_fpga_export_is_integer_only_with_a_full_op_report(exported):
    _, out, _ = exported
    interpreter = tflite_ops(out / "cifar_demo_fpga_int8.tflite")
    dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    assert not dtypes & {"float32", "float16"}, dtypes
    report = json.loads((out / "cifar_demo_fpga_int8.fpga_report.json").read_text())
    assert report["all_integer"] and len(report["ops"]) == len(interpreter._get_ops_details())
    for op in report["ops"]:
        assert op["type"] and op["version"] >= 1
        for tensor in op["inputs"] + op["outputs"]:
            if tensor is not None:
                assert {"dtype", "shape", "scale", "zero_point"} <= set(tensor)
                assert tensor["dtype"] in ("int8", "int32", "int64", "bool")
    quantized = [t for op in report["ops"] for t in op["outputs"] if t["dtype"] == "int8"]
    assert quantized and all(t["scale"] is not None and t["zero_point"] is not None for t in quantized)


def test_only_builtin_ops_and_gpu_variant_without_topk_or_gather(exported):
    _, out, cards = exported
    for path in out.glob("*.tflite"):
        ops = {op["op_name"] for op in tflite_ops(path)._get_ops_details()}
        assert not any("FLEX" in op or "CUSTOM" in op for op in ops), (path.name, ops)
    for name in ("gpu_fp32", "gpu_fp16"):
        ops = set(cards[name]["ops"])
        assert "BATCH_MATMUL" in ops and not ops & {"TOPK_V2", "GATHER", "GATHER_ND"}, ops
        gpu = cards[name]["gpu"]
        assert any("looks compatible with GPU delegate" in line for line in gpu["analyzer"])
        assert gpu["cpu_fallback"] == {} and gpu["compatible"], gpu["cpu_fallback"]
        assert "every op delegated" in (out / f"cifar_demo_{name}.md").read_text()
    # the gather variant is the one that needs the CPU for selection
    assert any(key.startswith("TOPK_V2") for key in cards["fp32"]["gpu"]["cpu_fallback"])


@pytest.mark.parametrize("method", ("dense",) + pruning_methods())
def test_every_gpu_variant_of_every_method_runs_wholly_on_the_gpu_delegate(method):
    """By the exporter's delegate rules, as its cards report them: no op left to the CPU."""
    keras.utils.set_random_seed(0)
    config = dict(VIT) if method == "dense" else dict(VIT, pruning=dict(PRUNING, method=method))
    gpu = gpu_twin(spvit_tf.create_model("deit_tiny_patch16_224", **config))
    graph = serving_model(gpu, export.Options(formats=("fp32",)).gpu_io, PREPROCESSOR)
    for fmt in GPU_FORMATS:
        content = convert(graph, fmt)
        verdict = gpu_compatibility(content, Graph.read(content))
        assert verdict["cpu_fallback"] == {} and verdict["compatible"], \
            (fmt, verdict["cpu_fallback"])


def test_every_file_carries_tflite_metadata_with_the_packed_labels(exported):
    from spvit_tf.tflite import metadata

    if metadata.load_schema() is None:
        pytest.skip(f"{metadata.SCHEMA_MODULE} not installed ({metadata.INSTALL})")
    _, out, cards = exported
    for name, card in cards.items():
        meta = metadata.read((out / card["file"]).read_bytes())
        assert meta["name"] == f"cifar_demo_{name}" and meta["min_parser_version"] == "1.0.0"
        assert "spvit token pruning before blocks [1, 2, 3] keeping [0.75, 0.5, 0.25]" \
            in meta["description"]
        assert f"{card['gflops']:.4f} GFLOPs" in meta["description"]
        assert meta["version"].startswith(spvit_tf.__version__ + "+weights.")
        assert meta["files"] == {"labels.txt": (out / "labels.txt").read_bytes()}
        assert meta["output"][0]["associated_files"] == {"labels.txt": "TENSOR_AXIS_LABELS"}
        (image,) = meta["input"]
        assert (image["content"], image["color_space"], image["size"]) == (
            "ImageProperties", "RGB", [32, 32])
        if name.startswith("gpu"):  # float pixels, normalised in the graph: identity for the app
            assert image["normalization"] == {"mean": [0.0], "std": [1.0]}
        else:  # integer bytes, normalised in the graph: nothing for the app to apply
            assert image["normalization"] is None
        assert card["tflite_metadata"]["written"], name
        assert "TFLite metadata (min parser 1.0.0)" in (out / f"cifar_demo_{name}.md").read_text()


def test_without_the_metadata_schema_the_files_have_none_and_say_so(tmp_path, monkeypatch):
    from spvit_tf.tflite import metadata

    monkeypatch.setattr(metadata, "load_schema", lambda: None)
    workdir = make_workdir(tmp_path / "run")
    lines = []
    options = export.Options(formats=("fp32",), output_dir=str(tmp_path / "out"), eval_examples=8)
    (card,) = export.export(export.source_from_workdir(str(workdir)), options, log=lines.append)
    assert [line for line in lines if "metadata" in line] == [metadata.MISSING]
    assert card["tflite_metadata"] == {"written": False, "reason": metadata.MISSING}
    content = (tmp_path / "out" / "run_fp32.tflite").read_bytes()
    assert metadata.metadata_bytes(content) is None and metadata.packed_files(content) == {}
    card_md = (tmp_path / "out" / "run_fp32.md").read_text()
    assert f"TFLite metadata: none ({metadata.MISSING})" in card_md


def test_budgets_file_has_a_signature_per_budget_and_the_weights_once(tmp_path):
    """One trained model at two keep-ratio sets: two signatures in one file, each faithful
    to its Keras twin, with its accuracy and host latency in the card."""
    workdir = make_workdir(tmp_path / "run")
    out = tmp_path / "out"
    options = export.Options(formats=("fp32",), output_dir=str(out), eval_examples=16,
                             budgets=("0.75:0.5:0.25", "0.5"), latency_runs=3)
    source = export.source_from_workdir(str(workdir))
    single, multi = export.export(source, options, log=lambda line: None)
    keys = ["keep_0.5", "keep_0.75_0.5_0.25"]  # subgraph order: the converter sorts the keys
    assert multi["file"] == "run_budgets_fp32.tflite" and list(multi["signatures"]) == keys
    content = (out / multi["file"]).read_bytes()
    assert multi["size_bytes"] == len(content) and json.loads(
        (out / "run_budgets_fp32.json").read_text())["signatures"] == multi["signatures"]
    budgets = multi["budgets"]
    assert budgets["single_budget_file"] == single["file"] == "run_fp32.tflite"
    assert budgets["size_ratio"] == len(content) / single["size_bytes"] <= 1.15  # weights once
    assert [g.signature for g in Graph.read_all(content)] == keys
    assert budgets["first_subgraph"] == "keep_0.5"  # what a plain invoke runs: the card's top
    for graph in Graph.read_all(content):
        graph.check_builtin(graph.signature)
    model = export.build_model(source)
    pixels, labels, _ = load_pixels("cifar10_embedded", "eval", 16, source.preprocessor)
    for key, ratios in zip(keys, ([0.5, 0.25, 0.125], [0.75, 0.5, 0.25])):
        entry = multi["signatures"][key]
        assert entry["keep_ratios"] == ratios and entry["checks"]["max_abs_logit_diff"] <= 1e-4
        twin = spvit_tf.create_model(
            "deit_tiny_patch16_224", **dict(source.model_config,
                                            pruning=dict(PRUNING, keep_ratios=ratios)))
        twin.set_weights(model.get_weights())
        logits = run_tflite(content, pixels, "uint8", signature=key)
        np.testing.assert_allclose(logits, keras_logits(twin, pixels, source.preprocessor),
                                   atol=1e-4, rtol=0)
        assert entry["evaluation"]["tflite_accuracy"] == float(np.mean(logits.argmax(1) == labels))
        assert entry["host_latency"]["status"] == "ok" and entry["host_latency"]["median_ms"] > 0
    smaller, trained = (multi["signatures"][key] for key in keys)
    assert trained["tokens_per_block"] == single["tokens_per_block"]
    assert smaller["gflops"] == multi["gflops"] < trained["gflops"]
    assert multi["evaluation"] == smaller["evaluation"]
    np.testing.assert_allclose(run_tflite(content, pixels, "uint8"),  # subgraph 0
                               run_tflite(content, pixels, "uint8", signature="keep_0.5"))
    card_md = (out / "run_budgets_fp32.md").read_text()
    assert "2 signatures, one per token budget, sharing the weights" in card_md
    assert "`keep_0.5`: keep [0.5, 0.25, 0.125]" in card_md
    with pytest.raises(spvit_tf.SpvitError, match="no signature 'keep_0.9'"):
        run_tflite(content, pixels[:1], "uint8", signature="keep_0.9")


def test_fpga_export_names_the_float_ops_it_cannot_remove(tmp_path):
    # `hard` has no package token, so TOPK_V2's values go unused and the converter keeps it float
    workdir = make_workdir(tmp_path / "hard_run", method="hard")
    source = export.source_from_workdir(str(workdir))
    options = export.Options(formats=("fpga_int8",), output_dir=str(tmp_path / "out"),
                             eval_examples=8, calibration_examples=8)
    with pytest.raises(spvit_tf.SpvitError, match=r"not integer-only: .*TOPK_V2"):
        export.export(source, options, log=lambda line: None)
    assert not list((tmp_path / "out").glob("*fpga*"))


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    workdir = make_workdir(tmp_path / "run")
    out = tmp_path / "out"
    pixel_scale = make_workdir(tmp_path / "pixel_scale")  # an old run.json with 0-255 mean/std
    run = json.loads((pixel_scale / "run.json").read_text())
    del run["preprocessing"]
    write_run(pixel_scale, dict(run, image_size=32, crop_ratio=1.0, mean=[123.675, 116.28, 103.53],
                                std=[58.395, 57.12, 57.375]))
    cases = [
        ((f"--workdir={tmp_path / 'nothing'}",), "not a training workdir"),
        ((f"--workdir={workdir}", "--formats=fp32,int4"), "unknown format"),
        ((f"--workdir={workdir}", f"--checkpoint={tmp_path / 'missing.h5'}"), "not found"),
        (("--model=deit_tiny_patch16_224", f"--checkpoint={tmp_path / 'missing.h5'}"), "does not exist"),
        (("--model=deit_tiny_patch16_224", "--formats=int8"), "calibration images"),
        ((f"--workdir={workdir}", "--io=rgb"), "--io"),
        ((f"--workdir={workdir}", "--gpu_io=rgb"), "--gpu_io"),
        ((f"--workdir={workdir}", "--eval_examples=0"), "eval_examples"),
        ((f"--workdir={pixel_scale}",), "on the 0-1 scale"),
        ((f"--workdir={workdir}", "--budgets=0.5"), "at least two budgets"),
        ((f"--workdir={workdir}", "--budgets=0.5,0.7:0.2"), "has 2 keep ratios for 3"),
        ((f"--workdir={workdir}", "--budgets=0.5,0.4:0.5:0.2"), "must not increase"),
        ((f"--workdir={workdir}", "--budgets=0.5,1.5"), "not a keep ratio in (0, 1]"),
        ((f"--workdir={workdir}", "--budgets=0.5,0.4", "--formats=int8"), "add one of them"),
        (("--model=deit_tiny_patch16_224", "--budgets=0.5,0.4"), "needs a token-pruned model"),
    ]
    for flags, message in cases:
        result = run_cli(*flags, f"--output_dir={out}")
        assert result.returncode == 2, (flags, result.stderr)
        assert result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1, result.stderr
        assert message in result.stderr, result.stderr
    assert not out.exists()
