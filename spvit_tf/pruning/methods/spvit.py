"""SPViT: the learned multi-head token selector, dropped tokens fused into a package token.

The selector (`spvit_tf.pruning.selector.MultiHeadTokenSelector`, one per location, built by
`TokenPruner`) scores every current patch token; the k best are kept and the rest are fused
into a package token weighted by their keep probability (`TokenPruner.select`).
"""

import dataclasses

from spvit_tf.pruning.methods.base import SelectionMethod, register


def selector_macs(num_tokens, dim, num_heads):
    """MACs of SPViT's multi-head selector over `num_tokens` tokens (see `selector.py`).

    Per head of width c and token: in-projection c², score MLP c/2·c/2 (the local half) +
    c/2·c/4 + c/4·2; per head once per image the context half's c/2·c/2; per token the
    head-importance MLP H·H/2 + H/2·H (absent with a single head).
    """
    c, hidden = dim // num_heads, max(num_heads // 2, 1)
    half = c // 2
    per_head = c * c + half * half + half * (c // 4) + (c // 4) * 2
    gate = 2 * num_heads * hidden if num_heads > 1 else 0
    return num_tokens * (num_heads * per_head + gate) + num_heads * (c - half) * half


@dataclasses.dataclass(frozen=True)
class LearnedSelection(SelectionMethod):
    """Top-k by the location's learned selector; Gumbel decisions while training."""

    def scores(self, pruner, j, state, block, mode):
        return pruner.selectors[j](state.patches, state.keep, log_probs=mode == "gumbel")

    def scorer_macs(self, shape):
        return selector_macs(shape.patches_in, shape.dim, shape.heads)


SPVIT = register(LearnedSelection(
    name="spvit", label="SPViT (ours)", learned=True, has_package=True,
    fate="fused into the package token", marker="o",
))
