"""Where a pruned DeiT-Ti's latency goes beyond its FLOPs (fp32 TFLite, batch 1, host).

    python benchmarks/pruning_overhead.py [--rho=0.7] [--threads=1] [--runs=40] [--rounds=10]

Two measurements, each in one fresh process with all graphs interleaved over --rounds
(`spvit_tf.latency_table.time_host`, the median of per-round medians):

1. The three methods that share a schedule ρ, ρ², ρ³ at blocks 3/6/9, random seeded
   weights: `static` (no scorer, constant selection), `hard` (SPViT's selectors, their
   top-k and gather) and `spvit` (the same plus package tokens). hard − static is what the
   selectors cost, spvit − hard what the package tokens cost; each is printed next to what
   its FLOPs would cost at the dense model's ms per GFLOP.
2. One DeiT-Ti block timed alone at every sequence length around the schedule's lengths
   (--window each side of static's): XNNPACK's GEMMs work in tiles of rows, so latency
   climbs in steps, not linearly, and a token or two can land on either side of one.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_float("rho", 0.7, "Geometric schedule ρ at blocks 3/6/9.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_integer("runs", 40, "Timed invokes per graph and round.")
flags.DEFINE_integer("rounds", 10, "Interleaved timing rounds.")
flags.DEFINE_integer("window", 4, "Sequence lengths timed each side of the schedule's.")
FLAGS = flags.FLAGS
MODEL, LOCATIONS = "deit_tiny_patch16_224", (3, 6, 9)


def write(folder, stem, keras_model):
    from spvit_tf.tflite.convert import convert

    path = folder / f"{stem}.tflite"
    path.write_bytes(convert(keras_model, "fp32"))
    return path


def main(argv):
    import keras

    import spvit_tf
    from spvit_tf import flops, latency_table
    from spvit_tf.tflite.convert import serving_model

    folder = pathlib.Path(tempfile.mkdtemp())
    ratios = tuple(round(FLAGS.rho**j, 3) for j in range(1, len(LOCATIONS) + 1))
    paths, costs, lengths = [], {}, {}
    for method in ("dense", "static", "hard", "spvit"):
        pruning = None if method == "dense" else dict(method=method, locations=LOCATIONS,
                                                      keep_ratios=ratios)
        keras.utils.set_random_seed(0)
        model = latency_table.trained_like(spvit_tf.create_model(MODEL, pruning=pruning))
        paths.append(write(folder, method, serving_model(model, "float")))
        cost = flops.model_cost(model)
        costs[method], lengths[method] = cost.gflops, cost.tokens_per_block
    times, device = latency_table.time_host(paths, FLAGS.threads, FLAGS.runs, 10, FLAGS.rounds)
    ms_per_gflop = times["dense"] / costs["dense"]
    print(f"# {MODEL} fp32 batch 1, keep ratios {ratios}, threads={FLAGS.threads}, "
          f"{FLAGS.rounds} rounds x {FLAGS.runs} runs, {device}")
    for method in ("dense", "static", "hard", "spvit"):
        stages = sorted(set(lengths[method]), reverse=True)
        print(f"{method:6s} {times[method]:6.3f} ms  {costs[method]:.4f} GFLOPs  "
              f"sequence lengths {stages}")
    for part, more, less in (("selectors (+ top-k, gather)", "hard", "static"),
                             ("package tokens", "spvit", "hard")):
        extra_ms = times[more] - times[less]
        extra_gflops = costs[more] - costs[less]
        print(f"{part}: {extra_ms:.3f} ms measured, {extra_gflops * ms_per_gflop:.3f} ms at the "
              f"dense model's {ms_per_gflop:.2f} ms/GFLOP ({extra_gflops * 1e3:.2f} MFLOPs)")

    block = latency_table.trained_like(spvit_tf.create_model(MODEL)).blocks[0]
    centres = sorted(set(lengths["static"]) - {max(lengths["static"])})
    grid = sorted({n + d for n in centres for d in range(-FLAGS.window, FLAGS.window + 1)})
    paths = [write(folder, f"block_{n}", latency_table.block_graph(block, n)) for n in grid]
    block_times, _ = latency_table.time_host(paths, FLAGS.threads, FLAGS.runs, 10, FLAGS.rounds)
    print("one block alone, sequence length: us (step from the previous length)")
    previous = None
    for n in grid:
        us = block_times[f"block_{n}"] * 1e3
        step = "" if previous is None or n - 1 != previous[0] else f" ({us - previous[1]:+.1f})"
        print(f"  {n:4d}: {us:7.1f}{step}")
        previous = (n, us)


if __name__ == "__main__":
    app.run(main)
