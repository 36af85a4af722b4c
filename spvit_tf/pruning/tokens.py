"""The token pruning machinery: a `TokenState` between blocks, the shared selection step and
the `TokenPruner`, which asks its method object (`spvit_tf.pruning.methods`) for each step.

A sequence is always laid out as [prefix (class/dist) | patches | package tokens]. Three
modes share every function and weight:

- `gumbel` (training): hard Gumbel-softmax keep decisions with straight-through gradients;
  tokens stay in the tensor and a keep mask removes dropped ones from attention.
- `mask`: the same masked graph with deterministic top-k decisions (non-learned methods'
  training path, and the proof that the masked graph equals the gathered one).
- `gather` (inference): exactly k tokens are kept per location and gathered, so blocks run
  on shorter, static-shape sequences that export to TFLite.

Dropped tokens bypass all later blocks (their values are frozen), which is what lets PiT
put them back into its grid before pooling. Methods that merge tokens (ToMe) also carry each
token's size, which later blocks' attention weights its keys by.
"""

import dataclasses
import math

import keras
from keras import ops

from spvit_tf.errors import SpvitError
from spvit_tf.geometry import TokenSchedule
from spvit_tf.pruning.methods import get_method
from spvit_tf.pruning.selector import MultiHeadTokenSelector

MODES = ("gumbel", "mask", "gather")
# Diagnostic rankings (`TokenPruner.ranking`): which tokens a gathered forward keeps, with the
# model's own scores still weighting its package tokens. `centre` and `evit` rank by those
# methods' scores.
RANKINGS = ("own", "random", "inverted", "centre", "evit")
_RANKING_METHODS = {"centre": "static", "evit": "evit"}
# Keeps log(weight) finite for tokens with no weight (not dropped at this location).
_PACKAGE_EPS = 1e-12
# The weight of the zero vector every package token averages in (`package_token`): it bounds
# the package's gradient when little is dropped.
PACKAGE_PRIOR = 1.0


@dataclasses.dataclass
class TokenState:
    """Tokens between blocks: `x` is [prefix | patches | packages] of static length.

    `keep` (B, n) is the keep mask of the masked modes (None when gathered); `index` (B, n)
    holds each current patch's position in its stage's grid. In gather mode with
    `track_grid` (PiT), tokens dropped so far are parked, frozen, in `parked` with their grid
    positions in `parked_index`, to be put back at the end of the stage.

    `sizes` (B, n), None for all ones: how many original tokens each patch token stands for
    (ToMe's merged tokens); prefix and package tokens have size 1. `order` (B, n), masked
    modes only, None for grid order: each kept token's position in the sequence the gathered
    graph would hold, so a masked step can split tokens exactly as the gathered one does.
    """

    x: object
    num_prefix: int
    num_patches: int
    index: object
    keep: object = None
    parked: object = None
    parked_index: object = None
    track_grid: bool = False
    sizes: object = None
    order: object = None

    @classmethod
    def start(cls, x, num_prefix, num_patches, masked, track_grid=False):
        batch = ops.shape(x)[0]
        index = ops.broadcast_to(ops.arange(num_patches, dtype="int32")[None], (batch, num_patches))
        keep = ops.ones((batch, num_patches), dtype=x.dtype) if masked else None
        return cls(x, num_prefix, num_patches, index, keep, track_grid=track_grid)

    @property
    def patches(self):
        return self.x[:, self.num_prefix : self.num_prefix + self.num_patches]

    @property
    def num_packages(self):
        return self.x.shape[1] - self.num_prefix - self.num_patches

    def key_mask(self):
        """(B, T) mask over the whole sequence: prefix and packages are always kept."""
        batch = ops.shape(self.x)[0]
        ones = lambda count: ops.ones((batch, count), dtype=self.x.dtype)  # noqa: E731
        return ops.concatenate(
            [ones(self.num_prefix), self.keep, ones(self.num_packages)], axis=1
        )

    def key_weights(self):
        """(B, T) attention key weights over the whole sequence (the sizes), or None."""
        if self.sizes is None:
            return None
        batch = ops.shape(self.x)[0]
        ones = lambda count: ops.ones((batch, count), dtype=self.x.dtype)  # noqa: E731
        return ops.concatenate(
            [ones(self.num_prefix), self.sizes, ones(self.num_packages)], axis=1
        )

    def full_grid_patches(self, selection="gather"):
        """All N patch tokens of the stage in grid order, dropped ones at their frozen value."""
        if self.keep is not None or self.parked is None:
            return self.patches
        tokens = ops.concatenate([self.patches, self.parked], axis=1)
        index = ops.concatenate([self.index, self.parked_index], axis=1)  # a permutation
        if selection == "gather":
            # The inverse permutation, by sorting positions ascending: zero MACs.
            _, inverse = ops.top_k(-index, index.shape[1])  # int32: stays integer in int8
            return gather_rows(tokens, inverse)
        placement = one_hot(index, index.shape[1], tokens.dtype)  # (B, N, N), row i -> index[i]
        return ops.matmul(ops.transpose(placement, (0, 2, 1)), tokens)

    def non_spatial(self):
        """Prefix and package tokens: what PiT pools with its linear layer."""
        return ops.concatenate(
            [self.x[:, : self.num_prefix], self.x[:, self.num_prefix + self.num_patches :]], axis=1
        )


@dataclasses.dataclass
class ForwardOutput:
    """What a forward pass exposes to losses and tools (`model.forward`).

    - `logits` (B, classes).
    - `patch_tokens` (B, n, D): final patch tokens after the final norm (for PiT, of the last
      stage's grid); `token_mask` (B, n) marks the kept ones in the masked modes (None when
      gathered); `token_index` (B, n) their grid positions.
    - `records`: one dict per pruning location: `decision` (B, n) hard keep decisions of the
      masked modes (straight-through gradients under Gumbel), `keep_score` (B, n) the
      selector's keep probability (or the baseline's score), `index` (B, k) the kept grid
      positions when gathered.
    """

    logits: object
    patch_tokens: object
    token_mask: object
    token_index: object
    records: list


def resolve_mode(pruner, training, mode=None):
    """Default mode: gathered at inference, Gumbel when training a learned selector."""
    if pruner is None:
        return None
    if mode is not None:
        if mode not in MODES:
            raise SpvitError(f"unknown pruning mode {mode!r}; choose one of {MODES}")
        return mode
    if not training:
        return "gather"
    return "gumbel" if pruner.config.learned else "mask"


def run_block(block, state, training=None):
    """Applies `block`; in the masked modes dropped tokens are masked out and left unchanged.

    With token sizes, every key is weighted by its size (proportional attention)."""
    weights = state.key_weights()
    extra = {} if weights is None else {"key_weights": weights}
    if state.keep is None:
        return dataclasses.replace(state, x=block(state.x, training=training, **extra))
    mask = state.key_mask()
    y = block(state.x, keep_mask=mask, training=training, **extra)
    return dataclasses.replace(state, x=state.x + mask[:, :, None] * (y - state.x))


def gather_rows(x, rows):
    """x (B, n, ...), rows (B, k) int -> (B, k, ...): each batch item's rows, in that order.

    As one GATHER along the flattened batch: `take_along_axis` lowers to a per-element
    gather with broadcast index tensors and negative-index SELECTs, several times slower
    on the TFLite CPU, and a batched GATHER the GPU delegate rejects.
    """
    batch, n = ops.shape(x)[0], x.shape[1]
    offsets = ops.arange(batch, dtype=rows.dtype)[:, None] * n
    flat = ops.reshape(x, (-1, *x.shape[2:]))
    picked = ops.take(flat, ops.reshape(rows + offsets, (-1,)), axis=0)
    return ops.reshape(picked, (-1, rows.shape[1], *x.shape[2:]))


def one_hot(index, depth, dtype="float32"):
    """(..., k) int -> (..., k, depth); an EQUAL, not ONE_HOT, so every TFLite delegate has it."""
    return ops.cast(ops.equal(index[..., None], ops.arange(depth, dtype=index.dtype)), dtype)


def gumbel_keep(log_probs, tau, seed):
    """Hard keep decisions (B, n) from keep/drop log-probs, straight-through gradients."""
    uniform = keras.random.uniform(ops.shape(log_probs), minval=1e-10, maxval=1.0, seed=seed)
    soft = ops.softmax((log_probs - ops.log(-ops.log(uniform))) / tau, axis=-1)[..., 0]
    hard = ops.cast(soft >= 0.5, soft.dtype)
    return hard + (soft - ops.stop_gradient(soft))  # exactly 0/1 forward, soft gradient


def top_k_mask(scores, keep, k):
    """Hard mask of the `k` best-scored tokens among those still kept."""
    masked_scores = scores - (1.0 - keep) * 1e9
    _, index = ops.top_k(ops.stop_gradient(masked_scores), k)
    return ops.sum(one_hot(index, scores.shape[1], scores.dtype), axis=1)


def descending_rank(scores):
    """(B, n) -> each token's place in descending score order (0 = best), as exact small
    integers in float; ties broken by position, as top-k does. Pairwise comparisons, no
    TOPK_V2."""
    n = scores.shape[1]
    row, col = ops.arange(n)[:, None], ops.arange(n)[None, :]
    earlier = ops.cast(col < row, scores.dtype)[None]  # [i, j]: j comes before i
    pairs = scores[:, None, :], scores[:, :, None]
    ahead = (ops.cast(ops.greater(*pairs), scores.dtype)  # j beats i, or ties and comes first;
             + ops.cast(ops.equal(*pairs), scores.dtype) * earlier)  # float math: no LOGICAL_OR
    return ops.sum(ahead, axis=-1)


def rank_order(scores):
    """Permutation matrix (B, n, n) sorting tokens by descending score, without TOPK_V2.

    Ranks tokens by pairwise comparison (`descending_rank`) so the exported graph has neither
    TOPK_V2 nor GATHER, which the TFLite GPU delegate lacks.
    """
    n = scores.shape[1]
    rank = descending_rank(scores)
    return ops.cast(ops.equal(rank[:, None, :], ops.arange(n, dtype=scores.dtype)[None, :, None]),
                    scores.dtype)


def sort_tokens(patches, index, scores, selection):
    """(patches, grid positions, scores) sorted by descending score: kept ones come first."""
    if selection == "gather":
        sorted_scores, order = ops.top_k(scores, scores.shape[1])
        return gather_rows(patches, order), gather_rows(index, order), sorted_scores
    order = rank_order(scores)
    n = scores.shape[1]  # reshapes, not [..., 0]: the GPU delegate lacks shrinking slices
    position = ops.reshape(ops.matmul(order, ops.cast(index, scores.dtype)[..., None]), (-1, n))
    return (ops.matmul(order, patches), ops.cast(position + 0.5, "int32"),
            ops.reshape(ops.matmul(order, scores[..., None]), (-1, n)))


def package_token(patches, weights):
    """Σ w·x / (Σ w + PACKAGE_PRIOR): the (B, 1, D) package of `patches` (B, n, D) weighted
    by non-negative `weights` (B, n), the dropped tokens' keep scores (0 for kept ones).

    Our choice, not the official code's. Its training code appends the unnormalised sum Σ w·x,
    whose scale grows with the number dropped (which varies per image under Gumbel decisions
    and is fixed at inference) and so puts the package far outside the other tokens' residual
    range and int8 scale; its inference file uses a plain mean. Ours is a weighted mean once
    the dropped weight is large, but with a zero vector of weight PACKAGE_PRIOR averaged in:
    a plain normalised mean Σ w·x / Σ w has gradient (x_i − package) / Σ w with respect to each
    weight, unbounded as an image drops almost nothing, and one such image in a batch sends a
    gradient of ~1e12 into the selectors (the 1e-12 that keeps log w finite), which saturates
    Adam's second moment and freezes the selectors wherever that step threw them. With the
    prior the gradient is at most |x_i − package| / PACKAGE_PRIOR, and an image that drops
    nothing gets a zero package.

    Normalised as a softmax over [log w, log PACKAGE_PRIOR], the extra entry's weight falling
    on nothing: no DIV, whose int8 kernel aborts when a sum rounds to zero.
    """
    n = weights.shape[-1]
    # In 3-D and with reshapes around the softmax (last axis only): the GPU delegate lacks the
    # 2-D strided slices and ZEROS_LIKE this would otherwise lower to.
    log_weights = ops.log(ops.reshape(weights, (-1, n, 1)) + _PACKAGE_EPS)
    prior = log_weights[:, :1] * 0.0 + math.log(PACKAGE_PRIOR)
    logits = ops.reshape(ops.concatenate([log_weights, prior], axis=1), (-1, 1, n + 1))
    normalised = ops.reshape(ops.softmax(logits, axis=-1), (-1, n + 1, 1))[:, :n]
    normalised = ops.reshape(normalised, (-1, 1, n))
    return ops.matmul(normalised, patches)


@keras.saving.register_keras_serializable("spvit_tf")
class TokenPruner(keras.layers.Layer):
    """Owns a model's selectors and applies one pruning step before each location block.

    Built from the model's `TokenSchedule` (`spvit_tf.geometry`), which says, per location,
    its stage (width, heads, grid), the patch tokens entering it and the count it keeps. Each
    step is the config's method object's (`self.method.step`); selection methods come back to
    `select`, the top-k step they share.
    """

    def __init__(self, schedule, **kwargs):
        super().__init__(**kwargs)
        if isinstance(schedule, dict):
            schedule = TokenSchedule.from_dict(schedule)
        if schedule.pruning is None:
            raise SpvitError("a TokenPruner needs a schedule with a pruning config")
        self.schedule = schedule
        self.config = schedule.pruning
        self.method = self.config.method_object
        self.selectors = (
            [
                MultiHeadTokenSelector(
                    stage.dim, stage.heads, self.config.shared_head_mlps, keep,
                    name=f"selector_{step.block}",
                )
                for step, stage, keep in zip(
                    schedule.steps, self.step_stages(), self.step_keep_fractions()
                )
            ]
            if self.method.learned
            else []
        )
        self.seed = keras.random.SeedGenerator(0)
        self.ranking = "own"

    @property
    def locations(self):
        """Blocks the steps run before (the config's locations)."""
        return self.config.locations

    @property
    def counts(self):
        """Patch tokens kept from each location on (the schedule's counts)."""
        return self.schedule.kept

    def step_stages(self):
        """The `Stage` each location is in."""
        return [self.schedule.stages[step.stage] for step in self.schedule.steps]

    def step_keep_fractions(self):
        """Per location, the fraction of its incoming tokens it keeps (its step's
        `step_fraction`), kept inside (0, 1) as a selector's starting keep probability."""
        return [min(max(step.step_fraction, 0.01), 0.99) for step in self.schedule.steps]

    def build(self, input_shape=None):
        for selector, stage in zip(self.selectors, self.step_stages()):
            selector.build((None, None, stage.dim))
        self.built = True

    def scores(self, j, state, block, mode):
        """(log-probs or None, keep score (B, n)) for location `j` (selection methods)."""
        if not hasattr(self.method, "scores"):
            raise SpvitError(f"pruning method {self.method.name!r} merges tokens; it has no "
                             "keep scores to select by")
        return self.method.scores(self, j, state, block, mode)

    def diagnostic_ranking(self, j, state, block, scores):
        """The scores `self.ranking` keeps tokens by at location `j`, or None for the own.

        A diagnostic of whether a method's ranking is worth anything: the same model, weights
        and package tokens, with only the choice of kept tokens swapped for a random one, the
        own one reversed, the static centre or EViT's class attention. Gather mode only.
        """
        if self.ranking == "own":
            return None
        if self.ranking == "random":
            return keras.random.uniform(ops.shape(scores), seed=self.seed)
        if self.ranking == "inverted":
            return -scores
        if self.ranking in _RANKING_METHODS:
            method = get_method(_RANKING_METHODS[self.ranking])
            return method.scores(self, j, state, block, "gather")[1]
        raise SpvitError(f"unknown ranking {self.ranking!r}; choose one of {RANKINGS}")

    def step(self, j, state, block, mode, training=None):
        """Prunes `state` before the block of location `j` -> (new state, record for the loss)."""
        return self.method.step(self, j, state, block, mode)

    def select(self, j, state, block, mode):
        """The selection methods' step: keeps the `counts[j]` best-scored tokens (masked
        decisions, or gathered), fusing the rest into a package token if the method has one."""
        log_probs, scores = self.scores(j, state, block, mode)
        k, patches = self.counts[j], state.patches
        if mode == "gather":
            return self.gather(state, scores, k, self.diagnostic_ranking(j, state, block, scores))
        if self.ranking != "own":
            raise SpvitError(f"ranking {self.ranking!r} is a diagnostic of the gathered "
                             f"forward pass, not of mode {mode!r}")
        if mode == "gumbel" and self.method.learned:
            decision = gumbel_keep(log_probs, self.config.gumbel_tau, self.seed) * state.keep
        else:
            decision = top_k_mask(scores, state.keep, k)
        x = state.x
        if self.method.has_package:
            x = ops.concatenate([x, package_token(patches, scores * (state.keep - decision))], 1)
        record = {"decision": decision, "keep_score": scores}
        return dataclasses.replace(state, x=x, keep=decision), record

    def gather(self, state, scores, k, ranking=None):
        """Keeps exactly the k best tokens (static shapes) plus this location's package.

        `ranking` (B, n), when given, decides which tokens are best instead of `scores`; the
        package still weights the dropped tokens by `scores` (they ride along the sort as an
        extra channel)."""
        P, n = state.num_prefix, state.num_patches
        if ranking is None:
            tokens, index, ranked = sort_tokens(state.patches, state.index, scores,
                                                self.config.selection)
        else:
            rows = ops.concatenate([state.patches, ops.cast(scores, state.x.dtype)[..., None]], -1)
            rows, index, _ = sort_tokens(rows, state.index, ranking, self.config.selection)
            tokens, ranked = rows[..., :-1], rows[..., -1]
        parts = [state.x[:, :P], tokens[:, :k], state.x[:, P + n :]]
        if self.method.has_package:  # the dropped tail's scores, sliced in 3-D for the GPU
            dropped = ops.reshape(ops.reshape(ranked, (-1, n, 1))[:, k:], (-1, n - k))
            parts.append(package_token(tokens[:, k:], dropped))
        parked, parked_index = state.parked, state.parked_index
        if state.track_grid:
            parked = tokens[:, k:] if parked is None else ops.concatenate([parked, tokens[:, k:]], 1)
            parked_index = (index[:, k:] if parked_index is None
                            else ops.concatenate([parked_index, index[:, k:]], 1))
        new_state = TokenState(ops.concatenate(parts, axis=1), P, k, index[:, :k], None,
                               parked, parked_index, state.track_grid)
        return new_state, {"index": index[:, :k], "keep_score": scores}

    def get_config(self):
        return {**super().get_config(), "schedule": self.schedule.to_dict()}
