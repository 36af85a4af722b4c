"""Training: `python -m spvit_tf.train --flagfile=configs/<config>.cfg [--flag=value ...]`.

Modes:
  dense            train or fine-tune a dense model (a teacher, or a baseline)
  spvit | hard     fine-tune with learned token selectors against the dense teacher
  evit | static    fine-tune with the parameter-free baselines at the same schedule
  tome             fine-tune with ToMe's training-free token merging at the same schedule
  search           SPViT's layer-to-phase search: selectors before every block, a short
                   training under a FLOPs budget, per-layer keep ratios merged into phases;
                   writes <workdir>/schedule.cfg to pass to the real run

A custom loop (the loss is ours): tf.distribute strategy, per-replica losses scaled to the
global batch, optional XLA, bfloat16 and EMA, checkpoints every N steps that resume exactly
(step, optimizer state, data position), SIGTERM saves and exits, a NaN stops the run with the
last good checkpoint intact. Everything a run produces lands in --workdir (see workdir.py).
"""

import ast
import dataclasses
import json
import math
import os
import signal
import sys
import time

from absl import app, flags, logging

from spvit_tf.errors import SpvitError, first_line, parse_flags, run_cli
from spvit_tf.preprocessing import Preprocessor
from spvit_tf.pruning.methods import get_method, method_names

FLAGS = flags.FLAGS
MODES = ("dense", *method_names(), "search")

flags.DEFINE_enum("mode", "spvit", MODES, "What to train (see the module docstring).")
flags.DEFINE_string("model", None, "Registered model name, e.g. deit_small_patch16_224.")
flags.DEFINE_list("model_options", [], "create_model overrides as key=value, e.g. patch_size=4.")
flags.DEFINE_integer("image_size", None, "Input side; default: the model's.")
flags.DEFINE_string("checkpoint", None, "Initial student weights (timm/DeiT/PiT or .weights.h5).")
flags.DEFINE_string("teacher_model", None, "Teacher architecture; default: --model, dense.")
flags.DEFINE_string("teacher_checkpoint", None, "Teacher weights; default: --checkpoint.")
flags.DEFINE_string("data", "cifar10_embedded", "cifar10_embedded | folder:<path> | tfds:<name>.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (tfds: sources).")
flags.DEFINE_string("manual_dir", None, "TFDS manual_dir, e.g. holding the ILSVRC2012 tars.")
flags.DEFINE_float("crop_ratio", 0.875, "Eval resize/crop ratio (DeiT 0.875; 1.0 for CIFAR).")
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the final model go.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (all replicas).")
flags.DEFINE_integer("epochs", 30, "Training epochs (ignored when --steps > 0); 0 with --steps=0 "
                     "trains nothing: the run evaluates --checkpoint with the method (ToMe, "
                     "EViT and static need no training).")
flags.DEFINE_integer("steps", 0, "Training steps; overrides --epochs when > 0.")
flags.DEFINE_float("lr", 5e-4, "Peak learning rate per 512 images (scaled by batch/512).")
flags.DEFINE_float("min_lr", 1e-6, "Final learning rate of the cosine schedule.")
flags.DEFINE_float("warmup_epochs", 5, "Linear learning-rate warm-up.")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
flags.DEFINE_float("backbone_lr_scale", 0.01, "Pruned modes: backbone LR relative to --lr (the selectors').")
flags.DEFINE_integer("freeze_backbone_steps", 0, "Steps training only the selectors first.")
flags.DEFINE_float("freeze_backbone_epochs", 0, "The same in epochs (SPViT: 5 of 30).")
flags.DEFINE_float("drop_path", 0.1, "Stochastic depth rate.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the cross-entropy.")
flags.DEFINE_enum("crop", "resized", ("resized", "pad"), "Training crop: DeiT's random resized "
                  "crop, or reflect-pad by --crop_padding and crop back (small images).")
flags.DEFINE_float("min_crop_scale", 0.08, "Random resized crop: smallest area fraction.")
flags.DEFINE_integer("crop_padding", 4, "--crop=pad: padding in pixels (the largest shift).")
flags.DEFINE_float("rotation_degrees", 0.0, "Random rotation per image, up to +-this (0: off).")
flags.DEFINE_float("color_jitter", 0.0, "Brightness/contrast/saturation jitter per image (0: off).")
flags.DEFINE_float("erasing", 0.0, "Probability of random erasing per image (0: off).")
flags.DEFINE_bool("flip", True, "Random horizontal flips.")
flags.DEFINE_integer("randaugment_ops", 2, "RandAugment operations per image (0: off).")
flags.DEFINE_float("randaugment_factor", 0.5, "RandAugment magnitude factor.")
flags.DEFINE_float("mixup", 0.8, "MixUp alpha (0: off).")
flags.DEFINE_float("cutmix", 1.0, "CutMix alpha (0: off).")
flags.DEFINE_list("pruning_locations", ["3", "6", "9"], "Blocks a selector sits before.")
flags.DEFINE_list("keep_ratios", [], "Cumulative keep ratio per location (or use a budget).")
flags.DEFINE_enum("selection", "gather", ("gather", "matmul"), "Inference token selection.")
flags.DEFINE_float("budget_gflops", None, "Derive keep ratios meeting this GFLOPs budget.")
flags.DEFINE_float("budget_ms", None, "Derive keep ratios meeting this latency (--latency_table).")
flags.DEFINE_string("latency_table", None, "Per-block latency table JSON (spvit_tf.latency_table).")
flags.DEFINE_integer(
    "align_to_latency_steps", 0, "Drop up to this many more tokens per location where "
    "--latency_table shows they cost a latency step (needs a table timed at every length near "
    "the counts; 0: off).", lower_bound=0,
)
flags.DEFINE_float("distill_weight", 0.5, "Weight of the KL to the teacher's logits.")
flags.DEFINE_float("token_weight", 0.5, "Weight of the kept-token MSE to the teacher's tokens.")
flags.DEFINE_float("ratio_weight", 2.0, "Weight of the keep-ratio (budget) regulariser.")
flags.DEFINE_enum("ratio_loss", "batch", ("batch", "image"), "Keep ratio met by the batch's mean "
                  "(SPViT) or by every image (DynamicViT).")
flags.DEFINE_float("search_tolerance", 0.05, "search: keep-ratio gap merged into one phase.")
flags.DEFINE_enum("strategy", "default", ("default", "mirrored", "multi_worker", "tpu"),
                  "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
flags.DEFINE_integer("cpu_replicas", 0, "--strategy=mirrored over this many logical CPU devices "
                     "(tries multi-replica training on a machine without GPUs).", lower_bound=0)
flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step.")
flags.DEFINE_enum("precision", "float32", ("float32", "mixed_bfloat16"), "Compute precision.")
flags.DEFINE_float("ema_decay", 0.0, "EMA of weights (0: off); the final model uses the EMA.")
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints (and at epoch ends).")
flags.DEFINE_integer("log_every", 50, "Steps between metric log lines.")
flags.DEFINE_integer("eval_every", 1, "Epochs between evaluations (0: only at the end).")
flags.DEFINE_integer("eval_examples", 0, "Evaluate on at most this many examples (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")


def parse_model_options(items):
    """['patch_size=4', 'embed_dim=96'] -> {'patch_size': 4, 'embed_dim': 96}."""
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


def check_flags():
    """One clear line for every flag combination that cannot work."""
    if not FLAGS.model:
        raise SpvitError("--model is required, e.g. --model=deit_small_patch16_224")
    if not FLAGS.workdir:
        raise SpvitError("--workdir is required: where checkpoints, logs and the model go")
    if FLAGS.budget_gflops is not None and FLAGS.budget_ms is not None:
        raise SpvitError("give one budget: --budget_gflops or --budget_ms, not both")
    needs_table = {"budget_ms": FLAGS.budget_ms is not None,
                   "align_to_latency_steps": FLAGS.align_to_latency_steps > 0}
    for name, given in needs_table.items():
        if given and not FLAGS.latency_table:
            raise SpvitError(
                f"--{name} needs --latency_table=<json> (python -m spvit_tf.latency_table)"
            )
    if FLAGS.keep_ratios and (FLAGS.budget_gflops is not None or FLAGS.budget_ms is not None):
        raise SpvitError("give --keep_ratios or a budget (--budget_gflops/--budget_ms), not both")
    if FLAGS.batch_size < 1 or FLAGS.epochs < 0 or FLAGS.steps < 0:
        raise SpvitError("--batch_size must be positive, --epochs and --steps not negative")
    if not (FLAGS.epochs or FLAGS.steps):
        if FLAGS.mode == "search" or FLAGS.mode != "dense" and get_method(FLAGS.mode).learned:
            raise SpvitError(f"--mode={FLAGS.mode} has selectors to train: give --epochs or "
                             "--steps (--epochs=0 evaluates a training-free method, e.g. --mode=tome)")
        if not FLAGS.checkpoint:
            raise SpvitError("--epochs=0 evaluates --checkpoint with the method and trains nothing: "
                             "pass the weights to evaluate as --checkpoint")
    if FLAGS.freeze_backbone_steps < 0 or FLAGS.freeze_backbone_epochs < 0:
        raise SpvitError("--freeze_backbone_steps/--freeze_backbone_epochs must not be negative")
    if FLAGS.freeze_backbone_steps and FLAGS.freeze_backbone_epochs:
        raise SpvitError("give --freeze_backbone_steps or --freeze_backbone_epochs, not both")
    if FLAGS.cpu_replicas and FLAGS.strategy != "mirrored":
        raise SpvitError("--cpu_replicas needs --strategy=mirrored")
    augment_from_flags()  # its own checks, before any data is read
    if FLAGS.align_to_latency_steps and FLAGS.mode in ("dense", "search"):
        raise SpvitError(f"--align_to_latency_steps moves a schedule's counts; --mode={FLAGS.mode} "
                         "has none")


def resolve_pruning(overrides, depth):
    """The run's pruning dict (None for dense): explicit ratios or a schedule from the budget,
    moved off latency steps with --align_to_latency_steps."""
    from spvit_tf.pruning.config import pruning_from_flags

    mode = FLAGS.mode
    if mode == "dense":
        return None
    if mode == "search":  # a selector before every block; ratios are learned, not imposed
        return pruning_from_flags("spvit", range(1, depth), ["1.0"] * (depth - 1), FLAGS.selection)
    locations = FLAGS.pruning_locations
    if FLAGS.keep_ratios:
        pruning = pruning_from_flags(mode, locations, FLAGS.keep_ratios, FLAGS.selection)
    elif FLAGS.budget_gflops is None and FLAGS.budget_ms is None:
        raise SpvitError(
            f"--mode={mode} needs --keep_ratios=... or a budget (--budget_gflops or --budget_ms)"
        )
    else:
        pruning = pruning_from_flags(mode, locations, budget_ratios(mode, locations, overrides),
                                     FLAGS.selection)
    if FLAGS.align_to_latency_steps:
        from spvit_tf import budget

        aligned = budget.align_to_latency_steps(
            FLAGS.latency_table, FLAGS.model, pruning["keep_ratios"],
            locations=pruning["locations"], method=mode, overrides=overrides,
            max_trim=FLAGS.align_to_latency_steps,
        )
        print(f"aligned to latency steps: keep_ratios={','.join(map(str, aligned.keep_ratios))} "
              f"({aligned.counts} tokens; predicted {aligned.predicted_ms:.3f} ms, "
              f"{aligned.unaligned_ms:.3f} ms before)")
        pruning["keep_ratios"] = aligned.keep_ratios
    return pruning


def budget_ratios(mode, locations, overrides):
    """Keep ratios of the mildest schedule meeting --budget_gflops or --budget_ms."""
    from spvit_tf import budget, latency_table

    cost, table, unit = "gflops", None, "GFLOPs"
    if FLAGS.budget_gflops is None:
        table = latency_table.load_latency_table(FLAGS.latency_table, model=FLAGS.model)
        cost = "latency"
        unit = f"ms {table['tflite_format']} on {table['target']}"
    ratios, predicted, dense = budget.schedule_for_budget(
        FLAGS.model,
        budget=FLAGS.budget_gflops if cost == "gflops" else FLAGS.budget_ms,
        cost=cost,
        latency_table=table,
        locations=tuple(int(v) for v in locations),
        method=mode,
        overrides=overrides,
    )
    print(f"schedule for the budget: keep_ratios={','.join(map(str, ratios))} "
          f"(predicted {predicted:.3f} {unit} <= budget; dense {dense:.3f} {unit})")
    return ratios


def split_cpu():
    """--cpu_replicas logical CPU devices; must run before TensorFlow initialises its runtime."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_replicas
    )


def make_strategy():
    import tensorflow as tf

    if FLAGS.strategy == "mirrored":
        cpus = FLAGS.cpu_replicas and [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus or None)
    if FLAGS.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if FLAGS.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=FLAGS.tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def worker_role(strategy):
    """(is_chief, task id) of this process: a multi-worker cluster's chief is its `chief` task,
    else worker 0; a single process is its own chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    if resolver.task_type == "chief":
        return True, 0
    jobs = resolver.cluster_spec().as_dict()
    return "chief" not in jobs and resolver.task_type == "worker" and resolver.task_id == 0, \
        int(resolver.task_id or 0)


# What a collective op raises when a peer worker died or stopped answering (TF's health check
# aborts the pending collectives): the run stops with one line instead of a traceback.
def _peer_errors():
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError)


def search_budget_loss(model, records, target_fraction):
    """Differentiable FLOPs fraction of the sampled decisions vs `target_fraction` (search).

    Each block is priced by `flops.block_macs` over its prefix tokens plus its stage's grid
    times the mean keep decision of the location whose count it sees (its schedule's
    `BlockTokens.location`; the whole grid before a stage's first location).
    """
    from keras import ops

    from spvit_tf.flops import block_macs

    schedule = model.schedule
    means = [ops.mean(r["decision"], axis=1) for r in records]  # (B,) per location
    dense, cost = 0.0, 0.0
    for block in schedule.blocks:
        stage = schedule.stages[block.stage]
        full = block.prefix + stage.num_patches
        if block.location is not None:
            n = block.prefix + stage.num_patches * means[block.location]
        else:
            n = full
        dense += block_macs(full, stage.dim, model.mlp_ratio)
        cost = cost + block_macs(n, stage.dim, model.mlp_ratio)
    return (cost / dense - target_fraction) ** 2


class Trainer:
    """Models, optimizers, the distributed step and the checkpoint of one run."""

    def __init__(self, strategy, run, train_size):
        import keras
        import tensorflow as tf

        from spvit_tf.models import create_model
        from spvit_tf.schedules import CappedSchedule

        self.strategy, self.run = strategy, run
        self.global_batch = FLAGS.batch_size
        self.steps_per_epoch = max(train_size // self.global_batch, 1)
        self.total_steps = FLAGS.steps or FLAGS.epochs * self.steps_per_epoch
        with strategy.scope():
            keras.utils.set_random_seed(FLAGS.seed)
            self.student = create_model(
                run["model"], checkpoint=FLAGS.checkpoint or None, **run["model_config"]
            )
            self.teacher = self._teacher(create_model)
            pruner = self.student.pruner
            self.selector_vars = list(pruner.trainable_weights) if pruner is not None else []
            selector_ids = {id(v) for v in self.selector_vars}
            self.backbone_vars = [
                v for v in self.student.trainable_weights if id(v) not in selector_ids
            ]
            frozen = FLAGS.freeze_backbone_steps or round(
                FLAGS.freeze_backbone_epochs * self.steps_per_epoch)
            self.frozen_steps = min(frozen, self.total_steps) if self.selector_vars else 0
            peak = FLAGS.lr * self.global_batch / 512
            # Every pruned mode fine-tunes its backbone at SPViT's official rate, with or
            # without selectors, so methods compared share one recipe: nothing while frozen,
            # then min(lr x backbone_lr_scale, the selectors' schedule at the same step).
            if pruner is not None:
                frozen = self.frozen_steps
                backbone = CappedSchedule(self._schedule(peak), peak * FLAGS.backbone_lr_scale,
                                          offset=frozen)
                self.groups = [(self._adamw(backbone), self.backbone_vars)]
                if self.selector_vars:
                    self.groups.append((self._adamw(self._schedule(peak)), self.selector_vars))
            else:
                self.groups = [(self._adamw(self._schedule(peak)), self.backbone_vars)]
            for optimizer, variables in self.groups:  # here: a distributed step cannot create them
                optimizer.build(variables)
            self.optimizers = [optimizer for optimizer, _ in self.groups]
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # The model's variables as a list: TF's object graph does not see the blocks Keras 3
        # layers keep in lists, nor the Gumbel and drop-path seed states a resume must continue.
        self.checkpoint = tf.train.Checkpoint(
            variables=list(self.student.variables), optimizers=self.optimizers, step=self.step
        )
        # Multi-worker: every worker saves (saving may take part in collectives), but only the
        # chief into the workdir; the others write to a scratch folder they delete again, and
        # every worker restores from the chief's checkpoints.
        self.is_chief, task = worker_role(strategy)
        self.checkpoint_dir = os.path.join(FLAGS.workdir, "checkpoints")
        own_dir = self.checkpoint_dir if self.is_chief else os.path.join(
            FLAGS.workdir, f".worker-{task}-checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, own_dir, max_to_keep=3)
        self.target_ratios = (
            list(pruner.config.keep_ratios) if pruner is not None and FLAGS.mode != "search" else None
        )
        self._steps = {}

    def _schedule(self, peak):
        """Linear warm-up to `peak`, then cosine decay to --min_lr at the run's last step."""
        import keras

        steps = max(self.total_steps, 1)
        warmup = min(int(FLAGS.warmup_epochs * self.steps_per_epoch), steps // 2)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(steps - warmup, 1),
            alpha=min(FLAGS.min_lr / peak, 1.0) if peak else 0.0,
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )

    def _adamw(self, schedule):
        import keras

        return keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=FLAGS.weight_decay,
            use_ema=FLAGS.ema_decay > 0,
            ema_momentum=FLAGS.ema_decay or 0.99,
        )

    def _teacher(self, create_model):
        """The dense teacher of the pruned modes, frozen; None when there is nothing to learn from."""
        if FLAGS.mode == "dense":
            return None
        weights = FLAGS.teacher_checkpoint or FLAGS.checkpoint
        if not weights:
            logging.warning("no --teacher_checkpoint or --checkpoint: training without distillation")
            print("warning: no teacher weights (--teacher_checkpoint/--checkpoint): "
                  "distillation terms are off")
            return None
        from spvit_tf.checkpoint import load_checkpoint

        config = dense_options(self.run["model_config"])
        name = FLAGS.teacher_model or self.run["model"]
        teacher = create_model(name, **config)
        try:  # strict, unlike the student's: a head for other classes is an error, not replaced
            load_checkpoint(teacher, weights)
        except SpvitError as error:
            raise SpvitError(
                f"cannot load the teacher {name} from {weights} for this run "
                f"({teacher.num_classes} classes): {' '.join(str(error).split())} -- a teacher "
                "must be trained on this data: train one with --mode=dense, pass its "
                "final/model.weights.h5 as --teacher_checkpoint"
            ) from None
        teacher.trainable = False
        return teacher

    def replica_step(self, images, labels, train_backbone):
        import tensorflow as tf

        from spvit_tf.losses import spvit_loss

        with tf.GradientTape() as tape:
            out = self.student.forward(images, training=True)
            teacher_out = None
            if self.teacher is not None:
                teacher_out = self.teacher.forward(images, training=False)
            terms = spvit_loss(
                out, labels, teacher_out,
                target_ratios=self.target_ratios,
                distill_weight=FLAGS.distill_weight,
                token_weight=FLAGS.token_weight,
                ratio_weight=FLAGS.ratio_weight if self.target_ratios else 0.0,
                label_smoothing=FLAGS.label_smoothing,
                ratio_loss=FLAGS.ratio_loss,
            )
            total = tf.reduce_sum(terms["total"]) / self.global_batch
            if FLAGS.mode == "search":
                fraction = self.run["search_target_fraction"]
                budget_term = FLAGS.ratio_weight * tf.reduce_mean(
                    search_budget_loss(self.student, out.records, fraction)
                )
                total += budget_term / self.strategy.num_replicas_in_sync
                terms["ratio"] = tf.fill(tf.shape(terms["total"]), budget_term)
        groups = self.groups if train_backbone else self.groups[1:]
        variables = [v for _, group in groups for v in group]
        grads = tape.gradient(total, variables)
        start = 0
        for optimizer, group in groups:
            optimizer.apply_gradients(zip(grads[start:start + len(group)], group))
            start += len(group)
        metrics = {k: tf.reduce_sum(v) / self.global_batch for k, v in terms.items()}
        metrics["total"] = total
        for j, record in enumerate(out.records):
            metrics[f"keep_{j}"] = tf.reduce_mean(record["decision"]) / self.strategy.num_replicas_in_sync
        return metrics

    def train_step(self, batch, train_backbone):
        """One distributed step; compiled once per value of `train_backbone`."""
        import tensorflow as tf

        if train_backbone not in self._steps:
            replica = tf.function(
                lambda images, labels: self.replica_step(images, labels, train_backbone),
                jit_compile=FLAGS.jit_compile,
            )

            @tf.function
            def step(batch):
                metrics = self.strategy.run(replica, args=batch)
                metrics = {
                    k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                    for k, v in metrics.items()
                }
                self.step.assign_add(1)
                return metrics

            self._steps[train_backbone] = step
        return self._steps[train_backbone](batch)

    def latest_checkpoint(self):
        """The chief's latest checkpoint (what every worker resumes from), or None."""
        import tensorflow as tf

        return tf.train.latest_checkpoint(self.checkpoint_dir)

    def save(self, step):
        """Saves checkpoint `step`. A failed write (a full disk, no permission) is one line;
        the checkpoint index still names the last complete checkpoint, as TF writes it last
        and atomically."""
        import shutil

        import tensorflow as tf

        try:
            self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as error:
            raise SpvitError(
                f"cannot write checkpoint {step} into {self.manager.directory}: "
                f"{first_line(error)}; free "
                f"space or fix the folder and rerun the same command: the last checkpoint "
                f"({self.latest_checkpoint()}) is intact") from None
        if not self.is_chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)

    def learning_rates(self, step):
        """{"lr": the selectors' LR at the run's `step` (the backbone's without selectors),
        and with selectors "backbone_lr" (0 while the backbone is frozen)}."""
        rates = {"lr": float(self.optimizers[-1].learning_rate)}
        if len(self.optimizers) > 1:
            frozen = step < self.frozen_steps  # the rate of the next step, as "lr" is
            rates["backbone_lr"] = 0.0 if frozen else float(self.optimizers[0].learning_rate)
        return rates


def _stage_starts(model):
    """First block of every stage after the first (PiT); empty for a plain ViT."""
    return {stage.first_block for stage in model.stages[1:]}


def search_schedule(trainer, eval_data):
    """search: per-layer keep ratios learned by the selectors -> phases -> a flagfile fragment."""
    import numpy as np

    from spvit_tf import budget

    ratios = []
    for images, _ in eval_data.take(8):
        out = trainer.student.forward(images, training=False, mode="gumbel")
        ratios.append([float(np.mean(r["decision"])) for r in out.records])
    layer_ratios = np.mean(ratios, axis=0).tolist()
    locations = trainer.student.pruner.locations  # layer j's selector sits before block j + 1
    stage_starts = [j for j, loc in enumerate(locations) if loc in _stage_starts(trainer.student)]
    merged = budget.merge_into_phases(
        layer_ratios, tolerance=FLAGS.search_tolerance, stage_starts=stage_starts
    )
    phases = [(locations[j], ratio) for j, ratio in merged]
    dense_config = dense_options(trainer.run["model_config"])
    fitted = budget.fit_phases_to_budget(
        phases, trainer.run["model"], budget=FLAGS.budget_gflops, overrides=dense_config
    )
    fragment = budget.flagfile_fragment([loc for loc, _ in phases], fitted.keep_ratios, "spvit")
    return layer_ratios, fragment


def augment_from_flags():
    """The run's training augmentation (data.Augment) from its flags."""
    from spvit_tf import data

    return data.Augment(
        crop=FLAGS.crop, min_crop_scale=FLAGS.min_crop_scale, crop_padding=FLAGS.crop_padding,
        flip=FLAGS.flip, randaugment_ops=FLAGS.randaugment_ops,
        randaugment_factor=FLAGS.randaugment_factor, rotation_degrees=FLAGS.rotation_degrees,
        color_jitter=FLAGS.color_jitter, erasing=FLAGS.erasing, mixup_alpha=FLAGS.mixup,
        cutmix_alpha=FLAGS.cutmix, seed=FLAGS.seed,
    )


class _Stop:
    """Set by SIGTERM: the loop saves a checkpoint after the current step and exits."""

    requested = False


def _request_stop(signum, frame):
    _Stop.requested = True


def train(strategy, run, train_split, eval_split):
    """The run: restore, train, evaluate; returns the final evaluation dict."""
    import tensorflow as tf

    from spvit_tf import data
    from spvit_tf.workdir import atomic_write, ensure_output_dir, write_run

    trainer = Trainer(strategy, run, len(train_split))
    # Only now that the weights and the teacher loaded is the workdir created: a bad
    # --checkpoint leaves nothing behind. The chief writes the run's files; workers share them.
    ensure_output_dir(FLAGS.workdir, "--workdir")
    if trainer.is_chief:
        write_run(FLAGS.workdir, run)
        atomic_write(os.path.join(FLAGS.workdir, "flags.txt"), own_flags())
    trainer.checkpoint.restore(trainer.latest_checkpoint()).expect_partial()
    step = int(trainer.step.numpy())  # a MirroredVariable has no __int__
    metrics_path = os.path.join(FLAGS.workdir, "metrics.jsonl")
    if step:
        print(f"resuming {FLAGS.workdir} from step {step} ({trainer.latest_checkpoint()})")
    if trainer.is_chief:
        trim_log(metrics_path, step)
    augment = augment_from_flags()
    unreadable = data.Unreadable(train_split)
    preprocessor = Preprocessor.from_run(run)
    eval_data = data.to_dataset(eval_split, preprocessor=preprocessor, batch_size=FLAGS.batch_size,
                                training=False, subset_seed=0 if FLAGS.eval_examples else None)
    signal.signal(signal.SIGTERM, _request_stop)
    chief = trainer.is_chief  # only the chief writes logs and the final model
    writer = (tf.summary.create_file_writer(os.path.join(FLAGS.workdir, "tb")) if chief
              else tf.summary.create_noop_writer())
    with open(metrics_path if chief else os.devnull, "a") as log_file, writer.as_default():
        def log(record):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            for key, value in record.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value, step=record["step"])

        try:
            step = _loop(trainer, strategy, train_split, eval_data, augment, preprocessor, step,
                         log, unreadable)
        except _peer_errors() as error:
            if FLAGS.strategy != "multi_worker":
                raise
            raise SpvitError(
                f"a peer worker stopped or cannot be reached ({type(error).__name__}: "
                f"{first_line(error, 160)}); "
                f"the last checkpoint ({trainer.latest_checkpoint()}) is intact: restart every "
                "worker with the same command to resume"
            ) from None
    return _finish(trainer, run, eval_data, step, metrics_path, len(unreadable.named))


def trim_log(path, step):
    """Drops the records of steps after `step` from the metrics log: a run killed between two
    checkpoints logged steps that its resume repeats, and each step should appear once."""
    from spvit_tf.workdir import atomic_write

    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write(path, "".join(kept))


def _loop(trainer, strategy, train_split, eval_data, augment, preprocessor, step, log,
          unreadable):
    """Trains from `step` to the end of the run (or a SIGTERM); returns the last step.

    Unreadable training images are skipped (named as met, counted at each epoch's end); a
    second pass over the split fills an epoch they left short of its batches, so the step
    count, and with it the schedule and resuming, stays that of the readable split."""
    import keras

    from spvit_tf import data
    from spvit_tf.evaluate import accuracy

    spe, total = trainer.steps_per_epoch, trainer.total_steps
    while step < total:
        epoch, offset = divmod(step, spe)
        dataset = data.to_dataset(
            train_split, batch_size=FLAGS.batch_size, training=True,
            shuffle_seed=FLAGS.seed + epoch, skip_batches=offset, preprocessor=preprocessor,
            augment=dataclasses.replace(augment, seed=FLAGS.seed + epoch),  # fresh draws
            unreadable=unreadable, passes=2,
        )
        bar = keras.utils.Progbar(min(spe, total - epoch * spe), stateful_metrics=["img/s"])
        bar.update(offset)
        started, seen = None, 0
        for batch in strategy.experimental_distribute_dataset(dataset):
            backbone = step >= trainer.frozen_steps
            metrics = {k: float(v) for k, v in trainer.train_step(batch, backbone).items()}
            step += 1
            if started is None:  # throughput from the second step: the first compiles
                started = time.perf_counter()
            else:
                seen += FLAGS.batch_size
            if not math.isfinite(metrics["total"]):
                raise SpvitError(
                    f"the loss became {metrics['total']} at step {step}: run stopped, the last "
                    f"good checkpoint ({trainer.latest_checkpoint()}) is intact; lower "
                    "--lr or check the data"
                )
            speed = seen / max(time.perf_counter() - started, 1e-9)
            bar.update(step - epoch * spe, [("loss", metrics["total"]), ("img/s", speed)])
            if step % FLAGS.log_every == 0 or step == total:
                log({"step": step, "epoch": epoch, **trainer.learning_rates(step),
                     "images_per_sec": speed, **metrics})
            if _Stop.requested:
                trainer.save(step)
                print(f"\nSIGTERM: saved {trainer.latest_checkpoint()}; rerun the same "
                      "command to resume")
                sys.exit(143)
            if step % FLAGS.checkpoint_every == 0 or step % spe == 0 or step == total:
                trainer.save(step)
            if step % spe == 0 or step == total:
                break
        else:  # two passes over the split did not fill the epoch
            raise SpvitError(
                f"{FLAGS.data}: the training split has too few readable images for an epoch of "
                f"{spe} batches of {FLAGS.batch_size} ({unreadable.end_epoch()} of its "
                f"{len(train_split)} unreadable, named above); remove or replace them")
        done_epoch = math.ceil(step / spe)
        skipped = unreadable.end_epoch()
        if skipped:
            print(f"epoch {done_epoch}: skipped {skipped} unreadable training image(s), named "
                  "above", file=sys.stderr)
        if FLAGS.eval_every and done_epoch % FLAGS.eval_every == 0 and step < total:
            top1, top5, _ = accuracy(trainer.student, eval_data, FLAGS.eval_examples)
            print(f"epoch {done_epoch}: top-1 {top1:.4f} top-5 {top5:.4f}")
            log({"step": step, "epoch": done_epoch, "eval_top1": top1, "eval_top5": top5})
    return step


def _finish(trainer, run, eval_data, step, metrics_path, unreadable=0):
    """The final evaluation; the chief also writes the final model, eval.json and log line.
    `unreadable`: how many training images the run skipped (recorded when any were)."""
    from spvit_tf.evaluate import accuracy
    from spvit_tf.flops import model_cost
    from spvit_tf.stats import encode_correct, eval_order
    from spvit_tf.workdir import FINAL_WEIGHTS, atomic_write

    for optimizer, variables in trainer.groups:
        if optimizer.use_ema:
            optimizer.finalize_variable_values(variables)
    top1, top5, seen, correct = accuracy(trainer.student, eval_data, FLAGS.eval_examples,
                                         per_image=True)
    cost = model_cost(trainer.student)
    result = {
        "step": step, "eval_top1": top1, "eval_top5": top5, "eval_examples": seen,
        "top1_correct": encode_correct(correct),
        "eval_order": eval_order(run["data"], FLAGS.eval_examples),
        "gflops": cost.gflops,
        "dense_gflops": model_cost(run["model"], **dense_options(run["model_config"])).gflops,
    }
    if unreadable:
        result["unreadable_train_images"] = unreadable
    pruner = trainer.student.pruner
    if pruner is not None:
        result["keep_ratios"] = list(pruner.config.keep_ratios)
        result["kept_tokens"] = list(pruner.counts)
        history = [json.loads(line) for line in open(metrics_path) if '"keep_0"' in line] \
            if trainer.is_chief else []
        if history:
            last = history[-1]
            result["train_keep_ratios"] = [last[f"keep_{j}"] for j in range(len(pruner.counts))]
    if FLAGS.mode == "search":
        result["layer_keep_ratios"], fragment = search_schedule(trainer, eval_data)
        if trainer.is_chief:
            atomic_write(os.path.join(FLAGS.workdir, "schedule.cfg"), fragment)
        print(f"searched schedule (pass to the real run):\n{fragment}")
    if not trainer.is_chief:
        return result
    weights = os.path.join(FLAGS.workdir, FINAL_WEIGHTS)
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    tmp = os.path.join(os.path.dirname(weights), ".tmp-model.weights.h5")  # Keras picks the
    trainer.student.save_weights(tmp)  # format by the suffix, so atomic_write's temp won't do
    os.replace(tmp, weights)
    atomic_write(os.path.join(FLAGS.workdir, "final", "eval.json"), json.dumps(result, indent=2))
    log_record = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    with open(metrics_path, "a") as log_file:
        log_file.write(json.dumps({"final": True, **log_record}) + "\n")
    return result


def print_summary(run, result):
    rows = [
        ("model", run["model"]), ("mode", run["mode"]), ("data", run["data"]),
        ("steps", result["step"]),
        ("eval top-1", f"{result['eval_top1']:.4f} ({result['eval_examples']} images)"),
        ("eval top-5", f"{result['eval_top5']:.4f}"),
        ("GFLOPs", f"{result['gflops']:.4f} (dense {result['dense_gflops']:.4f}, "
                   f"{result['gflops'] / result['dense_gflops']:.1%})"),
    ]
    if "keep_ratios" in result:
        rows.append(("keep ratios (inference)", ", ".join(f"{r:g}" for r in result["keep_ratios"])))
        rows.append(("kept tokens", ", ".join(map(str, result["kept_tokens"]))))
    if "unreadable_train_images" in result:
        rows.append(("unreadable training images", f"{result['unreadable_train_images']} "
                                                   "skipped (named on stderr)"))
    if "train_keep_ratios" in result:
        rows.append(("keep ratios (last training step)",
                     ", ".join(f"{r:.3f}" for r in result["train_keep_ratios"])))
    rows.append(("final model", os.path.join(FLAGS.workdir, "final", "model.weights.h5")))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def own_flags():
    """This module's flags as a flagfile (absl's `flags_into_string` adds every library's,
    which a fresh process does not define)."""
    serialized = (f.serialize() for f in FLAGS.get_flags_for_module(sys.modules[__name__]))
    return "".join(f"{line}\n" for line in sorted(serialized) if line)


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; options are passed as --flag=value")
    from spvit_tf.workdir import check_output_dir

    if FLAGS.workdir:  # first: TensorFlow's start-up lines on stderr would bury this one
        check_output_dir(FLAGS.workdir, "--workdir")
    check_flags()
    if FLAGS.cpu_replicas:
        split_cpu()
    import keras

    from spvit_tf import data
    from spvit_tf.geometry import schedule_from_config
    from spvit_tf.models import model_config
    from spvit_tf.workdir import read_run

    if FLAGS.precision != "float32":
        keras.mixed_precision.set_global_policy(FLAGS.precision)
    expand = lambda path: path and os.path.expanduser(path)  # noqa: E731  (flagfiles hold ~)
    source = data.parse_source(
        FLAGS.data, tfds_data_dir=expand(FLAGS.data_dir), tfds_manual_dir=expand(FLAGS.manual_dir)
    )
    train_split = data.load_split(source, data.TRAIN)
    eval_split = data.load_split(source, data.EVAL)
    if len(train_split) < FLAGS.batch_size:
        raise SpvitError(f"--batch_size={FLAGS.batch_size} is larger than the training split of "
                         f"{FLAGS.data} ({len(train_split)} images); pass a smaller batch")
    overrides = parse_model_options(FLAGS.model_options)
    overrides.update(num_classes=len(train_split.class_names), drop_path_rate=FLAGS.drop_path)
    if FLAGS.image_size:
        overrides["image_size"] = FLAGS.image_size
    model_cls, config = model_config(FLAGS.model, **overrides)
    depth = schedule_from_config(model_cls.family, {**config, "pruning": None}).depth
    pruning = resolve_pruning(overrides, depth)
    if pruning is not None:
        overrides["pruning"] = pruning
    size = config["image_size"]
    size = size if isinstance(size, int) else int(size[0])
    augment_from_flags().check_image_size(size)  # before the workdir is created
    run = json.loads(json.dumps({  # as run.json holds it (lists, not tuples), to compare
        "model": FLAGS.model, "model_config": overrides, "mode": FLAGS.mode, "data": FLAGS.data,
        "class_names": list(train_split.class_names),
        "preprocessing": Preprocessor(size, FLAGS.crop_ratio).to_json(),
    }))
    if FLAGS.mode == "search":
        if FLAGS.budget_gflops is None:
            raise SpvitError("--mode=search needs --budget_gflops (the budget the phases must meet)")
        from spvit_tf.flops import model_cost

        dense = model_cost(FLAGS.model, **dense_options(overrides))
        run["search_target_fraction"] = FLAGS.budget_gflops / dense.gflops
    if os.path.isdir(os.path.join(FLAGS.workdir, "checkpoints")):
        previous = read_run(FLAGS.workdir)
        changed = [k for k in ("model", "model_config", "mode", "data") if previous.get(k) != run.get(k)]
        if changed:
            raise SpvitError(
                f"{FLAGS.workdir} holds a different run ({', '.join(changed)} differ); resume "
                "it with its own flags (flags.txt) or pass a new --workdir"
            )
    strategy = make_strategy()
    result = train(strategy, run, train_split, eval_split)
    print_summary(run, result)


if __name__ == "__main__":
    app.run(run_cli(main), flags_parser=parse_flags)
