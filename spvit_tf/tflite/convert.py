"""Keras model -> TFLite bytes: the serving graph, the converter settings of each format, and
the calibration of the quantized ones.

Every file is static batch 1 and TFLite builtin ops only (never Flex). Formats:
  fp32       the graph as trained.
  fp16       float16 weights, float32 compute on the CPU (half the size; GPUs run float16).
  dynamic    int8 weights, float activations (dynamic-range quantization).
  int8       full-integer for phones: int8 weights and activations, calibrated, in the weighted
             ops (`MOBILE_INT8_OPS`); every other op stays float (`convert` explains why).
  int16x8    int16 activations, int8 weights, by ai-edge-quantizer (the converter's own 16x8
             calibrator fails on these graphs: no min/max for constant-fed BROADCAST_TO/CAST).
  fpga_int8  integer-only: int8 kernels only, int8 input and output.

Serving inputs (`IO_TYPES`): `uint8` takes RGB bytes [1, H, W, 3] as decoded and cropped,
`int8` the bytes minus 128, `pixels` the bytes as float32 0-255, `float` the normalised image.
Except with `float` the `Preprocessor`'s normalisation is inside the graph, so an app feeds
camera pixels directly.
"""

import contextlib
import io
import warnings

import numpy as np

from spvit_tf.errors import SpvitError
from spvit_tf.tflite.capture import captured_stdout
from spvit_tf.tflite.graph import Graph

FORMATS = ("fp32", "fp16", "dynamic", "int8", "int16x8", "fpga_int8")
QUANTIZED = ("int8", "int16x8", "fpga_int8")  # activations quantized: calibrated
# What the phone int8 format computes in int8: the ops with weights, nearly all the MACs.
MOBILE_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
IO_TYPES = ("uint8", "int8", "float", "pixels")
SIGNATURE_FORMATS = ("fp32", "fp16", "dynamic")  # several signatures: uncalibrated formats only


def serving_model(model, kind, preprocessor=None):
    """`model` as a static batch-1 Keras graph on input `kind` (one of `IO_TYPES`).

    Batch 1 is fixed so TFLite needs no SHAPE/GATHER/PACK for the batch dimension. `kind`:
    uint8/int8 (integer bytes, cast and normalised in the graph), `pixels` (float 0-255,
    normalised in the graph; also what the quantized formats whose converter sets the integer
    I/O type are built from) or `float` (the model's own input, normalised by the caller).
    `preprocessor` (a `spvit_tf.preprocessing.Preprocessor`) normalises; `float` needs none.
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
        x = preprocessor.normalize(x)
    return keras.Model(inputs, model(x))


def serving_inputs(pixels, kind, preprocessor):
    """What the serving graph of input `kind` takes for uint8 `pixels` (N, H, W, 3)."""
    if kind == "uint8":
        return pixels
    if kind == "int8":
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    x = pixels.astype(np.float32)
    return x if kind == "pixels" else preprocessor.normalize(x)


def retarget(model, **pruning):
    """A fresh model of `model`'s config with pruning options `pruning` replaced, carrying
    `model`'s weights (same variables, same order), so both compute with the same weights.

    The pruning options that change nothing the weights hold (the selection's implementation,
    the keep ratios) give twins for other runtimes and other token budgets; a dense model
    keeps its config when `pruning` is empty.
    """
    config = model.get_config()
    if pruning:
        if not config.get("pruning"):
            raise SpvitError(f"{', '.join(sorted(pruning))} need a token-pruned model; this one "
                             "is dense")
        config["pruning"] = {**config["pruning"], **pruning}
    twin = type(model).from_config(config)
    twin.build_weights()
    twin.set_weights(model.get_weights())
    return twin


def _representative(inputs):
    """Calibration batches of one example each from an array (a single-input model) or a
    dict {input name: array} (the converter orders several inputs its own way)."""
    if isinstance(inputs, dict):
        count = len(next(iter(inputs.values())))
        return lambda: ({k: v[i][None].astype(np.float32) for k, v in inputs.items()}
                        for i in range(count))
    return lambda: ([image[None].astype(np.float32)] for image in inputs)


def convert(keras_model, fmt="fp32", calibration=None, io_type=None):
    """TFLite bytes of `keras_model` in `fmt` (not int16x8: `quantize_int16x8`), builtin ops only.

    `calibration`: float inputs of the quantized formats (an array, or a dict of them by
    Keras input name for several inputs); `io_type`: their integer I/O type (tf.uint8 /
    tf.int8), None for float I/O. A conversion failure is one `SpvitError` naming the op.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    _configure(converter, fmt)
    if fmt in ("int8", "fpga_int8"):
        converter.representative_dataset = _representative(calibration)
        if fmt == "fpga_int8":  # integer kernels only; the phone format picks its islands
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type is not None:
            converter.inference_input_type = converter.inference_output_type = io_type
    if fmt == "int8":
        return _run(lambda: _mobile_int8(converter, io_type or tf.float32), fmt)
    return _run(converter.convert, fmt)


def convert_signatures(keras_models, fmt="fp32"):
    """TFLite bytes with one signature per entry of `keras_models` ({signature key: a
    single-input serving model}), builtin ops only; `fmt` is one of `SIGNATURE_FORMATS`.

    Each signature takes input "image" and returns "logits"; the converter orders the
    subgraphs by signature key (`Graph.read_all` gives each subgraph's). The models are exported as one SavedModel (Keras' ExportArchive, as the converter
    does for one Keras model) so that the converter sees every variable once; twins of one
    model (`retarget`) hold equal weights, and the converter writes equal constant buffers
    once, so the signatures share their weights in the file (the export's card records the
    size against a one-signature file, which is how that is checked).
    """
    import tempfile

    import keras
    import tensorflow as tf

    if fmt not in SIGNATURE_FORMATS:
        raise SpvitError(f"a file with several signatures is one of {', '.join(SIGNATURE_FORMATS)}"
                         f" (no calibration per signature), not {fmt}")
    archive = keras.export.ExportArchive()
    for key, model in keras_models.items():
        (spec,) = model.inputs
        archive.track(model)
        archive.add_endpoint(key, _logits_endpoint(model),
                             [tf.TensorSpec(spec.shape, spec.dtype, name="image")])
    with tempfile.TemporaryDirectory() as folder:
        with captured_stdout(), contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            folder, signature_keys=list(keras_models))
        _configure(converter, fmt)
        return _run(converter.convert, fmt)


def _logits_endpoint(model):
    return lambda image: {"logits": model(image, training=False)}


def _configure(converter, fmt):
    """The converter settings every format shares: builtin ops, and its weight type."""
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "fp16":
        converter.target_spec.supported_types = [tf.float16]


def _run(conversion, fmt):
    """`conversion()` with the converter's output muted and its failure as one SpvitError."""
    from tensorflow.lite.python.convert_phase import ConverterError

    try:  # Keras prints its SavedModel export, the quantizer its settings
        with captured_stdout(), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Statistics for quantized inputs")
            return conversion()
    except ConverterError as error:
        lines = [line for line in str(error).splitlines() if "op" in line.lower()]
        raise SpvitError(f"TFLite conversion to {fmt} failed (builtin ops only, no Flex): "
                         f"{(lines or [str(error)])[0].strip()[:300]}") from None


def _mobile_int8(converter, io_type):
    """The phone int8 graph: calibrated int8 in the weighted ops (`MOBILE_INT8_OPS`), float
    in every other op, so that XNNPACK runs the whole graph in one partition.

    XNNPACK has no int8 kernel for RSQRT, GELU, the attention's BATCH_MATMUL of two
    activations and more: a fully integer graph leaves those to TFLite's own kernels and
    splits the delegate around each, which costs more than the integer arithmetic saves
    (`benchmarks/int8_islands.log` has the measurement).
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
