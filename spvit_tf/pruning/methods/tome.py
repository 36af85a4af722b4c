"""ToMe (Bolya et al., "Token Merging: Your ViT but Faster"): training-free token merging.

At each pruning location, before that location's block, similar patch tokens are merged by
bipartite soft matching (the official `tome/merge.py`) until the schedule's counts remain,
so ToMe meets the same schedule, and is priced at the same budget, as the other methods:

- Metric: the block's attention keys of its normed tokens (its own `norm1` and qkv weights,
  as EViT's score uses them), averaged over heads and L2-normalised. The mean of the
  per-head keys is the keys of the head-averaged key kernel, which the converter folds: one
  D -> D/H projection instead of D -> D.
- Matching: the current patch tokens split into A (even sequence positions) and B (odd);
  class/dist and package tokens are never merged (the state keeps them apart). Each A token's
  best match is the B token of highest cosine similarity (first in B's order on ties); the
  r = n - k A tokens with the best matches (ties: earlier first) are merged into them.
- Merge: size-weighted average, each token carrying the number of original tokens it stands
  for (1 to start): x_dst = Σ size·x / Σ size, size_dst = Σ size. The sequence becomes
  [unmerged A in their order, B in their order]: the official code restores A's order when
  there is a class token, as in every DeiT.
- Rounds: one round merges at most |A| = ceil(n/2) tokens. A step that asks for more runs
  several rounds, each on what the last left, with the metric recomputed from the merged
  tokens (`merge_rounds`); the official ToMe instead caps r at half the tokens.
- Proportional attention: the sizes ride in `TokenState.sizes`, and every later block
  weights each key's softmax exponential by its size (adds log(size) to the logits, the
  official form), so a token standing for m tokens counts as m keys. Prefix and package
  tokens have size 1.

Unlike the official ToMe, which merges a fixed r in every block between attention and MLP,
merging happens only at the configured locations, before the block: every method shares the
same selection points. The matching is under stop_gradient (the official code matches under
`no_grad`); the merged values carry gradients.

Shapes are static and every op a TFLite builtin. `selection="gather"` finds best matches
and orders tokens with TOPK_V2/GATHER; `selection="matmul"` (the GPU delegate)
uses comparisons, `rank_order` and one-hot matmuls instead: no TOPK_V2, ARG_MAX or GATHER.
Sources go into destinations as a one-hot matmul in both, never a scatter op.

Masked modes (`mask`, and `gumbel`, which acts as `mask`: nothing is learned) run the same
merges on the full-length graph: tokens stay at their grid positions, a merged-away token's
keep flag drops to 0 (its value freezes, as a dropped token's does), destinations take the
merged value and size, and `TokenState.order` tracks each token's position in the gathered
sequence so the A/B split and every tie break as in the gathered graph. Fine-tuning with ToMe
therefore keeps full-length final tokens at grid positions for token distillation, and its
keep decisions meet the schedule exactly. PiT works as for the other methods: a merged-away
token is parked at its value when merged and goes back to its grid cell before pooling
(destinations sit at their own cells); sizes restart at 1 on each new grid.

Records: `index` (gathered) the grid positions of the tokens left; `decision` (masked) the
keep flags after merging; `keep_score` over the incoming tokens, from the first round:
(1 - best cosine) / 2 for A tokens (the lowest are merged), 1 for B tokens, 0 for tokens
already gone (masked).

Keras is imported inside the functions that build graphs, so that registering ToMe (and
with it `PruningConfig` and the cost model) needs no TensorFlow.
"""

import dataclasses

from spvit_tf.errors import SpvitError
from spvit_tf.pruning.methods.base import Method, register

_NORM_EPS = 1e-12  # keeps an all-zero key's normalisation finite


def merge_rounds(n, k):
    """((tokens in, merged), ...): the rounds taking `n` patch tokens down to `k`, each
    merging at most ceil(n/2) (all of A)."""
    rounds = []
    while n > k:
        r = min(n - k, (n + 1) // 2)
        rounds.append((n, r))
        n -= r
    return tuple(rounds)


def similarity_metric(block, patches):
    """(B, n, D/H): `block`'s attention keys of the normed `patches`, averaged over heads,
    L2-normalised, without gradient."""
    from keras import ops

    attn = block.attn
    d, heads, c = attn.dim, attn.num_heads, attn.head_dim
    kernel = ops.mean(ops.reshape(attn.qkv.kernel[:, d : 2 * d], (d, heads, c)), axis=1)
    keys = ops.matmul(block.norm1(patches), kernel)
    if attn.qkv.bias is not None:
        keys = keys + ops.mean(ops.reshape(attn.qkv.bias[d : 2 * d], (heads, c)), axis=0)
    keys = ops.stop_gradient(keys)
    return keys * ops.rsqrt(ops.sum(keys * keys, axis=-1, keepdims=True) + _NORM_EPS)


def split_alternate(rows):
    """(B, n, C) -> (even positions (B, ceil(n/2), C), odd positions (B, floor(n/2), C)).

    By a reshape and channel slices of 3-D tensors, not strided slices (the GPU delegate's
    slices are 3-D/4-D only); an odd count is padded with one row, then cut."""
    from keras import ops

    n, c = rows.shape[1], rows.shape[2]
    if n % 2:
        rows = ops.pad(rows, ((0, 0), (0, 1), (0, 0)))
    pairs = ops.reshape(rows, (-1, (n + 1) // 2, 2 * c))
    return pairs[..., :c], pairs[:, : n // 2, c:]


def best_match(scores, best, selection):
    """One-hot (B, na, nb) of each A token's best B match, the first on ties.

    `best` (B, na, 1) is the row maximum. `gather`: TOPK_V2 with k = 1 (ties: lowest index).
    `matmul`: the maxima with no earlier maximum in their row (a count by a matmul with a
    constant triangle), so no TOPK_V2 or ARG_MAX."""
    from keras import ops

    from spvit_tf.pruning.tokens import one_hot

    na, nb = scores.shape[1], scores.shape[2]
    if selection == "gather":  # a top-1, not ARG_MAX: Keras' argmax adds a non-builtin op
        _, first = ops.top_k(scores, 1)
        return one_hot(ops.reshape(first, (-1, na)), nb, scores.dtype)
    is_max = ops.cast(ops.greater_equal(scores, best), scores.dtype)
    earlier = ops.cast(ops.arange(nb)[:, None] < ops.arange(nb)[None, :], scores.dtype)
    before = ops.matmul(is_max, earlier)  # (B, na, nb): maxima left of each column
    return is_max * ops.cast(ops.less(before, 0.5), scores.dtype)


def merge_round(tokens, sizes, index, metric, r, selection, park=False):
    """One round of bipartite soft matching on the gathered patch sequence.

    tokens (B, n, D), sizes (B, n), index (B, n) int32 grid positions, metric (B, n, c) ->
    (tokens (B, n - r, D), sizes (B, n - r), index (B, n - r), merged tokens (B, r, D) at
    their values before the merge and their index (both None unless `park`), keep score
    (B, n)). Everything stays in 3-D rows [tokens | size | (index) | metric].
    """
    from keras import ops

    from spvit_tf.pruning.tokens import descending_rank, gather_rows, one_hot, rank_order

    n, d, c = tokens.shape[1], tokens.shape[2], metric.shape[2]
    na, nb, dtype = (n + 1) // 2, n // 2, tokens.dtype
    matmul = selection == "matmul"
    channels = [tokens, ops.reshape(sizes, (-1, n, 1)), metric]
    if matmul:  # grid positions ride along as a float channel (exact below 2^24)
        channels.append(ops.reshape(ops.cast(index, dtype), (-1, n, 1)))
    a, b = split_alternate(ops.concatenate(channels, axis=-1))
    xa, sa, ma = a[..., :d], a[..., d : d + 1], a[..., d + 1 : d + 1 + c]
    xb, sb, mb = b[..., :d], b[..., d : d + 1], b[..., d + 1 : d + 1 + c]
    scores = ops.matmul(ma, ops.transpose(mb, (0, 2, 1)))  # (B, na, nb) cosines
    best = ops.max(scores, axis=-1, keepdims=True)
    dst = best_match(scores, best, selection)
    best = ops.reshape(best, (-1, na))
    if matmul:
        merged = ops.cast(ops.less(descending_rank(best), r - 0.5), dtype)
    else:
        _, top = ops.top_k(best, r)
        merged = ops.sum(one_hot(top, na, dtype), axis=1)
    # Sources into destinations: a one-hot matmul of the size-weighted sources.
    weights = dst * (ops.reshape(merged, (-1, na, 1)) * sa)  # (B, na, nb)
    total = sb + ops.reshape(ops.sum(weights, axis=1), (-1, nb, 1))
    xb = (sb * xb + ops.matmul(ops.transpose(weights, (0, 2, 1)), xa)) / total
    # A compacted: unmerged first, then merged, each in A's order (distinct integer keys).
    key = -(merged * na + ops.arange(na, dtype=dtype)[None])
    count, kept = (na if park else na - r), na - r
    if matmul:
        index_b = ops.cast(b[..., d + 1 + c :] + 0.5, "int32")
    else:
        index_a, index_b = split_alternate(ops.reshape(index, (-1, n, 1)))
    rows = positions = None
    if count and matmul:
        rows = ops.concatenate([xa, sa, a[..., d + 1 + c :]], axis=-1)
        rows = ops.matmul(rank_order(key)[:, :count], rows)
        positions = ops.cast(rows[..., d + 1 :] + 0.5, "int32")  # (B, count, 1)
    elif count:
        _, order = ops.top_k(key, count)
        rows = gather_rows(ops.concatenate([xa, sa], axis=-1), order)
        positions = gather_rows(index_a, order)
    new_tokens = xb if not kept else ops.concatenate([rows[:, :kept, :d], xb], axis=1)
    new_sizes = total if not kept else ops.concatenate([rows[:, :kept, d : d + 1], total], 1)
    new_index = index_b if not kept else ops.concatenate([positions[:, :kept], index_b], 1)
    new_sizes, new_index = ops.reshape(new_sizes, (-1, n - r)), ops.reshape(new_index, (-1, n - r))
    gone = gone_index = None
    if park:
        gone, gone_index = rows[:, kept:, :d], ops.reshape(positions[:, kept:], (-1, r))
    score_a = ops.reshape((1.0 - best) / 2.0, (-1, na, 1))
    pairs = ops.concatenate([score_a, ops.ones_like(score_a)], axis=-1)  # A even, B odd
    keep_score = ops.reshape(pairs, (-1, 2 * na))[:, :n]
    return new_tokens, new_sizes, new_index, gone, gone_index, keep_score


def masked_merge_round(patches, keep, sizes, order, metric, n, r):
    """The same round on the full-length masked graph, tokens at their grid positions.

    patches (B, N, D), keep/sizes/order (B, N) (order: position in the gathered sequence,
    meaningful for kept tokens), metric (B, N, c); `n` tokens are kept on entry. -> (patches,
    keep, sizes, order, keep score), all (B, N, ...). A and B are the kept tokens at even and
    odd sequence positions; ties break by sequence position, as `merge_round`'s do.
    """
    from keras import ops

    from spvit_tf.pruning.tokens import one_hot

    N, dtype = keep.shape[1], patches.dtype
    na = (n + 1) // 2
    cast = lambda t: ops.cast(t, dtype)  # noqa: E731
    is_b = keep * (order - 2.0 * ops.floor(order / 2.0))
    is_a = keep - is_b
    scores = ops.matmul(metric, ops.transpose(metric, (0, 2, 1)))
    scores = scores - 4.0 * (1.0 - is_b[:, None, :])  # cosines lie in [-1, 1]: only B wins
    best = ops.max(scores, axis=-1)
    is_max = cast(ops.greater_equal(scores, best[..., None])) * is_b[:, None, :]
    first = ops.argmax(is_max * (N + 1.0 - order)[:, None, :], axis=-1)  # earliest in B
    dst = one_hot(first, N, dtype)  # (B, N, N): row a -> its destination
    earlier = cast(ops.less(order[:, None, :], order[:, :, None]))  # [i, j]: j before i
    pairs = best[:, None, :], best[:, :, None]
    ahead = is_a[:, None, :] * (cast(ops.greater(*pairs)) + cast(ops.equal(*pairs)) * earlier)
    merged = is_a * cast(ops.less(ops.sum(ahead, axis=-1), r - 0.5))
    weights = dst * (merged * sizes)[..., None]
    total = sizes + ops.sum(weights, axis=1)
    blend = (sizes[..., None] * patches + ops.matmul(ops.transpose(weights, (0, 2, 1)), patches))
    patches = ops.where(is_b[..., None] > 0.5, blend / total[..., None], patches)
    unmerged = is_a - merged
    before = ops.sum(unmerged[:, None, :] * earlier, axis=-1)  # unmerged A tokens ahead
    order = (unmerged * before + is_b * ((na - r) + (order - 1.0) / 2.0)
             + (1.0 - keep + merged) * order)
    keep_score = is_a * (1.0 - best) / 2.0 + is_b
    return patches, keep - merged, total, order, keep_score


def _gathered_step(pruner, j, state, block, rounds):
    from keras import ops

    from spvit_tf.pruning.tokens import TokenState

    P, n = state.num_prefix, state.num_patches
    tokens, index, sizes = state.patches, state.index, state.sizes
    if sizes is None:
        sizes = ops.ones((ops.shape(tokens)[0], n), dtype=tokens.dtype)
    parked, parked_index, keep_score = state.parked, state.parked_index, None
    for _, r in rounds:
        metric = similarity_metric(block, tokens)
        tokens, sizes, index, gone, gone_index, score = merge_round(
            tokens, sizes, index, metric, r, pruner.config.selection, park=state.track_grid
        )
        keep_score = score if keep_score is None else keep_score
        if state.track_grid:
            parked = gone if parked is None else ops.concatenate([parked, gone], axis=1)
            parked_index = (gone_index if parked_index is None
                            else ops.concatenate([parked_index, gone_index], axis=1))
    x = ops.concatenate([state.x[:, :P], tokens, state.x[:, P + n :]], axis=1)
    new_state = TokenState(x, P, tokens.shape[1], index, None, parked, parked_index,
                           state.track_grid, sizes=sizes)
    return new_state, {"index": index, "keep_score": keep_score}


def _masked_step(pruner, j, state, block, rounds):
    from keras import ops

    P, N = state.num_prefix, state.num_patches
    patches, keep, dtype = state.patches, state.keep, state.x.dtype
    batch = ops.shape(patches)[0]
    sizes = ops.ones((batch, N), dtype=dtype) if state.sizes is None else state.sizes
    order = state.order
    if order is None:
        order = ops.broadcast_to(ops.arange(N, dtype=dtype)[None], (batch, N))
    keep_score = None
    for n, r in rounds:
        metric = similarity_metric(block, patches)
        patches, keep, sizes, order, score = masked_merge_round(
            patches, keep, sizes, order, metric, n, r
        )
        keep_score = score if keep_score is None else keep_score
    x = ops.concatenate([state.x[:, :P], patches, state.x[:, P + N :]], axis=1)
    new_state = dataclasses.replace(state, x=x, keep=keep, sizes=sizes, order=order)
    return new_state, {"decision": keep, "keep_score": keep_score}


@dataclasses.dataclass(frozen=True)
class TokenMerging(Method):
    """ToMe's step and cost (see the module docstring)."""

    def step(self, pruner, j, state, block, mode):
        if pruner.ranking != "own":
            raise SpvitError(f"ranking {pruner.ranking!r} swaps which tokens a selection keeps; "
                             f"{self.name} merges tokens and has no ranking to swap")
        step = pruner.schedule.steps[j]
        n, k = step.patches_in, step.kept
        rounds = merge_rounds(n, k)
        if state.keep is None:
            if state.num_patches != n:
                raise SpvitError(f"location {pruner.locations[j]} expects {n} patch tokens, "
                                 f"the state holds {state.num_patches}")
            if not rounds:
                return state, {"index": state.index, "keep_score": _ones(state.index, state.x)}
            return _gathered_step(pruner, j, state, block, rounds)
        if not rounds:
            return state, {"decision": state.keep, "keep_score": state.keep}
        return _masked_step(pruner, j, state, block, rounds)

    def step_macs(self, shape):
        """(scorer, movement) per round: scorer = the head-averaged keys n·D·D/H and the
        cosines |A|·|B|·D/H (with `matmul`, also the first-maximum count |A|·|B|²);
        movement = sources into destinations |A|·|B|·D (with `matmul`, also the permutation
        compacting A with its size and grid index, for the |A| - r left, or all of A when
        merged tokens are parked for PiT's grid). Sizes, divisions and proportional
        attention are element-wise, which the cost model does not count."""
        d, c = shape.dim, shape.dim // shape.heads
        scorer = movement = 0
        for n, r in merge_rounds(shape.patches_in, shape.patches_out):
            na, nb = (n + 1) // 2, n // 2
            scorer += n * d * c + na * nb * c
            movement += na * nb * d
            if shape.selection == "matmul":
                scorer += na * nb * nb
                movement += (na if shape.track_grid else na - r) * na * (d + 2)
        return scorer, movement


def _ones(index, x):
    from keras import ops

    return ops.cast(ops.ones_like(index), x.dtype)


TOME = register(TokenMerging(
    name="tome", label="ToMe (token merging)", fate="merged into their most similar token",
    marker="v", timed_by_latency_tables=False,
))
