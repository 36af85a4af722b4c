"""Pruned/dense host latency ratio next to the FLOPs ratio (fp32 TFLite, batch 1).

    python benchmarks/latency_vs_flops.py [--model=deit_tiny_patch16_224] [--threads=1] [--format=int8]

Exports the dense model, SPViT at DeiT's default schedule (3/6/9, 0.7/0.49/0.343) and the
`static` baseline at the same token counts (no scorer: the floor a selector adds to) with the
exporter's serving graph, times them with the host benchmark (fresh process each, median of
--runs) and prints each pruned/dense latency ratio next to its FLOPs ratio. Random weights:
latency does not depend on them (int8 is calibrated on random images for the same reason).
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
FLAGS = flags.FLAGS
SCHEDULE = dict(locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))
METHODS = ("spvit", "static")


def main(argv):
    import spvit_tf
    from spvit_tf import benchmark, export, flops

    import numpy as np

    folder = pathlib.Path(tempfile.mkdtemp())
    size = spvit_tf.model_config(FLAGS.model)[1]["image_size"]
    calibration = np.random.default_rng(0).normal(size=(8, size, size, 3)).astype(np.float32)
    paths, costs = [], []
    variants = [("dense", None)] + [(m, dict(SCHEDULE, method=m)) for m in METHODS]
    for stem, pruning in variants:
        model = spvit_tf.create_model(FLAGS.model, pruning=pruning)
        graph = export.serving_model(model, "float", mean=0.0, std=1.0)
        path = folder / f"{stem}.tflite"
        path.write_bytes(export.convert(graph, FLAGS.format, calibration=calibration))
        paths.append(path)
        costs.append(flops.model_cost(model).gflops)
    rows = benchmark.run_all(paths, [int(t) for t in FLAGS.threads], ["cpu"], FLAGS.runs, 10, 0)
    for threads in sorted({row.num_threads for row in rows}):
        dense, *pruned = (r.median_ms for r in rows if r.num_threads == threads)
        for method, ms, cost in zip(METHODS, pruned, costs[1:]):
            latency, flop = ms / dense, cost / costs[0]
            print(f"{FLAGS.model} {FLAGS.format} threads={threads}: dense {dense:.2f} ms, {method} {ms:.2f} ms; "
                  f"latency ratio {latency:.3f}, FLOPs ratio {flop:.3f} "
                  f"({cost:.3f}/{costs[0]:.3f} GFLOPs), latency/FLOPs {latency / flop:.3f}")


if __name__ == "__main__":
    app.run(main)
