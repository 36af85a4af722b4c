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

`--gpu_friendly` adds `<stem>_gpu_{fp32,fp16}` built with `selection="matmul"` (no
TOPK_V2/GATHER) and records, for every file, which ops the GPU delegate would leave to the
CPU. The GPU files take --gpu_io, default `pixels`: the delegate has no uint8 -> float32 CAST,
so a byte input would leave the graph's first op to the CPU; and MediaPipe normalises a float
input with one mean/std for all channels only, so the per-channel normalisation stays inside
the graph and the metadata tells runtimes to feed the pixels unchanged (mean 0, std 1).
"""

import collections
import contextlib
import dataclasses
import datetime
import io
import json
import os
import sys
import tempfile
import warnings

import numpy as np
from absl import app, flags, logging

from spvit_tf.errors import SpvitError, parse_flags, run_cli
from spvit_tf.tflite import metadata
from spvit_tf.workdir import FINAL_WEIGHTS, atomic_write, check_output_dir, read_run

FORMATS = ("fp32", "fp16", "dynamic", "int8", "int16x8", "fpga_int8")
QUANTIZED = ("int8", "int16x8", "fpga_int8")  # activations quantized: calibrated
GPU_FORMATS = ("fp32", "fp16")  # what the GPU delegate computes in
# What the phone int8 format computes in int8: the ops with weights, nearly all the MACs.
MOBILE_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
IO_TYPES = ("uint8", "int8", "float", "pixels")
# Max |TFLite - Keras| logit difference of the float exports on the parity images: over all
# images for fp32, over the median image for fp16, whose float16 weights can flip a near-tied
# token selection and so move one image's logits further (the card records the max too).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
PARITY_IMAGES = 8
LABELS_FILE = "labels.txt"
CARD_FORMAT = "spvit_tf.model_card.v1"
REPORT_FORMAT = "spvit_tf.fpga_report.v1"

# Why an op of a quantized export computes in float, for the card.
_ISLAND_REASONS = {
    "QUANTIZE": "entry into integer ops",
    "DEQUANTIZE": "exit from integer ops",
    "int8": "float by design: the phone int8 format quantizes only "
    f"{', '.join(MOBILE_INT8_OPS)}; XNNPACK runs the rest in float in the same partition",
    ("int16x8", "CAST"): "the uint8/int8 input is cast to float before the first quantize",
}


def _island_reason(fmt, op):
    return (_ISLAND_REASONS.get((fmt, op)) or _ISLAND_REASONS.get(op)
            or _ISLAND_REASONS.get(fmt) or f"the {fmt} quantizer has no integer kernel for it here")


# ---- what is exported ----


@dataclasses.dataclass
class Source:
    """The model to export and how its inputs look, from a workdir or from flags.

    `mean`/`std` are per channel on the 0-255 scale; `data` is the training data source
    (calibration and default evaluation data), None when unknown.
    """

    name: str
    model_name: str
    model_config: dict
    weights: str | None
    class_names: tuple | None
    mean: np.ndarray
    std: np.ndarray
    crop_ratio: float
    data: str | None


def pixel_scale(values, what):
    """Per-channel float32 stats on the 0-255 scale.

    The workdir contract stores 0-255 values; values all <= 1 are read as the 0-1 scale
    `spvit_tf.data.to_dataset` takes, since no real 0-255 mean is that small.
    """
    values = np.asarray(values, np.float32).reshape(-1)
    if values.size != 3:
        raise SpvitError(f"{what} needs 3 values (RGB), got {values.tolist()}")
    return values * 255.0 if values.max() <= 1.0 else values


def source_from_workdir(workdir, weights=None):
    run = read_run(workdir)
    weights = weights or os.path.join(workdir, FINAL_WEIGHTS)
    if not os.path.isfile(weights):
        raise SpvitError(f"checkpoint {weights} not found; train the run to the end or pass "
                         "--checkpoint=PATH")
    missing = sorted({"model", "model_config", "mean", "std"} - set(run))
    if missing:
        raise SpvitError(f"{workdir}/run.json lacks {', '.join(missing)}; rerun training")
    return Source(
        name=os.path.basename(os.path.normpath(workdir)),
        model_name=run["model"],
        model_config=dict(run["model_config"]),
        weights=weights,
        class_names=tuple(run["class_names"]) if run.get("class_names") else None,
        mean=pixel_scale(run["mean"], "run.json mean"),
        std=pixel_scale(run["std"], "run.json std"),
        crop_ratio=float(run.get("crop_ratio", 1.0)),
        data=run.get("data"),
    )


def source_from_model(name, checkpoint=None, **config):
    """A registered model with create_model overrides, ImageNet normalisation and crop."""
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise SpvitError(f"checkpoint {checkpoint} does not exist")
    from spvit_tf.errors import stderr_silenced

    with stderr_silenced():  # spvit_tf.data loads TensorFlow, whose banner would bury errors
        from spvit_tf.data import DEFAULT_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
    return Source(
        name=name,
        model_name=name,
        model_config={k: v for k, v in config.items() if v is not None},
        weights=checkpoint,
        class_names=None,
        mean=pixel_scale(IMAGENET_MEAN, "mean"),
        std=pixel_scale(IMAGENET_STD, "std"),
        crop_ratio=DEFAULT_CROP_RATIO,
        data=None,
    )


def build_model(source):
    from spvit_tf.models import create_model

    if source.weights is None:
        logging.warning("no checkpoint: exporting randomly initialised weights")
    return create_model(source.model_name, checkpoint=source.weights, **source.model_config)


# ---- graph variants ----


def _twin(model, config):
    """A fresh model of `config` carrying `model`'s weights (same variables, same order)."""
    twin = type(model).from_config(config)
    twin.build_weights()
    twin.set_weights(model.get_weights())
    return twin


def gpu_twin(model):
    """`model` with selection="matmul": no TOPK_V2/GATHER, which the GPU delegate lacks."""
    config = model.get_config()
    if config.get("pruning"):
        config["pruning"] = {**config["pruning"], "selection": "matmul"}
    return _twin(model, config)


def serving_model(model, kind, mean, std):
    """`model` as a static batch-1 Keras graph on input `kind`.

    Batch 1 is fixed so TFLite needs no SHAPE/GATHER/PACK for the batch dimension. `kind`:
    uint8/int8 (integer bytes, cast and normalised in the graph), `pixels` (float 0-255,
    normalised in the graph; also what the quantized formats whose converter sets the integer
    I/O type are built from) or `float` (normalised).
    """
    import keras
    from keras import ops

    dtype = kind if kind in ("uint8", "int8") else "float32"
    inputs = keras.Input((*model.image_size, model.in_chans), batch_size=1, dtype=dtype)
    x = inputs
    if kind != "float":
        x = ops.cast(x, "float32")
        if kind == "int8":
            x = x + 128.0
        x = (x - mean) / std
    return keras.Model(inputs, model(x))


# ---- conversion ----


def _representative(inputs):
    """Calibration batches of one example each from an array (a single-input model) or a
    dict {input name: array} (the converter orders several inputs its own way)."""
    if isinstance(inputs, dict):
        count = len(next(iter(inputs.values())))
        return lambda: ({k: v[i][None].astype(np.float32) for k, v in inputs.items()}
                        for i in range(count))
    return lambda: ([image[None].astype(np.float32)] for image in inputs)


def convert(keras_model, fmt="fp32", calibration=None, io_type=None):
    """TFLite bytes of `keras_model` in `fmt` (not int16x8), builtin ops only.

    `calibration`: float inputs of the quantized formats (an array, or a dict of them by
    Keras input name for several inputs); `io_type`: their integer I/O type (tf.uint8 /
    tf.int8), None for float I/O.
    """
    import tensorflow as tf
    from tensorflow.lite.python.convert_phase import ConverterError

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    builtins, int8 = tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.TFLITE_BUILTINS_INT8
    converter.target_spec.supported_ops = [builtins]
    if fmt != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if fmt in ("int8", "fpga_int8"):
        converter.representative_dataset = _representative(calibration)
        if fmt == "fpga_int8":  # integer kernels only; the phone format picks its islands
            converter.target_spec.supported_ops = [int8]
        if io_type is not None:
            converter.inference_input_type = converter.inference_output_type = io_type
    try:  # Keras prints its SavedModel export, the quantizer its settings
        with _stdout_captured(), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Statistics for quantized inputs")
            if fmt == "int8":
                return _mobile_int8(converter, io_type or tf.float32)
            return converter.convert()
    except ConverterError as error:
        lines = [line for line in str(error).splitlines() if "op" in line.lower()]
        raise SpvitError(f"TFLite conversion to {fmt} failed (builtin ops only, no Flex): "
                         f"{(lines or [str(error)])[0].strip()[:300]}") from None


def _mobile_int8(converter, io_type):
    """The phone int8 graph: calibrated int8 in the weighted ops (`MOBILE_INT8_OPS`), float
    in every other op, so that XNNPACK runs the whole graph in one partition.

    XNNPACK has no int8 kernel for RSQRT, GELU, the attention's BATCH_MATMUL of two
    activations and more: a fully integer graph leaves those to TFLite's own kernels and
    splits the delegate around each (CIFAR-10 SPViT: 42 partitions, 2.8x this graph's
    latency and 1.6x fp32's on the x86 host; `benchmarks/int8_islands.log`).
    Integer-only accelerators take `fpga_int8`.
    Uses the converter's calibrate-only pass and the quantizer with a denylist, as
    `tf.lite.experimental.QuantizationDebugger` does, but with integer I/O.
    """
    from tensorflow.lite.python import convert as tf_convert

    converter._experimental_calibrate_only = True  # private API: tensorflow is pinned ~=2.21
    calibrated = converter.convert()
    float_ops = {op["type"] for op in Graph.read(calibrated).ops} - set(MOBILE_INT8_OPS)
    return tf_convert.mlir_quantize(calibrated, input_data_type=io_type,
                                    output_data_type=io_type, denylisted_ops=sorted(float_ops))


def quantize_int16x8(float_content, calibration):
    """int16-activation, int8-weight model from a float TFLite model, with ai-edge-quantizer."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signatures = Interpreter(model_content=float_content).get_signature_list()
    (key, signature), = signatures.items()
    (name,) = signature["inputs"]
    q = quantizer.Quantizer(bytearray(float_content), recipe.static_wi8_ai16())
    data = {key: [{name: image[None]} for image in calibration]}
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        result = q.quantize(q.calibrate(data), enable_progress_report=False)
    return bytes(result.quantized_model)


# ---- inspection ----


def _enum_names(enum):
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def _plain(value):
    """JSON-friendly copy of a flatbuffer options value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value.item() if isinstance(value, np.generic) else value


def _indices(values):
    return np.asarray(values if values is not None else [], np.int64).tolist()


@dataclasses.dataclass
class Graph:
    """Ops and tensors of a .tflite's main subgraph, read from the flatbuffer.

    ops: dicts with index, type, version, options, inputs and outputs (tensor indices, -1 for
    an absent optional input); tensors: dicts with name, dtype, shape, scale, zero_point,
    quantized_dimension and constant.
    """

    ops: list
    tensors: list
    inputs: list
    outputs: list

    @classmethod
    def read(cls, content):
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        op_names, type_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
        activations = _enum_names(schema.ActivationFunctionType)
        (graph,) = model.subgraphs
        tensors = []
        for t in graph.tensors:
            q = t.quantization
            scale = [] if q is None or q.scale is None else np.asarray(q.scale).tolist()
            zero = [] if q is None or q.zeroPoint is None else np.asarray(q.zeroPoint).tolist()
            data = model.buffers[t.buffer].data
            tensors.append({
                "name": t.name.decode() if isinstance(t.name, bytes) else t.name,
                "dtype": type_names[t.type].lower(),
                "shape": np.asarray(t.shape if t.shape is not None else []).tolist(),
                "scale": scale[0] if len(scale) == 1 else scale or None,
                "zero_point": zero[0] if len(zero) == 1 else zero or None,
                "quantized_dimension": q.quantizedDimension if len(scale) > 1 else None,
                "constant": data is not None and len(data) > 0,
            })
        ops = []
        for i, op in enumerate(graph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            kind = op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            if kind == "CUSTOM":
                kind = f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}"
            options = _plain(op.builtinOptions) if op.builtinOptions is not None else {}
            if "fusedActivationFunction" in options:
                options["fusedActivationFunction"] = activations[options["fusedActivationFunction"]]
            ops.append({
                "index": i, "type": kind, "version": code.version, "options": options,
                "inputs": _indices(op.inputs), "outputs": _indices(op.outputs),
            })
        return cls(ops, tensors, _indices(graph.inputs), _indices(graph.outputs))

    def op_counts(self):
        return dict(sorted(collections.Counter(op["type"] for op in self.ops).items()))

    def op_versions(self):
        versions = collections.defaultdict(set)
        for op in self.ops:
            versions[op["type"]].add(op["version"])
        return {k: sorted(v) for k, v in sorted(versions.items())}

    def float_ops(self):
        """Ops touching a float32/float16 tensor (weights excluded: constants are not computed)."""
        return [op for op in self.ops if any(
            self.tensors[t]["dtype"] in ("float32", "float16") and not self.tensors[t]["constant"]
            for t in op["inputs"] + op["outputs"] if t >= 0)]

    def check_builtin(self, what):
        custom = sorted({op["type"] for op in self.ops if op["type"].startswith("CUSTOM")})
        if custom:
            raise SpvitError(f"{what} contains non-builtin ops {custom}; the export allows TFLite "
                             "builtin ops only")


# ---- GPU delegate ----

# Ops TFLite's GPU delegate implements (tensorflow/lite/tools/versioning/gpu_compatibility.cc,
# restated). The pip Analyzer's gpu_compatibility check flags nothing on this stack (it calls a
# model with TOPK_V2 and BROADCAST_TO compatible), so the exporter applies these rules itself.
_GPU_OPS = frozenset("""
    ABS ADD AVERAGE_POOL_2D BATCH_MATMUL CAST CONCATENATION CONV_2D COS DEPTHWISE_CONV_2D
    DEQUANTIZE DIV ELU EQUAL EXP FLOOR FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL
    HARD_SWISH LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC MAXIMUM MAX_POOL_2D MEAN
    MINIMUM MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN
    REDUCE_PROD RELU RELU6 RESHAPE RSQRT SELECT SELECT_V2 SIN SLICE SOFTMAX SPLIT SPLIT_V SQRT
    SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE
""".split())
_GPU_CASTS = {("bool", "float32"), ("float32", "bool"), ("float32", "int32"),
              ("int32", "float32"), ("int32", "int32"), ("float32", "float32")}


def _gpu_problem(op, tensors):
    """Why the GPU delegate would leave `op` to the CPU, or None."""
    kind, options = op["type"], op["options"]
    ins = [tensors[t] for t in op["inputs"] if t >= 0]
    out = tensors[op["outputs"][0]]
    if kind not in _GPU_OPS:
        return "op not implemented by the GPU delegate"
    if kind == "CAST" and (ins[0]["dtype"], out["dtype"]) not in _GPU_CASTS:
        return f"CAST {ins[0]['dtype']} -> {out['dtype']} not implemented"
    if kind == "GATHER":
        if op["version"] > 1:  # batch_dims or int8 gathers; devices reject them
            return f"GATHER v{op['version']} (the delegate implements v1)"
        if len(ins[1]["shape"]) != 1 or ins[1]["dtype"] != "int32" or ins[0]["dtype"] == "int32":
            return "GATHER needs 1-D int32 indices and non-int32 values"
    if kind in ("STRIDED_SLICE", "SLICE"):
        if len(ins[0]["shape"]) not in (3, 4):
            return f"{kind} on a {len(ins[0]['shape'])}-D tensor (3-D/4-D only)"
        masks = [m for m in ("shrinkAxisMask", "newAxisMask", "ellipsisMask") if options.get(m)]
        if masks:
            return f"STRIDED_SLICE with {', '.join(masks)}"
    if kind == "DEPTHWISE_CONV_2D" and options.get("depthMultiplier", 1) != 1 \
            and ins[0]["shape"][-1] != 1:
        return "depthwise conv with depth_multiplier != 1 on more than one input channel"
    if kind == "FULLY_CONNECTED" and options.get("keepNumDims") \
            and len(ins[0]["shape"]) != len(out["shape"]):
        return "FULLY_CONNECTED keep_num_dims with a rank change"
    if kind in ("SELECT", "SELECT_V2") and any(t["dtype"] not in ("float32", "float16")
                                               for t in ins[1:]):
        return "SELECT on non-float values"
    if kind == "DEQUANTIZE" and ins[0]["dtype"] == "int16":
        return "int16 DEQUANTIZE"
    return None


@contextlib.contextmanager
def _stdout_captured():
    """Captures file descriptor 1, where TFLite's C++ code prints (Analyzer, quantizer)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        text = []
        try:
            yield text
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            capture.seek(0)
            text.append(capture.read().decode("utf-8", "replace"))


def _analyzer_verdict(content):
    """The GPU lines of tf.lite's Analyzer report."""
    import tensorflow as tf

    with _stdout_captured() as text:
        tf.lite.experimental.Analyzer.analyze(model_content=content, gpu_compatibility=True)
    lines = [line.strip() for line in text[0].splitlines()]
    return [line for line in lines
            if "GPU" in line and ("compatib" in line.lower() or "WARNING" in line)]


def gpu_compatibility(content, graph):
    """What the GPU delegate would run: the Analyzer's verdict and the rule check."""
    fallback = [
        {"index": op["index"], "op": op["type"], "version": op["version"], "reason": reason}
        for op in graph.ops
        if (reason := _gpu_problem(op, graph.tensors)) is not None
    ]
    return {
        "analyzer": _analyzer_verdict(content),
        "compatible": not fallback,
        "cpu_fallback": dict(collections.Counter(f"{f['op']}: {f['reason']}" for f in fallback)),
        "cpu_fallback_ops": fallback,
        "op_versions": graph.op_versions(),
    }


# ---- running ----


def _input_values(pixels, detail, kind, mean, std):
    """What the TFLite input tensor takes for uint8 `pixels` (B, H, W, 3)."""
    x = pixels.astype(np.float32)
    if kind == "float":
        x = (x - mean) / std
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f":
        return x.astype(dtype)
    if scale:  # quantized input: the graph's float value is scale * (q - zero_point)
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    return (x - (128 if dtype == np.int8 else 0)).astype(dtype)  # raw bytes cast in the graph


def _output_values(values, detail):
    scale, zero_point = detail["quantization"]
    values = values.astype(np.float32)
    return (values - zero_point) * scale if scale else values


def run_tflite(content, pixels, kind, mean, std):
    """Float logits (N, classes) of a .tflite on uint8 `pixels`, one image per invoke."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    logits = []
    for image in pixels:
        interpreter.set_tensor(inp["index"], _input_values(image[None], inp, kind, mean, std))
        interpreter.invoke()
        logits.append(_output_values(interpreter.get_tensor(out["index"]), out)[0])
    return np.stack(logits)


def keras_logits(model, pixels, mean, std, batch_size=64):
    """The float model's logits, traced once: called eagerly, the TF backend would trace and
    XLA-compile the selector's grouped convolutions again for every batch."""
    import tensorflow as tf

    predict = tf.function(lambda images: model(images, training=False))
    batches = (pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size))
    return np.concatenate([predict((b.astype(np.float32) - mean) / std).numpy() for b in batches])


# ---- data ----


def load_pixels(source, split, count, image_size, crop_ratio, seed=0):
    """(uint8 images (N, H, W, 3), int32 labels, class names): `count` images of `split`.

    A seeded shuffle of the whole split, since sources list images class by class. Images get
    the evaluation geometry of `spvit_tf.data.resize_center_crop`, rounded to bytes as a
    camera app would feed them.
    """
    from spvit_tf.data import eval_pixels, load_split

    data = load_split(source, split)
    if count < 1:
        raise SpvitError(f"need at least one {split} example, got {count}")
    ds = data.records(shuffle=True, seed=seed).take(count)
    ds = ds.map(lambda encoded, label: (eval_pixels(encoded, image_size, crop_ratio), label))
    ds = ds.batch(256)
    images, labels = zip(*ds.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels), tuple(data.class_names)


# ---- cards ----


def _versions(fmt):
    import ai_edge_litert
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__,
                "ai_edge_litert": ai_edge_litert.__version__}
    if fmt == "int16x8":
        from importlib.metadata import version

        versions["ai_edge_quantizer"] = version("ai-edge-quantizer")
    return versions


_FEED = {
    "uint8": "RGB bytes 0-255 as decoded and cropped; (x - mean) / std happens inside the graph",
    "int8": "RGB bytes minus 128 (int8); (x - mean) / std happens inside the graph",
    "pixels": "RGB bytes 0-255 quantized with the input's scale and zero point (1 and 0 for "
    "uint8, 1 and -128 for int8: the bytes themselves); (x - mean) / std happens inside the graph",
    "float": "float32 (pixel - mean) / std per channel of RGB pixels 0-255",
    "float pixels": "RGB pixels 0-255 as float32, not normalised (the bytes converted to float); "
    "(x - mean) / std happens inside the graph",
}


def _feed(kind, tensor):
    """How to feed an input tensor of graph input `kind`, for cards and metadata."""
    return _FEED["float pixels" if kind == "pixels" and tensor["dtype"] == "float32" else kind]


def _tensor_spec(tensor):
    return {key: tensor[key] for key in ("name", "shape", "dtype", "scale", "zero_point")}


def model_card(*, stem, fmt, source, model, graph_name, content, graph, kind, checks, evaluation,
               tflite_metadata=None, gpu=None):
    """The JSON card of one exported file (read by people, apps and the benchmarks)."""
    from spvit_tf.flops import model_cost

    cost = model_cost(model)
    config = model.get_config()
    islands = collections.Counter(op["type"] for op in graph.float_ops())
    card = {
        "format": CARD_FORMAT,
        "file": f"{stem}_{fmt}.tflite",
        "export_format": fmt,
        "model": source.model_name,
        "family": type(model).family,
        "model_config": dict(source.model_config),
        "weights": source.weights,
        "pruning": config.get("pruning"),
        "tokens_per_block": list(cost.tokens_per_block),
        "gflops": cost.gflops,
        "params": int(model.count_params()),
        "graph": graph_name,
        "input": {
            **_tensor_spec(graph.tensors[graph.inputs[0]]),
            "layout": "NHWC, RGB",
            "feed": _feed(kind, graph.tensors[graph.inputs[0]]),
            "value_range": [0, 255] if kind != "float" else None,
            "mean": source.mean.tolist(),
            "std": source.std.tolist(),
            "preprocessing": f"resize the shorter side to image_size / crop_ratio (bicubic, "
            f"antialiased), centre-crop image_size; crop_ratio {source.crop_ratio}",
        },
        "output": {**_tensor_spec(graph.tensors[graph.outputs[0]]),
                   "meaning": "class logits (softmax not applied)"},
        "labels": LABELS_FILE,
        "tflite_metadata": tflite_metadata,
        "converter": _versions(fmt),
        "size_bytes": len(content),
        "ops": graph.op_counts(),
        "op_versions": graph.op_versions(),
        "checks": checks,
        "evaluation": evaluation,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if fmt == "dynamic":
        card["float_islands"] = "activations are float by design (dynamic range)"
    elif fmt in QUANTIZED:
        card["float_islands"] = {
            op: {"count": n, "why": _island_reason(fmt, op)}
            for op, n in sorted(islands.items())
        }
    if gpu is not None:
        card["gpu"] = gpu
    return card


def card_markdown(card):
    pruning = card["pruning"]
    lines = [
        f"# {card['file']}",
        "",
        f"{card['model']} ({card['family']}), {card['export_format']}, graph: {card['graph']}.",
        "",
        f"- pruning: {pruning['method']} at blocks {pruning['locations']} keeping "
        f"{pruning['keep_ratios']}; tokens per block {card['tokens_per_block']}"
        if pruning else "- pruning: none (dense)",
        f"- {card['gflops']:.3f} GFLOPs, {card['params'] / 1e6:.2f} M params, "
        f"{card['size_bytes'] / 1e6:.2f} MB",
        f"- input: {card['input']['dtype']} {card['input']['shape']} {card['input']['layout']}: "
        f"{card['input']['feed']}"
        + (f" (scale {card['input']['scale']}, zero point {card['input']['zero_point']})"
           if card["input"]["scale"] is not None else ""),
        f"- output: {card['output']['dtype']} {card['output']['shape']} logits; labels in "
        f"{card['labels']}",
        metadata.card_line(card.get("tflite_metadata")),
    ]
    evaluation = card["evaluation"]
    if evaluation:
        lines.append(
            f"- accuracy on {evaluation['examples']} images of {evaluation['data']}: "
            f"{evaluation['tflite_accuracy']:.4f} (Keras float {evaluation['keras_accuracy']:.4f}, "
            f"top-1 agreement {evaluation['top1_agreement']:.4f})")
    islands = card.get("float_islands")
    if isinstance(islands, dict):
        lines.append("- float ops: " + (", ".join(f"{k} x{v['count']}" for k, v in islands.items())
                                        or "none (all integer)"))
    if "gpu" in card:
        fallback = card["gpu"]["cpu_fallback"]
        lines.append("- GPU delegate: " + ("every op delegated" if not fallback else
                     "CPU fallback for " + "; ".join(f"{k} (x{n})" for k, n in fallback.items())))
    return "\n".join(lines) + "\n"


def fpga_report(stem, card, graph):
    """Every op of the integer graph with its tensors' dtype, shape, scale and zero point."""
    def tensor(t):
        return {"index": t, **graph.tensors[t]} if t >= 0 else None

    return {
        "format": REPORT_FORMAT,
        "tflite": f"{stem}_fpga_int8.tflite",
        "model": card["model"],
        "all_integer": not graph.float_ops(),
        "inputs": [tensor(t) for t in graph.inputs],
        "outputs": [tensor(t) for t in graph.outputs],
        "op_counts": graph.op_counts(),
        "ops": [
            {"index": op["index"], "type": op["type"], "version": op["version"],
             "options": op["options"], "inputs": [tensor(t) for t in op["inputs"]],
             "outputs": [tensor(t) for t in op["outputs"]]}
            for op in graph.ops
        ],
        "notes": "Quantized values are real = scale * (q - zero_point); per-channel weights list "
        "one scale per quantized_dimension entry. Biases are int32 with scale input_scale * "
        "weight_scale. GELU, SOFTMAX, LOGISTIC, LOG, LOG_SOFTMAX and RSQRT are int8 "
        "nonlinearities (256-entry lookup tables in TFLite's kernels). TOPK_V2 ranks int8 keep "
        "scores, ties broken by the lower index.",
    }


# ---- the export ----


@dataclasses.dataclass
class Images:
    """The uint8 images an export is checked on, with the float Keras model's logits.

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
    check_output_dir(options.output_dir, "--output_dir")
    if set(options.formats) & set(QUANTIZED) and not (source.data or options.eval_data):
        raise SpvitError("quantized formats need calibration images: pass --eval_data=SOURCE "
                         "(its training split calibrates) or export from a --workdir")


def _evaluation(tflite, keras, labels, data):
    if labels is None:
        return None
    keras_acc = float(np.mean(keras.argmax(1) == labels))
    tflite_acc = float(np.mean(tflite.argmax(1) == labels))
    return {
        "data": data, "split": "eval", "examples": int(len(labels)),
        "keras_accuracy": keras_acc, "tflite_accuracy": tflite_acc,
        "accuracy_drop": keras_acc - tflite_acc,
        "top1_agreement": float(np.mean(tflite.argmax(1) == keras.argmax(1))),
    }


def export(source, options, log=print):
    """Writes every requested format of `source` to `options.output_dir`; returns the cards."""
    check_options(options, source)
    formats = list(dict.fromkeys(options.formats))
    model = build_model(source)
    size, num_classes = model.image_size[0], model.num_classes
    class_names = source.class_names or tuple(str(i) for i in range(num_classes))
    if len(class_names) != num_classes:
        raise SpvitError(f"{len(class_names)} class names for a {num_classes}-class model")

    eval_source = options.eval_data or source.data
    images = labels = None
    if eval_source:
        images, labels, eval_classes = load_pixels(eval_source, "eval", options.eval_examples,
                                                   size, source.crop_ratio)
        if len(eval_classes) != num_classes or (source.class_names and eval_classes != class_names):
            raise SpvitError(f"{eval_source} has classes {list(eval_classes)[:5]}... but the model "
                             f"has {num_classes} ({list(class_names)[:5]}...): pick matching data")
    parity = images[:PARITY_IMAGES] if images is not None else np.random.default_rng(0).integers(
        0, 256, (PARITY_IMAGES, size, size, 3), dtype=np.uint8)
    calibration = None
    if set(formats) & set(QUANTIZED):
        calibration, _, _ = load_pixels(source.data or options.eval_data, "train",
                                        options.calibration_examples, size, source.crop_ratio,
                                        seed=1)
        # One pixel at 0 and one at 255 pin the calibrated input range to exactly [0, 255], so
        # quantized uint8/int8 inputs take camera bytes with scale 1.
        calibration[0, 0, 0], calibration[0, 0, 1] = 0, 255

    if metadata.load_schema() is None:
        log(metadata.MISSING)
    mean, std = source.mean, source.std
    checked = Images(
        calibration, parity, keras_logits(model, parity, mean, std), images, labels,
        keras_logits(model, images, mean, std) if images is not None else None, eval_source)
    os.makedirs(options.output_dir, exist_ok=True)
    atomic_write(os.path.join(options.output_dir, LABELS_FILE), "\n".join(class_names) + "\n")

    variants = [(source.name, model, "as trained", formats, options.io)]
    if options.gpu_friendly:
        gpu_formats = [f for f in formats if f in GPU_FORMATS] or ["fp32"]
        variants.append((f"{source.name}_gpu", gpu_twin(model), "selection=matmul", gpu_formats,
                         options.gpu_io))

    cards = []
    for stem, net, graph_name, variant_formats, io_type in variants:
        for fmt in variant_formats:
            card, files = _export_one(stem, fmt, net, io_type, source, checked, class_names,
                                      graph_name=graph_name, gpu_check=options.gpu_friendly)
            base = os.path.join(options.output_dir, f"{stem}_{fmt}")
            for suffix, data in files.items():
                atomic_write(base + suffix, data, mode="wb" if isinstance(data, bytes) else "w")
            log(_summary(card))
            cards.append(card)
    return cards


def _graph_inputs(pixels, kind, mean, std):
    """What the serving graph of input `kind` takes for uint8 `pixels`."""
    if kind == "uint8":
        return pixels
    if kind == "int8":
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    x = pixels.astype(np.float32)
    return x if kind == "pixels" else (x - mean) / std


def _export_one(stem, fmt, net, io_type, source, checked, class_names, graph_name, gpu_check):
    """(card, {suffix: file content}) of one format; raises before anything is written.

    The checks run on the file as written, metadata included."""
    import tensorflow as tf

    mean, std = source.mean, source.std
    kind = "pixels" if fmt == "fpga_int8" or (fmt == "int8" and io_type != "float") else io_type
    integer_io = None
    if fmt == "fpga_int8" or (fmt == "int8" and io_type in ("uint8", "int8")):
        integer_io = tf.int8 if fmt == "fpga_int8" or io_type == "int8" else tf.uint8
    keras_graph = serving_model(net, kind, mean, std)
    if fmt == "int16x8":
        content = quantize_int16x8(convert(keras_graph, "fp32"),
                                   _graph_inputs(checked.calibration, kind, mean, std))
    elif fmt in ("int8", "fpga_int8"):
        content = convert(keras_graph, fmt, _graph_inputs(checked.calibration, kind, mean, std),
                          integer_io)
    else:
        content = convert(keras_graph, fmt)
    what = f"{stem}_{fmt}"
    graph = Graph.read(content)
    graph.check_builtin(what)
    if fmt == "fpga_int8":
        _check_integer_only(graph, what)
    feed = _feed(kind, graph.tensors[graph.inputs[0]])
    content, metadata_entry = metadata.attach(content, metadata.for_export(
        stem=stem, fmt=fmt, source=source, model=net, graph_name=graph_name,
        input_tensor=graph.tensors[graph.inputs[0]], output_tensor=graph.tensors[graph.outputs[0]],
        normalized_input=kind == "float", feed=feed, class_names=class_names))
    logits = run_tflite(content, checked.parity, kind, mean, std)
    per_image = np.abs(logits - checked.parity_logits).max(axis=1)
    worst = float(np.median(per_image) if fmt == "fp16" else per_image.max())
    if fmt in TOLERANCE and not worst <= TOLERANCE[fmt]:
        raise SpvitError(f"{what}: TFLite logits differ from Keras by {worst:.3g} "
                         f"(> {TOLERANCE[fmt]}); the export is not faithful")
    evaluation = None
    if checked.evaluation is not None:
        evaluation = _evaluation(run_tflite(content, checked.evaluation, kind, mean, std),
                                 checked.logits, checked.labels, checked.data)
    card = model_card(
        stem=stem, fmt=fmt, source=source, model=net, graph_name=graph_name, content=content,
        graph=graph, kind=kind,
        checks={"parity_images": len(per_image), "max_abs_logit_diff": float(per_image.max()),
                "median_abs_logit_diff": float(np.median(per_image)),
                "tolerance": TOLERANCE.get(fmt),
                "tolerance_applies_to": "median" if fmt == "fp16" else "max"},
        evaluation=evaluation, tflite_metadata=metadata_entry,
        gpu=gpu_compatibility(content, graph) if gpu_check else None)
    files = {".tflite": content, ".json": json.dumps(card, indent=2) + "\n",
             ".md": card_markdown(card)}
    if fmt == "fpga_int8":
        files[".fpga_report.json"] = json.dumps(fpga_report(stem, card, graph), indent=2) + "\n"
    return card, files


def _check_integer_only(graph, what):
    islands = graph.float_ops()
    floats = [t for t in graph.tensors if t["dtype"] in ("float32", "float16")]
    io_types = {graph.tensors[t]["dtype"] for t in graph.inputs + graph.outputs}
    if islands or floats or io_types != {"int8"}:
        named = ", ".join(f"{op['type']} (op {op['index']})" for op in islands) or "constants"
        raise SpvitError(f"{what} is not integer-only: {len(floats)} float tensor(s) at {named}, "
                         f"I/O {sorted(io_types)}; the FPGA flow needs int8 everywhere")


def _summary(card):
    line = f"{card['file']}: {card['size_bytes'] / 1e6:.2f} MB, max |dlogit| " \
           f"{card['checks']['max_abs_logit_diff']:.2g}"
    if card["evaluation"]:
        e = card["evaluation"]
        line += (f", acc {e['tflite_accuracy']:.4f} (Keras {e['keras_accuracy']:.4f}, "
                 f"agree {e['top1_agreement']:.4f})")
    return line


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
    )
    check_options(options, source)
    logging.set_verbosity(logging.WARNING)  # the converter logs every SavedModel step at INFO
    from spvit_tf.errors import stderr_silenced

    with stderr_silenced():
        import tensorflow  # noqa: F401  (its C++ banner would bury our messages)
    cards = export(source, options)
    print(f"wrote {len(cards)} model(s) with cards to {options.output_dir}")


if __name__ == "__main__":
    _define_flags()
    app.run(run_cli(main), flags_parser=parse_flags)
