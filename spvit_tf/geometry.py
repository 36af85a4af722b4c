"""Token geometry: the one place that says how many tokens each block sees, and why.

A model is a run of stages, each a contiguous range of blocks at one width and head count
over one patch grid: a ViT has one stage, a PiT one per pooling level, each grid the previous
one pooled by a stride-2 kernel-3 conv. Every block processes [prefix (class/dist) | patches |
package tokens]. A pruning location keeps `round(ratio * stage patches)` of its stage's patch
tokens (the ratio is cumulative over the stage's whole grid) and, when its method has a
package policy, adds one package token; packages are non-spatial and ride to the end of the
model, across PiT's pooling. A new stage starts from its whole grid again.

`TokenSchedule` answers, per block and per pruning location, with the static counts of the
gathered (inference) graph. Everything that needs them asks it: the models size their
tensors and build their pruner from it, the pruner takes its counts from it, the cost model
prices it, budgets, latency tables and the schedule-search loss predict with it, visualize
draws it. It is plain Python without TensorFlow, so pricing a configuration never builds a
model, and frozen, so one object can be shared by a model, its pruner and its cost.

The family functions (`vit_schedule`, `pit_schedule`, `schedule_from_config`) hold the only
code that turns constructor arguments into grids and stages.
"""

import dataclasses
import inspect

from spvit_tf.errors import SpvitError
from spvit_tf.pruning.config import PruningConfig
from spvit_tf.pruning.methods import StepShape


def pair(size):
    """`size` as (height, width): an int is square."""
    return (size, size) if isinstance(size, int) else tuple(size)


def patch_grid(image_size, patch_size, stride):
    """(h, w) patch grid of a `patch_size` conv with `stride` over `image_size` (no padding)."""
    grid = tuple((s - patch_size) // stride + 1 for s in pair(image_size))
    if min(grid) < 1:
        raise SpvitError(f"image_size {image_size} is smaller than patch_size {patch_size}")
    return grid


def pooled_size(size):
    """Grid side after PiT's pooling (kernel 3, stride 2, padding 1)."""
    return (size - 1) // 2 + 1


def prefix_tokens(distilled):
    """Class token, plus the distillation token of a distilled model."""
    return 2 if distilled else 1


def kept_tokens(ratio, tokens):
    """Patch tokens a location keeps: `round(ratio * tokens)`, at least one.

    `tokens` is the patch-token count of the location's stage (its whole grid), since keep
    ratios are cumulative within a stage."""
    return max(1, round(ratio * tokens))


@dataclasses.dataclass(frozen=True)
class Stage:
    """Blocks `first_block .. first_block + depth - 1` at width `dim` with `heads` heads over
    patch grid `grid` (h, w)."""

    dim: int
    heads: int
    grid: tuple
    first_block: int
    depth: int

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))

    @property
    def blocks(self):
        """Global indices of the stage's blocks."""
        return range(self.first_block, self.first_block + self.depth)

    @property
    def num_patches(self):
        return self.grid[0] * self.grid[1]


@dataclasses.dataclass(frozen=True)
class BlockTokens:
    """What block `index` of stage `stage` processes at inference.

    `prefix` + `patches` + `packages` tokens; `location` is the index of the last pruning
    location at or before the block within its stage (whose kept count it sees), None while
    the block still sees its stage's whole grid.
    """

    index: int
    stage: int
    prefix: int
    patches: int
    packages: int
    location: int = None

    @property
    def tokens(self):
        return self.prefix + self.patches + self.packages


@dataclasses.dataclass(frozen=True)
class PruningStep:
    """Pruning location `index` (j): the step just before block `block`.

    - `stage`, `grid`: the stage the block is in and its patch grid.
    - `keep_ratio`: the configured cumulative ratio; `kept`: patch tokens left after the step
      (`kept_tokens` of the stage's whole grid); `patches_in`: patch tokens entering it (the
      previous location's `kept` in the same stage, else the whole grid).
    - `packages_in`/`packages_out`: package tokens in the sequence before and after the step.
    - `step_fraction`: the fraction of its incoming tokens the step keeps, its ratio over the
      previous location's in the same stage (1 for the first in a stage).
    - `stage_position` (1-based) and `stage_steps`: where it is among its stage's locations.
    """

    index: int
    block: int
    stage: int
    grid: tuple
    keep_ratio: float
    patches_in: int
    kept: int
    packages_in: int
    packages_out: int
    step_fraction: float
    stage_position: int
    stage_steps: int

    @property
    def stage_patches(self):
        """The stage's whole grid: what `keep_ratio` is a fraction of."""
        return self.grid[0] * self.grid[1]

    @property
    def first_in_stage(self):
        return self.stage_position == 1

    @property
    def last_in_stage(self):
        return self.stage_position == self.stage_steps


def _pruning_steps(stages, config):
    """Per location, its `PruningStep`; checks what a config cannot check alone: the
    locations exist, and keep ratios do not grow within a stage (a dropped token stays dropped
    until the grid is rebuilt)."""
    if config is None:
        return ()
    stage_of = [s for s, stage in enumerate(stages) for _ in stage.blocks]
    depth = len(stage_of)
    for block in config.locations:
        if not 0 <= block < depth:
            raise SpvitError(f"pruning location {block} is outside blocks 0..{depth - 1}")
    in_stage = [stage_of[block] for block in config.locations]
    has_package = int(config.has_package)
    steps, packages = [], 0
    for j, (block, ratio) in enumerate(zip(config.locations, config.keep_ratios)):
        s, stage = in_stage[j], stages[in_stage[j]]
        previous = steps[-1] if steps and steps[-1].stage == s else None
        if previous is not None and ratio > previous.keep_ratio:
            raise SpvitError(
                f"keep ratio {ratio} at block {block} exceeds the previous ratio "
                f"{previous.keep_ratio} in its stage: keep ratios are cumulative"
            )
        steps.append(PruningStep(
            index=j, block=block, stage=s, grid=stage.grid, keep_ratio=ratio,
            patches_in=stage.num_patches if previous is None else previous.kept,
            kept=kept_tokens(ratio, stage.num_patches),
            packages_in=packages, packages_out=packages + has_package,
            step_fraction=ratio / (1.0 if previous is None else previous.keep_ratio),
            stage_position=in_stage[: j + 1].count(s), stage_steps=in_stage.count(s),
        ))
        packages += has_package
    return tuple(steps)


def _block_tokens(stages, num_prefix, steps):
    """Per block, its `BlockTokens`: each stage starts from its whole grid; a location's block
    and the later blocks of its stage see its kept count; packages accumulate to the end."""
    at = {step.block: step for step in steps}
    blocks, packages = [], 0
    for s, stage in enumerate(stages):
        patches, location = stage.num_patches, None
        for i in stage.blocks:
            if i in at:
                patches, location, packages = at[i].kept, at[i].index, at[i].packages_out
            blocks.append(BlockTokens(i, s, num_prefix, patches, packages, location))
    return tuple(blocks)


@dataclasses.dataclass(frozen=True)
class TokenSchedule:
    """Stages, prefix tokens and pruning config -> the tokens of every block and location.

    `stages`: `Stage`s in order, their blocks contiguous from 0. `num_prefix`: class/dist
    tokens. `pruning`: a `PruningConfig` (or dict) or None for the dense model; its method
    object supplies the package policy. `tracks_grid`: tokens a step removes are kept for the
    stage's grid, which PiT rebuilds and pools after every stage.

    Derived on construction, in global block order: `blocks` (`BlockTokens`) and `steps`
    (`PruningStep`, one per location). Equality and hashing use the inputs only.
    """

    stages: tuple
    num_prefix: int
    pruning: PruningConfig = None
    tracks_grid: bool = False
    blocks: tuple = dataclasses.field(init=False, compare=False, repr=False)
    steps: tuple = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        stages = tuple(self.stages)
        first = 0
        for stage in stages:
            if stage.first_block != first or stage.depth < 1:
                raise SpvitError(f"stages must cover blocks 0.. contiguously, got {stages}")
            first += stage.depth
        if not stages:
            raise SpvitError("a model needs at least one stage")
        pruning = PruningConfig.from_any(self.pruning)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "pruning", pruning)
        object.__setattr__(self, "steps", _pruning_steps(stages, pruning))
        object.__setattr__(self, "blocks", _block_tokens(stages, self.num_prefix, self.steps))

    def with_pruning(self, pruning):
        """The same geometry under another pruning config (None: dense)."""
        return dataclasses.replace(self, pruning=pruning)

    @property
    def depth(self):
        return len(self.blocks)

    @property
    def block_stages(self):
        """Stage index of each block, in global block order."""
        return tuple(block.stage for block in self.blocks)

    @property
    def tokens_per_block(self):
        """Every token each block processes (prefix, patches and packages)."""
        return tuple(block.tokens for block in self.blocks)

    @property
    def kept(self):
        """Patch tokens kept from each location on (`PruningStep.kept`)."""
        return tuple(step.kept for step in self.steps)

    def step_at(self, block):
        """The `PruningStep` before `block`, or None."""
        return next((step for step in self.steps if step.block == block), None)

    def non_spatial_into(self, s):
        """Prefix and package tokens entering stage `s`: what PiT's pooling carries by its
        linear layer (the packages of every earlier location)."""
        if s == 0:
            return self.num_prefix
        return self.num_prefix + self.blocks[self.stages[s].first_block - 1].packages

    def step_shape(self, j):
        """`StepShape` of location `j`: what a method's `step_macs` prices."""
        step, stage = self.steps[j], self.stages[self.steps[j].stage]
        return StepShape(
            step.patches_in, step.kept, self.num_prefix, step.packages_in, stage.dim,
            stage.heads, self.pruning.selection, track_grid=self.tracks_grid,
        )

    def to_dict(self):
        """JSON-able inputs (`from_dict` rebuilds the schedule)."""
        return {
            "stages": [dataclasses.asdict(stage) for stage in self.stages],
            "num_prefix": self.num_prefix,
            "pruning": None if self.pruning is None else self.pruning.to_dict(),
            "tracks_grid": self.tracks_grid,
        }

    @classmethod
    def from_dict(cls, config):
        stages = tuple(Stage(**stage) for stage in config["stages"])
        return cls(stages, config["num_prefix"], config["pruning"], config["tracks_grid"])


def vit_schedule(image_size, patch_size, embed_dim, depth, num_heads, distilled=False,
                 pruning=None):
    """A ViT/DeiT: one stage of `depth` blocks over the non-overlapping patch grid."""
    grid = patch_grid(image_size, patch_size, patch_size)
    stage = Stage(embed_dim, num_heads, grid, 0, depth)
    return TokenSchedule((stage,), prefix_tokens(distilled), pruning, tracks_grid=False)


def pit_schedule(image_size, patch_size, stride, base_dims, depth, heads, distilled=False,
                 pruning=None):
    """A PiT: one stage per entry of `depth`, of width `base_dims[s] * heads[s]`, the first
    over the strided patch grid and each next one over the previous grid pooled. Dropped
    tokens are tracked so each stage's whole grid can be pooled."""
    if not len(base_dims) == len(depth) == len(heads):
        raise SpvitError("base_dims, depth and heads need one entry per stage")
    grid, first, stages = patch_grid(image_size, patch_size, stride), 0, []
    for base, blocks, num_heads in zip(base_dims, depth, heads):
        stages.append(Stage(base * num_heads, num_heads, grid, first, blocks))
        grid, first = tuple(pooled_size(g) for g in grid), first + blocks
    return TokenSchedule(tuple(stages), prefix_tokens(distilled), pruning, tracks_grid=True)


FAMILIES = {"vit": vit_schedule, "pit": pit_schedule}


def schedule_from_config(family, config):
    """The `TokenSchedule` of a `family` model with constructor `config` (a dict holding at
    least the family function's arguments; a missing `pruning` is dense)."""
    if family not in FAMILIES:
        raise SpvitError(f"no token geometry for family {family!r}; known: {sorted(FAMILIES)}")
    build = FAMILIES[family]
    names = inspect.signature(build).parameters
    return build(**{name: config[name] for name in names if name in config})
