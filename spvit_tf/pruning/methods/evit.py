"""EViT: no parameters; the class token's attention ranks the patches, dropped ones fused.

The score is the class token's attention to each patch, averaged over heads, computed with
the attention parameters of the block the selection precedes
(`spvit_tf.pruning.selector.class_attention_scores`). EViT itself prunes inside the block,
after attention; scoring just before it keeps every method on the same selection points and
schedule. Dropped tokens are fused into a package token weighted by their attention.
"""

import dataclasses

from spvit_tf.pruning.methods.base import SelectionMethod, register


def class_attention_macs(num_tokens, dim):
    """MACs of EViT's score: keys of every token, the class token's query, and q·kᵀ."""
    return num_tokens * dim * dim + dim * dim + num_tokens * dim


@dataclasses.dataclass(frozen=True)
class ClassAttentionSelection(SelectionMethod):
    """Top-k by the class token's attention (over the kept keys in the masked modes)."""

    def scores(self, pruner, j, state, block, mode):
        from spvit_tf.pruning.selector import class_attention_scores

        mask = None if state.keep is None else state.key_mask()
        return None, class_attention_scores(
            block, state.x, state.num_prefix, state.num_patches, mask
        )

    def scorer_macs(self, shape):
        # The keys the score reads: the sequence entering the location (prefix, its patches
        # and the packages earlier locations appended), not the package this step appends.
        tokens = shape.prefix + shape.patches_in + shape.packages_in
        return class_attention_macs(tokens, shape.dim)


EVIT = register(ClassAttentionSelection(
    name="evit", label="EViT (CLS attention + fused token)", has_package=True,
    fate="fused into the package token", marker="^", timed_by_latency_tables=False,
))
