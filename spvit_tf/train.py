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

The settings are one `TrainConfig` (train_config.py; the flags are generated from it), and
`fit(config)` is the whole run, callable from Python as the CLI calls it. `loss_step` is the
pure loss of one replica's batch; `Trainer` owns the models, optimizers, the distributed step
and the checkpoint; `--mode=search`'s pieces live in search.py.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time

from absl import app, flags, logging

from spvit_tf import train_config
from spvit_tf.errors import SpvitError, first_line, parse_flags, run_cli
from spvit_tf.preprocessing import Preprocessor
from spvit_tf.train_config import TrainConfig, dense_options, parse_model_options, resolve_pruning

FLAGS = flags.FLAGS


def split_cpu(replicas):
    """`replicas` logical CPU devices; only possible before TensorFlow initialises its runtime."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError:
        raise SpvitError("--cpu_replicas splits the CPU before TensorFlow starts, and this "
                         "process already started it: run the CLI (python -m spvit_tf.train)"
                         ) from None


def make_strategy(config):
    import tensorflow as tf

    if config.strategy == "mirrored":
        cpus = config.cpu_replicas and [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus or None)
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or "")
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


def loss_step(config, student, teacher, images, labels, *, target_ratios, global_batch,
              replicas=1, search_fraction=None):
    """The loss of one replica's batch, a pure function of the models and the batch:
    (the scalar to differentiate, scaled to the global batch; the per-image terms; the
    student's selector records). `search_fraction`: the FLOPs fraction `--mode=search`
    drives the sampled decisions to."""
    import tensorflow as tf

    from spvit_tf import search
    from spvit_tf.losses import spvit_loss

    out = student.forward(images, training=True)
    teacher_out = None if teacher is None else teacher.forward(images, training=False)
    terms = spvit_loss(
        out, labels, teacher_out,
        target_ratios=target_ratios,
        distill_weight=config.distill_weight,
        token_weight=config.token_weight,
        ratio_weight=config.ratio_weight if target_ratios else 0.0,
        label_smoothing=config.label_smoothing,
        ratio_loss=config.ratio_loss,
    )
    total = tf.reduce_sum(terms["total"]) / global_batch
    if config.mode == "search":
        budget_term = config.ratio_weight * tf.reduce_mean(
            search.budget_loss(student, out.records, search_fraction)
        )
        total += budget_term / replicas
        terms["ratio"] = tf.fill(tf.shape(terms["total"]), budget_term)
    return total, terms, out.records


class Trainer:
    """Models, optimizers, the distributed step and the checkpoint of one run."""

    def __init__(self, config, strategy, run, train_size):
        import keras
        import tensorflow as tf

        from spvit_tf.models import create_model
        from spvit_tf.schedules import CappedSchedule

        self.config, self.strategy, self.run = config, strategy, run
        self.global_batch = config.batch_size
        self.steps_per_epoch = max(train_size // self.global_batch, 1)
        self.total_steps = config.steps or config.epochs * self.steps_per_epoch
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)
            self.student = create_model(
                run["model"], checkpoint=config.checkpoint or None, **run["model_config"]
            )
            self.teacher = self._teacher(create_model)
            pruner = self.student.pruner
            self.selector_vars = list(pruner.trainable_weights) if pruner is not None else []
            selector_ids = {id(v) for v in self.selector_vars}
            self.backbone_vars = [
                v for v in self.student.trainable_weights if id(v) not in selector_ids
            ]
            # The selectors-only phase the recipe asks for; a method without selectors has none.
            self.scheduled_frozen_steps = min(config.freeze_backbone_steps or round(
                config.freeze_backbone_epochs * self.steps_per_epoch), self.total_steps)
            self.frozen_steps = self.scheduled_frozen_steps if self.selector_vars else 0
            peak = config.lr * self.global_batch / 512
            # Every pruned mode fine-tunes its backbone at SPViT's official rate, with or
            # without selectors, so methods compared share one recipe: nothing while frozen,
            # then min(lr x backbone_lr_scale, the selectors' schedule at the same step).
            if pruner is not None:
                frozen = self.frozen_steps
                backbone = CappedSchedule(self._schedule(peak), peak * config.backbone_lr_scale,
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
        self.checkpoint_dir = os.path.join(config.workdir, "checkpoints")
        own_dir = self.checkpoint_dir if self.is_chief else os.path.join(
            config.workdir, f".worker-{task}-checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, own_dir, max_to_keep=3)
        self.target_ratios = (
            list(pruner.config.keep_ratios) if pruner is not None and config.mode != "search" else None
        )
        self._steps = {}

    def _schedule(self, peak):
        """Linear warm-up to `peak`, then cosine decay to --min_lr at the run's last step."""
        import keras

        steps = max(self.total_steps, 1)
        warmup = min(int(self.config.warmup_epochs * self.steps_per_epoch), steps // 2)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(steps - warmup, 1),
            alpha=min(self.config.min_lr / peak, 1.0) if peak else 0.0,
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )

    def _adamw(self, schedule):
        import keras

        return keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=self.config.weight_decay,
            use_ema=self.config.ema_decay > 0,
            ema_momentum=self.config.ema_decay or 0.99,
        )

    def _teacher(self, create_model):
        """The dense teacher of the pruned modes, frozen; None when there is nothing to learn from."""
        if self.config.mode == "dense":
            return None
        weights = self.config.teacher_checkpoint or self.config.checkpoint
        if not weights:
            logging.warning("no --teacher_checkpoint or --checkpoint: training without distillation")
            print("warning: no teacher weights (--teacher_checkpoint/--checkpoint): "
                  "distillation terms are off")
            return None
        from spvit_tf.checkpoint import load_checkpoint

        options = dense_options(self.run["model_config"])
        name = self.config.teacher_model or self.run["model"]
        teacher = create_model(name, **options)
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

        with tf.GradientTape() as tape:
            total, terms, records = loss_step(
                self.config, self.student, self.teacher, images, labels,
                target_ratios=self.target_ratios, global_batch=self.global_batch,
                replicas=self.strategy.num_replicas_in_sync,
                search_fraction=self.run.get("search_target_fraction"),
            )
        groups = self.groups if train_backbone else self.groups[1:]
        variables = [v for _, group in groups for v in group]
        grads = tape.gradient(total, variables)
        start = 0
        for optimizer, group in groups:
            optimizer.apply_gradients(zip(grads[start:start + len(group)], group))
            start += len(group)
        metrics = {k: tf.reduce_sum(v) / self.global_batch for k, v in terms.items()}
        metrics["total"] = total
        for j, record in enumerate(records):
            metrics[f"keep_{j}"] = tf.reduce_mean(record["decision"]) / self.strategy.num_replicas_in_sync
        return metrics

    def train_step(self, batch, train_backbone):
        """One distributed step; compiled once per value of `train_backbone`."""
        import tensorflow as tf

        if train_backbone not in self._steps:
            replica = tf.function(
                lambda images, labels: self.replica_step(images, labels, train_backbone),
                jit_compile=self.config.jit_compile,
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


class Stopped(Exception):
    """SIGTERM reached a run: it saved `checkpoint` and stopped; the same config resumes."""

    def __init__(self, checkpoint):
        super().__init__(f"SIGTERM: saved {checkpoint}; rerun the same command to resume")


class _StopRequest:
    """Set by SIGTERM: the loop saves a checkpoint after the current step and stops."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True


def train(trainer, train_split, eval_split, stop):
    """The run: restore, train, evaluate; returns the final evaluation dict."""
    import tensorflow as tf

    from spvit_tf import data

    config, run = trainer.config, trainer.run
    trainer.checkpoint.restore(trainer.latest_checkpoint()).expect_partial()
    step = int(trainer.step.numpy())  # a MirroredVariable has no __int__
    metrics_path = os.path.join(config.workdir, "metrics.jsonl")
    if step:
        print(f"resuming {config.workdir} from step {step} ({trainer.latest_checkpoint()})")
    if trainer.is_chief:
        trim_log(metrics_path, step)
    unreadable = data.Unreadable(train_split)
    preprocessor = Preprocessor.from_run(run)
    eval_data = data.to_dataset(eval_split, preprocessor=preprocessor, batch_size=config.batch_size,
                                training=False, subset_seed=0 if config.eval_examples else None)
    chief = trainer.is_chief  # only the chief writes logs and the final model
    writer = (tf.summary.create_file_writer(os.path.join(config.workdir, "tb")) if chief
              else tf.summary.create_noop_writer())
    with open(metrics_path if chief else os.devnull, "a") as log_file, writer.as_default():
        def log(record):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            for key, value in record.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value, step=record["step"])

        try:
            step = _loop(trainer, train_split, eval_data, preprocessor, step, log, stop,
                         unreadable)
        except _peer_errors() as error:
            if config.strategy != "multi_worker":
                raise
            raise SpvitError(
                f"a peer worker stopped or cannot be reached ({type(error).__name__}: "
                f"{first_line(error, 160)}); "
                f"the last checkpoint ({trainer.latest_checkpoint()}) is intact: restart every "
                "worker with the same command to resume"
            ) from None
    return _finish(trainer, eval_data, step, metrics_path, len(unreadable.named))


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


def _loop(trainer, train_split, eval_data, preprocessor, step, log, stop, unreadable):
    """Trains from `step` to the end of the run (or a SIGTERM); returns the last step.

    Unreadable training images are skipped (named as met, counted at each epoch's end); a
    second pass over the split fills an epoch they left short of its batches, so the step
    count, and with it the schedule and resuming, stays that of the readable split."""
    import keras

    from spvit_tf import data
    from spvit_tf.evaluate import accuracy

    config, strategy = trainer.config, trainer.strategy
    augment = config.augment()
    spe, total = trainer.steps_per_epoch, trainer.total_steps
    while step < total:
        epoch, offset = divmod(step, spe)
        dataset = data.to_dataset(
            train_split, batch_size=config.batch_size, training=True,
            shuffle_seed=config.seed + epoch, skip_batches=offset, preprocessor=preprocessor,
            augment=dataclasses.replace(augment, seed=config.seed + epoch),  # fresh draws
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
                seen += config.batch_size
            if not math.isfinite(metrics["total"]):
                raise SpvitError(
                    f"the loss became {metrics['total']} at step {step}: run stopped, the last "
                    f"good checkpoint ({trainer.latest_checkpoint()}) is intact; lower "
                    "--lr or check the data"
                )
            speed = seen / max(time.perf_counter() - started, 1e-9)
            bar.update(step - epoch * spe, [("loss", metrics["total"]), ("img/s", speed)])
            if step % config.log_every == 0 or step == total:
                log({"step": step, "epoch": epoch, **trainer.learning_rates(step),
                     "images_per_sec": speed, **metrics})
            if stop.requested:
                trainer.save(step)
                print()
                raise Stopped(trainer.latest_checkpoint())
            if step % config.checkpoint_every == 0 or step % spe == 0 or step == total:
                trainer.save(step)
            if step % spe == 0 or step == total:
                break
        else:  # two passes over the split did not fill the epoch
            raise SpvitError(
                f"{config.data}: the training split has too few readable images for an epoch of "
                f"{spe} batches of {config.batch_size} ({unreadable.end_epoch()} of its "
                f"{len(train_split)} unreadable, named above); remove or replace them")
        done_epoch = math.ceil(step / spe)
        skipped = unreadable.end_epoch()
        if skipped:
            print(f"epoch {done_epoch}: skipped {skipped} unreadable training image(s), named "
                  "above", file=sys.stderr)
        if config.eval_every and done_epoch % config.eval_every == 0 and step < total:
            top1, top5, _ = accuracy(trainer.student, eval_data, config.eval_examples)
            print(f"epoch {done_epoch}: top-1 {top1:.4f} top-5 {top5:.4f}")
            log({"step": step, "epoch": done_epoch, "eval_top1": top1, "eval_top5": top5})
    return step


def _finish(trainer, eval_data, step, metrics_path, unreadable=0):
    """The final evaluation; the chief also writes the final model, eval.json and log line.
    `unreadable`: how many training images the run skipped (recorded when any were)."""
    from spvit_tf import search
    from spvit_tf.evaluate import accuracy
    from spvit_tf.flops import model_cost
    from spvit_tf.stats import encode_correct, eval_order
    from spvit_tf.workdir import FINAL_WEIGHTS, atomic_path, atomic_write

    config, run = trainer.config, trainer.run
    for optimizer, variables in trainer.groups:
        if optimizer.use_ema:
            optimizer.finalize_variable_values(variables)
    top1, top5, seen, correct = accuracy(trainer.student, eval_data, config.eval_examples,
                                         per_image=True)
    cost = model_cost(trainer.student)
    result = {
        "step": step, "eval_top1": top1, "eval_top5": top5, "eval_examples": seen,
        "top1_correct": encode_correct(correct),
        "eval_order": eval_order(run["data"], config.eval_examples),
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
    if config.mode == "search":
        result["layer_keep_ratios"], fragment = search.schedule(
            trainer.student, run["model"], run["model_config"], eval_data,
            budget_gflops=config.budget_gflops, tolerance=config.search_tolerance)
        if trainer.is_chief:
            atomic_write(os.path.join(config.workdir, "schedule.cfg"), fragment)
        print(f"searched schedule (pass to the real run):\n{fragment}")
    if not trainer.is_chief:
        return result
    with atomic_path(os.path.join(config.workdir, FINAL_WEIGHTS)) as tmp:
        trainer.student.save_weights(tmp)
    atomic_write(os.path.join(config.workdir, "final", "eval.json"), json.dumps(result, indent=2))
    log_record = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    with open(metrics_path, "a") as log_file:
        log_file.write(json.dumps({"final": True, **log_record}) + "\n")
    return result


def describe_run(config, train_split):
    """The run.json dict of `config` on this data: the model, its create_model overrides
    (pruning resolved from the ratios or the budget), the classes and the preprocessing."""
    from spvit_tf.geometry import schedule_from_config
    from spvit_tf.models import model_config
    from spvit_tf.workdir import run_name

    overrides = parse_model_options(config.model_options)
    overrides.update(num_classes=len(train_split.class_names), drop_path_rate=config.drop_path)
    if config.image_size:
        overrides["image_size"] = config.image_size
    model_cls, full = model_config(config.model, **overrides)
    depth = schedule_from_config(model_cls.family, {**full, "pruning": None}).depth
    pruning = resolve_pruning(config, overrides, depth)
    if pruning is not None:
        overrides["pruning"] = pruning
    size = full["image_size"]
    budget = ({"gflops": config.budget_gflops} if config.budget_gflops is not None else
              {"ms": config.budget_ms} if config.budget_ms is not None else None)
    run = json.loads(json.dumps({  # as run.json holds it (lists, not tuples), to compare
        "model": config.model, "model_config": overrides, "mode": config.mode,
        "data": config.data, "class_names": list(train_split.class_names),
        "preprocessing": Preprocessor(size if isinstance(size, int) else int(size[0]),
                                      config.crop_ratio).to_json(),
        # Who the run is, for the report and the cards to join on (not paths or flagfiles).
        "run_id": run_name(config.workdir), "method": config.mode,
        "budget": budget, "seed": config.seed,
    }))
    if config.mode == "search":
        from spvit_tf.flops import model_cost

        dense = model_cost(config.model, **dense_options(overrides))
        run["search_target_fraction"] = config.budget_gflops / dense.gflops
    return run


def fit(config):
    """Runs one training (or, with no steps, the evaluation of a training-free method) as the
    CLI does, and returns the final evaluation dict (final/eval.json's). Resumes from the
    workdir's last checkpoint. Raises `SpvitError` (one line) on bad settings or data, and
    `Stopped` after a SIGTERM saved a checkpoint."""
    from spvit_tf.workdir import (atomic_write, check_output_dir, ensure_output_dir, read_run,
                                  write_run)

    if config.workdir:  # first: TensorFlow's start-up lines on stderr would bury this one
        check_output_dir(config.workdir, "--workdir")
    config.check()
    if config.cpu_replicas:
        split_cpu(config.cpu_replicas)
    import keras

    from spvit_tf import data

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    stop, previous_handler = _StopRequest(), None
    try:
        expand = lambda path: path and os.path.expanduser(path)  # noqa: E731 (flagfiles hold ~)
        source = data.parse_source(config.data, tfds_data_dir=expand(config.data_dir),
                                   tfds_manual_dir=expand(config.manual_dir))
        train_split = data.load_split(source, data.TRAIN)
        eval_split = data.load_split(source, data.EVAL)
        if len(train_split) < config.batch_size:
            raise SpvitError(f"--batch_size={config.batch_size} is larger than the training split "
                             f"of {config.data} ({len(train_split)} images); pass a smaller batch")
        run = describe_run(config, train_split)
        config.augment().check_image_size(Preprocessor.from_run(run).image_size)
        if os.path.isdir(os.path.join(config.workdir, "checkpoints")):
            previous = read_run(config.workdir)
            changed = [k for k in ("model", "model_config", "mode", "data")
                       if previous.get(k) != run.get(k)]
            if changed:
                raise SpvitError(
                    f"{config.workdir} holds a different run ({', '.join(changed)} differ); "
                    "resume it with its own flags (flags.txt) or pass a new --workdir"
                )
        strategy = make_strategy(config)
        trainer = Trainer(config, strategy, run, len(train_split))
        # The schedule as run (for the report's setup line): steps, epochs' length, and the
        # selectors-only phase the recipe asks for (methods without selectors train no phase).
        run["training"] = {
            "examples": len(train_split), "batch_size": config.batch_size,
            "steps_per_epoch": trainer.steps_per_epoch, "steps": trainer.total_steps,
            "frozen_backbone_steps": trainer.scheduled_frozen_steps}
        # Only now that the weights and the teacher loaded is the workdir created: a bad
        # --checkpoint leaves nothing behind. The chief writes the run's files; workers share them.
        ensure_output_dir(config.workdir, "--workdir")
        if trainer.is_chief:
            write_run(config.workdir, run)
            atomic_write(os.path.join(config.workdir, "flags.txt"), config.to_flagfile())
        try:
            previous_handler = signal.signal(signal.SIGTERM, stop)
        except ValueError:  # not the main thread: SIGTERM keeps its handler
            pass
        return train(trainer, train_split, eval_split, stop)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        keras.mixed_precision.set_global_policy(policy)


def print_summary(config, result):
    rows = [
        ("model", config.model), ("mode", config.mode), ("data", config.data),
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
    rows.append(("final model", os.path.join(config.workdir, "final", "model.weights.h5")))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; options are passed as --flag=value")
    config = TrainConfig.from_flags(FLAGS)
    try:
        result = fit(config)
    except Stopped as stopped:
        print(stopped)
        sys.exit(143)
    print_summary(config, result)


if __name__ == "__main__":  # the flags exist only in the CLI: importing this module defines none
    train_config.define_flags(FLAGS)
    flags.adopt_module_key_flags(train_config)  # --help lists them as this CLI's own
    app.run(run_cli(main), flags_parser=parse_flags)
