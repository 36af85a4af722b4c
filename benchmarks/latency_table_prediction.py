"""How closely a host latency table predicts a whole model's measured latency, per format.

    python benchmarks/latency_table_prediction.py [--formats=fp32,int8] [--image_size=112]
        [--runs=100] [--warmup=10] [--rounds=5] [--threads=1] [--tokens=auto] [--log=F]

`spvit_tf.budget` prices a schedule as the sum of a latency table's parts (each block at its
token count, the selectors and selection steps, the patch embedding and the head), so a
latency budget is only as good as that sum. For each --formats entry this exports the parts
of DeiT-Ti (its widths and depth; at --image_size=112, 7x7 patches keep the run short) as
`spvit_tf.latency_table` does, plus the whole dense model and the whole SPViT model at keep
ratios 0.7/0.49/0.343 at blocks 3/6/9, times all of them in the same interleaved rounds
(`latency_table.time_host`), assembles the table and prints each whole model's predicted
and measured ms and the relative error. Timing parts and whole models in the same rounds
makes a burst of load shift both sides alike, but a busy host still moves the error: check
`uptime` first. Appends its lines to --log.

The claim used to be a test asserting the error within 10%, which failed at random on a busy
2-core machine; the tests now check the table's arithmetic on hand-written timings, and this
script measures and logs how well the sum predicts a real model.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_list("formats", ["fp32", "int8"], "Export formats the table and models are timed in.")
flags.DEFINE_integer("image_size", 112, "Input side of DeiT-Ti (112: 7x7 patches).")
flags.DEFINE_integer("runs", 100, "Timed invokes per graph and round.")
flags.DEFINE_integer("warmup", 10, "Untimed invokes before the timed ones.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds; each graph keeps the median.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_string("tokens", "auto", "The table's sequence lengths (latency_table --tokens).")
flags.DEFINE_string("log", "benchmarks/latency_table_prediction.log",
                    "Log appended to ('' : none).")
FLAGS = flags.FLAGS

MODEL = "deit_tiny_patch16_224"
WHOLE = {"dense": None,
         "pruned": dict(method="spvit", locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))}


def whole_graph(config, pruning):
    """The whole model as one batch-1 graph, with the table's trained-like weights."""
    import keras

    import spvit_tf
    from spvit_tf import latency_table

    model = latency_table.trained_like(spvit_tf.create_model(MODEL, **config, pruning=pruning))
    images = keras.Input((config["image_size"], config["image_size"], 3), batch_size=1)
    return keras.Model(images, model(images))


def predictions(fmt, folder):
    """{name: (predicted ms, measured ms)} of the whole models, and the host description."""
    import spvit_tf
    from spvit_tf import budget, flops, latency_table

    config = dict(image_size=FLAGS.image_size)
    model = latency_table.trained_like(spvit_tf.create_model(MODEL, **config))
    graphs, stages = latency_table.component_graphs(model, FLAGS.tokens)
    for name, pruning in WHOLE.items():
        graphs[f"whole_{name}"] = whole_graph(config, pruning)
    paths = latency_table.write_graphs(graphs, folder, fmt)
    times, device = latency_table.time_host(paths, FLAGS.threads, FLAGS.runs, FLAGS.warmup,
                                            FLAGS.rounds)
    table = latency_table.assemble(MODEL, config, stages, times, "host", device, FLAGS.threads,
                                   FLAGS.runs, FLAGS.rounds, fmt)
    out = {}
    for name, pruning in WHOLE.items():
        arch = flops.architecture(MODEL, **config, pruning=pruning)
        out[name] = budget.architecture_latency_ms(table, arch), times[f"whole_{name}"]
    return out, device


def main(argv):
    del argv
    from spvit_tf.benchmark import append_log, log_header

    logging.set_verbosity(logging.WARNING)  # the converter logs every SavedModel step at INFO

    lines = [log_header(f"{MODEL} at {FLAGS.image_size}px", f"tokens {FLAGS.tokens}",
                        f"{FLAGS.threads} thread(s)", f"{FLAGS.rounds} rounds x {FLAGS.runs} runs")]
    print(lines[0], flush=True)
    for fmt in FLAGS.formats:
        with tempfile.TemporaryDirectory() as folder:
            results, _ = predictions(fmt, folder)
        for name, (predicted, measured) in results.items():
            lines.append(f"{fmt:<6} {name:<6} predicted {predicted:7.3f} ms  measured "
                         f"{measured:7.3f} ms  error {predicted / measured - 1:+6.1%}")
            print(lines[-1], flush=True)
    if FLAGS.log:
        append_log(FLAGS.log, lines)


if __name__ == "__main__":
    app.run(main)
