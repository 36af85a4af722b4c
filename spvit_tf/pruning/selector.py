"""Token scorers: the learned multi-head selector and the parameter-free baselines' scorers.

Every scorer maps the current patch tokens (B, n, D) to a keep score per token (B, n); the
learned selector also returns keep/drop log-probabilities (B, n, 2) for Gumbel sampling.
"""

import math

import keras
from keras import ops

from spvit_tf.layers import LayerNorm, masked_softmax


def headwise_dense(x, kernel, bias, grouped=True):
    """x (B, n, H * c) with head-major channels -> (B, n, H * u): each head's c channels
    times its own kernel (H, c, u), or a shared one (c, u), plus bias (H, u) or (u,).

    `grouped`: as a grouped 1 x 1 convolution, on the tokens' own layout: TFLite runs it as
    one CONV_2D with the bias fused, faster than a BATCH_MATMUL per head, which needs heads
    leading (transposes) and a separate bias ADD (benchmarks/pruning_overhead.py times the
    selector). Otherwise as an einsum: the same products, but XLA on CPU differentiates a
    grouped convolution about ten times slower than the batched matmul an einsum becomes,
    so the training graph takes this one (benchmarks/finetune_step.py).
    """
    channels, units = kernel.shape[-2], kernel.shape[-1]
    heads = x.shape[-1] // channels
    kernel = ops.broadcast_to(kernel, (heads, channels, units))  # shared: the same per head
    bias = ops.reshape(ops.broadcast_to(bias, (heads, units)), (heads * units,))
    if not grouped:
        n = x.shape[1]
        y = ops.einsum("bnhc,hcu->bnhu", ops.reshape(x, (-1, n, heads, channels)), kernel)
        return ops.reshape(y, (-1, n, heads * units)) + bias
    grouped_kernel = ops.reshape(ops.transpose(kernel, (1, 0, 2)), (1, channels, heads * units))
    return ops.conv(x, grouped_kernel, data_format="channels_last") + bias


def fold_affine(kernel, bias, scale, shift):
    """(kernel, bias) of a headwise layer that first maps its input by `x * scale + shift`
    ((H, c) or (c,): a LayerNorm's gamma and beta): two fewer passes over the tokens."""
    return scale[..., None] * kernel, bias + ops.sum(shift[..., None] * kernel, axis=-2)


@keras.saving.register_keras_serializable("spvit_tf")
class HeadwiseDense(keras.layers.Layer):
    """A Dense layer per head (`headwise_dense`), one weight matrix per head or shared.

    Kernels start Glorot-scaled per head, not at the backbone's 0.02: four 0.02 layers in a
    row shrink the selector's output to ~1e-3 of its input, a nearly constant score a short
    fine-tune never moves away from.
    """

    def __init__(self, units, shared=False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.shared = shared

    def build(self, input_shape):
        """input_shape (..., H, c)."""
        heads, channels = input_shape[-2], input_shape[-1]
        lead = () if self.shared else (heads,)
        self.kernel = self.add_weight(
            name="kernel",
            shape=lead + (channels, self.units),
            initializer=keras.initializers.TruncatedNormal(
                stddev=math.sqrt(2.0 / (channels + self.units))
            ),
        )
        self.bias = self.add_weight(name="bias", shape=lead + (self.units,), initializer="zeros")

    def call(self, x, context=None, contrast=False, grouped=True):
        """x (B, n, H * c_x) -> (B, n, H * u). `context` (B, 1, H * (c - c_x)): the trailing
        input channels, the same for every token; their product is taken once and added as a
        bias instead of once per token. `contrast`: one output, unit 0 minus unit 1 (a two-way
        softmax's logit) in one product. Kernel slices and differences are constants the
        TFLite converter folds. `grouped`: see `headwise_dense`."""
        kernel, bias = self.kernel, self.bias
        if contrast:
            kernel, bias = kernel[..., :1] - kernel[..., 1:], bias[..., :1] - bias[..., 1:]
        if context is None:
            return headwise_dense(x, kernel, bias, grouped)
        split = x.shape[-1] * kernel.shape[-2] // (x.shape[-1] + context.shape[-1])  # c_x
        context_bias = headwise_dense(context, kernel[..., split:, :], ops.zeros_like(bias),
                                      grouped)
        return headwise_dense(x, kernel[..., :split, :], bias, grouped) + context_bias

    def get_config(self):
        return {**super().get_config(), "units": self.units, "shared": self.shared}


@keras.saving.register_keras_serializable("spvit_tf")
class MultiHeadTokenSelector(keras.layers.Layer):
    """SPViT's dynamic attention-based multi-head token selector.

    Channels are split into the block's H heads. Per head: LayerNorm -> Linear -> GELU; the
    first half of the channels stays local, the second half is averaged over the currently
    kept tokens (global context); an MLP (c -> c/2 -> c/4 -> 2) scores keep/drop. Its first
    layer takes the context's product once per image, not once per token (no broadcast and
    concatenation: the same numbers in fewer ops and MACs). A head
    importance branch (per-head channel mean -> H/2 -> H, sigmoid) weights the heads per
    token, and the per-head log-probabilities and probabilities are combined as weighted
    means.

    `initial_keep` is the keep probability a fresh selector starts at (its last bias): the
    fraction of the incoming tokens its location keeps by schedule, so training decisions
    match the fixed inference top-k from the first step instead of starting at a coin flip
    the keep-ratio term needs many steps to correct.
    """

    def __init__(self, dim, num_heads, shared_head_mlps=False, initial_keep=0.5, **kwargs):
        super().__init__(**kwargs)
        if dim % (4 * num_heads):
            raise ValueError(f"selector needs dim={dim} divisible by 4 * heads={4 * num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.shared_head_mlps = shared_head_mlps
        if not 0.0 < initial_keep < 1.0:
            raise ValueError(f"selector initial_keep={initial_keep} must lie in (0, 1)")
        self.initial_keep = float(initial_keep)
        c = dim // num_heads
        self.head_dim = c
        self.norm = LayerNorm(param_axes=1 if shared_head_mlps else 2, name="norm")
        self.in_proj = HeadwiseDense(c, shared_head_mlps, name="in_proj")
        self.score_mlp = [
            HeadwiseDense(units, shared_head_mlps, name=f"score_{i}")
            for i, units in enumerate((c // 2, c // 4, 2))
        ]
        hidden = max(num_heads // 2, 1)
        self.head_gate = [  # a single head needs no weighting
            keras.layers.Dense(hidden, name="head_gate_0"),
            keras.layers.Dense(num_heads, name="head_gate_1"),
        ] if num_heads > 1 else []

    def build(self, input_shape):
        c, h = self.head_dim, self.num_heads
        self.norm.build((None, None, h, c))
        self.in_proj.build((None, None, h, c))
        for layer, width in zip(self.score_mlp, (c, c // 2, c // 4)):
            layer.build((None, None, h, width))
        last = self.score_mlp[-1]
        keep_logit = math.log(self.initial_keep / (1.0 - self.initial_keep))
        last.bias.assign(ops.broadcast_to(ops.array([keep_logit, 0.0]), last.bias.shape))
        if self.head_gate:
            self.head_gate[0].build((None, None, h))
            self.head_gate[1].build((None, None, self.head_gate[0].units))

    def call(self, patches, keep=None, log_probs=True):
        """patches (B, n, D), keep (B, n) or None -> (log-probs (B, n, 2), keep prob (B, n)).

        `log_probs=False` (inference) returns None for them: only the keep probability ranks.
        Tensors stay (B, n, H * width), heads in the channels, so no op transposes. The
        headwise layers are grouped convolutions at inference (what TFLite runs fastest) and
        einsums with the log-probabilities (training's Gumbel graph: what XLA differentiates
        fastest); both compute the same products.
        """
        grouped = not log_probs
        n, heads = patches.shape[1], self.num_heads
        gelu = lambda t: ops.gelu(t, approximate=False)  # noqa: E731
        x = ops.reshape(patches, (-1, n, heads, self.head_dim))
        mean = ops.mean(x, axis=-1, keepdims=True)  # the norm's and the head gate's input
        head_weights = ops.ones((1, 1, 1))  # a single head: weight 1
        if self.head_gate:
            hidden = gelu(self.head_gate[0](ops.reshape(mean, (-1, n, heads))))
            # Sigmoid head weights normalised to sum 1 as softmax(log sigmoid): equal to
            # dividing by their sum, but no DIV, whose int8 kernel aborts near zero divisors
            # (and log of the sigmoid, as log_sigmoid lowers to a NEG int8 keeps float).
            gate = ops.log(ops.sigmoid(self.head_gate[1](hidden)) + 1e-12)
            head_weights = ops.softmax(gate, axis=-1)  # (B, n, H)
        x = ops.reshape(self.norm.standardize(x, mean), (-1, n, heads * self.head_dim))
        kernel, bias = fold_affine(
            self.in_proj.kernel, self.in_proj.bias, self.norm.gamma, self.norm.beta
        )
        half = self.head_dim // 2  # local features, and those averaged into global context
        local = gelu(headwise_dense(x, kernel[..., :half], bias[..., :half], grouped))
        context = gelu(headwise_dense(x, kernel[..., half:], bias[..., half:], grouped))
        if keep is None:
            context = ops.mean(context, axis=1, keepdims=True)
        else:
            weights = keep[:, :, None]
            context = ops.sum(context * weights, axis=1, keepdims=True) / ops.sum(
                weights, axis=1, keepdims=True
            )
        x = gelu(self.score_mlp[0](local, context=context, grouped=grouped))
        x = gelu(self.score_mlp[1](x, grouped=grouped))
        # Keep probability = softmax over (keep, drop) = sigmoid of their difference: at
        # inference one output unit and a LOGISTIC, not a 2-wide SOFTMAX and a slice (slow in
        # XNNPACK); training also needs the log-probabilities of both.
        last = self.score_mlp[-1]
        if log_probs:
            logits = ops.reshape(last(x, grouped=grouped), (-1, n, heads, 2))
            keep_logit = logits[..., 0] - logits[..., 1]
        else:
            keep_logit = last(x, contrast=True)  # (B, n, H)
        keep_prob = ops.sum(ops.sigmoid(keep_logit) * head_weights, axis=-1)
        if not log_probs:
            return None, keep_prob
        log_probs = ops.log_softmax(logits, axis=-1) * head_weights[..., None]
        return ops.sum(log_probs, axis=2), keep_prob

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "shared_head_mlps": self.shared_head_mlps,
            "initial_keep": self.initial_keep,
        }


def class_attention_scores(block, tokens, num_prefix, num_patches, key_mask=None):
    """EViT's score: the class token's attention to each patch, averaged over heads.

    Uses the attention parameters of `block` (the block the selection precedes) so the
    baseline adds no parameters. EViT itself prunes inside the block after attention; scoring
    just before it keeps every method on the same selection points and schedule.
    """
    attn = block.attn
    dim, heads = attn.dim, attn.num_heads
    h = block.norm1(tokens)
    kernel, bias = attn.qkv.kernel, attn.qkv.bias
    q = ops.matmul(h[:, :1], kernel[:, :dim])
    k = ops.matmul(h, kernel[:, dim : 2 * dim])
    if bias is not None:
        q, k = q + bias[:dim], k + bias[dim : 2 * dim]
    q = ops.transpose(ops.reshape(q, (-1, 1, heads, attn.head_dim)), (0, 2, 1, 3))
    k = ops.transpose(ops.reshape(k, (-1, tokens.shape[1], heads, attn.head_dim)), (0, 2, 3, 1))
    logits = ops.matmul(q * attn.head_dim**-0.5, k)  # (B, H, 1, T)
    if key_mask is None:
        weights = ops.softmax(logits, axis=-1)
    else:
        weights = masked_softmax(logits, key_mask)
    # The class token's row as a 4-D slice and a reshape, not weights[:, :, 0, ...]: the GPU
    # delegate lacks the axis-dropping STRIDED_SLICE that indexing lowers to. (With a key
    # mask the softmax broadcasts to every query row, so the slice must keep only the first.)
    return ops.reshape(ops.mean(weights[:, :, :1, num_prefix : num_prefix + num_patches], axis=1),
                       (-1, num_patches))


def centre_priority(grid_size):
    """Static baseline's score per grid position: higher nearer the centre, ties by index."""
    h, w = grid_size
    rows = ops.arange(h, dtype="float32")[:, None] - (h - 1) / 2
    cols = ops.arange(w, dtype="float32")[None, :] - (w - 1) / 2
    distance = ops.reshape(rows * rows + cols * cols, (h * w,))
    return -distance - ops.cast(ops.arange(h * w), "float32") * 1e-4
