"""DeiT / ViT: a plain stack of transformer blocks over patch tokens (timm's layout)."""

import keras
from keras import ops

from spvit_tf.geometry import pair, vit_schedule
from spvit_tf.layers import Block, LayerNorm, dense
from spvit_tf.models.base import TokenModel
from spvit_tf.pruning.tokens import ForwardOutput, TokenState, resolve_mode
from spvit_tf.registry import register_model


@keras.saving.register_keras_serializable("spvit_tf")
class VisionTransformer(TokenModel):
    """DeiT/ViT classifier on NHWC float images (already normalised with ImageNet mean/std).

    One stage of `depth` blocks over the patch grid (`spvit_tf.geometry.vit_schedule`). With
    `pruning` (a `PruningConfig` or dict) a `TokenPruner` runs before the configured blocks;
    the blocks themselves are the same in every mode. The distilled variant carries a
    distillation token and a second head; its logits are the mean of both heads, as DeiT does
    at inference.
    """

    family = "vit"

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=1000,
        distilled=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        pruning=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = pair(image_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.num_classes = num_classes
        self.distilled = distilled
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate
        self.schedule = vit_schedule(
            self.image_size, patch_size, embed_dim, depth, num_heads, distilled, pruning
        )

        self.patch_embed = keras.layers.Conv2D(
            embed_dim, patch_size, strides=patch_size, name="patch_embed"
        )
        self.pos_drop = keras.layers.Dropout(drop_rate)
        self.blocks = [
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_path_rate * i / max(depth - 1, 1),
                name=f"blocks_{i}",
            )
            for i in range(depth)
        ]
        self.norm = LayerNorm(name="norm")
        self.head = dense(num_classes, "head")
        self.head_dist = dense(num_classes, "head_dist") if distilled else None
        self.pruner = self.pruner_for_schedule()

    def build(self, input_shape=None):
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.cls_token = self.add_weight(
            name="cls_token", shape=(1, 1, self.embed_dim), initializer=init
        )
        self.dist_token = (
            self.add_weight(name="dist_token", shape=(1, 1, self.embed_dim), initializer=init)
            if self.distilled
            else None
        )
        self.pos_embed = self.add_weight(
            name="pos_embed",
            shape=(1, self.num_prefix_tokens + self.stages[0].num_patches, self.embed_dim),
            initializer=init,
        )
        self.patch_embed.build((None, *self.image_size, self.in_chans))
        token_shape = (None, None, self.embed_dim)
        for block in self.blocks:
            block.build(token_shape)
        self.norm.build(token_shape)
        self.head.build((None, self.embed_dim))
        if self.head_dist is not None:
            self.head_dist.build((None, self.embed_dim))
        if self.pruner is not None:
            self.pruner.build()
        self.built = True

    def embed(self, images, training=None):
        """Images (B, H, W, C) -> tokens (B, prefix + patches, D), prefix tokens first."""
        x = self.patch_embed(images)
        x = ops.reshape(x, (-1, self.stages[0].num_patches, self.embed_dim))
        batch = ops.shape(x)[0]
        prefix = [self.cls_token] + ([self.dist_token] if self.distilled else [])
        prefix = [ops.broadcast_to(t, (batch, 1, self.embed_dim)) for t in prefix]
        x = ops.concatenate(prefix + [x], axis=1) + self.pos_embed
        return self.pos_drop(x, training=training)

    def forward(self, images, training=None, mode=None):
        """Full forward pass -> `ForwardOutput` (logits plus what the losses need).

        `mode` (pruned models): `gumbel`, `mask` or `gather`; by default gathered at
        inference and Gumbel (learned selectors) or masked (baselines) when training.
        """
        mode = resolve_mode(self.pruner, training, mode)
        x = self.embed(images, training=training)
        (stage,) = self.stages
        state = TokenState.start(x, self.num_prefix_tokens, stage.num_patches,
                                 mode in ("gumbel", "mask"), self.schedule.tracks_grid)
        records = []
        state = self.run_blocks(state, stage.blocks, mode, training, records)
        normed = self.norm(state.x)
        P = self.num_prefix_tokens
        return ForwardOutput(
            logits=self.classify(normed),
            patch_tokens=normed[:, P : P + state.num_patches],
            token_mask=state.keep,
            token_index=state.index,
            records=records,
        )

    @property
    def head_tokens(self):
        """Tokens `final_logits` reads in the dense model: the whole last sequence."""
        return self.num_prefix_tokens + self.stages[-1].num_patches

    def final_logits(self, tokens):
        """The final norm over every token (the patch tokens are outputs too), then the
        head(s) on the prefix, as `forward` applies them."""
        return self.classify(self.norm(tokens))

    def timm_variables(self):
        """timm state-dict key -> (Keras variable, tensor layout) for checkpoint import."""
        mapping = {
            "cls_token": (self.cls_token, "param"),
            "pos_embed": (self.pos_embed, "pos_tokens"),
            "patch_embed.proj.weight": (self.patch_embed.kernel, "conv"),
            "patch_embed.proj.bias": (self.patch_embed.bias, "param"),
            **self.head_variables(),
        }
        if self.distilled:
            mapping["dist_token"] = (self.dist_token, "param")
        for i, block in enumerate(self.blocks):
            mapping.update(block_variables(block, f"blocks.{i}."))
        return mapping

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "num_classes": self.num_classes,
            "distilled": self.distilled,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "pruning": None if self.pruner is None else self.pruner.config.to_dict(),
        }


def block_variables(block, prefix):
    """timm key -> (variable, layout) for one transformer `Block` (shared by all families)."""
    mapping = {
        "norm1.weight": (block.norm1.gamma, "param"),
        "norm1.bias": (block.norm1.beta, "param"),
        "attn.qkv.weight": (block.attn.qkv.kernel, "linear"),
        "attn.proj.weight": (block.attn.proj.kernel, "linear"),
        "attn.proj.bias": (block.attn.proj.bias, "param"),
        "norm2.weight": (block.norm2.gamma, "param"),
        "norm2.bias": (block.norm2.beta, "param"),
        "mlp.fc1.weight": (block.mlp.fc1.kernel, "linear"),
        "mlp.fc1.bias": (block.mlp.fc1.bias, "param"),
        "mlp.fc2.weight": (block.mlp.fc2.kernel, "linear"),
        "mlp.fc2.bias": (block.mlp.fc2.bias, "param"),
    }
    if block.qkv_bias:
        mapping["attn.qkv.bias"] = (block.attn.qkv.bias, "param")
    return {prefix + key: value for key, value in mapping.items()}


_DEIT = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
for _size, _dims in _DEIT.items():
    register_model(f"deit_{_size}_patch16_224", VisionTransformer, **_dims)
    register_model(f"deit_{_size}_distilled_patch16_224", VisionTransformer, **_dims, distilled=True)
