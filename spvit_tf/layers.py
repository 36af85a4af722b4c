"""Transformer building blocks in `keras.ops`, shared by every model family.

Every block takes an optional `keep_mask` (batch, tokens) so the token pruning code can mask
dropped tokens out of attention during training while keeping shapes static, and optional
`key_weights` (batch, tokens) for ToMe's proportional attention (a merged token counts as
many keys as it stands for); every block works on any sequence length so inference can run
it on gathered token subsets.
"""

import keras
from keras import ops

# Added to masked-softmax numerators/denominators so a row whose every key is masked (which
# `masked_softmax` prevents by keeping the diagonal) can never divide by zero.
_MASK_EPS = 1e-6


def dense(units, name, use_bias=True):
    """A Dense layer with ViT's initialisation (truncated normal, std 0.02; zero bias)."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name=name,
    )


@keras.saving.register_keras_serializable("spvit_tf")
class LayerNorm(keras.layers.Layer):
    """LayerNorm written as `d = x - mean; d * rsqrt(mean(d * d) + eps)`.

    Numerically the same as `keras.layers.LayerNormalization`, but this form converts to an
    all-int8 TFLite graph (the Keras layer leaves float NEG islands), which the FPGA export
    needs. Statistics are over the last axis; scale and shift span the last `param_axes`
    axes (2 gives the token selector one LayerNorm per head).
    """

    def __init__(self, epsilon=1e-6, param_axes=1, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.param_axes = param_axes

    def build(self, input_shape):
        shape = tuple(input_shape[-self.param_axes :])
        self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros")

    def call(self, x):
        return self.standardize(x) * self.gamma + self.beta

    def standardize(self, x, mean=None):
        """The LayerNorm before its scale and shift, for a caller that folds those into the
        next layer's weights; `mean` (the last axis's, keepdims) when the caller has it."""
        d = x - (ops.mean(x, axis=-1, keepdims=True) if mean is None else mean)
        return d * ops.rsqrt(ops.mean(d * d, axis=-1, keepdims=True) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "param_axes": self.param_axes}


def masked_softmax(logits, keep_mask, key_weights=None):
    """Softmax over the last axis restricted to kept keys.

    `logits` is (batch, heads, queries, keys); `keep_mask` is (batch, keys) with values in
    {0, 1} (possibly carrying straight-through gradients). Each query always keeps itself as a
    key, so the row of a dropped query stays finite. The mask multiplies the exponentials
    instead of adding -inf to the logits, so gradients reach the mask (DynamicViT's form).
    `key_weights` (batch, keys), positive, further multiply the exponentials: ToMe's
    proportional attention, where a key standing for s merged tokens counts s times.
    """
    num_tokens = logits.shape[-1]
    mask = ops.cast(keep_mask, logits.dtype)[:, None, None, :]
    eye = ops.eye(num_tokens, dtype=logits.dtype)[None, None]
    mask = mask + (1.0 - mask) * eye
    if key_weights is not None:
        mask = mask * ops.cast(key_weights, logits.dtype)[:, None, None, :]
    logits = logits - ops.max(logits, axis=-1, keepdims=True)
    weights = ops.exp(logits) * mask
    total = ops.sum(weights, axis=-1, keepdims=True)
    return (weights + _MASK_EPS / num_tokens) / (total + _MASK_EPS)


def attention_weights(logits, keep_mask=None, key_weights=None):
    """Attention weights over the keys: softmax, masked (`masked_softmax`) and/or weighted.

    Without a mask, `key_weights` w enter as softmax(logits + log w): the same numbers as
    multiplying the exponentials by w, in one SOFTMAX (reshapes, not new axes: the TFLite GPU
    delegate rejects strided slices that add axes).
    """
    if keep_mask is not None:
        return masked_softmax(logits, keep_mask, key_weights)
    if key_weights is not None:
        log_w = ops.log(ops.cast(key_weights, logits.dtype))
        logits = logits + ops.reshape(log_w, (-1, 1, 1, logits.shape[-1]))
    return ops.softmax(logits, axis=-1)


@keras.saving.register_keras_serializable("spvit_tf")
class Attention(keras.layers.Layer):
    """Multi-head self-attention with a fused qkv projection (timm layout)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop
        self.proj_drop_rate = proj_drop
        self.qkv = dense(3 * dim, "qkv", use_bias=qkv_bias)
        self.proj = dense(dim, "proj")
        self.attn_drop = keras.layers.Dropout(attn_drop)
        self.proj_drop = keras.layers.Dropout(proj_drop)

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def call(self, x, keep_mask=None, training=None, key_weights=None):
        """`keep_mask` (B, N) masks dropped keys out (`masked_softmax`); `key_weights` (B, N)
        weight the keys (ToMe's token sizes: proportional attention)."""
        num_tokens = x.shape[1]
        qkv = self.qkv(x)

        def heads(start):  # (B, N, D) slice of qkv -> (B, H, N, head_dim); 4-D ops only,
            part = qkv[..., start : start + self.dim]  # which the TFLite GPU delegate runs
            part = ops.reshape(part, (-1, num_tokens, self.num_heads, self.head_dim))
            return ops.transpose(part, (0, 2, 1, 3))

        q, k, v = heads(0), heads(self.dim), heads(2 * self.dim)
        logits = ops.matmul(q * (self.head_dim**-0.5), ops.transpose(k, (0, 1, 3, 2)))
        weights = self.attn_drop(attention_weights(logits, keep_mask, key_weights),
                                 training=training)
        out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
        out = ops.reshape(out, (-1, num_tokens, self.dim))
        return self.proj_drop(self.proj(out), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "qkv_bias": self.qkv_bias,
            "attn_drop": self.attn_drop_rate,
            "proj_drop": self.proj_drop_rate,
        }


@keras.saving.register_keras_serializable("spvit_tf")
class Mlp(keras.layers.Layer):
    """fc1 -> exact GELU -> fc2, as in timm."""

    def __init__(self, dim, hidden_dim, drop=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.drop_rate = drop
        self.fc1 = dense(hidden_dim, "fc1")
        self.fc2 = dense(dim, "fc2")
        self.drop = keras.layers.Dropout(drop)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim,))

    def call(self, x, training=None):
        x = ops.gelu(self.fc1(x), approximate=False)
        x = self.drop(x, training=training)
        return self.drop(self.fc2(x), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "drop": self.drop_rate,
        }


@keras.saving.register_keras_serializable("spvit_tf")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator() if rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator)
        return x * ops.floor(keep + noise) / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable("spvit_tf")
class Block(keras.layers.Layer):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.drop_rate = drop
        self.attn_drop_rate = attn_drop
        self.drop_path_rate = drop_path
        self.norm1 = LayerNorm(name="norm1")
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, name="attn")
        self.norm2 = LayerNorm(name="norm2")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, name="mlp")
        self.drop_path = DropPath(drop_path)

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)

    def call(self, x, keep_mask=None, training=None, key_weights=None):
        attended = self.attn(
            self.norm1(x), keep_mask=keep_mask, training=training, key_weights=key_weights
        )
        x = x + self.drop_path(attended, training=training)
        return x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop": self.drop_rate,
            "attn_drop": self.attn_drop_rate,
            "drop_path": self.drop_path_rate,
        }
