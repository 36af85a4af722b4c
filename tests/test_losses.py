import numpy as np
import pytest
import tensorflow as tf

from spvit_tf import losses
from spvit_tf.errors import SpvitError
from spvit_tf.pruning.tokens import ForwardOutput

LOGITS = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
TEACHER = np.array([[1.0, 1.0, 0.0], [-2.0, 0.5, 2.5]], np.float32)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_classification_loss_int_labels_match_negative_log_likelihood():
    got = losses.classification_loss(np.array([0, 2]), LOGITS)
    want = -log_softmax(LOGITS)[[0, 1], [0, 2]]
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_label_smoothing_mixes_targets_with_uniform():
    eps = 0.1
    got = losses.classification_loss(np.array([0, 2]), LOGITS, label_smoothing=eps)
    logp = log_softmax(LOGITS)
    nll = -logp[[0, 1], [0, 2]]
    want = (1 - eps) * nll + eps * (-logp.mean(-1))  # timm's LabelSmoothingCrossEntropy
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_soft_labels_give_soft_target_cross_entropy():
    soft = np.array([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]], np.float32)  # a MixUp of two classes
    got = losses.classification_loss(soft, LOGITS)
    np.testing.assert_allclose(got, -(soft * log_softmax(LOGITS)).sum(-1), rtol=1e-6)
    one_hot = np.eye(3, dtype=np.float32)[[0, 2]]
    np.testing.assert_allclose(
        losses.classification_loss(one_hot, LOGITS, 0.1),
        losses.classification_loss(np.array([0, 2]), LOGITS, 0.1),
        rtol=1e-6,
    )


def test_classification_loss_rejects_mismatched_labels():
    with pytest.raises(SpvitError, match="do not fit logits"):
        losses.classification_loss(np.zeros((2, 5), np.float32), LOGITS)


def test_logit_distillation_is_per_example_kl_teacher_to_student():
    got = losses.logit_distillation_loss(LOGITS, TEACHER)
    lt, ls = log_softmax(TEACHER), log_softmax(LOGITS)
    want = (np.exp(lt) * (lt - ls)).sum(-1)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(losses.logit_distillation_loss(LOGITS, LOGITS), 0.0, atol=1e-6)


def test_logit_distillation_temperature_softens_and_scales_by_t_squared():
    t = 4.0
    got = losses.logit_distillation_loss(LOGITS, TEACHER, temperature=t)
    lt, ls = log_softmax(TEACHER / t), log_softmax(LOGITS / t)
    np.testing.assert_allclose(got, t * t * (np.exp(lt) * (lt - ls)).sum(-1), rtol=1e-5)
    with pytest.raises(SpvitError, match="temperature"):
        losses.logit_distillation_loss(LOGITS, TEACHER, temperature=0)


def test_no_gradient_reaches_the_teacher():
    student, teacher = tf.Variable(LOGITS), tf.Variable(TEACHER)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.logit_distillation_loss(student, teacher))
    g_student, g_teacher = tape.gradient(loss, [student, teacher])
    assert g_teacher is None
    assert np.abs(g_student.numpy()).sum() > 0


def token_case():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(2, 4, 3)).astype(np.float32)
    teacher = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], np.float32)
    return student, teacher, mask


def test_token_distillation_averages_over_kept_tokens_only():
    student, teacher, mask = token_case()
    got = losses.token_distillation_loss(student, teacher, mask)
    per_token = ((student - teacher) ** 2).mean(-1)
    assert got.shape == (2,)
    np.testing.assert_allclose(got[0], (per_token[0, 0] + per_token[0, 2]) / 2, rtol=1e-6)
    assert float(got[1]) == 0.0  # nothing kept: no NaN, no contribution
    # Dropped tokens do not count: changing them leaves the loss unchanged.
    moved = student.copy()
    moved[0, 1] += 100.0
    np.testing.assert_allclose(losses.token_distillation_loss(moved, teacher, mask), got)


def test_token_distillation_gives_the_selectors_no_gradient():
    # Through the mask the selector would learn to keep the easiest tokens to match.
    student, teacher, mask = token_case()
    mask = tf.Variable(mask)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.token_distillation_loss(student, teacher, mask))
    assert tape.gradient(loss, mask) is None


def test_token_distillation_without_mask_is_plain_mse():
    student, teacher, _ = token_case()
    got = losses.token_distillation_loss(student, teacher, None)
    np.testing.assert_allclose(got, ((student - teacher) ** 2).mean((1, 2)), rtol=1e-6)


def test_token_distillation_rejects_gathered_tokens():
    student, teacher, _ = token_case()
    with pytest.raises(SpvitError, match="same grid positions"):
        losses.token_distillation_loss(student[:, :2], teacher, None)


def test_keep_ratio_loss_sums_squared_ratio_errors_over_locations():
    d1 = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)  # ratios 0.75, 0.25
    d2 = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.float32)  # ratios 0.25, 0.0
    got = losses.keep_ratio_loss([d1, d2], (0.5, 0.25), per="image")
    want = [(0.75 - 0.5) ** 2 + 0.0, (0.25 - 0.5) ** 2 + 0.25**2]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The batch mean (SPViT's): batch ratios 0.5 and 0.125, the same value for every example.
    batch = losses.keep_ratio_loss([d1, d2], (0.5, 0.25))
    np.testing.assert_allclose(batch, [0.0 + 0.125**2] * 2, rtol=1e-6)
    with pytest.raises(SpvitError, match="one target keep ratio per pruning location"):
        losses.keep_ratio_loss([d1, d2], (0.5,))
    with pytest.raises(SpvitError, match="unknown keep-ratio loss"):
        losses.keep_ratio_loss([d1, d2], (0.5, 0.25), per="token")


def test_batch_ratio_loss_lets_images_keep_different_shares():
    """Two images keeping 1/4 and 3/4 meet a 1/2 schedule together under the batch loss, but
    not each on its own."""
    d = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], np.float32)
    np.testing.assert_allclose(losses.keep_ratio_loss([d], (0.5,)), [0.0, 0.0])
    np.testing.assert_allclose(losses.keep_ratio_loss([d], (0.5,), per="image"), [0.0625] * 2)


def test_ratio_loss_gradient_flows_to_decisions():
    decision = tf.Variable(np.array([[1, 1, 1, 0]], np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.keep_ratio_loss([decision], (0.5,), per="image"))
    grad = tape.gradient(loss, decision).numpy()
    # d/dd_i (mean(d) - r)² = 2 (mean(d) - r) / n = 2 · 0.25 / 4
    np.testing.assert_allclose(grad, np.full((1, 4), 0.125), rtol=1e-6)


def forward_output(logits, tokens, mask, decisions):
    records = [{"decision": d, "keep_score": d} for d in decisions]
    return ForwardOutput(logits, tokens, mask, None, records)


def test_spvit_loss_weights_every_term():
    student, teacher_tokens, mask = token_case()
    decisions = [np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32), mask]
    out = forward_output(LOGITS, student, mask, decisions)
    teacher = forward_output(TEACHER, teacher_tokens, None, [])
    labels = np.array([0, 2])
    terms = losses.spvit_loss(
        out, labels, teacher, target_ratios=(0.7, 0.5), distill_weight=0.3, token_weight=0.2,
        ratio_weight=3.0, label_smoothing=0.1,
    )
    assert set(terms) == {"ce", "kl", "token", "ratio", "total"}
    ce = losses.classification_loss(labels, LOGITS, 0.1)
    kl = losses.logit_distillation_loss(LOGITS, TEACHER)
    token = losses.token_distillation_loss(student, teacher_tokens, mask)
    ratio = losses.keep_ratio_loss(decisions, (0.7, 0.5))
    for name, value in [("ce", ce), ("kl", kl), ("token", token), ("ratio", ratio)]:
        np.testing.assert_allclose(terms[name], value, rtol=1e-6)
    want = ce + 0.3 * kl + 0.2 * token + 3.0 * ratio / 2  # ratio averaged over 2 locations
    np.testing.assert_allclose(terms["total"], want, rtol=1e-6)
    assert terms["total"].shape == (2,)


def test_spvit_loss_absent_terms_are_zero():
    out = forward_output(LOGITS, None, None, [])
    terms = losses.spvit_loss(out, np.array([0, 2]))
    for name in ("kl", "token", "ratio"):
        np.testing.assert_array_equal(terms[name], [0.0, 0.0])
    np.testing.assert_allclose(terms["total"], terms["ce"])


def test_spvit_loss_ratio_term_needs_decisions():
    out = ForwardOutput(LOGITS, None, None, None, [{"keep_score": None, "index": None}])
    with pytest.raises(SpvitError, match="masked forward pass"):
        losses.spvit_loss(out, np.array([0, 2]), target_ratios=(0.7,))


def test_spvit_loss_on_a_real_forward_pass_trains_the_selectors():
    import spvit_tf

    tiny = dict(image_size=32, patch_size=4, num_classes=10, embed_dim=24, depth=4, num_heads=3)
    pruning = dict(method="spvit", locations=(1, 2), keep_ratios=(0.5, 0.25))
    student = spvit_tf.create_model("deit_tiny_patch16_224", **tiny, pruning=pruning)
    teacher = spvit_tf.create_model("deit_tiny_patch16_224", **tiny)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    teacher_out = teacher.forward(x, training=False)
    with tf.GradientTape() as tape:
        out = student.forward(x, training=True)
        terms = losses.spvit_loss(out, np.array([1, 2, 3]), teacher_out, target_ratios=(0.5, 0.25))
        loss = tf.reduce_mean(terms["total"])
    assert all(terms[k].shape == (3,) for k in terms)
    assert all(np.isfinite(terms[k]).all() for k in terms)
    assert float(tf.reduce_min(terms["token"])) > 0  # untied weights: tokens differ
    grads = tape.gradient(loss, student.pruner.trainable_weights)
    assert all(g is not None for g in grads)
