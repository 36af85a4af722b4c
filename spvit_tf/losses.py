"""SPViT's training objective, term by term, in `keras.ops` (any Keras backend).

Every function returns a per-example loss vector (B,), never a batch mean: under
`tf.distribute` each replica sees its own slice of the batch, and only the caller knows the
global batch size to divide by (`tf.nn.compute_average_loss(per_example,
global_batch_size=...)`); a replica-local mean would weight replicas wrongly. Everything is
computed in float32 whatever the compute dtype, so mixed-precision logits do not lose the
small differences the distillation terms measure.

The recipe is DynamicViT's (which SPViT trains with): cross-entropy on the labels, KL from a
dense teacher's logits, MSE to the teacher's final patch tokens over the kept tokens, and a
keep-ratio regulariser on the selectors' decisions.
"""

from keras import ops

from spvit_tf.errors import SpvitError


def _f32(x):
    return ops.cast(x, "float32")


def classification_loss(labels, logits, label_smoothing=0.0):
    """Cross-entropy per example (B,).

    `labels` are int class ids (B,) or soft/one-hot targets (B, C) such as MixUp/CutMix
    produce. Label smoothing mixes the targets with the uniform distribution,
    `(1 - ε)·y + ε/C`, for both kinds (Keras' convention); pass 0 when the batch augmenter
    already smoothed its soft targets (timm's Mixup does), or they are smoothed twice.
    """
    logits = _f32(logits)
    num_classes = logits.shape[-1]
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 1:
        targets = ops.one_hot(ops.cast(labels, "int32"), num_classes)
    elif len(labels.shape) == 2 and labels.shape[-1] == num_classes:
        targets = _f32(labels)
    else:
        raise SpvitError(
            f"labels of shape {tuple(labels.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)}: give class ids (B,) or targets (B, {num_classes})"
        )
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)


def logit_distillation_loss(student_logits, teacher_logits, temperature=1.0):
    """KL(teacher ‖ student) per example (B,), summed over classes.

    The batch mean of this is DynamicViT's `kl_div(..., reduction="batchmean")`. With a
    temperature T both distributions are softened and the result is scaled by T² (Hinton et
    al.), so the gradient scale does not shrink as T grows. No gradient reaches the teacher.
    """
    t = float(temperature)
    if t <= 0:
        raise SpvitError(f"distillation temperature must be positive, got {temperature}")
    student = ops.log_softmax(_f32(student_logits) / t, axis=-1)
    teacher = ops.log_softmax(ops.stop_gradient(_f32(teacher_logits)) / t, axis=-1)
    return ops.sum(ops.exp(teacher) * (teacher - student), axis=-1) * (t * t)


def token_distillation_loss(student_tokens, teacher_tokens, token_mask=None):
    """Mean squared error to the teacher's tokens over the kept tokens only, per example (B,).

    Both token tensors are (B, n, D) at the same grid positions (masked training keeps the
    full length); `token_mask` (B, n) is 1 for kept tokens, None when all are kept. Per
    example: the sum over kept tokens of their channel-mean squared error, divided by the
    number kept (an example with none kept contributes 0). Dropped tokens are excluded
    because the student, by design, no longer updates them.

    No gradient reaches the selectors through the mask (DynamicViT indexes with the boolean
    mask): otherwise the cheapest way to lower this term is to keep the tokens easiest to
    match, background, and drop the object.
    """
    student, teacher = _f32(student_tokens), ops.stop_gradient(_f32(teacher_tokens))
    if tuple(student.shape[1:]) != tuple(teacher.shape[1:]):
        raise SpvitError(
            f"student tokens {tuple(student.shape)} and teacher tokens {tuple(teacher.shape)} "
            "differ: token distillation needs both at the same grid positions (train in a "
            "masked mode, not gathered)"
        )
    per_token = ops.mean(ops.square(student - teacher), axis=-1)  # (B, n)
    if token_mask is None:
        return ops.mean(per_token, axis=-1)
    mask = ops.stop_gradient(_f32(token_mask))
    return ops.sum(per_token * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


RATIO_LOSSES = ("batch", "image")


def keep_ratio_loss(decisions, target_ratios, per="batch"):
    """Keep-ratio regulariser per example (B,): Σ_locations (mean decision − target)².

    `decisions` is one (B, n) tensor of hard 0/1 keep decisions per pruning location
    (cumulative: tokens dropped earlier stay 0), `target_ratios` the cumulative keep ratio
    each location should reach. The straight-through decisions carry the gradient back to
    the selectors; this is what pushes each one towards its ratio.

    `per="batch"` (SPViT's official loss) takes the mean over the whole batch, so an image
    with more to see may keep more tokens than one with less, as long as the batch meets the
    schedule; every example carries the same value. `per="image"` (DynamicViT's) makes every
    image meet the ratio on its own, which leaves the selector no room to prefer one image's
    tokens over another's. Under tf.distribute "the batch" is each replica's slice, as it is
    per GPU in the official code.
    """
    if per not in RATIO_LOSSES:
        raise SpvitError(f"unknown keep-ratio loss {per!r}; choose one of {RATIO_LOSSES}")
    decisions, targets = list(decisions), [float(r) for r in target_ratios]
    if not decisions or len(decisions) != len(targets):
        raise SpvitError(
            f"{len(decisions)} decision tensors but {len(targets)} target ratios: give one "
            "target keep ratio per pruning location"
        )
    if per == "image":
        terms = [ops.square(ops.mean(_f32(d), axis=-1) - r) for d, r in zip(decisions, targets)]
    else:
        terms = [ops.square(ops.mean(_f32(d)) - r) * ops.ones_like(_f32(d[:, 0]))
                 for d, r in zip(decisions, targets)]
    return sum(terms[1:], terms[0])


def spvit_loss(
    output,
    labels,
    teacher_output=None,
    *,
    target_ratios=None,
    distill_weight=0.5,
    token_weight=0.5,
    ratio_weight=2.0,
    label_smoothing=0.1,
    ratio_loss="batch",
):
    """All terms of the objective, per example (B,): `{"ce", "kl", "token", "ratio", "total"}`.

    `output` is the student's `ForwardOutput` (a masked mode, so `records` carry decisions
    and `patch_tokens` keep full length); `teacher_output` the dense teacher's, or None to
    train without distillation. `target_ratios` (the config's `keep_ratios`) enables the
    ratio term. Absent terms are zeros, so the training loop can log every key always.

        total = ce + distill_weight·kl + token_weight·token + ratio_weight·ratio / L

    over the L pruning locations. The defaults are DynamicViT's DeiT recipe, which SPViT
    trains with: `ratio_weight` 2.0 (`--ratio_weight` default in DynamicViT's `main.py`,
    and its loss divides the summed ratio term by the number of locations, as here);
    `distill_weight` 0.5 (its `DistillDiffPruningLoss_dynamic(distill_weight=0.5)`), which
    weights both the logit KL and the token MSE (`mse_token=True` for DeiT) — split into
    two knobs here with the same default; `label_smoothing` 0.1 (its `--smoothing` default);
    classification weight 1.0 (`clf_weight=1.0`). `ratio_loss` is `keep_ratio_loss`'s `per`:
    SPViT's batch mean by default.
    """
    ce = classification_loss(labels, output.logits, label_smoothing)
    zero = ops.zeros_like(ce)
    kl = token = ratio = scaled_ratio = zero
    if teacher_output is not None:
        kl = logit_distillation_loss(output.logits, teacher_output.logits)
        token = token_distillation_loss(
            output.patch_tokens, teacher_output.patch_tokens, output.token_mask
        )
    if target_ratios is not None:
        decisions = [record.get("decision") for record in output.records]
        if not decisions or any(d is None for d in decisions):
            raise SpvitError(
                "the keep-ratio term needs the keep decisions of a masked forward pass "
                "(model.forward(images, training=True)); this output has none"
            )
        ratio = keep_ratio_loss(decisions, target_ratios, ratio_loss)
        scaled_ratio = ratio / len(decisions)
    total = ce + distill_weight * kl + token_weight * token + ratio_weight * scaled_ratio
    return {"ce": ce, "kl": kl, "token": token, "ratio": ratio, "total": total}
