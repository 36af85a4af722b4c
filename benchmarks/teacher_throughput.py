"""Images per second of the CIFAR-10 teacher's input pipeline alone and of its training step.

    python benchmarks/teacher_throughput.py [--steps=30] [--archs=128x6,...] [--log=F]

Answers two questions before a multi-hour teacher run: does the input pipeline bound the
step (each augmentation recipe's tf.data throughput, decoding included, against the training
step's), and what does each candidate width x depth cost per image (a dense DeiT for 32x32
with 4x4 patches, XLA-compiled AdamW step, batch --batch_size). The training step is timed on
a fixed in-memory batch, so it excludes the input pipeline. Appends its table to --log; check
`uptime` first, other processes on the 2 cores halve both numbers.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("data", "folder:../shared/data/cifar10-jpeg.tar.gz", "Training images.")
flags.DEFINE_integer("batch_size", 128, "Global batch.")
flags.DEFINE_integer("steps", 30, "Timed training steps per architecture (after 3 warm-up).")
flags.DEFINE_integer("batches", 60, "Timed input batches per recipe.")
flags.DEFINE_list("archs", ["128x6", "128x9", "192x6"], "WIDTHxDEPTH candidates (heads: width/32).")
flags.DEFINE_string("log", "benchmarks/teacher_throughput.log", "Log appended to ('' : none).")
FLAGS = flags.FLAGS

RECIPES = {
    "resized+randaugment (old)": dict(crop="resized", min_crop_scale=0.35, randaugment_ops=1,
                                      randaugment_factor=0.5, mixup_alpha=0, cutmix_alpha=0),
    "pad+flip": dict(crop="pad", randaugment_ops=0, mixup_alpha=0, cutmix_alpha=0),
    "pad+flip+rotate+jitter+erasing": dict(crop="pad", randaugment_ops=0, rotation_degrees=10,
                                           color_jitter=0.2, erasing=0.25, mixup_alpha=0,
                                           cutmix_alpha=0),
}


def input_rate(split, augment):
    """Images/s of the training pipeline alone (first batch excluded: it fills the buffers)."""
    from spvit_tf import data
    from spvit_tf.preprocessing import Preprocessor

    ds = data.to_dataset(split, preprocessor=Preprocessor(32, crop_ratio=1.0),
                         batch_size=FLAGS.batch_size, training=True, augment=augment)
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        next(it)
    return FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start)


def step_rate(width, depth):
    """Images/s of one XLA-compiled dense training step (forward, backward, AdamW)."""
    import keras
    import tensorflow as tf

    from spvit_tf.models import create_model

    model = create_model("deit_tiny_patch16_224", image_size=32, patch_size=4, num_classes=10,
                         embed_dim=width, depth=depth, num_heads=width // 32, drop_path_rate=0.1)
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.05)
    optimizer.build(model.trainable_weights)
    images = tf.random.normal((FLAGS.batch_size, 32, 32, 3))
    labels = tf.random.uniform((FLAGS.batch_size,), 0, 10, tf.int32)

    @tf.function(jit_compile=True)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    for _ in range(3):
        step(images, labels).numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        loss = step(images, labels)
    loss.numpy()
    rate = FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)
    return rate, model.count_params()


def main(argv):
    del argv
    from spvit_tf import data
    from spvit_tf.benchmark import append_log, log_header
    from spvit_tf.flops import model_cost

    lines = [log_header(f"batch {FLAGS.batch_size}")]
    split = data.load_split(FLAGS.data, data.TRAIN)
    for name, options in RECIPES.items():
        rate = input_rate(split, data.Augment(**options))
        lines.append(f"input  {name:<34} {rate:8.0f} img/s")
        print(lines[-1], flush=True)
    for arch in FLAGS.archs:
        width, depth = (int(v) for v in arch.split("x"))
        rate, params = step_rate(width, depth)
        gflops = model_cost("deit_tiny_patch16_224", image_size=32, patch_size=4, num_classes=10,
                            embed_dim=width, depth=depth, num_heads=width // 32).gflops
        epoch_min = 50_000 / rate / 60
        lines.append(f"step   dense {arch:<8} {params / 1e6:5.2f} M params {gflops:.4f} GFLOPs "
                     f"{rate:8.0f} img/s  {epoch_min:5.1f} min/epoch")
        print(lines[-1], flush=True)
    if FLAGS.log:
        append_log(FLAGS.log, lines)


if __name__ == "__main__":
    app.run(main)
