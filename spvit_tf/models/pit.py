"""PiT: pooling-based ViT, transformer stages on shrinking token grids (timm's layout)."""

import keras
from keras import ops

from spvit_tf.geometry import pair, pit_schedule
from spvit_tf.layers import Block, LayerNorm, dense
from spvit_tf.models.base import TokenModel
from spvit_tf.models.vit import block_variables
from spvit_tf.pruning.tokens import ForwardOutput, TokenState, resolve_mode
from spvit_tf.registry import register_model


@keras.saving.register_keras_serializable("spvit_tf")
class ConvHeadPooling(keras.layers.Layer):
    """Halves the grid with a stride-2 depthwise conv and widens the prefix tokens linearly.

    Padding is explicit (1 pixel each side, as PyTorch's `padding=1`) because Keras "same"
    padding puts the extra pixel on one side only for even grids and would shift the result.
    """

    def __init__(self, in_dim, out_dim, **kwargs):
        super().__init__(**kwargs)
        if out_dim % in_dim:
            raise ValueError(f"out_dim={out_dim} must be a multiple of in_dim={in_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.conv = keras.layers.DepthwiseConv2D(
            3, strides=2, depth_multiplier=out_dim // in_dim, name="conv"
        )
        self.fc = dense(out_dim, "fc")

    def build(self, grid_shape, prefix_shape=None):
        self.conv.build((None, None, None, self.in_dim))
        self.fc.build((None, None, self.in_dim))

    def call(self, grid, prefix):
        grid = ops.pad(grid, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return self.conv(grid), self.fc(prefix)

    def get_config(self):
        return {**super().get_config(), "in_dim": self.in_dim, "out_dim": self.out_dim}


@keras.saving.register_keras_serializable("spvit_tf")
class PoolingVisionTransformer(TokenModel):
    """PiT classifier on NHWC float images (already normalised with ImageNet mean/std).

    Blocks are held in one flat list `blocks` (global indices, as pruning locations use) with
    `stages` (`spvit_tf.geometry.pit_schedule`) giving each stage's block range, width and
    grid; between stages the spatial tokens go back to a grid and are pooled, the non-spatial
    tokens go through a linear layer (`stage_input`).

    With `pruning`, selectors run inside stages. Tokens dropped in a stage bypass its
    remaining blocks and are scattered back to their grid positions before pooling, so the
    pooling conv always sees a whole grid; package tokens are non-spatial and are pooled like
    the class token, by the pooling's linear layer, then carried to the end.
    """

    family = "pit"

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        stride=8,
        in_chans=3,
        base_dims=(32, 32, 32),
        depth=(2, 6, 4),
        heads=(2, 4, 8),
        mlp_ratio=4.0,
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
        self.stride = stride
        self.in_chans = in_chans
        self.base_dims = tuple(base_dims)
        self.depth = tuple(depth)
        self.heads = tuple(heads)
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.distilled = distilled
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate
        self.schedule = pit_schedule(
            self.image_size, patch_size, stride, self.base_dims, self.depth, self.heads,
            distilled, pruning,
        )
        stages = self.stages
        self.embed_dim = stages[-1].dim

        self.patch_embed = keras.layers.Conv2D(
            stages[0].dim, patch_size, strides=stride, name="patch_embed"
        )
        self.pos_drop = keras.layers.Dropout(drop_rate)
        self.pools = [None] + [
            ConvHeadPooling(stages[s - 1].dim, stages[s].dim, name=f"pool_{s}")
            for s in range(1, len(stages))
        ]
        total = self.schedule.depth
        self.blocks = [
            Block(
                stage.dim,
                stage.heads,
                mlp_ratio,
                qkv_bias=True,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_path_rate * i / max(total - 1, 1),
                name=f"blocks_{i}",
            )
            for stage in stages
            for i in stage.blocks
        ]
        self.norm = LayerNorm(name="norm")
        self.head = dense(num_classes, "head")
        self.head_dist = dense(num_classes, "head_dist") if distilled else None
        self.pruner = self.pruner_for_schedule()

    def build(self, input_shape=None):
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        first = self.stages[0]
        self.cls_token = self.add_weight(
            name="cls_token", shape=(1, self.num_prefix_tokens, first.dim), initializer=init
        )
        self.pos_embed = self.add_weight(
            name="pos_embed", shape=(1, *first.grid, first.dim), initializer=init
        )
        self.patch_embed.build((None, *self.image_size, self.in_chans))
        for s, stage in enumerate(self.stages):
            if self.pools[s] is not None:
                self.pools[s].build(None)
            for i in stage.blocks:
                self.blocks[i].build((None, None, stage.dim))
        self.norm.build((None, None, self.embed_dim))
        self.head.build((None, self.embed_dim))
        if self.head_dist is not None:
            self.head_dist.build((None, self.embed_dim))
        if self.pruner is not None:
            self.pruner.build()
        self.built = True

    def embed(self, images, training=None):
        """Images -> (grid (B, h, w, C0) with positions added, prefix tokens (B, P, C0))."""
        grid = self.pos_drop(self.patch_embed(images) + self.pos_embed, training=training)
        prefix = ops.broadcast_to(
            self.cls_token, (ops.shape(grid)[0], self.num_prefix_tokens, self.stages[0].dim)
        )
        return grid, prefix

    def stage_input(self, s, grid, non_spatial):
        """Stage `s`'s input sequence [prefix | patches | packages] from the previous stage's
        whole grid (B, h, w, C) and its non-spatial tokens [prefix | packages] (for stage 0,
        the embedding's): pooled first, except into stage 0."""
        if self.pools[s] is not None:
            grid, non_spatial = self.pools[s](grid, non_spatial)
        P, stage = self.num_prefix_tokens, self.stages[s]
        patches = ops.reshape(grid, (-1, stage.num_patches, stage.dim))
        return ops.concatenate([non_spatial[:, :P], patches, non_spatial[:, P:]], 1)

    def embed_tokens(self, images, training=None):
        """Images -> stage 0's input sequence [prefix | patches]."""
        return self.stage_input(0, *self.embed(images, training=training))

    def pool_sequence(self, s, x):
        """A dense stage `s - 1` output [prefix | whole grid] (B, P + h·w, C) -> stage `s`'s
        input sequence: the transition between stages, as `forward` makes it."""
        P, before = self.num_prefix_tokens, self.stages[s - 1]
        grid = ops.reshape(x[:, P:], (-1, *before.grid, before.dim))
        return self.stage_input(s, grid, x[:, :P])

    def forward(self, images, training=None, mode=None):
        """Full forward pass -> `ForwardOutput`; `mode` as for `VisionTransformer.forward`."""
        mode = resolve_mode(self.pruner, training, mode)
        P = self.num_prefix_tokens
        grid, non_spatial = self.embed(images, training=training)
        records = []
        for s, stage in enumerate(self.stages):
            x = self.stage_input(s, grid, non_spatial)
            state = TokenState.start(x, P, stage.num_patches, mode in ("gumbel", "mask"),
                                     track_grid=self.schedule.tracks_grid)
            state = self.run_blocks(state, stage.blocks, mode, training, records)
            selection = self.pruner.config.selection if self.pruner is not None else "gather"
            grid = ops.reshape(state.full_grid_patches(selection), (-1, *stage.grid, stage.dim))
            non_spatial = state.non_spatial()
        return ForwardOutput(
            logits=self.final_logits(non_spatial),
            patch_tokens=self.norm(state.patches),
            token_mask=state.keep,
            token_index=state.index,
            records=records,
        )

    @property
    def head_tokens(self):
        """Tokens `final_logits` reads in the dense model: the prefix tokens."""
        return self.num_prefix_tokens

    def final_logits(self, non_spatial):
        """The final norm and head(s) on the prefix tokens of the last stage's non-spatial
        tokens [prefix | packages]: PiT's patch tokens feed no head."""
        return self.classify(self.norm(non_spatial[:, : self.num_prefix_tokens]))

    def timm_variables(self):
        """timm state-dict key -> (Keras variable, tensor layout) for checkpoint import."""
        mapping = {
            "cls_token": (self.cls_token, "param"),
            "pos_embed": (self.pos_embed, "pos_grid"),
            "patch_embed.conv.weight": (self.patch_embed.kernel, "conv"),
            "patch_embed.conv.bias": (self.patch_embed.bias, "param"),
            **self.head_variables(),
        }
        for s, stage in enumerate(self.stages):
            pool = self.pools[s]
            if pool is not None:
                mapping[f"transformers.{s}.pool.conv.weight"] = (pool.conv.kernel, "depthwise")
                mapping[f"transformers.{s}.pool.conv.bias"] = (pool.conv.bias, "param")
                mapping[f"transformers.{s}.pool.fc.weight"] = (pool.fc.kernel, "linear")
                mapping[f"transformers.{s}.pool.fc.bias"] = (pool.fc.bias, "param")
            for j, i in enumerate(stage.blocks):
                mapping.update(block_variables(self.blocks[i], f"transformers.{s}.blocks.{j}."))
        return mapping

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "in_chans": self.in_chans,
            "base_dims": self.base_dims,
            "depth": self.depth,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "num_classes": self.num_classes,
            "distilled": self.distilled,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "pruning": None if self.pruner is None else self.pruner.config.to_dict(),
        }


_PIT = {
    "ti": dict(patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4), heads=(2, 4, 8)),
    "xs": dict(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(2, 4, 8)),
    "s": dict(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(3, 6, 12)),
    "b": dict(patch_size=14, stride=7, base_dims=(64, 64, 64), depth=(3, 6, 4), heads=(4, 8, 16)),
}
for _size, _dims in _PIT.items():
    register_model(f"pit_{_size}_224", PoolingVisionTransformer, **_dims)
    register_model(f"pit_{_size}_distilled_224", PoolingVisionTransformer, **_dims, distilled=True)
