"""Images per second of the CIFAR-10 fine-tune's training step, per method and loss term.

    python benchmarks/finetune_step.py [--steps=30] [--variants=spvit,dense,...] [--log=F]

The results round trains twelve fine-tunes of `configs/cifar10_finetune.cfg` (results/cifar10/
run.sh), so the step's cost decides how many sessions it takes. This times the step the
trainer runs (`Trainer.train_step`: XLA-compiled, the run's optimizers and loss) on one fixed
batch from the embedded CIFAR-10 subset, so the input pipeline is excluded, for:
  dense          the teacher's step (no teacher forward, no selectors): the reference cost
  <mode>         a method as run.sh trains it: the dense teacher's forward for distillation,
                 the student with its pruning (shapes stay static in training: masks, not
                 gathers), logits and token distillation, the keep-ratio term
  spvit_nodistill  SPViT without a teacher (no distillation terms): what distillation costs
  spvit_frozen   SPViT in its selectors-only phase (the backbone's gradients are still
                 computed: they reach the selectors through the later blocks)
Teacher and student start from one random dense model's weights (values do not change the
cost). Appends its table to --log; check `uptime` first: other processes halve the numbers.
"""

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("steps", 30, "Timed steps per variant (after 3 warm-up steps).")
flags.DEFINE_list("variants", ["dense", "spvit", "spvit_nodistill", "spvit_frozen", "hard",
                               "evit", "static"], "What to time (see the module docstring).")
flags.DEFINE_string("config", "configs/cifar10_finetune.cfg", "The fine-tune flagfile.")
flags.DEFINE_float("budget_gflops", 0.054, "The pruned methods' budget (run.sh's main one).")
flags.DEFINE_string("log", "benchmarks/finetune_step.log", "Log appended to ('' : none).")
FLAGS = flags.FLAGS


def variant_argv(variant, weights, workdir):
    mode = variant.split("_")[0]
    argv = [f"--flagfile={FLAGS.config}", f"--mode={mode}", f"--workdir={workdir}",
            "--data=cifar10_embedded"]
    if mode == "dense":
        return argv + ["--drop_path=0.1"]  # the teacher's recipe
    argv.append(f"--budget_gflops={FLAGS.budget_gflops}")
    if variant == "spvit_nodistill":  # the student still starts from the dense weights
        return argv + [f"--checkpoint={weights}", "--distill_weight=0", "--token_weight=0"]
    return argv + [f"--checkpoint={weights}"]


def step_rate(variant, weights, workdir):
    """Images/s of `variant`'s compiled training step on one fixed batch."""
    from spvit_tf import data, train
    from spvit_tf.preprocessing import Preprocessor
    from spvit_tf.train_config import TrainConfig

    config = TrainConfig.from_argv(variant_argv(variant, weights, workdir))
    split = data.load_split(data.parse_source(config.data), data.TRAIN)
    run = train.describe_run(config, split)
    strategy = train.make_strategy(config)
    trainer = train.Trainer(config, strategy, run, len(split))
    if variant == "spvit_nodistill":
        trainer.teacher = None  # --checkpoint also names the teacher; here there is none
    dataset = data.to_dataset(split, batch_size=config.batch_size, training=True,
                              preprocessor=Preprocessor.from_run(run), augment=config.augment())
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    backbone = variant != "spvit_frozen"
    for _ in range(3):
        float(trainer.train_step(batch, backbone)["total"])
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        metrics = trainer.train_step(batch, backbone)
    float(metrics["total"])
    return FLAGS.steps * config.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    import keras

    from spvit_tf.benchmark import append_log, log_header
    from spvit_tf.models import create_model
    from spvit_tf.train_config import TrainConfig

    base = TrainConfig.from_argv([f"--flagfile={FLAGS.config}", "--workdir=unused"])
    options = dict(o.split("=") for o in base.model_options)
    lines = [log_header(f"batch {base.batch_size}", FLAGS.config,
                        f"budget {FLAGS.budget_gflops} GFLOPs")]
    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        keras.utils.set_random_seed(0)
        dense = create_model(base.model, image_size=base.image_size, num_classes=10,
                             **{k: int(v) for k, v in options.items()})
        weights = os.path.join(tmp, "dense.weights.h5")
        dense.save_weights(weights)
        reference = None
        for variant in FLAGS.variants:
            rate = step_rate(variant, weights, os.path.join(tmp, variant))
            reference = reference or (rate if variant == "dense" else None)
            relative = f"  {rate / reference:5.2f}x dense" if reference else ""
            lines.append(f"{variant:<16} {rate:7.1f} img/s  {50_000 / rate / 60:5.1f} min/epoch"
                         f"{relative}")
            print(lines[-1], flush=True)
    if FLAGS.log:
        append_log(FLAGS.log, lines)


if __name__ == "__main__":
    app.run(main)
