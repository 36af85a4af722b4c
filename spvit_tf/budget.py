"""From a compute budget to a keep-ratio schedule, under any cost model.

A cost model is a function `cost_fn(keep_ratios) -> float` for a model whose pruning
locations and method are fixed (`keep_ratios=None` prices the dense model, without
selectors). Two are provided, so the search never needs to know which it is given:

- `flops_cost`: the analytic GFLOPs of `spvit_tf.flops`, selectors and token movement
  included.
- `latency_cost`: milliseconds predicted from a measured latency lookup table (the format
  `python -m spvit_tf.latency_table` writes; `spvit_tf.latency_table.load_latency_table`
  reads it).

Token counts, stages and locations come from the priced model's `TokenSchedule`
(`spvit_tf.geometry`), the same the model and the cost model use.

`schedule_for_budget` finds the mildest schedule of a given shape that meets a budget;
`merge_into_phases` and `fit_phases_to_budget` turn the per-layer keep ratios SPViT's
schedule search learns into a few pruning locations priced to the budget;
`align_to_latency_steps` moves token counts off the latency steps a fine table shows; and
`flagfile_fragment` writes the result as training flags.
"""

import dataclasses
import logging
import math
import numbers
import os
import statistics
from typing import NamedTuple

import numpy as np

from spvit_tf import flops
from spvit_tf.errors import SpvitError
from spvit_tf.geometry import kept_tokens
from spvit_tf.latency_table import load_latency_table, validate_latency_table
from spvit_tf.pruning.config import PruningConfig

log = logging.getLogger("spvit_tf")

COSTS = ("gflops", "latency")
SHAPES = ("geometric", "linear")
DECIMALS = 3  # keep ratios are searched, checked and written at this precision
MIN_RATIO = 10.0**-DECIMALS  # the smallest ratio a flag carries: one token for grids < 1500
NO_PRUNING = 0.99  # merged phases keeping at least this fraction get no selector
_SEARCH_STEPS = 20  # bisection steps: far finer than the ratios' rounding
_MONOTONE_SAMPLES = 21


class BudgetSchedule(NamedTuple):
    """A schedule that meets a budget: its keep ratios, its predicted cost and the dense one."""

    keep_ratios: tuple
    cost: float
    dense_cost: float


# ---------------------------------------------------------------------------- cost models


def _priced_model(name, overrides):
    """(dense `Architecture`, pruning template) from model options holding a pruning dict."""
    options = dict(overrides or {})
    pruning = options.pop("pruning", None)
    if isinstance(pruning, PruningConfig):
        pruning = pruning.to_dict()
    if not isinstance(pruning, dict) or "locations" not in pruning:
        raise SpvitError(
            "pricing keep ratios needs overrides['pruning'] = dict(method=..., locations=...), "
            f"got {pruning!r}"
        )
    locations = tuple(pruning["locations"])
    template = PruningConfig.from_any({**pruning, "keep_ratios": (1.0,) * len(locations)})
    arch = flops.architecture(name, **options, pruning=None)
    depth = arch.schedule.depth
    bad = [i for i in template.locations if not 0 <= i < depth]
    if bad:
        raise SpvitError(f"pruning locations {bad} are outside {name}'s blocks 0..{depth - 1}")
    return arch, template


def _with_ratios(arch, template, keep_ratios):
    if keep_ratios is None:
        return arch
    return arch.with_pruning(dataclasses.replace(template, keep_ratios=tuple(keep_ratios)))


def flops_cost(name, overrides):
    """`cost_fn(keep_ratios) -> GFLOPs` of model `name` with `overrides` (incl. `pruning`)."""
    arch, template = _priced_model(name, overrides)
    return lambda keep_ratios: _with_ratios(arch, template, keep_ratios).cost().gflops


def latency_cost(table, name, overrides):
    """`cost_fn(keep_ratios) -> ms` predicted from a latency `table` measured for `name`.

    The table times SPViT's selector and the selection/package step; `hard` is priced with
    them too (its missing package is a small over-estimate), `static` without the selector.
    A method whose step the table does not time (`Method.timed_by_latency_tables`: EViT's
    class-attention score, ToMe's merging) is refused.
    """
    arch, template = _priced_model(name, overrides)
    method = template.method_object
    if not method.timed_by_latency_tables:
        raise SpvitError(
            f"latency tables time SPViT's selector and selection step, not the step of "
            f"{method.label}: price {method.name} with cost='gflops'"
        )
    _check_table_fits(validate_latency_table(table), name, arch)
    return lambda keep_ratios: architecture_latency_ms(
        table, _with_ratios(arch, template, keep_ratios)
    )


def architecture_latency_ms(table, arch):
    """Predicted ms of an `Architecture` (with its pruning config) from a latency table: its
    schedule's tokens per block, and at each location the patch tokens entering it."""
    schedule, config = arch.schedule, arch.pruning
    steps = schedule.steps
    return predict_latency_ms(
        table, schedule.tokens_per_block, [step.block for step in steps],
        [step.patches_in for step in steps], selectors=bool(config and config.learned),
    )


def _cost_fn(name, cost, latency_table, overrides):
    if cost == "gflops":
        return flops_cost(name, overrides)
    if cost != "latency":
        raise SpvitError(f"unknown cost {cost!r}; choose one of {COSTS}")
    if latency_table is None:
        raise SpvitError("cost='latency' needs latency_table= (a table file or a loaded table)")
    if isinstance(latency_table, (str, os.PathLike)):
        latency_table = load_latency_table(latency_table, model=name)
    return latency_cost(latency_table, name, overrides)


# ------------------------------------------------------------------------ latency tables


def _check_table_fits(table, name, arch):
    """The table must time this model: same name, same dense configuration and stages."""
    if table["model"] != name:
        raise SpvitError(f"the latency table was measured for {table['model']}, not {name}")
    measured = flops.architecture(name, **table["model_config"])
    if measured != arch:
        raise SpvitError(
            f"the latency table times {name} with {table['model_config']}, a different "
            "configuration from the one priced: pass the same model options or re-measure"
        )
    stages = [(s["dim"], s["heads"], s["blocks"]) for s in table["stages"]]
    expected = [(stage.dim, stage.heads, list(stage.blocks)) for stage in arch.schedule.stages]
    if stages != expected:
        raise SpvitError(
            f"the latency table's stages (dim, heads, blocks) {stages} do not match "
            f"{name}'s {expected}"
        )


def predict_latency_ms(table, tokens_per_block, locations=(), location_tokens=(), selectors=True):
    """Predicted ms: fixed parts + every block at its token count + every pruning location.

    `tokens_per_block` counts all tokens block `i` processes (global block order);
    `location_tokens[j]` the patch tokens entering the selector before block `locations[j]`
    (which adds its selector when `selectors`, and its selection/package step). Times are
    interpolated piecewise-linearly on the stage's token grid and clamped to its end values
    outside it: a measured grid should span the sequence lengths the schedule uses (the
    dense length plus package tokens), so clamping only ever rounds off the edges.
    """
    validate_latency_table(table)
    stage_of = {b: stage for stage in table["stages"] for b in stage["blocks"]}
    tokens_per_block, locations = list(tokens_per_block), list(locations)
    if len(tokens_per_block) != len(stage_of):
        raise SpvitError(
            f"{len(tokens_per_block)} token counts for the table's {len(stage_of)} blocks: "
            "give one per block"
        )
    if len(locations) != len(location_tokens) or not set(locations) <= set(stage_of):
        raise SpvitError(
            f"pruning locations {locations} need one input token count each "
            f"({list(location_tokens)}) and must be blocks of the table"
        )

    def at(stage, key, n):
        return float(np.interp(n, stage["tokens"], stage[key]))

    total = sum(table["fixed_ms"].values())
    total += sum(at(stage_of[i], "block_ms", n) for i, n in enumerate(tokens_per_block))
    for loc, n in zip(locations, location_tokens):
        total += at(stage_of[loc], "prune_ms", n)
        total += at(stage_of[loc], "selector_ms", n) if selectors else 0.0
    return float(total)


# ------------------------------------------------------------------------- schedule search


def _rounded(ratios):
    return tuple(max(round(float(r), DECIMALS), MIN_RATIO) for r in ratios)


def _check_budget(budget):
    real = isinstance(budget, numbers.Real) and not isinstance(budget, bool)
    if not real or not 0 < budget < math.inf:
        raise SpvitError(f"budget must be a positive number, got {budget!r}")


def _largest_feasible(cost_fn, ratios_at, budget, upper, what):
    """The schedule `ratios_at(x)` for the largest x in [0, upper] whose cost meets `budget`.

    `ratios_at` returns already-rounded ratios, so the schedule returned is exactly the one
    priced. Bisection needs the cost to grow with x: checked on a grid first.
    """
    _check_budget(budget)
    dense = cost_fn(None)
    if dense <= budget:
        log.warning(
            "the dense model (%.4g) already meets the budget %.4g: keep ratios are all 1.0, "
            "no pruning needed", dense, budget,
        )
        return BudgetSchedule((1.0,) * len(ratios_at(upper)), dense, dense)
    grid = np.linspace(0.0, upper, _MONOTONE_SAMPLES)
    costs = [cost_fn(ratios_at(x)) for x in grid]
    if costs[0] > budget:
        raise SpvitError(
            f"budget {budget:.4g} below what any {what} schedule reaches (min {costs[0]:.4g} "
            f"at keep ratios {ratios_at(0.0)}; dense {dense:.4g}): raise the budget or add "
            "pruning locations"
        )
    for (x0, c0), (x1, c1) in zip(zip(grid, costs), zip(grid[1:], costs[1:])):
        if c1 < c0:
            raise SpvitError(
                f"the cost falls from {c0:.4g} at keep ratios {ratios_at(x0)} to {c1:.4g} at "
                f"{ratios_at(x1)}: the search needs a cost that grows with the tokens kept "
                "(a noisy latency table? re-measure it with more runs)"
            )
    if costs[-1] <= budget:
        return BudgetSchedule(ratios_at(upper), costs[-1], dense)
    low, high = 0.0, float(upper)
    for _ in range(_SEARCH_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if cost_fn(ratios_at(mid)) <= budget else (low, mid)
    ratios = ratios_at(low)
    return BudgetSchedule(ratios, cost_fn(ratios), dense)


def _with_locations(overrides, method, locations):
    """Model options whose pruning dict has `method` and `locations` (its other keys kept)."""
    options = dict(overrides or {})
    pruning = options.get("pruning") or {}
    pruning = pruning.to_dict() if isinstance(pruning, PruningConfig) else dict(pruning)
    options["pruning"] = {**pruning, "method": method, "locations": tuple(locations)}
    return options


def _stage_positions(name, overrides):
    """Per location of `overrides['pruning']` (1-based position among its stage's
    locations, their count)."""
    arch, template = _priced_model(name, overrides)
    steps = arch.with_pruning(template).schedule.steps
    return [(step.stage_position, step.stage_steps) for step in steps]


def _shape(shape, positions):
    """`ratios_at(ρ)`: ρ=1 keeps everything; ρ→0 prunes hardest (geometric: to one token).

    ρ itself is rounded to 3 decimals first, so a schedule is reproducible from its ρ alone
    (0.7 → 0.7, 0.49, 0.343, as the papers write it).
    """
    if shape == "geometric":
        return lambda rho: _rounded(round(rho, DECIMALS) ** j for j, _ in positions)
    if shape == "linear":
        return lambda rho: _rounded(
            1.0 - (1.0 - round(rho, DECIMALS)) * j / m for j, m in positions
        )
    raise SpvitError(f"unknown schedule shape {shape!r}; choose one of {SHAPES}")


def schedule_for_budget(
    name, *, budget, locations, cost="gflops", latency_table=None, method="spvit",
    overrides=None, shape="geometric",
):
    """The mildest schedule of `shape` at `locations` whose predicted `cost` meets `budget`.

    `budget` is in the cost's unit (GFLOPs, or ms with a `latency_table` path or dict).
    `overrides` are model options (`image_size`, ...); a `pruning` dict in them contributes
    its other options (`selection`, ...), while `method` and `locations` come from here.

    Shapes, per stage (a PiT stage restarts from its own full grid, so the ratio restarts):
    `geometric` keeps ρ, ρ², ρ³, ... at the stage's successive locations, as DynamicViT and
    SPViT do for DeiT (0.7, 0.49, 0.343); `linear` drops tokens evenly, 1 − (1 − ρ)·j/m at
    the j-th of m locations. The largest ρ in [0, 1] meeting the budget is found by bisection
    on the schedule rounded to 3 decimals (the rounded schedule is what is checked and
    returned). If the dense model meets the budget the ratios are all 1.0 (logged);
    if even ρ → 0 (geometric: one token kept everywhere) misses it, a `SpvitError` says so.

    Returns `BudgetSchedule(keep_ratios, cost, dense_cost)`.
    """
    options = _with_locations(overrides, method, locations)
    cost_fn = _cost_fn(name, cost, latency_table, options)
    ratios_at = _shape(shape, _stage_positions(name, options))
    return _largest_feasible(cost_fn, ratios_at, budget, 1.0, shape)


# ---------------------------------------------------------------- learned layer ratios


def merge_into_phases(layer_ratios, tolerance=0.05, stage_starts=()):
    """Merges learned per-block keep ratios into phases: [(start_block, ratio), ...].

    SPViT's schedule search learns a cumulative keep ratio for every candidate block;
    deploying one selector per block would cost more than it saves, so neighbouring blocks
    that prune alike share one selector. The rule, left to right: a block joins the current
    phase when its ratio is within `tolerance` (strictly) of the phase's running mean;
    otherwise it starts a new phase (as does every block in `stage_starts`, PiT's stage
    boundaries, where ratios are relative to a fresh grid). A phase's ratio is the mean of
    its blocks (the same tokens on average), rounded to 3 decimals and capped at the previous
    phase's ratio in the stage so the schedule never grows back. A phase keeping ≥ 0.99
    needs no selector, nor does one capped to its predecessor's ratio: both are dropped.
    Each remaining phase becomes a selector at its first block.
    """
    ratios = [float(r) for r in layer_ratios]
    if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
        raise SpvitError(f"layer keep ratios must be a non-empty list in (0, 1], got {ratios}")
    if not tolerance > 0:
        raise SpvitError(f"merge tolerance must be positive, got {tolerance}")
    groups = []
    for i, r in enumerate(ratios):
        joins = groups and abs(r - statistics.fmean(groups[-1][1])) < tolerance
        if joins and i not in stage_starts:
            groups[-1][1].append(r)
        else:
            groups.append((i, [r]))
    phases, ceiling = [], 1.0
    for start, members in groups:
        if start in stage_starts:
            ceiling = 1.0
        ratio = min(round(statistics.fmean(members), DECIMALS), ceiling)
        if ratio < NO_PRUNING and ratio < ceiling:
            phases.append((start, ratio))
            ceiling = ratio
    return phases


def fit_phases_to_budget(
    phases, name, *, budget, cost="gflops", latency_table=None, method="spvit", overrides=None,
):
    """Scales merged phase ratios by one common factor so the schedule meets `budget`.

    The learned schedule's shape is kept and its level set by the budget: the largest
    factor s (bisection, ratios rounded to 3 decimals and capped at 1) with cost ≤ budget,
    up to the factor that makes the largest ratio 1. Loose budgets scale up, tight ones down.
    Returns `BudgetSchedule(keep_ratios, cost, dense_cost)` for locations `[start for start, _
    in phases]`; arguments as `schedule_for_budget`.
    """
    if not phases:
        raise SpvitError(
            "no phases to fit: every learned ratio kept ≥ 0.99 of the tokens, so there is "
            "nothing to prune"
        )
    locations = [int(start) for start, _ in phases]
    base = [float(r) for _, r in phases]
    options = _with_locations(overrides, method, locations)
    cost_fn = _cost_fn(name, cost, latency_table, options)
    ratios_at = lambda s: _rounded(min(1.0, s * r) for r in base)  # noqa: E731
    return _largest_feasible(cost_fn, ratios_at, budget, 1.0 / max(base), "scaled")


class AlignedSchedule(NamedTuple):
    """Keep ratios moved off latency steps: the token counts they give, both predictions."""

    keep_ratios: tuple
    counts: tuple
    predicted_ms: float
    unaligned_ms: float


def _ratio_for_count(count, tokens):
    """The 3-decimal keep ratio nearest count/tokens that `PruningConfig` turns into `count`."""
    base = round(count / tokens, DECIMALS)
    for delta in sorted(range(-5, 6), key=abs):
        ratio = round(base + delta * MIN_RATIO, DECIMALS)
        if 0 < ratio <= 1 and kept_tokens(ratio, tokens) == count:
            return ratio
    raise SpvitError(f"no {DECIMALS}-decimal keep ratio keeps exactly {count} of {tokens} tokens")


def align_to_latency_steps(
    table, name, keep_ratios, *, locations, method="spvit", overrides=None, max_trim=2,
):
    """Keep ratios whose sequence lengths sit just before a latency step, not just past one.

    A CPU's matrix kernels work in tiles of rows (XNNPACK's f32 GEMM: 7 on AVX-512 hosts,
    4-6 on Arm), so one token past a full tile costs a whole tile in every block of the
    stage (`benchmarks/pruning_overhead.log` measures it). Location by location, this drops
    up to `max_trim` more tokens when the `table` predicts they save at least half a token
    more than tokens cost on average (the mean ms per token between the count and half of
    it): a token stays unless it is dear, and table noise moves nothing. Only a table timed
    at every length near the counts shows the steps (`latency_table --tokens=auto,A-B,...`);
    on a coarse grid the interpolation is linear and nothing moves.
    Returns `AlignedSchedule(keep_ratios, counts, predicted_ms, unaligned_ms)`.
    """
    if isinstance(table, (str, os.PathLike)):
        table = load_latency_table(table, model=name)
    if not isinstance(max_trim, int) or max_trim < 0:
        raise SpvitError(f"max_trim must be a non-negative integer, got {max_trim!r}")
    options = _with_locations(overrides, method, locations)
    cost_fn = latency_cost(table, name, options)
    arch, template = _priced_model(name, options)
    config = dataclasses.replace(template, keep_ratios=tuple(keep_ratios))
    steps = arch.with_pruning(config).schedule.steps
    totals = [step.stage_patches for step in steps]
    original = tuple(step.kept for step in steps)
    counts = list(original)

    def cost(candidate):
        return cost_fn([_ratio_for_count(c, n) for c, n in zip(candidate, totals)])

    unaligned = cost(counts)
    for j, step in enumerate(steps):
        floor = 1 if step.last_in_stage else counts[j + 1]  # the stage's next location's count
        if counts[j] <= floor:
            continue
        now = cost(counts)
        half = max(floor, counts[j] // 2)
        per_token = (now - cost(counts[:j] + [half] + counts[j + 1:])) / (counts[j] - half)
        best, best_gain = 0, per_token / 2  # a margin over table noise
        for trim in range(1, min(max_trim, counts[j] - floor) + 1):
            gain = now - cost(counts[:j] + [counts[j] - trim] + counts[j + 1:]) - trim * per_token
            if gain > best_gain:
                best, best_gain = trim, gain
        counts[j] -= best
    ratios = tuple(r if c == k else _ratio_for_count(c, n)
                   for r, k, c, n in zip(config.keep_ratios, original, counts, totals))
    return AlignedSchedule(ratios, tuple(counts), cost_fn(ratios), unaligned)


def flagfile_fragment(locations, keep_ratios, method="spvit"):
    """Training flags for a schedule, e.g. "--mode=spvit\\n--pruning_locations=3,6,9
    \\n--keep_ratios=0.7,0.49,0.343\\n" (validated as a `PruningConfig` first)."""
    config = PruningConfig(method, tuple(locations), tuple(keep_ratios))
    return (
        f"--mode={config.method}\n"
        f"--pruning_locations={','.join(str(i) for i in config.locations)}\n"
        f"--keep_ratios={','.join(f'{round(r, DECIMALS):g}' for r in config.keep_ratios)}\n"
    )
