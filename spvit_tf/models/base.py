"""What the DeiT and PiT families share: the pruned block loop, the heads, Keras plumbing."""

import keras
from keras import ops

from spvit_tf.pruning.tokens import TokenPruner, run_block


class TokenModel(keras.Model):
    """Base of the model families; subclasses define `embed`, `forward`, `final_logits`,
    `head_tokens` and `timm_variables`.

    Subclasses set `schedule` (their `spvit_tf.geometry.TokenSchedule`: stages, grids and
    the tokens of every block, from the constructor arguments), `blocks` (flat, global
    indices), `norm`, `head`, `head_dist` (or None), `pruner` (the schedule's `TokenPruner`,
    or None when dense), `image_size` and `in_chans`. Tools ask `stages` and `schedule`
    rather than the family.
    """

    @property
    def stages(self):
        """The schedule's `Stage`s: width, heads, grid and block range of each."""
        return self.schedule.stages

    @property
    def num_prefix_tokens(self):
        return self.schedule.num_prefix

    def embed_tokens(self, images, training=None):
        """Images -> the first block's input sequence [prefix | patches] (B, P + N, D).

        Families whose `embed` returns something else override it."""
        return self.embed(images, training=training)

    def pruner_for_schedule(self):
        """The `TokenPruner` of `schedule`, or None for a dense model."""
        if self.schedule.pruning is None:
            return None
        return TokenPruner(self.schedule, name="pruner")

    def build_weights(self):
        """Creates every variable so checkpoints can be assigned before the first call."""
        if not self.built:
            self.build((None, *self.image_size, self.in_chans))

    def run_blocks(self, state, indices, mode, training, records):
        """Blocks `indices` in order, each preceded by its pruning step if it has one."""
        for i in indices:
            if self.pruner is not None and i in self.pruner.locations:
                j = self.pruner.locations.index(i)
                state, record = self.pruner.step(j, state, self.blocks[i], mode, training)
                records.append(record)
            state = run_block(self.blocks[i], state, training)
        return state

    def classify(self, normed):
        """Head(s) on the final-normed prefix tokens -> logits (distilled: mean of both)."""
        token = lambda i: ops.reshape(normed[:, i : i + 1], (-1, normed.shape[-1]))  # noqa: E731
        logits = self.head(token(0))  # (slices keep their axis: the GPU delegate needs that)
        if self.head_dist is not None:
            logits = (logits + self.head_dist(token(1))) / 2
        return logits

    def call(self, images, training=None):
        return self.forward(images, training=training).logits

    def head_variables(self):
        """timm keys of the final norm and head(s) -> (variable, layout)."""
        mapping = {
            "norm.weight": (self.norm.gamma, "param"),
            "norm.bias": (self.norm.beta, "param"),
            "head.weight": (self.head.kernel, "linear"),
            "head.bias": (self.head.bias, "param"),
        }
        if self.head_dist is not None:
            mapping["head_dist.weight"] = (self.head_dist.kernel, "linear")
            mapping["head_dist.bias"] = (self.head_dist.bias, "param")
        return mapping
