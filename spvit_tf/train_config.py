"""`TrainConfig`: every setting of one training run, as one frozen, flat dataclass.

The training CLI's absl flags are generated from its fields (name, default, help, choices and
bounds live here once), `TrainConfig.from_flags` builds the config from parsed flags, and
`spvit_tf.train.fit(config)` runs it, so Python code and tests drive training the way the
CLI does, without a subprocess or absl's global flags (big_vision's flat-config habit):

    from spvit_tf.train import fit
    from spvit_tf.train_config import TrainConfig
    result = fit(TrainConfig(model="deit_tiny_patch16_224", mode="dense", workdir="/tmp/w"))
    config = TrainConfig.from_argv(["--flagfile=configs/cifar10_teacher.cfg", "--workdir=w"])

`to_flagfile()` writes the config as a flagfile that `from_argv` (and the CLI) reads back to
the same config: it is the workdir's `flags.txt`. `check()` raises one `SpvitError` line for
every combination of settings that cannot work, before any data or model is touched.
"""

import dataclasses

from spvit_tf.errors import SpvitError
from spvit_tf.pruning.methods import get_method, method_names

MODES = ("dense", *method_names(), "search")


def option(default, help, kind=None, choices=None, lower_bound=None):
    """A config field with its CLI flag's description; `kind` (string, integer, float, bool,
    enum, list) defaults to the type of `default`. List fields hold tuples of strings, as the
    flag parses them."""
    if kind is None:
        kind = {str: "string", bool: "bool", int: "integer", float: "float",
                tuple: "list"}[type(default)]
    if choices is not None:
        kind = "enum"
    meta = {"help": help, "kind": kind, "choices": choices, "lower_bound": lower_bound}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (see `spvit_tf.train` for the modes). Field help is the flag help."""

    mode: str = option("spvit", "What to train (see the spvit_tf.train docstring).", choices=MODES)
    model: str = option(None, "Registered model name, e.g. deit_small_patch16_224.", "string")
    model_options: tuple = option((), "create_model overrides as key=value, e.g. patch_size=4.")
    image_size: int = option(None, "Input side; default: the model's.", "integer")
    checkpoint: str = option(None, "Initial student weights (timm/DeiT/PiT or .weights.h5).",
                             "string")
    teacher_model: str = option(None, "Teacher architecture; default: --model, dense.", "string")
    teacher_checkpoint: str = option(None, "Teacher weights; default: --checkpoint.", "string")
    data: str = option("cifar10_embedded", "cifar10_embedded | folder:<path> | tfds:<name>.")
    data_dir: str = option(None, "TFDS data_dir (tfds: sources).", "string")
    manual_dir: str = option(None, "TFDS manual_dir, e.g. holding the ILSVRC2012 tars.", "string")
    crop_ratio: float = option(0.875, "Eval resize/crop ratio (DeiT 0.875; 1.0 for CIFAR).")
    workdir: str = option(None, "Where checkpoints, logs and the final model go.", "string")
    batch_size: int = option(128, "Global batch size (all replicas).")
    epochs: int = option(30, "Training epochs (ignored when --steps > 0); 0 with --steps=0 trains "
                         "nothing: the run evaluates --checkpoint with the method (ToMe, EViT and "
                         "static need no training).")
    steps: int = option(0, "Training steps; overrides --epochs when > 0.")
    lr: float = option(5e-4, "Peak learning rate per 512 images (scaled by batch/512).")
    min_lr: float = option(1e-6, "Final learning rate of the cosine schedule.")
    warmup_epochs: float = option(5.0, "Linear learning-rate warm-up.")
    weight_decay: float = option(0.05, "AdamW weight decay.")
    backbone_lr_scale: float = option(0.01, "Pruned modes: backbone LR relative to --lr (the "
                                      "selectors').")
    freeze_backbone_steps: int = option(0, "Steps training only the selectors first.")
    freeze_backbone_epochs: float = option(0.0, "The same in epochs (SPViT: 5 of 30).")
    drop_path: float = option(0.1, "Stochastic depth rate.")
    label_smoothing: float = option(0.1, "Label smoothing of the cross-entropy.")
    crop: str = option("resized", "Training crop: DeiT's random resized crop, or reflect-pad by "
                       "--crop_padding and crop back (small images).", choices=("resized", "pad"))
    min_crop_scale: float = option(0.08, "Random resized crop: smallest area fraction.")
    crop_padding: int = option(4, "--crop=pad: padding in pixels (the largest shift).")
    rotation_degrees: float = option(0.0, "Random rotation per image, up to +-this (0: off).")
    color_jitter: float = option(0.0, "Brightness/contrast/saturation jitter per image (0: off).")
    erasing: float = option(0.0, "Probability of random erasing per image (0: off).")
    flip: bool = option(True, "Random horizontal flips.")
    randaugment_ops: int = option(2, "RandAugment operations per image (0: off).")
    randaugment_factor: float = option(0.5, "RandAugment magnitude factor.")
    mixup: float = option(0.8, "MixUp alpha (0: off).")
    cutmix: float = option(1.0, "CutMix alpha (0: off).")
    pruning_locations: tuple = option(("3", "6", "9"), "Blocks a selector sits before.")
    keep_ratios: tuple = option((), "Cumulative keep ratio per location (or use a budget).")
    selection: str = option("gather", "Inference token selection.", choices=("gather", "matmul"))
    budget_gflops: float = option(None, "Derive keep ratios meeting this GFLOPs budget.", "float")
    budget_ms: float = option(None, "Derive keep ratios meeting this latency (--latency_table).",
                              "float")
    latency_table: str = option(None, "Per-block latency table JSON (spvit_tf.latency_table).",
                                "string")
    align_to_latency_steps: int = option(
        0, "Drop up to this many more tokens per location where --latency_table shows they cost "
        "a latency step (needs a table timed at every length near the counts; 0: off).",
        lower_bound=0)
    distill_weight: float = option(0.5, "Weight of the KL to the teacher's logits.")
    token_weight: float = option(0.5, "Weight of the kept-token MSE to the teacher's tokens.")
    ratio_weight: float = option(2.0, "Weight of the keep-ratio (budget) regulariser.")
    ratio_loss: str = option("batch", "Keep ratio met by the batch's mean (SPViT) or by every "
                             "image (DynamicViT).", choices=("batch", "image"))
    search_tolerance: float = option(0.05, "search: keep-ratio gap merged into one phase.")
    strategy: str = option("default", "tf.distribute strategy.",
                           choices=("default", "mirrored", "multi_worker", "tpu"))
    tpu: str = option(None, "TPU address for --strategy=tpu.", "string")
    cpu_replicas: int = option(0, "--strategy=mirrored over this many logical CPU devices (tries "
                               "multi-replica training on a machine without GPUs).", lower_bound=0)
    jit_compile: bool = option(False, "XLA-compile the training step.")
    precision: str = option("float32", "Compute precision.",
                            choices=("float32", "mixed_bfloat16"))
    ema_decay: float = option(0.0, "EMA of weights (0: off); the final model uses the EMA.")
    checkpoint_every: int = option(500, "Steps between checkpoints (and at epoch ends).")
    log_every: int = option(50, "Steps between metric log lines.")
    eval_every: int = option(1, "Epochs between evaluations (0: only at the end).")
    eval_examples: int = option(0, "Evaluate on at most this many examples (0: all).")
    seed: int = option(0, "Seed of initialisation, shuffling and augmentation.")

    def __post_init__(self):  # lists from Python callers: tuples, as the flags give them
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata["kind"] == "list" and not isinstance(value, tuple):
                items = value.split(",") if isinstance(value, str) else value
                object.__setattr__(self, field.name, tuple(str(v) for v in items if str(v)))

    # -- flags ------------------------------------------------------------------------------
    @classmethod
    def from_flags(cls, flag_values):
        """The config of parsed absl flags (`define_flags` defined them)."""
        return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)})

    @classmethod
    def from_argv(cls, argv):
        """Parses CLI arguments (a flagfile included) into a config, with fresh flags: no
        global state. A bad flag is one `SpvitError` line, as the CLI prints it."""
        from absl import flags

        flag_values = flags.FlagValues()
        define_flags(flag_values)
        try:
            flag_values(["train", *argv])
        except flags.Error as error:
            raise SpvitError(" ".join(str(error).removeprefix("ERROR:: ").split())) from None
        return cls.from_flags(flag_values)

    def to_flagfile(self):
        """The config as a flagfile, one `--name=value` line per set field, sorted (the
        workdir's flags.txt; `from_argv(["--flagfile=<it>"])` gives this config back)."""
        lines = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if field.metadata["kind"] == "bool":
                lines.append(f"--{'' if value else 'no'}{field.name}")
            elif field.metadata["kind"] == "list":
                lines.append(f"--{field.name}={','.join(value)}")
            else:
                lines.append(f"--{field.name}={value!r}" if isinstance(value, float)
                             else f"--{field.name}={value}")
        return "".join(f"{line}\n" for line in sorted(lines))

    # -- derived settings -------------------------------------------------------------------
    @property
    def learned(self):
        """Whether the mode has selectors to train."""
        return self.mode == "search" or self.mode != "dense" and get_method(self.mode).learned

    def augment(self):
        """The run's training augmentation (`data.Augment`; its own checks raise here)."""
        from spvit_tf import data

        return data.Augment(
            crop=self.crop, min_crop_scale=self.min_crop_scale, crop_padding=self.crop_padding,
            flip=self.flip, randaugment_ops=self.randaugment_ops,
            randaugment_factor=self.randaugment_factor, rotation_degrees=self.rotation_degrees,
            color_jitter=self.color_jitter, erasing=self.erasing, mixup_alpha=self.mixup,
            cutmix_alpha=self.cutmix, seed=self.seed,
        )

    def check(self):
        """One clear `SpvitError` line for every combination of settings that cannot work."""
        if not self.model:
            raise SpvitError("--model is required, e.g. --model=deit_small_patch16_224")
        if not self.workdir:
            raise SpvitError("--workdir is required: where checkpoints, logs and the model go")
        if self.budget_gflops is not None and self.budget_ms is not None:
            raise SpvitError("give one budget: --budget_gflops or --budget_ms, not both")
        needs_table = {"budget_ms": self.budget_ms is not None,
                       "align_to_latency_steps": self.align_to_latency_steps > 0}
        for name, given in needs_table.items():
            if given and not self.latency_table:
                raise SpvitError(
                    f"--{name} needs --latency_table=<json> (python -m spvit_tf.latency_table)")
        if self.keep_ratios and (self.budget_gflops is not None or self.budget_ms is not None):
            raise SpvitError("give --keep_ratios or a budget (--budget_gflops/--budget_ms), not both")
        if self.batch_size < 1 or self.epochs < 0 or self.steps < 0:
            raise SpvitError("--batch_size must be positive, --epochs and --steps not negative")
        if not (self.epochs or self.steps):
            if self.learned:
                raise SpvitError(
                    f"--mode={self.mode} has selectors to train: give --epochs or --steps "
                    "(--epochs=0 evaluates a training-free method, e.g. --mode=tome)")
            if not self.checkpoint:
                raise SpvitError("--epochs=0 evaluates --checkpoint with the method and trains "
                                 "nothing: pass the weights to evaluate as --checkpoint")
        if self.freeze_backbone_steps < 0 or self.freeze_backbone_epochs < 0:
            raise SpvitError("--freeze_backbone_steps/--freeze_backbone_epochs must not be negative")
        if self.freeze_backbone_steps and self.freeze_backbone_epochs:
            raise SpvitError("give --freeze_backbone_steps or --freeze_backbone_epochs, not both")
        if self.cpu_replicas and self.strategy != "mirrored":
            raise SpvitError("--cpu_replicas needs --strategy=mirrored")
        self.augment()  # its own checks, before any data is read
        if self.align_to_latency_steps and self.mode in ("dense", "search"):
            raise SpvitError(f"--align_to_latency_steps moves a schedule's counts; "
                             f"--mode={self.mode} has none")
        if self.mode == "search" and self.budget_gflops is None:
            raise SpvitError("--mode=search needs --budget_gflops (the budget the phases must meet)")


def parse_model_options(items):
    """['patch_size=4', 'embed_dim=96'] -> {'patch_size': 4, 'embed_dim': 96}."""
    import ast

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpvitError(f"--model_options item {item!r} is not key=value, e.g. patch_size=4")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options


def dense_options(options):
    """The create_model options of the same backbone without pruning (teacher, dense cost)."""
    return {k: v for k, v in options.items() if k != "pruning"}


def resolve_pruning(config, overrides, depth):
    """The run's pruning dict (None for dense): explicit ratios or a schedule from the budget,
    moved off latency steps with `align_to_latency_steps`."""
    from spvit_tf.pruning.config import pruning_from_flags

    mode = config.mode
    if mode == "dense":
        return None
    if mode == "search":  # a selector before every block; ratios are learned, not imposed
        return pruning_from_flags("spvit", range(1, depth), ["1.0"] * (depth - 1), config.selection)
    locations = config.pruning_locations
    if config.keep_ratios:
        pruning = pruning_from_flags(mode, locations, config.keep_ratios, config.selection)
    elif config.budget_gflops is None and config.budget_ms is None:
        raise SpvitError(
            f"--mode={mode} needs --keep_ratios=... or a budget (--budget_gflops or --budget_ms)"
        )
    else:
        pruning = pruning_from_flags(mode, locations, budget_ratios(config, overrides),
                                     config.selection)
    if config.align_to_latency_steps:
        from spvit_tf import budget

        aligned = budget.align_to_latency_steps(
            config.latency_table, config.model, pruning["keep_ratios"],
            locations=pruning["locations"], method=mode, overrides=overrides,
            max_trim=config.align_to_latency_steps,
        )
        print(f"aligned to latency steps: keep_ratios={','.join(map(str, aligned.keep_ratios))} "
              f"({aligned.counts} tokens; predicted {aligned.predicted_ms:.3f} ms, "
              f"{aligned.unaligned_ms:.3f} ms before)")
        pruning["keep_ratios"] = aligned.keep_ratios
    return pruning


def budget_ratios(config, overrides):
    """Keep ratios of the mildest schedule meeting `budget_gflops` or `budget_ms`."""
    from spvit_tf import budget, latency_table

    cost, table, unit = "gflops", None, "GFLOPs"
    if config.budget_gflops is None:
        table = latency_table.load_latency_table(config.latency_table, model=config.model)
        cost = "latency"
        unit = f"ms {table['tflite_format']} on {table['target']}"
    ratios, predicted, dense = budget.schedule_for_budget(
        config.model,
        budget=config.budget_gflops if cost == "gflops" else config.budget_ms,
        cost=cost,
        latency_table=table,
        locations=tuple(int(v) for v in config.pruning_locations),
        method=config.mode,
        overrides=overrides,
    )
    print(f"schedule for the budget: keep_ratios={','.join(map(str, ratios))} "
          f"(predicted {predicted:.3f} {unit} <= budget; dense {dense:.3f} {unit})")
    return ratios


def define_flags(flag_values=None, module_name=None):
    """Defines one absl flag per `TrainConfig` field in `flag_values` (default: absl's
    global FLAGS), with the field's default, help, choices and bounds."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    for field in dataclasses.fields(TrainConfig):
        meta, default = field.metadata, field.default
        common = dict(flag_values=flag_values, module_name=module_name)
        kind = meta["kind"]
        if kind == "enum":
            flags.DEFINE_enum(field.name, default, meta["choices"], meta["help"], **common)
        elif kind == "list":
            flags.DEFINE_list(field.name, list(default), meta["help"], **common)
        elif kind in ("integer", "float"):
            define = flags.DEFINE_integer if kind == "integer" else flags.DEFINE_float
            define(field.name, default, meta["help"], lower_bound=meta["lower_bound"], **common)
        else:
            define = flags.DEFINE_bool if kind == "bool" else flags.DEFINE_string
            define(field.name, default, meta["help"], **common)
