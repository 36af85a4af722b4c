"""The pruning-method registry and the contract every method object fulfils.

A method is one small frozen object, registered under its `name` (the string a
`PruningConfig`, a checkpoint's config and the CLIs' `--mode`/`--pruning` carry). Everything
the rest of the library needs to know about a method lives on it:

- `label`, `marker`: how the report's table and plots name and draw it.
- `learned`: it has trainable selectors (`TokenPruner` builds them; training samples Gumbel
  decisions). `has_package`: the tokens a location removes are fused into an extra token.
- `fate`: what happens to the tokens a location removes, in words (for figures and logs).
- `timed_by_latency_tables`: whether the selector and selection-step timings of a latency
  table (`spvit_tf.latency_table`) stand for this method's step, so `budget.latency_cost`
  may price it.
- `step(pruner, j, state, block, mode)`: the pruning step before location `j`'s block ->
  (new `TokenState`, record for the losses and tools). Selection methods keep the k
  best-scored tokens through `TokenPruner.select` and only supply `scores`.
- `step_macs(shape)`: (scorer MACs, token-movement MACs) of that step, for `spvit_tf.flops`.

This module, and every method module, imports neither TensorFlow nor Keras at import time
(their Keras code imports it inside the functions that run in a model): the cost model,
`PruningConfig` and the report use the registry without TensorFlow.
"""

import dataclasses

from spvit_tf.errors import SpvitError

_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What the cost model knows about one pruning location
    (`spvit_tf.geometry.TokenSchedule.step_shape` gives it).

    `patches_in`/`patches_out`: patch tokens entering and leaving the step; `prefix`:
    class/dist tokens; `packages_in`: package tokens already in the sequence (from earlier
    locations); `dim`, `heads`: the stage's width and head count; `selection`: the config's
    `gather` or `matmul`; `track_grid`: tokens a step removes are kept for the stage's grid
    (PiT).
    """

    patches_in: int
    patches_out: int
    prefix: int
    packages_in: int
    dim: int
    heads: int
    selection: str
    track_grid: bool = False


@dataclasses.dataclass(frozen=True)
class Method:
    """Base of every pruning method (see the module docstring for the contract)."""

    name: str
    label: str
    learned: bool = False
    has_package: bool = False
    fate: str = "discarded"
    marker: str = "o"
    timed_by_latency_tables: bool = True

    def step(self, pruner, j, state, block, mode):
        raise NotImplementedError

    def step_macs(self, shape):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SelectionMethod(Method):
    """A method that scores the current patch tokens and keeps the k best (top-k).

    Subclasses supply `scores(pruner, j, state, block, mode) -> (log-probs or None, keep
    score (B, n))` and `scorer_macs(shape)`; the selection itself (masked decisions, the
    gathered top-k or its matmul twin, the package token) is `TokenPruner.select`, the same
    for every such method.
    """

    def scores(self, pruner, j, state, block, mode):
        raise NotImplementedError

    def step(self, pruner, j, state, block, mode):
        return pruner.select(j, state, block, mode)

    def scorer_macs(self, shape):
        return 0

    def step_macs(self, shape):
        """Scorer, then movement: the package token's weighted sum of the dropped tokens and,
        with `selection="matmul"`, the permutation matmul sorting the tokens (`gather` moves
        them with TOPK_V2/GATHER, which cost no MACs)."""
        n, k, d = shape.patches_in, shape.patches_out, shape.dim
        moved = (n - k) * d if self.has_package else 0
        if shape.selection == "matmul":
            moved += n * n * d
        return self.scorer_macs(shape), moved


def register(method):
    """Adds `method` to the registry (registry order is the report's order); returns it."""
    if not isinstance(method, Method):
        raise SpvitError(f"a pruning method must be a Method, got {type(method).__name__}")
    if method.name in _REGISTRY or method.name == "dense":
        raise SpvitError(f"pruning method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def method_names():
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_method(name):
    """The method object registered as `name`."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SpvitError(
            f"unknown pruning method {name!r}; choose one of {method_names()}"
        ) from None
