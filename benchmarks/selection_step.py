"""Host latency of one token-pruning step in isolation (fp32 TFLite, batch 1).

    python benchmarks/selection_step.py [--threads=1] [--runs=300]

One DeiT-Ti location (197 tokens of width 192, 3 heads, keep 0.7) as its own TFLite model:
for each method, the scorer, top-k selection and package token, with the kept rows gathered
by `gather_rows` (the library's flat GATHER) and, for comparison, by `take_along_axis`
(what the library used before). Prints the median milliseconds per invoke (the host
benchmark's `measure`) and the graph's op count.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_integer("runs", 300, "Timed invokes per model.")
FLAGS = flags.FLAGS
TOKENS, DIM, HEADS, GRID = 196, 192, 3, (14, 14)


def take_along_axis_rows(x, rows):
    from keras import ops

    if len(x.shape) == 2:
        return ops.take_along_axis(x, rows, axis=1)
    return ops.take_along_axis(x, rows[..., None], axis=1)


def step_model(method):
    """A Keras model: tokens (1, 1 + n, D) -> the sequence after one pruning step."""
    import keras

    from spvit_tf import latency_table
    from spvit_tf.pruning.tokens import TokenPruner, TokenState

    class Step(keras.Model):
        def __init__(self):
            super().__init__()
            pruning = dict(method=method, locations=[3], keep_ratios=[0.7])
            self.pruner = TokenPruner(pruning, [DIM], [HEADS], [TOKENS], [GRID])
            self.pruner.build()
            latency_table.trained_like(self.pruner)

        def call(self, x):
            state = TokenState.start(x, 1, TOKENS, masked=False)
            return self.pruner.step(0, state, None, "gather")[0].x

    inputs = keras.Input((TOKENS + 1, DIM), batch_size=1)
    return keras.Model(inputs, Step()(inputs))


def time_model(content, folder):
    """(median ms, op count) of TFLite `content`, timed by the host benchmark's `measure`."""
    from spvit_tf import benchmark
    from spvit_tf.tflite.graph import Graph

    path = folder / "step.tflite"
    path.write_bytes(content)
    timing = benchmark.measure(str(path), FLAGS.threads, "cpu", FLAGS.runs, 30, seed=0)
    return timing["median_ms"], len(Graph.read(content).ops)


def main(argv):
    from spvit_tf.pruning import tokens
    from spvit_tf.tflite.convert import convert

    folder = pathlib.Path(tempfile.mkdtemp())
    flat_gather = tokens.gather_rows
    for method in ("spvit", "hard", "static"):
        for name, gather in (("gather_rows", flat_gather), ("take_along_axis", take_along_axis_rows)):
            tokens.gather_rows = gather
            ms, ops = time_model(convert(step_model(method), "fp32"), folder)
            print(f"{method:6s} {name:16s} {ms:.4f} ms  {ops} ops  (threads={FLAGS.threads})")
    tokens.gather_rows = flat_gather


if __name__ == "__main__":
    app.run(main)
