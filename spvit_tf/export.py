"""Exports a model to TFLite for Android phones and FPGA flows, each file with a model card.

    python -m spvit_tf.export --workdir=runs/cifar --formats=fp32,fp16,int8 [--gpu_friendly]
    python -m spvit_tf.export --model=deit_tiny_patch16_224 --checkpoint=deit_tiny.safetensors \\
        --formats=fp32,dynamic --eval_data=folder:~/imagenet [--pruning_method=spvit ...]

Every format becomes `<output_dir>/<stem>_<format>.tflite` with a `.json` model card (the
benchmarks read its "gflops") and a short `.md`; `labels.txt` holds the class names once. Files
are static batch 1, TFLite builtin ops only (never Flex), and written atomically. Each file
carries TFLite model metadata (`spvit_tf.tflite.metadata`: name, description, input image spec
and normalisation, `labels.txt` packed) that app runtimes such as MediaPipe's ImageClassifier
read; without MediaPipe's schema classes the files have none and the cards say so.

This module is the command line and its orchestration (what to export, the flags, which
checks run on which images). The TFLite pieces are the toolkit `spvit_tf.tflite` (conversion,
the flatbuffer reader, the GPU delegate rules, the interpreter harness, cards, metadata), and
every pixel becomes model input through the run's `spvit_tf.preprocessing.Preprocessor`.

Formats:
  fp32       the graph as trained.
  fp16       float16 weights, float32 compute on the CPU (half the size; GPUs run float16).
  dynamic    int8 weights, float activations (dynamic-range quantization).
  int8       full-integer for phones: int8 weights and activations calibrated on
             --calibration_examples images of the training split; an op without an int8 kernel
             stays float and the card lists it.
  int16x8    int16 activations, int8 weights, by ai-edge-quantizer (the converter's own 16x8
             calibrator fails on these graphs: no min/max for constant-fed BROADCAST_TO/CAST).
  fpga_int8  integer-only: no float32 tensor anywhere, int8 input and output, or the export
             fails naming the ops; `<stem>_fpga_int8.fpga_report.json` lists every op.

Input (--io): `uint8` (default) takes RGB bytes [1, H, W, 3] as decoded and cropped, `int8` the
bytes minus 128, `pixels` the bytes as float32 0-255, `float` the normalised image; except
with `float` the normalisation (x - mean) / std is inside the graph, so an app feeds camera
pixels directly. fpga_int8 always takes int8. The models themselves have no DIV at inference
(the selector and package token normalise with softmax(log w)): the int8 DIV kernel aborts
when a divisor rounds to its zero point.

`--budgets` adds `<stem>_budgets_<format>.tflite` for the float formats (fp32, fp16, dynamic)
among --formats: one signature per token budget of the trained model, its weights stored once
(`spvit_tf.tflite.budgets`). Its card records, per signature, the keep ratios, GFLOPs, parity,
accuracy and host latency, and the file's size against the one-budget file of the same format.

`--gpu_friendly` adds `<stem>_gpu_{fp32,fp16}` built with `selection="matmul"` (no
TOPK_V2/GATHER) and records, for every file, which ops the GPU delegate would leave to the
CPU. The GPU files take --gpu_io, default `pixels`: the delegate has no uint8 -> float32 CAST,
so a byte input would leave the graph's first op to the CPU; and MediaPipe normalises a float
input with one mean/std for all channels only, so the per-channel normalisation stays inside
the graph and the metadata tells runtimes to feed the pixels unchanged (mean 0, std 1).
"""

import dataclasses
import json
import os
import pathlib

import numpy as np
from absl import app, flags, logging

from spvit_tf.errors import SpvitError, parse_flags, run_cli
from spvit_tf.preprocessing import Preprocessor
from spvit_tf.tflite import cards, metadata
from spvit_tf.tflite.budgets import parse_budgets
from spvit_tf.tflite.convert import (FORMATS, IO_TYPES, QUANTIZED, SIGNATURE_FORMATS, convert,
                                     convert_signatures, quantize_int16x8, retarget,
                                     serving_inputs, serving_model)
from spvit_tf.tflite.graph import Graph
from spvit_tf.tflite.gpu import GPU_FORMATS, gpu_compatibility, gpu_twin
from spvit_tf.tflite.runner import keras_logits, run_tflite
from spvit_tf.workdir import (FINAL_WEIGHTS, atomic_write, check_output_dir, read_run,
                             run_identity)

# Max |TFLite - Keras| logit difference of the float exports on the parity images: over all
# images for fp32, over the median image for fp16, whose float16 weights can flip a near-tied
# token selection and so move one image's logits further (the card records the max too).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
PARITY_IMAGES = 8


# ---- what is exported ----


@dataclasses.dataclass
class Source:
    """The model to export and how its inputs look, from a workdir or from flags.

    `preprocessor`: the input contract (`spvit_tf.preprocessing.Preprocessor`); `data`: the
    training data source (calibration and default evaluation data), None when unknown;
    `run`: the training run's identity (`workdir.run_identity`), None for a bare model.
    """

    name: str
    model_name: str
    model_config: dict
    weights: str | None
    class_names: tuple | None
    preprocessor: Preprocessor
    data: str | None
    run: dict | None = None


def source_from_workdir(workdir, weights=None):
    run = read_run(workdir)
    weights = weights or os.path.join(workdir, FINAL_WEIGHTS)
    if not os.path.isfile(weights):
        raise SpvitError(f"checkpoint {weights} not found; train the run to the end or pass "
                         "--checkpoint=PATH")
    missing = sorted({"model", "model_config"} - set(run))
    if missing:
        raise SpvitError(f"{workdir}/run.json lacks {', '.join(missing)}; rerun training")
    identity = run_identity(workdir, run)
    return Source(
        name=identity["run_id"],
        model_name=run["model"],
        model_config=dict(run["model_config"]),
        weights=weights,
        class_names=tuple(run["class_names"]) if run.get("class_names") else None,
        preprocessor=Preprocessor.from_run(run, f"{workdir}/run.json"),
        data=run.get("data"),
        run=identity,
    )


def source_from_model(name, checkpoint=None, **config):
    """A registered model with create_model overrides, ImageNet normalisation and crop."""
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise SpvitError(f"checkpoint {checkpoint} does not exist")
    from spvit_tf.errors import stderr_silenced

    overrides = {k: v for k, v in config.items() if v is not None}
    with stderr_silenced():  # the models load TensorFlow, whose banner would bury errors
        from spvit_tf.models import model_config

        size = model_config(name, **overrides)[1]["image_size"]
    return Source(
        name=name,
        model_name=name,
        model_config=overrides,
        weights=checkpoint,
        class_names=None,
        preprocessor=Preprocessor(size if isinstance(size, int) else int(size[0])),
        data=None,
    )


def build_model(source):
    from spvit_tf.models import create_model

    if source.weights is None:
        logging.warning("no checkpoint: exporting randomly initialised weights")
    return create_model(source.model_name, checkpoint=source.weights, **source.model_config)


# ---- the export ----


@dataclasses.dataclass
class Images:
    """The uint8 images an export is checked on, with the float Keras model's logits.

    Every image is `Preprocessor.pixels`, the evaluation crop rounded to bytes: what an app
    feeds the file. The Keras logits are computed on the same bytes, so the parity check and
    "keras_accuracy" compare the file with its model on identical input (training's
    evaluation feeds the unrounded float crop; `spvit_tf.preprocessing` says how they differ).
    `calibration`: training images for the quantized formats; `parity`: a few images for the
    float formats' logit check; `evaluation`/`labels`: the evaluation set (None without data).
    """

    calibration: np.ndarray | None
    parity: np.ndarray
    parity_logits: np.ndarray
    evaluation: np.ndarray | None
    labels: np.ndarray | None
    logits: np.ndarray | None
    data: str | None


@dataclasses.dataclass
class Options:
    formats: tuple
    io: str = "uint8"
    output_dir: str = "tflite_models"
    gpu_friendly: bool = False
    gpu_io: str = "pixels"  # the GPU delegate takes no uint8 input CAST (module doc)
    eval_data: str | None = None
    eval_examples: int = 500
    calibration_examples: int = 200
    budgets: tuple = ()  # --budgets entries (`spvit_tf.tflite.budgets`)
    latency_runs: int = 50  # timed invokes per signature of a multi-budget file; 0: none


def check_options(options, source):
    """Rejects bad flags before anything is built or written."""
    unknown = sorted(set(options.formats) - set(FORMATS))
    if unknown or not options.formats:
        raise SpvitError(
            f"unknown format(s) {unknown or '(none)'}; choose from {', '.join(FORMATS)}")
    for flag, io_type in (("--io", options.io), ("--gpu_io", options.gpu_io)):
        if io_type not in IO_TYPES:
            raise SpvitError(f"{flag}={io_type} is not one of {', '.join(IO_TYPES)}")
    if options.eval_examples < 1 or options.calibration_examples < 1:
        raise SpvitError("--eval_examples and --calibration_examples must be at least 1")
    if options.budgets:
        parse_budgets(options.budgets, source.model_config.get("pruning"))
        if not set(options.formats) & set(SIGNATURE_FORMATS):
            raise SpvitError(f"--budgets writes a {'/'.join(SIGNATURE_FORMATS)} file: add one of "
                             "them to --formats")
    if options.latency_runs < 0:
        raise SpvitError("--latency_runs must be at least 0")
    check_output_dir(options.output_dir, "--output_dir")
    if set(options.formats) & set(QUANTIZED) and not (source.data or options.eval_data):
        raise SpvitError("quantized formats need calibration images: pass --eval_data=SOURCE "
                         "(its training split calibrates) or export from a --workdir")


def export(source, options, log=print):
    """Writes every requested format of `source` to `options.output_dir`; returns the cards."""
    from spvit_tf.data import load_pixels

    check_options(options, source)
    formats = list(dict.fromkeys(options.formats))
    model = build_model(source)
    size, num_classes = model.image_size[0], model.num_classes
    class_names = source.class_names or tuple(str(i) for i in range(num_classes))
    if len(class_names) != num_classes:
        raise SpvitError(f"{len(class_names)} class names for a {num_classes}-class model")
    preprocessor = source.preprocessor
    if preprocessor.image_size != size:
        raise SpvitError(f"the preprocessor crops {preprocessor.image_size} px but the model "
                         f"takes {size} px")

    eval_source = options.eval_data or source.data
    images = labels = None
    if eval_source:
        images, labels, eval_classes = load_pixels(eval_source, "eval", options.eval_examples,
                                                   preprocessor)
        if len(eval_classes) != num_classes or (source.class_names and eval_classes != class_names):
            raise SpvitError(f"{eval_source} has classes {list(eval_classes)[:5]}... but the model "
                             f"has {num_classes} ({list(class_names)[:5]}...): pick matching data")
    parity = images[:PARITY_IMAGES] if images is not None else np.random.default_rng(0).integers(
        0, 256, (PARITY_IMAGES, size, size, 3), dtype=np.uint8)
    calibration = None
    if set(formats) & set(QUANTIZED):
        calibration, _, _ = load_pixels(source.data or options.eval_data, "train",
                                        options.calibration_examples, preprocessor, seed=1)
        # One pixel at 0 and one at 255 pin the calibrated input range to exactly [0, 255], so
        # quantized uint8/int8 inputs take camera bytes with scale 1.
        calibration[0, 0, 0], calibration[0, 0, 1] = 0, 255

    if metadata.load_schema() is None:
        log(metadata.MISSING)
    checked = Images(
        calibration, parity, keras_logits(model, parity, preprocessor), images, labels,
        keras_logits(model, images, preprocessor) if images is not None else None, eval_source)
    os.makedirs(options.output_dir, exist_ok=True)
    atomic_write(os.path.join(options.output_dir, metadata.LABELS_FILE),
                 "\n".join(class_names) + "\n")

    variants = [(source.name, model, "as trained", formats, options.io)]
    if options.gpu_friendly:
        gpu_formats = [f for f in formats if f in GPU_FORMATS] or ["fp32"]
        variants.append((f"{source.name}_gpu", gpu_twin(model), "selection=matmul", gpu_formats,
                         options.gpu_io))

    written = []
    for stem, net, graph_name, variant_formats, io_type in variants:
        for fmt in variant_formats:
            card, files = _export_one(stem, fmt, net, io_type, source, checked, class_names,
                                      graph_name=graph_name, gpu_check=options.gpu_friendly)
            base = os.path.join(options.output_dir, f"{stem}_{fmt}")
            for suffix, data in files.items():
                atomic_write(base + suffix, data, mode="wb" if isinstance(data, bytes) else "w")
            log(cards.summary(card))
            written.append(card)
    if options.budgets:
        singles = {card["export_format"]: card for card in written
                   if card["file"].startswith(f"{source.name}_") and card["graph"] == "as trained"}
        for fmt in [f for f in formats if f in SIGNATURE_FORMATS]:
            card = _export_budgets(fmt, model, source, options, checked, class_names,
                                   singles.get(fmt))
            log(cards.summary(card))
            written.append(card)
    return written


def _export_budgets(fmt, model, source, options, checked, class_names, single):
    """Writes `<name>_budgets_<fmt>.tflite`, one signature per budget of `options.budgets`,
    with its card; returns the card.

    Each signature is checked like a one-budget file (logit parity with its Keras twin, the
    evaluation set); the file is written before its host latency is timed, per signature,
    by the host benchmark (`options.latency_runs` invokes at one thread), and the card after.
    The card's top level and the metadata describe subgraph 0, which a runtime that asks for
    no signature runs; "signatures" lists every signature in subgraph order.
    """
    from spvit_tf import benchmark
    from spvit_tf.flops import model_cost

    preprocessor = source.preprocessor
    budgets = parse_budgets(options.budgets, model.get_config().get("pruning"))
    twins = {key: retarget(model, keep_ratios=list(ratios)) for key, ratios in budgets.items()}
    kind, stem = options.io, f"{source.name}_budgets"
    what = f"{stem}_{fmt}"
    content = convert_signatures(
        {key: serving_model(twin, kind, preprocessor) for key, twin in twins.items()}, fmt)
    graphs = Graph.read_all(content)
    for graph in graphs:
        graph.check_builtin(what)
    budgets = {graph.signature: budgets[graph.signature] for graph in graphs}  # file order
    graph, first = graphs[0], graphs[0].signature
    feed = cards.feed(kind, graph.tensors[graph.inputs[0]])
    content, metadata_entry = metadata.attach(content, metadata.for_export(
        stem=stem, fmt=fmt, source=source, model=twins[first], graph_name="as trained",
        input_tensor=graph.tensors[graph.inputs[0]], output_tensor=graph.tensors[graph.outputs[0]],
        normalized_input=kind == "float", feed=feed, class_names=class_names, signatures=budgets))
    signatures = {}
    for subgraph, key in enumerate(budgets):
        twin = twins[key]
        reference = keras_logits(twin, checked.parity, preprocessor)
        logits = run_tflite(content, checked.parity, kind, preprocessor, signature=key)
        per_image = np.abs(logits - reference).max(axis=1)
        worst = float(np.median(per_image) if fmt == "fp16" else per_image.max())
        if fmt in TOLERANCE and not worst <= TOLERANCE[fmt]:
            raise SpvitError(f"{what} signature {key}: TFLite logits differ from Keras by "
                             f"{worst:.3g} (> {TOLERANCE[fmt]}); the export is not faithful")
        evaluation = None
        if checked.evaluation is not None:
            evaluation = cards.evaluation(
                run_tflite(content, checked.evaluation, kind, preprocessor, signature=key),
                keras_logits(twin, checked.evaluation, preprocessor), checked.labels,
                checked.data)
        cost = model_cost(twin)
        signatures[key] = {
            "keep_ratios": list(budgets[key]), "subgraph": subgraph,
            "tokens_per_block": list(cost.tokens_per_block), "gflops": cost.gflops,
            "checks": {"parity_images": len(per_image),
                       "max_abs_logit_diff": float(per_image.max()),
                       "median_abs_logit_diff": float(np.median(per_image))},
            "evaluation": evaluation,
        }
    path = os.path.join(options.output_dir, f"{what}.tflite")
    atomic_write(path, content, mode="wb")
    if options.latency_runs:
        model_path = pathlib.Path(path)
        rows = benchmark.run_all([model_path], [1], ["cpu"], options.latency_runs, 10, 0,
                                 signatures={model_path: list(signatures)})
        for key, row in zip(signatures, rows):
            signatures[key]["host_latency"] = {
                "device": row.device, "backend": row.backend, "threads": row.num_threads,
                "runs": row.runs, "median_ms": row.median_ms, "p90_ms": row.p90_ms,
                "status": row.status, "error": row.error}
    card = cards.model_card(
        stem=stem, fmt=fmt, source=source, model=twins[first], graph_name="as trained",
        content=content, graph=graph, kind=kind,
        checks=signatures[first]["checks"] | {"tolerance": TOLERANCE.get(fmt),
                                              "tolerance_applies_to": "median" if fmt == "fp16"
                                              else "max"},
        evaluation=signatures[first]["evaluation"], tflite_metadata=metadata_entry)
    card = cards.budgets_entry(card, signatures, single)
    base = os.path.join(options.output_dir, what)
    atomic_write(base + ".json", json.dumps(card, indent=2) + "\n")
    atomic_write(base + ".md", cards.card_markdown(card))
    return card


def _export_one(stem, fmt, net, io_type, source, checked, class_names, graph_name, gpu_check):
    """(card, {suffix: file content}) of one format; raises before anything is written.

    The checks run on the file as written, metadata included."""
    import tensorflow as tf

    preprocessor = source.preprocessor
    kind = "pixels" if fmt == "fpga_int8" or (fmt == "int8" and io_type != "float") else io_type
    integer_io = None
    if fmt == "fpga_int8" or (fmt == "int8" and io_type in ("uint8", "int8")):
        integer_io = tf.int8 if fmt == "fpga_int8" or io_type == "int8" else tf.uint8
    keras_graph = serving_model(net, kind, preprocessor)
    if fmt == "int16x8":
        content = quantize_int16x8(convert(keras_graph, "fp32"),
                                   serving_inputs(checked.calibration, kind, preprocessor))
    elif fmt in ("int8", "fpga_int8"):
        content = convert(keras_graph, fmt, serving_inputs(checked.calibration, kind, preprocessor),
                          integer_io)
    else:
        content = convert(keras_graph, fmt)
    what = f"{stem}_{fmt}"
    graph = Graph.read(content)
    graph.check_builtin(what)
    if fmt == "fpga_int8":
        graph.check_integer_only(what)
    feed = cards.feed(kind, graph.tensors[graph.inputs[0]])
    content, metadata_entry = metadata.attach(content, metadata.for_export(
        stem=stem, fmt=fmt, source=source, model=net, graph_name=graph_name,
        input_tensor=graph.tensors[graph.inputs[0]], output_tensor=graph.tensors[graph.outputs[0]],
        normalized_input=kind == "float", feed=feed, class_names=class_names))
    logits = run_tflite(content, checked.parity, kind, preprocessor)
    per_image = np.abs(logits - checked.parity_logits).max(axis=1)
    worst = float(np.median(per_image) if fmt == "fp16" else per_image.max())
    if fmt in TOLERANCE and not worst <= TOLERANCE[fmt]:
        raise SpvitError(f"{what}: TFLite logits differ from Keras by {worst:.3g} "
                         f"(> {TOLERANCE[fmt]}); the export is not faithful")
    evaluation = None
    if checked.evaluation is not None:
        evaluation = cards.evaluation(run_tflite(content, checked.evaluation, kind, preprocessor),
                                      checked.logits, checked.labels, checked.data)
    card = cards.model_card(
        stem=stem, fmt=fmt, source=source, model=net, graph_name=graph_name, content=content,
        graph=graph, kind=kind,
        checks={"parity_images": len(per_image), "max_abs_logit_diff": float(per_image.max()),
                "median_abs_logit_diff": float(np.median(per_image)),
                "tolerance": TOLERANCE.get(fmt),
                "tolerance_applies_to": "median" if fmt == "fp16" else "max"},
        evaluation=evaluation, tflite_metadata=metadata_entry,
        gpu=gpu_compatibility(content, graph) if gpu_check else None)
    files = {".tflite": content, ".json": json.dumps(card, indent=2) + "\n",
             ".md": cards.card_markdown(card)}
    if fmt == "fpga_int8":
        files[".fpga_report.json"] = json.dumps(cards.fpga_report(stem, card, graph),
                                                indent=2) + "\n"
    return card, files


# ---- CLI ----

FLAGS = flags.FLAGS


def _define_flags():
    """Defined only when run as a script, so importing the exporter claims no flag names."""
    flags.DEFINE_string("workdir", None, "Training workdir (run.json + final weights).")
    flags.DEFINE_string("model", None, "Registered model name, instead of --workdir.")
    flags.DEFINE_string("checkpoint", None, "Weights to export; default: the workdir's final.")
    flags.DEFINE_integer("image_size", None, "--model only: input side.")
    flags.DEFINE_integer("num_classes", None, "--model only: classes.")
    flags.DEFINE_string("pruning_method", "none", "--model only: none, spvit, hard, evit, static.")
    flags.DEFINE_list("pruning_locations", ["3", "6", "9"], "--model only: selector blocks.")
    flags.DEFINE_list("keep_ratios", ["0.7", "0.49", "0.343"], "--model only: keep ratios.")
    flags.DEFINE_list("formats", ["fp32"], f"Any of {', '.join(FORMATS)}.")
    flags.DEFINE_bool("gpu_friendly", False, "Also export _gpu fp32/fp16 with matmul selection.")
    flags.DEFINE_string("gpu_io", "pixels", f"Input of the _gpu files: {', '.join(IO_TYPES)}.")
    flags.DEFINE_string("name", None, "File stem; default: the run's folder or the model name.")
    flags.DEFINE_string("output_dir", None, "Default: tflite_models/<name>.")
    flags.DEFINE_string("eval_data", None, "Evaluation (and, without a workdir, calibration) "
                        "data: cifar10_embedded, folder:<path> or tfds:<name>.")
    flags.DEFINE_integer("eval_examples", 500, "Evaluation images per format.", lower_bound=1)
    flags.DEFINE_integer("calibration_examples", 200, "Training images for int8/int16 "
                         "calibration.", lower_bound=1)
    flags.DEFINE_string("io", "uint8", f"Input type: {', '.join(IO_TYPES)} (see the module doc).")
    flags.DEFINE_list("budgets", [], "Also one file with a signature per token budget, weights "
                      "shared: each entry a ratio rho (keeps rho, rho^2, ... at the locations) or "
                      "the keep ratios joined by ':', e.g. 0.631,0.5,0.4.")
    flags.DEFINE_integer("latency_runs", 50, "Timed host invokes per signature of the --budgets "
                         "file (0: no timing).", lower_bound=0)


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; pass options as --name=value")
    if bool(FLAGS.workdir) == bool(FLAGS.model):
        raise SpvitError("pass exactly one of --workdir=DIR and --model=NAME")
    if FLAGS.output_dir:  # before TensorFlow loads; check_options checks the default one
        check_output_dir(FLAGS.output_dir, "--output_dir")
    if FLAGS.workdir:
        source = source_from_workdir(FLAGS.workdir, FLAGS.checkpoint)
    else:
        from spvit_tf.pruning.config import pruning_from_flags

        pruning = None
        if FLAGS.pruning_method != "none":
            pruning = pruning_from_flags(
                FLAGS.pruning_method, FLAGS.pruning_locations, FLAGS.keep_ratios)
        source = source_from_model(FLAGS.model, FLAGS.checkpoint, image_size=FLAGS.image_size,
                                   num_classes=FLAGS.num_classes, pruning=pruning)
    if FLAGS.name:
        if not FLAGS.name.replace("_", "").replace("-", "").isalnum():
            raise SpvitError(f"--name={FLAGS.name!r}: use letters, digits, '_' and '-' only")
        source = dataclasses.replace(source, name=FLAGS.name)
    options = Options(
        formats=tuple(FLAGS.formats), io=FLAGS.io,
        output_dir=FLAGS.output_dir or os.path.join("tflite_models", source.name),
        gpu_friendly=FLAGS.gpu_friendly, gpu_io=FLAGS.gpu_io, eval_data=FLAGS.eval_data,
        eval_examples=FLAGS.eval_examples, calibration_examples=FLAGS.calibration_examples,
        budgets=tuple(FLAGS.budgets), latency_runs=FLAGS.latency_runs,
    )
    check_options(options, source)
    logging.set_verbosity(logging.WARNING)  # the converter logs every SavedModel step at INFO
    from spvit_tf.errors import stderr_silenced

    with stderr_silenced():
        import tensorflow  # noqa: F401  (its C++ banner would bury our messages)
    written = export(source, options)
    print(f"wrote {len(written)} model(s) with cards to {options.output_dir}")


if __name__ == "__main__":
    _define_flags()
    app.run(run_cli(main), flags_parser=parse_flags)
