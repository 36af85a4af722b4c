"""Pruned/dense host latency ratio next to the FLOPs ratio (TFLite, batch 1).

    python benchmarks/latency_vs_flops.py [--model=deit_tiny_patch16_224] [--threads=1,2]
        [--format=fp32] [--rhos=0.6,0.65,0.7,0.75,0.8] [--runs=40] [--rounds=10] [--align=3]

Exports the dense model and, for each geometric schedule ρ, ρ², ρ³ at blocks 3/6/9 (ρ=0.7
is DeiT's default 0.7/0.49/0.343), SPViT and the `static` baseline (no scorer: the floor a
selector adds to), plus the dense model at a smaller input (--fewer_tokens_size: fewer tokens
in every block and no pruning at all: what running fewer tokens costs on this CPU). All with
the exporter's serving graph, timed by the host benchmark: a fresh process per model, thread
count and round, --rounds interleaved rounds of --runs invokes, the median of the per-round
medians, so that the host's drift over minutes hits every model alike.

Prints each model's latency ratio to the dense model next to its FLOPs ratio, then per
method the mean of latency/FLOPs over the schedules. One schedule alone says little: the
CPU's matrix kernels work in tiles of rows (XNNPACK's f32 GEMM: 7 rows on AVX-512 hosts, 4-6
on Arm), so one token past a multiple of the tile costs a whole extra tile in every block of
the stage, a few percent of a pruned model's latency that moves with the exact token counts.
The mean over several schedules is the method's own overhead.

With --align=N each schedule is also timed after `spvit_tf.budget.align_to_latency_steps`
(up to N fewer tokens per location where they would cost a whole tile), from a host latency
table this script measures first in --format at the first --threads count, at every sequence
length near the schedules' (`latency_table --tokens=auto,A-B,...`): the latency-aware counts
a user gets from `train --latency_table=... --align_to_latency_steps=N` on their target.

Random weights, seeded, with every weight perturbed (`latency_table.trained_like`: a fresh
model's zero biases and unit norm scales would fold away with their ops, which a trained
model runs). --format=int8 times the exporter's phone int8 (int8 weighted ops, float
elsewhere; calibrated on random images), aligned with an int8 latency table.
"""

import os
import pathlib
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model", "deit_tiny_patch16_224", "Registered model name.")
flags.DEFINE_list("threads", ["1"], "Interpreter thread counts.")
flags.DEFINE_list("rhos", ["0.6", "0.65", "0.7", "0.75", "0.8"], "Geometric schedules ρ.")
flags.DEFINE_list("methods", ["spvit", "static"], "Pruning methods timed at each schedule.")
flags.DEFINE_integer("runs", 40, "Timed invokes per model and round.")
flags.DEFINE_integer("rounds", 10, "Interleaved timing rounds.")
flags.DEFINE_enum("format", "fp32", ("fp32", "int8"), "Export format timed.")
flags.DEFINE_integer("fewer_tokens_size", 176, "Input side of the dense fewer-tokens model.")
flags.DEFINE_integer("align", 3, "Also time each schedule aligned to latency steps, dropping "
                     "up to this many tokens per location (0: off).")
FLAGS = flags.FLAGS
LOCATIONS = (3, 6, 9)


def schedules():
    """(label, method, keep ratios) of every pruned schedule."""
    out = []
    for rho in map(float, FLAGS.rhos):
        ratios = tuple(round(rho**j, 3) for j in range(1, len(LOCATIONS) + 1))
        out += [(f"{method} ρ={rho:g}", method, ratios) for method in FLAGS.methods]
    return out


def aligned_schedules(pruned, num_threads):
    """The schedules moved off the latency steps of a host table timed around their lengths."""
    from spvit_tf import budget, flops, latency_table

    trim = FLAGS.align
    lengths = {n for _, method, ratios in pruned for n in flops.model_cost(
        FLAGS.model, pruning=dict(method=method, locations=LOCATIONS, keep_ratios=ratios)
    ).tokens_per_block}
    spec = ",".join(["auto"] + [f"{n - trim - 1}-{n}" for n in sorted(lengths)])
    table = latency_table.measure_table(FLAGS.model, num_threads=num_threads, tokens=spec,
                                        fmt=FLAGS.format)
    out = []
    for label, method, ratios in pruned:
        aligned = budget.align_to_latency_steps(table, FLAGS.model, ratios, locations=LOCATIONS,
                                                method=method, max_trim=trim)
        if aligned.keep_ratios != ratios:
            out.append((f"{label} aligned", method, aligned.keep_ratios))
    return out


def variants():
    """(label, method, create_model options) of every timed model, dense first."""
    pruned = schedules()
    if FLAGS.align:
        pruned += aligned_schedules(pruned, int(FLAGS.threads[0]))
    out = [("dense", None, {})]
    for label, method, ratios in pruned:
        pruning = dict(method=method, locations=LOCATIONS, keep_ratios=ratios)
        out.append((label, method, dict(pruning=pruning)))
    size = FLAGS.fewer_tokens_size
    return out + [(f"dense@{size}px", None, dict(image_size=size))]


def main(argv):
    import keras
    import numpy as np

    import spvit_tf
    from spvit_tf import benchmark, flops, latency_table
    from spvit_tf.tflite.convert import convert, serving_model

    folder = pathlib.Path(tempfile.mkdtemp())
    models = variants()
    paths, costs = [], []
    for i, (_, _, options) in enumerate(models):
        keras.utils.set_random_seed(0)
        model = latency_table.trained_like(spvit_tf.create_model(FLAGS.model, **options))
        size = model.image_size[0]
        calibration = np.random.default_rng(0).normal(size=(8, size, size, 3)).astype(np.float32)
        graph = serving_model(model, "float")
        paths.append(folder / f"model_{i}.tflite")
        paths[-1].write_bytes(convert(graph, FLAGS.format, calibration=calibration))
        costs.append(flops.model_cost(model).gflops)
    threads = [int(t) for t in FLAGS.threads]
    rows = benchmark.run_all(paths, threads, ["cpu"], FLAGS.runs, 10, 0, FLAGS.rounds)
    print(f"# {FLAGS.model} {FLAGS.format}, batch 1, {FLAGS.rounds} rounds x {FLAGS.runs} runs, "
          f"{rows[0].device}")
    for num_threads in threads:
        dense, *others = (r.median_ms for r in rows if r.num_threads == num_threads)
        ratio = {}
        for (label, _, options), ms, cost in zip(models[1:], others, costs[1:]):
            latency, flop = ms / dense, cost / costs[0]
            ratio[label] = latency / flop
            ratios = options.get("pruning", {}).get("keep_ratios", "")
            print(f"threads={num_threads} {label:22s} {ms:6.2f} ms (dense {dense:.2f}): latency "
                  f"ratio {latency:.3f}, FLOPs ratio {flop:.3f} ({cost:.3f}/{costs[0]:.3f} "
                  f"GFLOPs), latency/FLOPs {latency / flop:.3f} {ratios}")
        groups = {method: [label for label, m, _ in schedules() if m == method]
                  for method in FLAGS.methods}
        for method, labels in list(groups.items()):
            if FLAGS.align:  # a schedule alignment leaves alone counts as itself
                groups[f"{method} aligned"] = [f"{label} aligned" if f"{label} aligned" in ratio
                                               else label for label in labels]
        groups[models[-1][0]] = [models[-1][0]]
        for group, labels in groups.items():
            values = [ratio[label] for label in labels]
            print(f"threads={num_threads} {group}: latency/FLOPs mean "
                  f"{statistics.fmean(values):.3f} over {len(values)} schedule(s), range "
                  f"{min(values):.3f}-{max(values):.3f}")


if __name__ == "__main__":
    app.run(main)
