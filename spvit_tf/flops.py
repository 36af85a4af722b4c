"""The project's one analytic cost model: multiply-accumulates of a model, from its config.

    python -m spvit_tf.flops --model=deit_tiny_patch16_224 [--image_size=224] \\
        [--num_classes=1000] [--tokens=197,197,...]

Counted, as the DeiT/PiT/SPViT papers do: MACs of every matmul and linear/conv layer, reported
as "GFLOPs" (1 GFLOP here = 1e9 MACs, the papers' convention). Per transformer block over N
tokens of width D with MLP hidden width H: qkv 3·N·D², attention logits N²·D, attention·V
N²·D, output projection N·D², MLP 2·N·D·H. Outside the blocks: the patch-embedding conv, PiT's
pooling (stride-2 depthwise conv with channel multiplier, plus the linear layer on the
non-spatial tokens) and the classifier head(s). Norms, softmax, GELU, biases, residual
additions and the position embedding are ignored: they are element-wise and well under 1% of
the total. With these rules DeiT-Ti/S/B and PiT-Ti/XS/S round to their published figures;
PiT-B comes to 12.40 against the PiT paper's 12.5 (timm's profiler also gets 12.42 GMACs).

A pruned model (its `pruning` config) is priced as it runs at inference: blocks see the tokens
its `spvit_tf.geometry.TokenSchedule` gives them (kept patch tokens plus the prefix and
package tokens); each location adds what its method object prices (`Method.step_macs`,
`spvit_tf.pruning.methods`): its scorer (the SPViT selector's MLPs, EViT's class-attention
keys, ToMe's keys and similarities) and its token movement (the package token's weighted
sum, ToMe's merge matmul, and with `selection="matmul"` the permutation matmuls that replace
TOPK_V2/GATHER). With `matmul`, PiT's return of the tokens to the grid at the end of a
pruned stage is one more permutation matmul, for every method.

Pricing is plain integer arithmetic on the constructor config: no weights are built, and
`architecture_from_config` runs without TensorFlow. Only resolving a registered name imports
the model families (they register their names), and only `count_params` builds a model.
"""

import dataclasses
import operator

from absl import app, flags

from spvit_tf.errors import SpvitError, parse_flags, run_cli, stderr_silenced
from spvit_tf.geometry import TokenSchedule, schedule_from_config
from spvit_tf.pruning.config import pruning_from_flags
from spvit_tf.pruning.methods import method_names
from spvit_tf.pruning.methods.evit import class_attention_macs  # noqa: F401  (re-exported)
from spvit_tf.pruning.methods.spvit import selector_macs  # noqa: F401  (re-exported)

GIGA = 1e9


def block_macs(num_tokens, dim, mlp_ratio=4.0):
    """MACs of one pre-norm transformer block over `num_tokens` tokens of width `dim`.

    The MLP hidden width is `int(dim * mlp_ratio)`, as `spvit_tf.layers.Block` builds it.
    Written as a·n + b·n² so that `num_tokens` may also be a tensor (the schedule search's
    differentiable token counts).
    """
    n, d, hidden = num_tokens, dim, int(dim * mlp_ratio)
    linear = 3 * d * d + d * d + 2 * d * hidden  # qkv, output projection, MLP
    quadratic = 2 * d  # q·kᵀ logits, then weights·v
    return linear * n + quadratic * n * n


def conv_macs(out_positions, out_channels, macs_per_output):
    """MACs of a conv layer: every output value costs its receptive field's MACs."""
    return out_positions * out_channels * macs_per_output


def pool_macs(out_grid, in_dim, out_dim, non_spatial_tokens, kernel=3):
    """MACs of a PiT `ConvHeadPooling`: depthwise conv on the grid + linear on other tokens.

    With a channel multiplier each output channel reads one input channel, so an output value
    costs kernel² MACs. `non_spatial_tokens` is the class/dist tokens (and, under SPViT, any
    package tokens) carried into the next stage by the linear layer.
    """
    depthwise = conv_macs(out_grid[0] * out_grid[1], out_dim, kernel * kernel)
    return depthwise + non_spatial_tokens * in_dim * out_dim


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the cost model needs of a model: its token schedule and the MACs outside blocks.

    Token-independent parts are priced once here; `cost` adds the blocks and pruning steps
    for the tokens the `schedule` (`spvit_tf.geometry.TokenSchedule`) gives each of them,
    which is what pruning changes.
    """

    name: str
    mlp_ratio: float
    schedule: TokenSchedule
    embed_macs: int
    head_macs: int

    @property
    def pruning(self):
        return self.schedule.pruning

    def with_pruning(self, pruning):
        """The same model under another pruning config (None: dense)."""
        return dataclasses.replace(self, schedule=self.schedule.with_pruning(pruning))

    def pruning_macs(self):
        """Per pruning location: (scorer MACs, token-movement MACs).

        Each is the method object's `step_macs` of the location's `StepShape` (see the module
        docstring); with `selection="matmul"`, when the schedule tracks the grid (PiT), the
        last location in a stage adds the permutation matmul putting the stage's tokens back
        on the grid. `gather` moves tokens with TOPK_V2/GATHER, which cost no MACs.
        """
        schedule, config = self.schedule, self.pruning
        if config is None:
            return (), ()
        method = config.method_object
        scorer, movement = [], []
        for step in schedule.steps:
            scored, moved = method.step_macs(schedule.step_shape(step.index))
            if config.selection == "matmul" and schedule.tracks_grid and step.last_in_stage:
                stage = schedule.stages[step.stage]
                moved += stage.num_patches * stage.num_patches * stage.dim  # back to the grid
            scorer.append(scored)
            movement.append(moved)
        return tuple(scorer), tuple(movement)

    def cost(self, tokens_per_block=None):
        """`ModelCost` with block `i` processing `tokens_per_block[i]` tokens.

        By default the tokens the model's own pruning schedule leaves (dense without one).
        """
        schedule = self.schedule
        if tokens_per_block is None:
            tokens = schedule.tokens_per_block
        else:
            tokens = self._checked(tokens_per_block)
        dims = tuple(schedule.stages[s].dim for s in schedule.block_stages)
        scorer, movement = self.pruning_macs()
        stages = schedule.stages
        pools = tuple(
            pool_macs(stage.grid, stages[s - 1].dim, stage.dim, schedule.non_spatial_into(s))
            for s, stage in enumerate(stages) if s
        )
        return ModelCost(
            name=self.name,
            tokens_per_block=tokens,
            block_dims=dims,
            block_stages=schedule.block_stages,
            block_macs=tuple(block_macs(n, d, self.mlp_ratio) for n, d in zip(tokens, dims)),
            embed_macs=self.embed_macs,
            pool_macs=pools,
            head_macs=self.head_macs,
            locations=self.pruning.locations if self.pruning else (),
            scorer_macs=scorer,
            movement_macs=movement,
        )

    def _checked(self, tokens_per_block):
        tokens, depth = list(tokens_per_block), self.schedule.depth
        if len(tokens) != depth:
            raise SpvitError(
                f"tokens_per_block has {len(tokens)} entries but {self.name} has {depth} "
                "blocks: give one token count per block, in global block order"
            )
        try:
            tokens = tuple(operator.index(n) for n in tokens)
        except TypeError:
            raise SpvitError(f"token counts must be integers, got {tokens}") from None
        low = self.schedule.num_prefix
        bad = [(i, n) for i, n in enumerate(tokens) if n < low]
        if bad:
            raise SpvitError(
                f"every block processes at least its {low} prefix token(s); "
                f"(block, tokens) {bad} are too few"
            )
        return tokens


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """MACs of one forward pass of one image, split by where they are spent."""

    name: str
    tokens_per_block: tuple
    block_dims: tuple
    block_stages: tuple
    block_macs: tuple
    embed_macs: int
    pool_macs: tuple
    head_macs: int
    locations: tuple = ()
    scorer_macs: tuple = ()  # per pruning location: selector / baseline scorer
    movement_macs: tuple = ()  # per pruning location: package, selection, scatter

    @property
    def total_macs(self):
        return (
            sum(self.block_macs) + self.embed_macs + sum(self.pool_macs) + self.head_macs
            + sum(self.scorer_macs) + sum(self.movement_macs)
        )

    @property
    def gflops(self):
        """Total in the papers' "GFLOPs" (GMACs)."""
        return self.total_macs / GIGA


def architecture_from_config(family, config, name=""):
    """`Architecture` of a `family` ("vit" or "pit") model with constructor `config`.

    Tokens and stages come from `spvit_tf.geometry.schedule_from_config`; outside the blocks,
    the patch embedding is a conv onto the first stage's grid and the classifier reads the
    last stage's width (a second head when distilled)."""
    schedule = schedule_from_config(family, config)
    first, last, patch = schedule.stages[0], schedule.stages[-1], config["patch_size"]
    return Architecture(
        name=name or family,
        mlp_ratio=config["mlp_ratio"],
        schedule=schedule,
        embed_macs=conv_macs(first.num_patches, first.dim, patch * patch * config["in_chans"]),
        head_macs=last.dim * config["num_classes"] * (2 if config["distilled"] else 1),
    )


def architecture(name_or_model, **overrides):
    """`Architecture` of a registered name (with registry overrides) or of a model instance."""
    if isinstance(name_or_model, str):
        from spvit_tf.models import model_config

        model_cls, config = model_config(name_or_model, **overrides)
        return architecture_from_config(model_cls.family, config, name_or_model)
    if overrides:
        raise SpvitError(
            f"overrides {sorted(overrides)} apply to registered names only; a built model "
            "is priced as it is"
        )
    model = name_or_model
    return architecture_from_config(type(model).family, model.get_config(), model.name)


def model_cost(name_or_model, tokens_per_block=None, **overrides):
    """`ModelCost` of a model whose blocks see `tokens_per_block` tokens (default dense).

    `tokens_per_block` counts every token a block processes (class/dist and any extra tokens
    included), one entry per block in global block order (PiT: its flat `blocks` list).
    """
    return architecture(name_or_model, **overrides).cost(tokens_per_block)


def count_params(name, **overrides):
    """Exact parameter count; builds the Keras model, so it needs TensorFlow."""
    from spvit_tf.models import create_model

    return create_model(name, **overrides).count_params()


def format_cost(cost, params=None, dense=None):
    """Human-readable report: totals, then where the MACs go, block by block.

    With the `dense` cost of the unpruned backbone, also the pruned/dense ratio and the
    selectors' share of the backbone.
    """
    total = cost.total_macs
    lines = [
        f"model: {cost.name}",
        f"GFLOPs: {cost.gflops:.3f} ({cost.gflops:.1f} as the papers round it)",
    ]
    if params is not None:
        lines.append(f"params: {params / 1e6:.2f} M")
    lines.append(f"{'part':>12} {'stage':>5} {'tokens':>6} {'dim':>5} {'MMACs':>9} {'share':>6}")

    def row(part, stage, tokens, dim, macs):
        lines.append(
            f"{part:>12} {stage:>5} {tokens:>6} {dim:>5} {macs / 1e6:>9.2f} {macs / total:>6.1%}"
        )

    row("patch_embed", 0, "", cost.block_dims[0], cost.embed_macs)
    pruning = dict(zip(cost.locations, zip(cost.scorer_macs, cost.movement_macs)))
    for i, (stage, tokens, dim, macs) in enumerate(
        zip(cost.block_stages, cost.tokens_per_block, cost.block_dims, cost.block_macs)
    ):
        if stage and cost.block_stages[i - 1] != stage:
            row(f"pool_{stage}", stage, "", dim, cost.pool_macs[stage - 1])
        if i in pruning:
            row(f"selector_{i}", stage, "", dim, pruning[i][0])
            row(f"tokens_{i}", stage, "", dim, pruning[i][1])
        row(f"block_{i}", stage, tokens, dim, macs)
    row("head", cost.block_stages[-1], "", cost.block_dims[-1], cost.head_macs)
    if dense is not None:
        lines.append(
            f"dense backbone: {dense.gflops:.3f} GFLOPs; pruned/dense: "
            f"{total / dense.total_macs:.3f}; selectors: {sum(cost.scorer_macs) / 1e6:.2f} "
            f"MMACs ({sum(cost.scorer_macs) / dense.total_macs:.2%} of the backbone)"
        )
    return "\n".join(lines)


def _parse_tokens(text):
    try:
        return [int(t) for t in text]
    except ValueError:
        raise SpvitError(
            f"--tokens must be comma-separated integers, got {','.join(text)}"
        ) from None


def main(argv):
    with stderr_silenced():
        import spvit_tf.models  # noqa: F401  (the registry's names; pulls in TensorFlow)
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; options are passed as --flag=value")
    if not FLAGS.model:
        raise SpvitError("--model is required, e.g. --model=deit_small_patch16_224")
    tokens = _parse_tokens(FLAGS.tokens) if FLAGS.tokens else None
    overrides = dict(image_size=FLAGS.image_size, num_classes=FLAGS.num_classes)
    if FLAGS.pruning != "none":
        overrides["pruning"] = pruning_from_flags(
            FLAGS.pruning, FLAGS.pruning_locations, FLAGS.keep_ratios, FLAGS.selection
        )
    cost = model_cost(FLAGS.model, tokens, **overrides)
    params = count_params(FLAGS.model, **overrides) if FLAGS.params else None
    dense = None
    if "pruning" in overrides:
        dense = model_cost(FLAGS.model, **{**overrides, "pruning": None})
    print(format_cost(cost, params, dense))


def _define_flags():
    """Defined only when run as a script, so importing the cost model claims no flag names."""
    flags.DEFINE_string("model", None, "Registered model name, e.g. deit_small_patch16_224.")
    flags.DEFINE_integer("image_size", None, "Square input side; default: the model's.")
    flags.DEFINE_integer("num_classes", None, "Classifier classes; default: the model's.")
    flags.DEFINE_list("tokens", [], "Tokens each block processes, prefix tokens included.")
    flags.DEFINE_bool("params", True, "Also build the model and count its parameters.")
    flags.DEFINE_string("pruning", "none",
                        f"Pruning method to price: none, {', '.join(method_names())}.")
    flags.DEFINE_list("pruning_locations", ["3", "6", "9"], "Blocks a selector sits before.")
    flags.DEFINE_list("keep_ratios", ["0.7", "0.49", "0.343"], "Cumulative keep ratio per location.")
    flags.DEFINE_string("selection", "gather", "gather (TOPK_V2) or matmul (GPU-delegate friendly).")


if __name__ == "__main__":
    _define_flags()
    app.run(run_cli(main), flags_parser=parse_flags)
