import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import spvit_tf
from conftest import timm_fixture
from spvit_tf.pruning import PruningConfig
from spvit_tf.pruning.methods import method_names
from spvit_tf.pruning.tokens import PACKAGE_PRIOR, TokenState, package_token

METHODS = method_names()
# Small CIFAR-shaped backbones: 64 patch tokens (DeiT), grids 15/8/4 (PiT).
VIT = dict(image_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=4, num_heads=3)
PIT = dict(
    image_size=32, patch_size=4, stride=2, num_classes=10, base_dims=(16, 16, 16),
    depth=(2, 2, 2), heads=(1, 2, 4),
)
VIT_PRUNING = dict(locations=(1, 2, 3), keep_ratios=(0.75, 0.5, 0.25))
PIT_PRUNING = dict(locations=(1, 2, 3, 5), keep_ratios=(0.6, 0.75, 0.5, 0.5))


def images(batch, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def build(family, method, **pruning):
    if family == "vit":
        return spvit_tf.create_model(
            "deit_tiny_patch16_224", **VIT, pruning=dict(VIT_PRUNING, method=method, **pruning)
        )
    return spvit_tf.create_model(
        "pit_ti_224", **PIT, pruning=dict(PIT_PRUNING, method=method, **pruning)
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_deit_token_counts_per_stage(batch):
    model = build("vit", "spvit")
    assert model.pruner.counts == (48, 32, 16)
    out = model.forward(images(batch), training=False)
    assert tuple(out.logits.shape) == (batch, 10)
    assert [tuple(r["index"].shape) for r in out.records] == [(batch, 48), (batch, 32), (batch, 16)]
    assert tuple(out.patch_tokens.shape) == (batch, 16, 48)
    masked = model.forward(images(batch), mode="mask")
    assert tuple(masked.patch_tokens.shape) == (batch, 64, 48)
    np.testing.assert_array_equal(
        [np.asarray(r["decision"]).sum(axis=1) for r in masked.records],
        [[48] * batch, [32] * batch, [16] * batch],
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_pit_token_counts_per_stage(batch):
    model = build("pit", "spvit")
    # stage grids 15x15, 8x8, 4x4; block 1 in stage 0, 2-3 in stage 1, 5 in stage 2
    assert model.pruner.counts == (135, 48, 32, 8)
    out = model.forward(images(batch))
    assert [tuple(r["index"].shape) for r in out.records] == [
        (batch, 135), (batch, 48), (batch, 32), (batch, 8)
    ]
    assert tuple(out.patch_tokens.shape) == (batch, 8, 64)
    assert tuple(out.logits.shape) == (batch, 10)


@pytest.mark.parametrize("family", ["vit", "pit"])
@pytest.mark.parametrize("method", METHODS)
def test_masked_graph_equals_gathered_graph(family, method):
    model = build(family, method)
    x = images(3, seed=1)
    gathered = model.forward(x, mode="gather")
    masked = model.forward(x, mode="mask")
    for g, m in zip(gathered.records, masked.records):  # the same tokens were kept ...
        chosen = np.zeros(np.asarray(m["decision"]).shape)
        np.put_along_axis(chosen, np.asarray(g["index"]), 1.0, axis=1)
        np.testing.assert_array_equal(chosen, np.asarray(m["decision"]))
    # ... and the logits agree: what we train is what we ship
    np.testing.assert_allclose(gathered.logits, masked.logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "pit_ti_224"])
def test_equivalence_on_the_timm_backbones(name, timm_input):
    checkpoint, _ = timm_fixture(name)
    pruning = (3, 6, 9) if name.startswith("deit") else (1, 3, 6, 9)
    ratios = (0.7, 0.49, 0.343) if name.startswith("deit") else (0.7, 0.7, 0.5, 0.6)
    model = spvit_tf.create_model(
        name, checkpoint=checkpoint, pruning=dict(locations=pruning, keep_ratios=ratios)
    )
    gathered = np.asarray(model.forward(timm_input, mode="gather").logits)
    masked = np.asarray(model.forward(timm_input, mode="mask").logits)
    np.testing.assert_allclose(gathered, masked, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["vit", "pit"])
def test_gpu_friendly_selection_matches_top_k(family):
    model = build(family, "spvit")
    twin = build(family, "spvit", selection="matmul")
    twin.set_weights(model.get_weights())
    x = images(2)
    np.testing.assert_allclose(twin(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("grouped", [True, False])  # inference's convolution, training's einsum
@pytest.mark.parametrize("shared", [False, True])
def test_headwise_dense_is_one_matmul_per_head_and_folds_an_affine_input(shared, grouped):
    from spvit_tf.pruning.selector import fold_affine, headwise_dense

    rng = np.random.default_rng(0)
    heads, c, u = 3, 8, 5
    lead = () if shared else (heads,)
    kernel, bias = rng.normal(size=lead + (c, u)), rng.normal(size=lead + (u,))
    scale, shift = rng.normal(size=lead + (c,)), rng.normal(size=lead + (c,))
    x = rng.normal(size=(2, 7, heads, c))
    per_head = lambda h, t: t if shared else t[h]  # noqa: E731
    expected = np.concatenate([
        (x[:, :, h] * per_head(h, scale) + per_head(h, shift)) @ per_head(h, kernel)
        + per_head(h, bias) for h in range(heads)], axis=-1)
    folded = fold_affine(*(t.astype("float32") for t in (kernel, bias, scale, shift)))
    out = headwise_dense(x.reshape(2, 7, heads * c).astype("float32"), *folded, grouped)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_the_training_and_inference_selector_graphs_score_alike(shared):
    """The selector's training graph (log-probabilities, einsums) and its inference graph
    (keep probability only, grouped convolutions) give the same keep probabilities, and the
    log-probabilities are those of the keep probability's two-way softmax per head."""
    from spvit_tf.pruning.selector import MultiHeadTokenSelector

    selector = MultiHeadTokenSelector(64, 4, shared_head_mlps=shared, initial_keep=0.6)
    patches = tf.random.stateless_normal((3, 10, 64), seed=(0, 1))
    keep = tf.cast(tf.random.stateless_uniform((3, 10), seed=(0, 2)) < 0.7, "float32")
    log_probs, trained = selector(patches, keep, log_probs=True)
    none, inferred = selector(patches, keep, log_probs=False)
    assert none is None and tuple(log_probs.shape) == (3, 10, 2)
    np.testing.assert_allclose(trained, inferred, atol=1e-6, rtol=0)
    assert 0.0 < float(tf.reduce_min(trained)) and float(tf.reduce_max(trained)) < 1.0
    # the weighted means of per-head log-softmaxes: a distribution's log per head, so
    # exp(log_probs) sums to at most 1 over (keep, drop), with equality for a single head
    assert float(tf.reduce_max(tf.reduce_sum(tf.exp(log_probs), -1))) <= 1.0 + 1e-5


@pytest.mark.parametrize("family", ["vit", "pit"])
@pytest.mark.parametrize("shared", [False, True])
def test_gradients_reach_every_selector_weight(family, shared):
    model = build(family, "spvit", shared_head_mlps=shared)
    x, labels = images(4), np.arange(4) % 10
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, out.logits, from_logits=True)
        ratio = sum(tf.reduce_mean(r["decision"]) for r in out.records)
        loss = tf.reduce_mean(loss) + ratio
    weights = model.pruner.trainable_weights
    grads = tape.gradient(loss, weights)
    # norm, in_proj, 3 score layers, and 2 head-gate layers where there is more than one head
    assert len(weights) == sum(14 if s.num_heads > 1 else 10 for s in model.pruner.selectors)
    for weight, grad in zip(weights, grads):
        assert grad is not None, weight.path
        assert float(tf.reduce_max(tf.abs(grad))) > 0, weight.path


def test_fresh_selectors_start_at_their_schedule_with_spread_scores():
    keras.utils.set_random_seed(0)
    model = build("vit", "spvit")
    out = model.forward(images(64), training=True)
    kept = [float(np.mean(r["decision"])) for r in out.records]
    np.testing.assert_allclose(kept, VIT_PRUNING["keep_ratios"], atol=0.05)
    # Scores differ between tokens from the start: 0.02-scaled kernels left them within
    # ~1e-6 of each other, and a 2-epoch CIFAR-10 fine-tune never separated them.
    scores = np.asarray(model.forward(images(4), mode="mask").records[0]["keep_score"])
    assert scores.std(axis=1).min() > 1e-3


def test_pit_selectors_start_from_their_stage_fraction():
    # locations 1 | 2, 3 | 5 in PiT's three stages: the stage's first location keeps its
    # ratio of a whole grid, the next one its ratio over the previous location's
    pruner = build("pit", "spvit").pruner
    np.testing.assert_allclose(pruner.step_keep_fractions(), [0.6, 0.75, 0.5 / 0.75, 0.5])
    assert [s.initial_keep for s in pruner.selectors] == pytest.approx([0.6, 0.75, 2 / 3, 0.5])


def test_dropped_tokens_stay_dropped_under_gumbel_sampling():
    model = build("vit", "spvit")
    out = model.forward(images(8), training=True)
    decisions = [np.asarray(r["decision"]) for r in out.records]
    assert all(set(np.unique(d)) <= {0.0, 1.0} for d in decisions)
    for earlier, later in zip(decisions, decisions[1:]):
        assert (later <= earlier).all()
    assert 0 < decisions[0].mean() < 1  # sampled, not all kept
    np.testing.assert_array_equal(np.asarray(out.token_mask), decisions[-1])


def test_package_token_is_the_keep_score_weighted_mean_of_dropped_tokens():
    # Σ w·x / (Σ w + PACKAGE_PRIOR): a weighted mean with a zero vector of weight
    # PACKAGE_PRIOR averaged in (our bounded form of the official weighted sum).
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 5, 4)).astype("float32")
    weights = np.array([[0.2, 0, 0.5, 0, 0.3], [0, 0, 0, 1.0, 0]], "float32")
    expected = (weights[:, :, None] * tokens).sum(1, keepdims=True) / (
        weights.sum(1)[:, None, None] + PACKAGE_PRIOR)
    np.testing.assert_allclose(package_token(tokens, weights), expected, rtol=1e-5, atol=1e-6)

    # In the model: the token appended at a location is that mean of the dropped patches
    # weighted by their keep probabilities.
    model = build("vit", "spvit")
    x = model.embed(images(2))
    state = TokenState.start(x, 1, 64, masked=False)
    new, record = model.pruner.step(0, state, model.blocks[1], "gather")
    scores, patches = np.asarray(record["keep_score"]), np.asarray(x[:, 1:])
    dropped = np.ones((2, 64), bool)
    np.put_along_axis(dropped, np.asarray(record["index"]), False, axis=1)
    w = scores * dropped
    expected = (w[:, :, None] * patches).sum(1) / (w.sum(1, keepdims=True) + PACKAGE_PRIOR)
    np.testing.assert_allclose(np.asarray(new.x)[:, -1], expected, rtol=1e-4, atol=1e-5)
    assert new.x.shape[1] == 1 + 48 + 1


def test_package_token_gradient_stays_bounded_when_almost_nothing_is_dropped():
    """A plain normalised mean Σ w·x / Σ w has gradient (x_i - package) / Σ w in each weight:
    an image that drops one low-scored token (or none) sent ~1e12 into the selectors, which
    froze them under Adam. With the prior it is at most |x_i - package| / PACKAGE_PRIOR."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    tokens = tf.constant(rng.normal(size=(3, 6, 8)).astype("float32"))
    weights = tf.constant([[0.0] * 6, [1e-6] + [0.0] * 5, [0.4, 0, 0, 0.2, 0, 0]])
    with tf.GradientTape() as tape:
        tape.watch(weights)
        package = package_token(tokens, weights)
        loss = tf.reduce_sum(package * tf.constant(rng.normal(size=(3, 1, 8)).astype("float32")))
    grad = tape.gradient(loss, weights).numpy()
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() < 10.0, np.abs(grad).max()
    np.testing.assert_allclose(package[0], 0.0, atol=1e-6)  # nothing dropped: a zero package


def test_methods_without_package_token_append_nothing():
    for method, extra in (("spvit", 3), ("hard", 0), ("evit", 3), ("static", 0)):
        model = build("vit", method)
        state = TokenState.start(model.embed(images(1)), 1, 64, masked=True)
        for j, loc in enumerate(model.pruner.locations):
            state, _ = model.pruner.step(j, state, model.blocks[loc], "mask")
        assert state.x.shape[1] == 1 + 64 + extra, method


def test_static_baseline_keeps_the_centre():
    model = build("vit", "static")
    out = model.forward(images(1))
    kept = np.sort(np.asarray(out.records[-1]["index"])[0])  # 16 of the 8x8 grid
    rows, cols = kept // 8, kept % 8
    assert rows.min() >= 2 and rows.max() <= 5 and cols.min() >= 2 and cols.max() <= 5


def test_pruned_deit_tiny_converts_to_builtin_tflite():
    from ai_edge_litert.interpreter import Interpreter

    model = spvit_tf.create_model("deit_tiny_patch16_224", pruning=PruningConfig())
    x = images(1, size=224)
    inputs = keras.Input((224, 224, 3), batch_size=1)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, model(inputs)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(logits, model(x), atol=1e-4, rtol=0)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "TOPK_V2" in ops and not any("FLEX" in op or "CUSTOM" in op for op in ops)


def test_gpu_friendly_export_has_no_topk_or_gather():
    """The TFLite Analyzer calls even TOPK_V2 "compatible", so check the delegate's rules."""
    from spvit_tf.tflite.gpu import gpu_compatibility
    from spvit_tf.tflite.graph import Graph

    model = build("pit", "spvit", selection="matmul")
    inputs = keras.Input((32, 32, 3), batch_size=1)
    content = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, model(inputs))).convert()
    graph = Graph.read(content)
    ops = set(graph.op_counts())
    assert "BATCH_MATMUL" in ops and not ops & {"TOPK_V2", "GATHER", "GATHER_ND"}, ops
    fallback = gpu_compatibility(content, graph)["cpu_fallback"]
    assert not [op for op in fallback if op.startswith(("TOPK_V2", "GATHER"))], fallback


@pytest.mark.parametrize("bad,message", [
    (dict(locations=(3, 6), keep_ratios=(0.5,)), "one keep ratio per location"),
    (dict(locations=(6, 3), keep_ratios=(0.5, 0.4)), "strictly increasing"),
    (dict(method="bogus"), "unknown pruning method 'bogus'"),
    (dict(keep_ratios=(0.7, 0.0, 0.3)), r"must lie in \(0, 1\]"),
    (dict(locations=(1, 2, 30)), "location 30 is outside blocks 0..3"),
    (dict(locations=(1, 2, 3), keep_ratios=(0.5, 0.6, 0.3)), "keep ratios are cumulative"),
    (dict(kep_ratios=(0.5,)), "unknown pruning option"),
])
def test_bad_pruning_configs_say_what_is_wrong(bad, message):
    with pytest.raises(spvit_tf.SpvitError, match=message):
        spvit_tf.create_model("deit_tiny_patch16_224", **VIT, pruning=bad)


def test_pit_ratios_restart_in_each_stage():
    # 0.6 in stage 0 then 0.75 in stage 1 is valid: each stage counts its own grid
    assert build("pit", "spvit").pruner.counts[1] == 48


def test_pruned_config_round_trips():
    model = build("pit", "evit")
    clone = type(model).from_config(model.get_config())
    assert clone.pruner.config == model.pruner.config
    clone.build_weights()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(images(1)), model(images(1)), atol=1e-6)


def test_backbone_checkpoint_loads_into_a_pruned_model(caplog):
    checkpoint, _ = timm_fixture("deit_tiny_patch16_224")
    with caplog.at_level(logging.INFO, logger="spvit_tf"):
        model = spvit_tf.create_model(
            "deit_tiny_patch16_224", checkpoint=checkpoint, pruning=PruningConfig()
        )
    assert "selector_3, selector_6, selector_9 freshly initialised" in caplog.text
    dense = spvit_tf.create_model("deit_tiny_patch16_224", checkpoint=checkpoint)
    np.testing.assert_array_equal(np.asarray(model.blocks[7].attn.qkv.kernel),
                                  np.asarray(dense.blocks[7].attn.qkv.kernel))


def test_diagnostic_rankings_swap_only_which_tokens_are_kept():
    import dataclasses

    from spvit_tf.evaluate import ranking_diagnostic
    from spvit_tf.pruning.selector import class_attention_scores

    model = build("vit", "spvit")
    x = images(3)
    own = model.forward(x)
    kept = lambda out: [np.sort(np.asarray(r["index"]), axis=1) for r in out.records]  # noqa: E731
    first = lambda out: set(map(tuple, kept(out)[0]))  # noqa: E731
    scores = np.asarray(own.records[0]["keep_score"])
    model.pruner.ranking = "inverted"
    inverted = model.forward(x)
    np.testing.assert_array_equal(  # the 48 kept by the reversed ranking: the 48 lowest scores
        kept(inverted)[0], np.sort(np.argsort(scores, axis=1, kind="stable")[:, :48], axis=1))
    model.pruner.ranking = "centre"
    static = build("vit", "static")
    assert first(model.forward(x)) == first(static.forward(x))
    state = TokenState.start(model.embed(x), 1, 64, masked=False)
    state = dataclasses.replace(state, x=model.blocks[0](state.x))
    attention = np.asarray(class_attention_scores(model.blocks[1], state.x, 1, 64))
    model.pruner.ranking = "evit"
    np.testing.assert_array_equal(
        kept(model.forward(x))[0], np.sort(np.argsort(-attention, axis=1)[:, :48], axis=1))
    model.pruner.ranking = "random"
    assert first(model.forward(x)) != first(own)
    model.pruner.ranking = "own"
    # The sort-with-the-scores path (any ranking) gives the default graph for the own scores.
    _, s = model.pruner.scores(0, state, model.blocks[1], "gather")
    default, _ = model.pruner.gather(state, s, 48)
    swapped, _ = model.pruner.gather(state, s, 48, ranking=s)
    np.testing.assert_allclose(swapped.x, default.x, atol=1e-6)
    with pytest.raises(spvit_tf.SpvitError, match="diagnostic of the gathered"):
        model.pruner.ranking = "random"
        model.forward(x, mode="mask")
    model.pruner.ranking = "own"
    dataset = tf.data.Dataset.from_tensor_slices((x, np.array([1, 2, 3]))).batch(2)
    report = ranking_diagnostic(model, dataset, ["own", "random", "inverted", "centre", "evit"])
    assert set(report["rankings"]) == {"own", "random", "inverted", "centre", "evit"}
    assert model.pruner.ranking == "own"
    spread = report["keep_score_spread"]
    assert [row["location"] for row in spread] == [1, 2, 3]
    assert spread[0]["within_image_std"] == pytest.approx(scores.std(axis=1).mean(), rel=1e-5)
    assert "across_images_std" in spread[0] and "across_images_std" not in spread[1]
    with pytest.raises(spvit_tf.SpvitError, match="unknown ranking"):
        ranking_diagnostic(model, dataset, ["best"])
