"""Measures a model family's latency lookup table: the cost model of latency budgets.

    python -m spvit_tf.latency_table --model=deit_tiny_patch16_224 --target=host \\
        --num_threads=1 --output=tables/deit_tiny_host.json [--tokens=auto] [--runs=100] \\
        [--format=fp32|fp16|dynamic|int8]
    python -m spvit_tf.latency_table --model=pit_ti_224 --target=adb:SERIAL --num_threads=4 \\
        --output=tables/pit_ti_pixel7.json [--benchmark_binary=PATH]

SPViT prunes to a latency budget, and a pruned model's latency is not its FLOPs: small
sequences leave kernels under-used and selection adds ops of its own. So each part is timed
as its own static batch-1 TFLite graph in the export format the model will ship in
(--format, as `spvit_tf.export` writes it: int8 files run their weighted ops in int8 and
time differently from fp32), on the device and thread count the budget is for: one
transformer block of each stage at a grid of sequence lengths, the SPViT selector
(`MultiHeadTokenSelector`) and the selection + package step (`TokenPruner` in gather mode)
at those lengths of patch tokens, the patch embedding, PiT's pooling layers and the head.
`spvit_tf.budget.predict_latency_ms` sums them for any schedule.

A block inside the model also reloads its weights after the other blocks evicted them
from the caches, which a block timed alone does not: the dense model is timed up to the end
of each stage as well, and each stage's in-model excess per block is added to its block times
(see `component_graphs`). PiT's prune times include the grid restore at the stage's end.

Timing reuses the benchmarks: on the host `spvit_tf.benchmark.measure` (LiteRT's default CPU
backend, XNNPACK) in one fresh process, all graphs --rounds times interleaved, keeping each
graph's median of per-round medians (a load burst on a shared machine then hits one round of
many graphs, not one graph); over adb `spvit_tf.adb_benchmark`'s `benchmark_model` (cpu
backend), with the same meaning of --num_threads, --runs and --warmup.

Output (`spvit_tf.latency_table.v1`, read by `load_latency_table`):

    {"format": "spvit_tf.latency_table.v1", "model": NAME, "model_config": {create_model
     overrides, no pruning}, "tflite_format": "fp32" | "int8" | ..., "target": "host" |
     "adb:SERIAL", "device": ..., "backend": "cpu", "num_threads": N, "stages": [{"dim",
     "heads", "blocks": [global indices], "tokens": [sequence lengths], "block_ms",
     "selector_ms", "prune_ms": [one per token count]}],
     "fixed_ms": {"patch_embed": ..., "pool_1": ..., "head": ...}}

`tokens` are total sequence lengths for `block_ms` (prefix and package tokens included) and
patch-token counts entering a pruning location for `selector_ms`/`prune_ms`.
"""

import concurrent.futures
import datetime
import json
import math
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

from spvit_tf import bench_results
from spvit_tf.errors import SpvitError, parse_flags, run_cli
from spvit_tf.workdir import atomic_write, check_output_file

TABLE_FORMAT = "spvit_tf.latency_table.v1"
AUTO_POINTS = 8
# The grid's top reaches past the dense length by this many tokens: room for one package
# token per pruning location when a location keeps (almost) everything.
PACKAGE_ROOM = 4
# Export formats a table can be timed in: what a phone's CPU runs (fpga_int8 is for FPGA
# flows; int16x8 runs on reference kernels).
FORMATS = ("fp32", "fp16", "dynamic", "int8")


# ---- the table format ----


def _is_ms(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def _check_stage(stage, s, source):
    where = f"{source}: stage {s}"
    keys = ("dim", "heads", "blocks", "tokens", "block_ms", "selector_ms", "prune_ms")
    if not isinstance(stage, dict) or set(keys) - set(stage):
        present = sorted(stage) if isinstance(stage, dict) else type(stage).__name__
        raise SpvitError(f"{where} needs keys {list(keys)}, has {present}")
    tokens = stage["tokens"]
    if (
        not isinstance(tokens, list) or not tokens
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in tokens)
        or tokens != sorted(set(tokens))
    ):
        raise SpvitError(f"{where} 'tokens' must be increasing positive integers, got {tokens!r}")
    for key in ("block_ms", "selector_ms", "prune_ms"):
        values = stage[key]
        if not isinstance(values, list) or len(values) != len(tokens):
            raise SpvitError(f"{where} '{key}' needs one time per token count ({len(tokens)})")
        if not all(_is_ms(v) for v in values):
            raise SpvitError(f"{where} '{key}' must hold finite non-negative ms, got {values!r}")
    if not isinstance(stage["blocks"], list) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in stage["blocks"]
    ):
        raise SpvitError(f"{where} 'blocks' must be a list of block indices")


def validate_latency_table(table, source="latency table"):
    """Checks a table's structure (see `load_latency_table`); returns it unchanged."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        found = table.get("format") if isinstance(table, dict) else type(table).__name__
        raise SpvitError(
            f"{source} is not a {TABLE_FORMAT} table (format: {found!r}); measure one with "
            "python -m spvit_tf.latency_table"
        )
    if not isinstance(table.get("model"), str) or not isinstance(table.get("model_config"), dict):
        raise SpvitError(f"{source} needs 'model' (a registered name) and 'model_config' (a dict)")
    if not isinstance(table.get("tflite_format", "fp32"), str):
        raise SpvitError(f"{source}: 'tflite_format' must be an export format name like 'int8'")
    if "pruning" in table["model_config"]:
        raise SpvitError(f"{source}: 'model_config' must describe the dense model (no 'pruning')")
    stages = table.get("stages")
    if not isinstance(stages, list) or not stages:
        raise SpvitError(f"{source} needs a non-empty 'stages' list")
    for s, stage in enumerate(stages):
        _check_stage(stage, s, source)
    blocks = sorted(b for stage in stages for b in stage["blocks"])
    if blocks != list(range(len(blocks))):
        raise SpvitError(f"{source}: stage 'blocks' must cover 0..depth-1 once each, got {blocks}")
    fixed = table.get("fixed_ms")
    if not isinstance(fixed, dict) or not all(_is_ms(v) for v in fixed.values()):
        raise SpvitError(f"{source} needs 'fixed_ms': a dict of part name -> non-negative ms")
    return table


REMEASURE = "measure the table again with python -m spvit_tf.latency_table"


def load_latency_table(path, model=None):
    """Reads and validates a latency table JSON; with `model`, also checks it was measured
    for that registered name. Every problem is one `SpvitError` line.

    Format (`spvit_tf.latency_table.v1`): per stage, `tokens` is the increasing grid of
    sequence lengths measured; `block_ms[i]` one block's time over `tokens[i]` tokens (all
    tokens it processes, prefix and packages included); `selector_ms[i]`/`prune_ms[i]` a
    pruning location's selector and selection+package time when `tokens[i]` patch tokens
    enter it. `fixed_ms` holds the token-independent parts (patch embedding, pooling, head).
    `tflite_format` names the export format the parts were timed in (fp32 when absent: tables
    written before it was recorded).
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpvitError(
            f"latency table {path} not found; measure one with python -m spvit_tf.latency_table"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpvitError(f"cannot read latency table {path}: {error}; {REMEASURE}") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpvitError(
            f"latency table {path} is not valid JSON (line {error.lineno}: {error.msg}): it is "
            f"truncated or damaged; {REMEASURE}"
        ) from None
    try:
        validate_latency_table(table, f"latency table {path}")
    except SpvitError as error:  # a damaged or hand-edited file: say how to get a good one
        if "spvit_tf.latency_table" in str(error):
            raise
        raise SpvitError(f"{error}; {REMEASURE}") from None
    table.setdefault("tflite_format", "fp32")
    if model is not None and table["model"] != model:
        raise SpvitError(
            f"latency table {path} was measured for {table['model']}, not {model}: measure "
            f"{model} or pass the matching model"
        )
    return table


# ---- token grids ----


def token_grid(dense_tokens, spec="auto"):
    """Sorted sequence lengths to time from `spec`: comma-separated items, each "auto"
    (AUTO_POINTS from 2 to the dense length plus PACKAGE_ROOM), an integer, or an inclusive
    range A-B. Ranges time every length around a schedule's counts: block latency climbs in
    steps where the CPU's matrix tiles fill up, which an auto grid interpolates over."""
    tokens = set()
    try:
        for item in spec.split(","):
            if item.strip() == "auto":
                top = dense_tokens + PACKAGE_ROOM
                tokens |= {int(round(t)) for t in np.linspace(2, top, AUTO_POINTS)}
            elif "-" in item.strip()[1:]:
                low, high = (int(v) for v in item.split("-"))
                if low > high:
                    raise ValueError(item)
                tokens |= set(range(low, high + 1))
            else:
                tokens.add(int(item))
    except ValueError:
        tokens = set()
    if not tokens or min(tokens) < 1:
        raise SpvitError(f"--tokens must be 'auto', positive integers and ranges like "
                         f"auto,60-75,197; got {spec!r}")
    return sorted(tokens)


# ---- component graphs ----


def _keras_graph(inputs, outputs):
    import keras

    return keras.Model(inputs, outputs)


def trained_like(layer, seed=0, scale=0.02):
    """`layer` with noise added to every trainable weight, so nothing it times folds away.

    A fresh model's zero biases and unit LayerNorm scales are constants the TFLite converter
    may remove with their ADDs and MULs, which a trained model keeps: timing fresh models can
    under-count.
    """
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        noise = rng.normal(0.0, scale, weight.shape).astype(weight.dtype)
        weight.assign(weight.numpy() + noise)
    return layer


def _inputs(*shapes, dtype="float32"):
    import keras

    return [keras.Input(shape, batch_size=1, dtype=dtype) for shape in shapes]


def block_graph(block, tokens):
    (x,) = _inputs((tokens, block.dim))
    return _keras_graph(x, block(x))


def selector_graph(dim, heads, patches):
    """The SPViT selector's keep probabilities over `patches` tokens (inference: no mask)."""
    import keras

    from spvit_tf.pruning.selector import MultiHeadTokenSelector

    class KeepScores(keras.layers.Layer):
        """The selector's inference output alone, called inside a layer: the functional API
        takes no None output (the log-probabilities), and Keras's symbolic `ops.conv` rejects
        the grouped convolutions a layer call traces fine."""

        def __init__(self):
            super().__init__()
            self.selector = MultiHeadTokenSelector(dim, heads)
            self.selector.build((None, None, dim))
            trained_like(self.selector)

        def call(self, x):
            return self.selector(x, log_probs=False)[1]

    (x,) = _inputs((patches, dim))
    return _keras_graph(x, KeepScores()(x))


def prune_graph(dim, heads, patches, num_prefix, grid, track_grid):
    """One gather-mode pruning step keeping half: selection and package token, and for PiT
    the parking of dropped tokens and the grid restore its stage pays once at its end (a
    stage with two locations is over-estimated by one restore)."""
    from spvit_tf.geometry import Stage, TokenSchedule
    from spvit_tf.pruning.tokens import TokenPruner, TokenState

    pruning = dict(method="spvit", locations=(0,), keep_ratios=(0.5,))
    schedule = TokenSchedule((Stage(dim, heads, grid, 0, 1),), num_prefix, pruning, track_grid)
    pruner = TokenPruner(schedule)
    pruner.build()
    x, scores = _inputs((num_prefix + patches, dim), (patches,))
    state = TokenState.start(x, num_prefix, patches, masked=False, track_grid=track_grid)
    new, _ = pruner.gather(state, scores, max(1, patches // 2))
    outputs = [new.x] + ([new.full_grid_patches()] if track_grid else [])
    return _keras_graph([x, scores], outputs)


def embed_graph(model):
    """Patch embedding up to the first block's input sequence (the model's `embed_tokens`)."""
    (images,) = _inputs((*model.image_size, model.in_chans))
    return _keras_graph(images, model.embed_tokens(images))


def pool_graph(model, s):
    """The model's transition into stage `s` (`pool_sequence`) on the dense sequence."""
    before = model.stages[s - 1]
    (x,) = _inputs((model.num_prefix_tokens + before.num_patches, before.dim))
    return _keras_graph(x, model.pool_sequence(s, x))


def dense_prefix_graph(model, last):
    """The dense model from the image to the end of stage `last` (its blocks, pools between)."""
    (images,) = _inputs((*model.image_size, model.in_chans))
    x = embed_graph(model)(images)
    for s, stage in enumerate(model.stages[: last + 1]):
        x = model.pool_sequence(s, x) if s else x
        for i in stage.blocks:
            x = model.blocks[i](x)
    return _keras_graph(images, x)


def head_graph(model):
    """Final norm and classifier over the `head_tokens` the model's `final_logits` reads."""
    (x,) = _inputs((model.head_tokens, model.stages[-1].dim))
    return _keras_graph(x, model.final_logits(x))


def component_graphs(model, spec="auto"):
    """{name: Keras graph} of every timed part, and the stages with their token grids.

    Parts are timed alone, and the dense model once more up to the end of each stage: inside
    the model a block also streams its weights back in after the other blocks evicted them
    from the caches, a cost alone-timing misses. `measure_table` adds each stage's in-model
    excess per block, which does not depend on the token count, to its lone block timings.
    """
    graphs, stages = {"patch_embed": embed_graph(model)}, []
    P, tracks_grid = model.num_prefix_tokens, model.schedule.tracks_grid
    for s, stage in enumerate(model.stages):
        if s:
            graphs[f"pool_{s}"] = pool_graph(model, s)
        dense = P + stage.num_patches
        tokens = sorted(set(token_grid(dense, spec)) | {dense})
        for t in tokens:
            graphs[f"stage{s}_block_{t}"] = block_graph(model.blocks[stage.first_block], t)
            graphs[f"stage{s}_selector_{t}"] = selector_graph(stage.dim, stage.heads, t)
            graphs[f"stage{s}_prune_{t}"] = prune_graph(
                stage.dim, stage.heads, t, P, stage.grid, tracks_grid
            )
        graphs[f"stage{s}_in_model"] = dense_prefix_graph(model, s)
        stages.append({"dim": stage.dim, "heads": stage.heads, "blocks": list(stage.blocks),
                       "tokens": tokens, "dense_tokens": dense})
    graphs["head"] = head_graph(model)
    return graphs, stages


# ---- timing ----


def _time_all(paths, num_threads, runs, warmup, rounds):
    """{stem: median over `rounds` of each graph's median ms}, rounds interleaved so that a
    burst of load on a shared machine hits one round of many graphs, not one graph."""
    from spvit_tf.benchmark import measure

    medians = {path.stem: [] for path in paths}
    for round_ in range(rounds):
        for path in paths:
            result = measure(str(path), num_threads, "cpu", runs, warmup, seed=round_)
            medians[path.stem].append(result["median_ms"])
    return {stem: statistics.median(values) for stem, values in medians.items()}


def time_host(paths, num_threads=1, runs=50, warmup=10, rounds=3):
    """{stem: ms}, device: `spvit_tf.benchmark.measure` (LiteRT's default CPU backend,
    XNNPACK) in one fresh process, away from TensorFlow's threads and memory."""
    from spvit_tf.benchmark import host_description

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        times = pool.submit(_time_all, list(paths), num_threads, runs, warmup, rounds).result()
    return times, host_description()


def time_adb(paths, serial, num_threads, runs, warmup, binary=None, adb=None):
    """{stem: median ms}, device, serial: `spvit_tf.adb_benchmark` over adb (cpu), in its own
    process (its flags and output stay apart from ours)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "spvit_tf.adb_benchmark",
                   f"--models={','.join(map(str, paths))}",
                   "--backends=cpu", f"--num_threads={num_threads}", f"--runs={runs}",
                   f"--warmup_runs={warmup}", f"--output_dir={out}"]
        command += [f"--serial={serial}"] if serial else []
        command += [f"--benchmark_binary={binary}"] if binary else []
        command += [f"--adb={adb}"] if adb else []
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise SpvitError(f"the adb benchmark failed: {lines[-1] if lines else result.returncode}")
        rows, _, meta = bench_results.read_results(pathlib.Path(out) / "results.json")
    return _medians(rows), rows[0].device, meta["serial"]


def _medians(rows):
    failed = [f"{r.model}: {r.error}" for r in rows if r.status != "ok"]
    if failed:
        raise SpvitError(f"timing failed for {len(failed)} graph(s), e.g. {failed[0]}")
    return {r.model: r.latency_ms()[1] for r in rows}


def calibration_inputs(graph, count=4, seed=0):
    """Random float inputs for quantizing a timed part: normal tokens and images, keep
    scores in (0, 1) (the package token takes their logarithm). Only the ranges come from
    them, and the phone int8's kernels are the same whatever the ranges."""
    rng = np.random.default_rng(seed)
    shapes = {tensor.name: (count, *tensor.shape[1:]) for tensor in graph.inputs}
    return {name: rng.uniform(0.01, 1.0, shape) if len(shape) == 2 else rng.normal(size=shape)
            for name, shape in shapes.items()}


def write_graphs(graphs, folder, fmt="fp32"):
    """Converts each Keras graph to `<folder>/<name>.tflite` (static batch 1) in export
    format `fmt` (one of `FORMATS`), float I/O: inside a model the parts pass float tokens."""
    from spvit_tf.tflite.convert import convert

    paths = []
    for part, graph in graphs.items():
        path = pathlib.Path(folder) / f"{part}.tflite"
        calibration = calibration_inputs(graph) if fmt == "int8" else None
        path.write_bytes(convert(graph, fmt, calibration=calibration))
        paths.append(path)
    return paths


def assemble(name, config, stages, times, target="host", device="", num_threads=1, runs=0,
             rounds=1, fmt="fp32"):
    """The table from `component_graphs`' stages and the timings of its parts."""
    before = times["patch_embed"]
    for s, stage in enumerate(stages):
        in_model = times[f"stage{s}_in_model"] - before - times.get(f"pool_{s}", 0.0)
        before = times[f"stage{s}_in_model"]
        alone = times[f"stage{s}_block_{stage.pop('dense_tokens')}"]
        stage["in_model_ms_per_block"] = in_model / len(stage["blocks"]) - alone
        for key in ("block", "selector", "prune"):
            stage[f"{key}_ms"] = [times[f"stage{s}_{key}_{t}"] for t in stage["tokens"]]
        stage["block_ms"] = [max(0.0, ms + stage["in_model_ms_per_block"]) for ms in stage["block_ms"]]
    return {
        "format": TABLE_FORMAT,
        "model": name,
        "model_config": config,
        "tflite_format": fmt,
        "target": target,
        "device": device,
        "backend": "cpu",
        "num_threads": num_threads,
        "runs": runs,
        "rounds": rounds,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stages": stages,
        "fixed_ms": {part: ms for part, ms in times.items()
                     if part in ("patch_embed", "head") or part.startswith("pool_")},
    }


def measure_table(name, target="host", num_threads=1, tokens="auto", runs=50, warmup=10,
                  rounds=3, binary=None, adb=None, fmt="fp32", **config):
    """The latency table of registered model `name` with create_model overrides `config`,
    its parts converted to export format `fmt`."""
    from spvit_tf.models import create_model

    if config.get("pruning"):
        raise SpvitError("a latency table times the dense model's parts; drop the pruning options")
    if target != "host" and not target.startswith("adb"):
        raise SpvitError(f"--target must be host or adb[:serial], got {target!r}")
    if fmt not in FORMATS:
        raise SpvitError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    config = {k: v for k, v in config.items() if v is not None}
    graphs, stages = component_graphs(trained_like(create_model(name, **config)), tokens)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_graphs(graphs, folder, fmt)
        logging.info("timing %d graphs on %s", len(paths), target)
        if target == "host":
            times, device = time_host(paths, num_threads, runs, warmup, rounds)
        else:
            times, device, serial = time_adb(paths, target.partition(":")[2] or None,
                                             num_threads, runs, warmup, binary, adb)
            target, rounds = f"adb:{serial}", 1
    return assemble(name, config, stages, times, target, device, num_threads, runs, rounds, fmt)


# ---- CLI ----

FLAGS = flags.FLAGS


def _define_flags():
    """Defined only when run as a script, so importing the module claims no flag names."""
    flags.DEFINE_string("model", None, "Registered model name, e.g. deit_tiny_patch16_224.")
    flags.DEFINE_integer("image_size", None, "Input side; default: the model's.")
    flags.DEFINE_integer("num_classes", None, "Classes; default: the model's.")
    flags.DEFINE_string("target", "host", "host, or adb[:serial] for a phone.")
    flags.DEFINE_integer("num_threads", 1, "Interpreter threads the table is for.", lower_bound=1)
    flags.DEFINE_integer("runs", 50, "Timed invokes per graph (and round).", lower_bound=1)
    flags.DEFINE_integer("warmup", 10, "Untimed invokes before the timed ones.", lower_bound=0)
    flags.DEFINE_string("output", None, "The table's JSON path.")
    flags.DEFINE_string(
        "tokens", "auto", "Sequence lengths to time: auto, integers and ranges, e.g. auto,94-100."
    )
    flags.DEFINE_integer("rounds", 3, "host: interleaved timing rounds; the table keeps the "
                         "median.", lower_bound=1)
    flags.DEFINE_enum("format", "fp32", FORMATS, "Export format the parts are timed in: the "
                      "one the pruned model will ship in.")
    flags.DEFINE_string("benchmark_binary", None, "adb: benchmark_model for the phone.")
    flags.DEFINE_string("adb", None, "adb: the adb executable.")


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; pass options as --name=value")
    if not FLAGS.model or not FLAGS.output:
        raise SpvitError("pass --model=NAME and --output=table.json")
    check_output_file(FLAGS.output, "--output")  # before minutes of conversion and timing
    if FLAGS.target != "host" and not FLAGS.target.startswith("adb"):
        raise SpvitError(f"--target must be host or adb[:serial], got {FLAGS.target!r}")
    token_grid(2, FLAGS.tokens)  # rejects a bad --tokens before anything is built
    from spvit_tf.errors import stderr_silenced

    with stderr_silenced():
        import tensorflow  # noqa: F401  (its C++ banner would bury our messages)
    logging.set_verbosity(logging.WARNING)
    table = measure_table(
        FLAGS.model, FLAGS.target, FLAGS.num_threads, FLAGS.tokens, FLAGS.runs, FLAGS.warmup,
        FLAGS.rounds, FLAGS.benchmark_binary, FLAGS.adb, FLAGS.format,
        image_size=FLAGS.image_size, num_classes=FLAGS.num_classes,
    )
    atomic_write(FLAGS.output, json.dumps(table, indent=2) + "\n")
    stage = table["stages"][0]
    print(f"{table['model']} {table['tflite_format']} on {table['device']}, "
          f"{table['num_threads']} thread(s): one block "
          f"{stage['block_ms'][0]:.3f}-{stage['block_ms'][-1]:.3f} ms over {stage['tokens'][0]}-"
          f"{stage['tokens'][-1]} tokens; wrote {os.path.abspath(FLAGS.output)}")


if __name__ == "__main__":
    _define_flags()
    app.run(run_cli(main), flags_parser=parse_flags)
