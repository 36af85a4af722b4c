"""Why the phone `int8` format keeps float islands: fully integer against int8 matmuls only.

    python benchmarks/int8_islands.py [--workdir=results/cifar10/spvit_b050] [--threads=1,2]
        [--eval_examples=2000] [--runs=100] [--rounds=5]

Exports one trained run to fp32, `dynamic` (int8 weights, float activations), `int8` (the
phone format: calibrated int8 in FULLY_CONNECTED/CONV_2D, float elsewhere) and `fpga_int8`
(every op integer: the graph `int8` used to be, apart from its uint8 I/O), then prints per
file: float ops, the XNNPACK delegate's partitions (each op outside them runs on TFLite's
own kernels), top-1 on the run's test images, agreement with the Keras model, and the host
latency (`spvit_tf.benchmark`: a fresh process per file, thread count and round; the median
of per-round medians).
"""

import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "results/cifar10/spvit_b050", "Training workdir to export.")
flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
flags.DEFINE_integer("eval_examples", 2000, "Test images for top-1 and agreement.")
flags.DEFINE_integer("runs", 100, "Timed invokes per file, thread count and round.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
FLAGS = flags.FLAGS
FORMATS = ("fp32", "dynamic", "int8", "fpga_int8")


def delegate_partitions(path):
    """How many XNNPACK partitions the LiteRT CPU interpreter builds for `path`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def main(argv):
    from spvit_tf import benchmark, export
    from spvit_tf.tflite.graph import Graph

    folder = pathlib.Path(tempfile.mkdtemp())
    source = export.source_from_workdir(FLAGS.workdir)
    options = export.Options(formats=FORMATS, output_dir=str(folder),
                             eval_examples=FLAGS.eval_examples)
    cards = {card["export_format"]: card for card in export.export(source, options, log=lambda _: None)}
    paths = [folder / cards[fmt]["file"] for fmt in FORMATS]
    threads = [int(t) for t in FLAGS.threads]
    rows = benchmark.run_all(paths, threads, ["cpu"], FLAGS.runs, 10, 0,
                             FLAGS.rounds)
    ms = {(pathlib.Path(r.model_path).name, r.num_threads): r.median_ms for r in rows}
    print(f"# {FLAGS.workdir}: {rows[0].device}, {FLAGS.rounds} rounds x {FLAGS.runs} runs, "
          f"{FLAGS.eval_examples} test images")
    print("| format | MB | float ops / ops | XNNPACK partitions | top-1 | agreement | "
          + " | ".join(f"ms {t}T" for t in threads) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(threads))
    for fmt, path in zip(FORMATS, paths):
        card, graph = cards[fmt], Graph.read(path.read_bytes())
        evaluation = card["evaluation"]
        times = " | ".join(f"{ms[(path.name, t)]:.3f}" for t in threads)
        print(f"| {fmt} | {card['size_bytes'] / 1e6:.2f} | {len(graph.float_ops())} / "
              f"{len(graph.ops)} | {delegate_partitions(path)} | "
              f"{evaluation['tflite_accuracy']:.4f} | {evaluation['top1_agreement']:.4f} | "
              f"{times} |")


if __name__ == "__main__":
    app.run(main)
