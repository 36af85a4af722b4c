"""ToMe (token merging) and the pruning-method registry every method goes through."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import spvit_tf
from conftest import REPO
from spvit_tf import budget, flops
from spvit_tf.layers import Block
from spvit_tf.pruning.methods import get_method, method_names
from spvit_tf.pruning.methods.tome import masked_merge_round, merge_round, merge_rounds
from spvit_tf.pruning.tokens import TokenState, run_block

from test_pruning import PIT, PIT_PRUNING, VIT, VIT_PRUNING  # the tiny DeiT and PiT

DEIT_SCHEDULE = dict(locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))
GPU_REJECTED = {"TOPK_V2", "GATHER", "GATHER_ND", "ARG_MAX"}


def images(batch, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, 32, 32, 3)).astype("float32")


def build(method="tome", family="vit", **pruning):
    if family == "vit":
        options = dict(VIT_PRUNING, method=method, **pruning)
        return spvit_tf.create_model("deit_tiny_patch16_224", **VIT, pruning=options)
    options = dict(PIT_PRUNING, method=method, **pruning)
    return spvit_tf.create_model("pit_ti_224", **PIT, pruning=options)


def tflite(model):
    """(content, fp32 logits of `images(1)`, op names) of `model` converted to builtins."""
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((32, 32, 3), batch_size=1)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, model(inputs)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images(1))
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return content, logits, {op["op_name"] for op in interpreter._get_ops_details()}


# --- the merge itself ------------------------------------------------------------------------


def hand_made():
    """Four tokens [A0, B0, A1, B1]: A0's metric equals B0's, A1's is orthogonal to both Bs."""
    tokens = np.array([[[1.0, 0.0], [5.0, 4.0], [7.0, 7.0], [0.0, 9.0]]], "float32")
    metric = np.array([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]],
                      "float32")
    sizes = np.array([[1.0, 3.0, 1.0, 1.0]], "float32")
    return tokens, sizes, np.arange(4, dtype="int32")[None], metric


@pytest.mark.parametrize("selection", ["gather", "matmul"])
def test_merge_takes_the_size_weighted_mean_and_adds_sizes(selection):
    tokens, sizes, index, metric = hand_made()
    out, new_sizes, new_index, gone, gone_index, score = merge_round(
        tokens, sizes, index, metric, 1, selection, park=True)
    merged = (1 * tokens[0, 0] + 3 * tokens[0, 1]) / 4  # A0 (size 1) into B0 (size 3)
    # [unmerged A | all B], each in its order
    np.testing.assert_allclose(out[0], [tokens[0, 2], merged, tokens[0, 3]], rtol=1e-6)
    np.testing.assert_array_equal(new_sizes, [[1.0, 4.0, 1.0]])
    np.testing.assert_array_equal(new_index, [[2, 1, 3]])
    np.testing.assert_array_equal(gone, tokens[:, :1])  # parked at its value before the merge
    np.testing.assert_array_equal(gone_index, [[0]])
    np.testing.assert_allclose(score, [[0.0, 1.0, 0.5, 1.0]], atol=1e-6)  # (1 - cos) / 2 for A

    # Two identical tokens of size 1 merge into themselves, with size 2.
    twins = np.array([[[2.0, 3.0], [2.0, 3.0]]], "float32")
    same, twin_sizes, *_ = merge_round(twins, np.ones((1, 2), "float32"), index[:, :2],
                                       metric[:, :2], 1, selection)
    np.testing.assert_allclose(same, twins[:, :1])
    np.testing.assert_array_equal(twin_sizes, [[2.0]])


def test_masked_merge_is_the_same_merge_at_grid_positions():
    tokens, sizes, _, metric = hand_made()
    keep, order = np.ones((1, 4), "float32"), np.arange(4, dtype="float32")[None]
    out, new_keep, new_sizes, new_order, _ = masked_merge_round(
        tokens, keep, sizes, order, metric, 4, 1)
    merged = (1 * tokens[0, 0] + 3 * tokens[0, 1]) / 4
    np.testing.assert_allclose(out[0], [tokens[0, 0], merged, tokens[0, 2], tokens[0, 3]],
                               rtol=1e-6)  # the merged-away A0 keeps its value, masked
    np.testing.assert_array_equal(new_keep, [[0.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(new_sizes, [[1.0, 4.0, 1.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(new_order)[0, 1:], [1.0, 0.0, 2.0])  # A1, B0, B1


def test_rounds_never_merge_more_than_half():
    assert merge_rounds(64, 48) == ((64, 16),)
    assert merge_rounds(64, 16) == ((64, 32), (32, 16))
    assert merge_rounds(7, 1) == ((7, 4), (3, 2))
    assert merge_rounds(5, 5) == ()


# --- proportional attention ------------------------------------------------------------------


def test_a_token_of_size_m_attends_like_m_duplicates():
    block = Block(8, 2, name="block")
    rng = np.random.default_rng(0)
    cls, t, u = (rng.normal(size=(1, 1, 8)).astype("float32") for _ in range(3))
    duplicated = np.concatenate([cls, t, t, t, u], axis=1)
    reference = np.asarray(block(duplicated))
    merged = TokenState(np.concatenate([cls, t, u], axis=1), 1, 2, np.zeros((1, 2), "int32"),
                        sizes=np.array([[3.0, 1.0]], "float32"))
    out = np.asarray(run_block(block, merged).x)
    np.testing.assert_allclose(out[:, 0], reference[:, 0], atol=1e-5)  # the class token
    np.testing.assert_allclose(out[:, 1], reference[:, 1], atol=1e-5)  # the merged token
    np.testing.assert_allclose(out[:, 2], reference[:, 4], atol=1e-5)
    # The masked graph: a dropped token in the sequence changes nothing.
    masked = TokenState(np.concatenate([cls, t, u, 9 * u], axis=1), 1, 3,
                        np.zeros((1, 3), "int32"), keep=np.array([[1.0, 1.0, 0.0]], "float32"),
                        sizes=np.array([[3.0, 1.0, 5.0]], "float32"))
    out = np.asarray(run_block(block, masked).x)
    np.testing.assert_allclose(out[:, 0], reference[:, 0], atol=1e-5)
    np.testing.assert_array_equal(out[:, 3], 9 * u[:, 0])  # dropped: frozen


# --- in the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("ratios", [(0.75, 0.5, 0.25), (0.25, 0.2, 0.1)])  # 1 round / 2 rounds
def test_tome_on_tiny_deit_keeps_the_schedule_and_conserves_sizes(ratios):
    model = build(keep_ratios=ratios)
    counts = model.pruner.counts
    assert counts == tuple(round(r * 64) for r in ratios)
    x = images(2)
    out = model.forward(x)
    assert [tuple(r["index"].shape) for r in out.records] == [(2, k) for k in counts]
    assert tuple(out.patch_tokens.shape) == (2, counts[-1], 48)
    assert np.isfinite(np.asarray(out.logits)).all()
    for mode, masked in (("gather", False), ("mask", True)):  # sizes add up to the grid
        state = TokenState.start(model.embed(x), 1, 64, masked=masked)
        state = model.run_blocks(state, range(4), mode, False, [])
        weights = state.sizes if state.keep is None else state.sizes * state.keep
        np.testing.assert_allclose(np.sum(weights, axis=1), [64.0, 64.0], rtol=1e-6)
    masked = model.forward(x, mode="mask")  # the same merges on the full-length graph
    assert [float(np.sum(r["decision"][0])) for r in masked.records] == list(counts)
    np.testing.assert_allclose(masked.logits, out.logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["vit", "pit"])
def test_gpu_friendly_tome_gives_the_gathered_logits(family):
    model, twin = build(family=family), build(family=family, selection="matmul")
    twin.set_weights(model.get_weights())
    x = images(2, seed=3)
    np.testing.assert_allclose(twin(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("selection", ["gather", "matmul"])
def test_tome_converts_to_builtin_tflite(selection):
    from spvit_tf.tflite.gpu import gpu_compatibility
    from spvit_tf.tflite.graph import Graph

    model = build(selection=selection, keep_ratios=(0.25, 0.2, 0.1))  # two rounds at block 1
    content, logits, ops = tflite(model)
    np.testing.assert_allclose(logits, model(images(1)), atol=1e-4, rtol=0)
    assert not any("FLEX" in op or "CUSTOM" in op for op in ops), ops
    if selection == "matmul":
        assert not ops & GPU_REJECTED, ops
        assert gpu_compatibility(content, Graph.read(content))["compatible"]


def test_tome_fine_tune_loss_has_every_term_and_reaches_the_backbone():
    from spvit_tf.losses import spvit_loss

    model = build()
    teacher = spvit_tf.create_model("deit_tiny_patch16_224", **VIT)
    x, labels = images(2), np.array([1, 2])
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True)  # ToMe trains on the masked graph
        terms = spvit_loss(out, labels, teacher.forward(x),
                           target_ratios=VIT_PRUNING["keep_ratios"])
        total = tf.reduce_mean(terms["total"])
    assert tuple(out.patch_tokens.shape) == (2, 64, 48) and out.token_mask is not None
    assert float(np.min(terms["token"])) > 0 and float(np.max(terms["ratio"])) < 1e-9
    grads = tape.gradient(total, [model.blocks[3].attn.qkv.kernel, model.blocks[0].mlp.fc1.kernel])
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_tome_has_no_ranking_to_swap():
    model = build()
    model.pruner.ranking = "random"
    with pytest.raises(spvit_tf.SpvitError, match="tome merges tokens"):
        model.forward(images(1))


# --- cost model --------------------------------------------------------------------------------


def test_cost_model_prices_tome_at_its_counts():
    pruning = dict(DEIT_SCHEDULE, method="tome")
    cost = flops.model_cost("deit_tiny_patch16_224", pruning=pruning)
    hard = flops.model_cost("deit_tiny_patch16_224", pruning=dict(pruning, method="hard"))
    dense = flops.model_cost("deit_tiny_patch16_224")
    # 137, 96, 67 patches + the class token: no package token
    assert cost.tokens_per_block == (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3
    assert cost.block_macs == hard.block_macs
    # head-averaged keys n·D·D/H + cosines |A|·|B|·D/H; sources into destinations |A|·|B|·D
    assert cost.scorer_macs[0] == 196 * 192 * 64 + 98 * 98 * 64
    assert cost.movement_macs == (98 * 98 * 192, 69 * 68 * 192, 48 * 48 * 192)
    assert cost.total_macs == (sum(cost.block_macs) + cost.embed_macs + cost.head_macs
                               + sum(cost.scorer_macs) + sum(cost.movement_macs))
    assert cost.gflops < dense.gflops
    gpu = flops.model_cost("deit_tiny_patch16_224", pruning=dict(pruning, selection="matmul"))
    assert gpu.scorer_macs[0] == cost.scorer_macs[0] + 98 * 98 * 98  # first-maximum count
    assert gpu.movement_macs[0] == cost.movement_macs[0] + (98 - 59) * 98 * 194  # compaction
    # a step past half the tokens is priced round by round: 196 -> 98 -> 59
    deep = flops.model_cost("deit_tiny_patch16_224",
                            pruning=dict(method="tome", locations=(3,), keep_ratios=(0.3,)))
    assert deep.scorer_macs[0] == (196 * 192 * 64 + 98 * 98 * 64) + (98 * 192 * 64 + 49 * 49 * 64)


def test_budgets_price_tome_in_gflops_and_refuse_latency_tables():
    ratios, cost, dense = budget.schedule_for_budget(
        "deit_tiny_patch16_224", budget=0.7, locations=(3, 6, 9), method="tome")
    assert cost <= 0.7 < dense
    with pytest.raises(spvit_tf.SpvitError, match="price tome with cost='gflops'"):
        budget.latency_cost({}, "deit_tiny_patch16_224",
                            dict(pruning=dict(method="tome", locations=(3,))))


# --- every registered method, one path -------------------------------------------------------


def test_registry_holds_every_method_and_the_report_follows_it():
    from spvit_tf import report

    assert method_names() == ("spvit", "hard", "evit", "static", "tome")
    assert report.METHOD_ORDER == ("dense",) + method_names()
    assert report.METHOD_LABEL["tome"] == get_method("tome").label
    assert [get_method(m).learned for m in method_names()] == [True, True, False, False, False]
    assert [get_method(m).has_package for m in method_names()] == [True, False, True, False, False]
    with pytest.raises(spvit_tf.SpvitError, match="unknown pruning method 'bogus'"):
        get_method("bogus")


def test_registry_and_cost_model_import_without_tensorflow():
    code = ("import sys, spvit_tf.flops, spvit_tf.budget, spvit_tf.pruning.methods; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("method", method_names())
def test_every_method_builds_runs_exports_and_is_priced(method):
    model = build(method)
    out = model.forward(images(1))
    assert np.isfinite(np.asarray(out.logits)).all()
    _, logits, ops = tflite(model)
    np.testing.assert_allclose(logits, out.logits, atol=1e-4, rtol=0)
    assert not any("FLEX" in op or "CUSTOM" in op for op in ops), ops
    cost = flops.model_cost(model)
    packages = np.cumsum([get_method(method).has_package] * 3)
    expected = (65,) + tuple(1 + k + p for k, p in zip(model.pruner.counts, packages))
    assert cost.tokens_per_block == expected
    assert cost.gflops < flops.model_cost("deit_tiny_patch16_224", **VIT).gflops
