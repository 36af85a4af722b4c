"""Pruned/dense host latency ratio next to the FLOPs ratio (fp32 TFLite, batch 1).

    python benchmarks/latency_vs_flops.py [--model=deit_tiny_patch16_224] [--threads=1] [--format=int8]

Exports the dense model, SPViT at DeiT's default schedule (3/6/9, 0.7/0.49/0.343), the
`static` baseline at the same token counts (no scorer: the floor a selector adds to) and the
dense model itself at a smaller input (--fewer_tokens_size: about the pruned models' mean
token count in every block, no pruning at all: what running fewer tokens costs on this CPU)
with the exporter's serving graph, times them with the host benchmark (fresh process each,
median of --runs) and prints each one's latency ratio to the dense model next to its FLOPs
ratio. Random weights, seeded: fp32 latency does not depend on them. int8 latency does on
this x86 host (the weights set the quantization ranges and with them the int8 kernels'
work), so int8 ratios from random weights are indicative only; the trained models' int8
timings are in the results table.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model", "deit_tiny_patch16_224", "Registered model name.")
flags.DEFINE_list("threads", ["1"], "Interpreter thread counts.")
flags.DEFINE_integer("runs", 100, "Timed invokes per model.")
flags.DEFINE_enum("format", "fp32", ("fp32", "int8"), "Export format timed.")
flags.DEFINE_integer("fewer_tokens_size", 176, "Input side of the dense fewer-tokens model.")
FLAGS = flags.FLAGS
SCHEDULE = dict(locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))


def main(argv):
    import spvit_tf
    from spvit_tf import benchmark, export, flops

    import keras
    import numpy as np

    folder = pathlib.Path(tempfile.mkdtemp())
    small = FLAGS.fewer_tokens_size
    variants = [("dense", {}), ("spvit", dict(pruning=dict(SCHEDULE, method="spvit"))),
                ("static", dict(pruning=dict(SCHEDULE, method="static"))),
                (f"dense@{small}px", dict(image_size=small))]
    paths, costs = [], []
    for stem, options in variants:
        keras.utils.set_random_seed(0)
        model = spvit_tf.create_model(FLAGS.model, **options)
        size = model.image_size[0]
        calibration = np.random.default_rng(0).normal(size=(8, size, size, 3)).astype(np.float32)
        graph = export.serving_model(model, "float", mean=0.0, std=1.0)
        path = folder / f"{stem.replace('@', '_')}.tflite"
        path.write_bytes(export.convert(graph, FLAGS.format, calibration=calibration))
        paths.append(path)
        costs.append(flops.model_cost(model).gflops)
    rows = benchmark.run_all(paths, [int(t) for t in FLAGS.threads], ["cpu"], FLAGS.runs, 10, 0)
    for threads in sorted({row.num_threads for row in rows}):
        dense, *others = (r.median_ms for r in rows if r.num_threads == threads)
        for (stem, _), ms, cost in zip(variants[1:], others, costs[1:]):
            latency, flop = ms / dense, cost / costs[0]
            print(f"{FLAGS.model} {FLAGS.format} threads={threads}: dense {dense:.2f} ms, {stem} {ms:.2f} ms; "
                  f"latency ratio {latency:.3f}, FLOPs ratio {flop:.3f} "
                  f"({cost:.3f}/{costs[0]:.3f} GFLOPs), latency/FLOPs {latency / flop:.3f}")


if __name__ == "__main__":
    app.run(main)
