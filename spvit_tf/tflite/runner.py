"""Running a `.tflite` on images, and the Keras model it was converted from, on the same input.

Both take uint8 RGB pixels (N, H, W, 3), as `Preprocessor.pixels` gives them and an app feeds
them: the checks compare the file with its Keras model on what the file will really receive.
The file's input tensor decides how the pixels are fed (`input_values`): a float tensor gets
the pixels as floats, normalised first when the graph takes the normalised image (`float`);
a quantized integer tensor gets them quantized with its scale and zero point; an integer
tensor without quantization gets the raw bytes (minus 128 for int8), cast inside the graph.
Quantized outputs are dequantized, so both sides return float logits.
"""

import numpy as np

from spvit_tf.errors import SpvitError


def input_values(pixels, detail, kind, preprocessor=None):
    """What the TFLite input tensor `detail` (an interpreter input detail) takes for uint8
    `pixels` (B, H, W, 3) of a graph on input `kind`; `float` needs the `preprocessor`."""
    x = pixels.astype(np.float32)
    if kind == "float":
        if preprocessor is None:
            raise SpvitError("a float (normalised) input needs the model's preprocessor")
        x = preprocessor.normalize(x)
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f":
        return x.astype(dtype)
    if scale:  # quantized input: the graph's float value is scale * (q - zero_point)
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    return (x - (128 if dtype == np.int8 else 0)).astype(dtype)  # raw bytes cast in the graph


def output_values(values, detail):
    """Float values of an output tensor, dequantized when it is quantized."""
    scale, zero_point = detail["quantization"]
    values = values.astype(np.float32)
    return (values - zero_point) * scale if scale else values


def run_tflite(content, pixels, kind="uint8", preprocessor=None, signature=None):
    """Float logits (N, classes) of a .tflite on uint8 `pixels`, one image per invoke, with
    the LiteRT interpreter: its main subgraph, or the subgraph of signature key `signature`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    if signature is None:
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

        def invoke(values):
            interpreter.set_tensor(inp["index"], values)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])
    else:
        runner = signature_runner(interpreter, signature)
        ((name, inp),), ((output, out),) = (runner.get_input_details().items(),
                                            runner.get_output_details().items())

        def invoke(values):
            return runner(**{name: values})[output]
    return np.stack([output_values(invoke(input_values(image[None], inp, kind, preprocessor)),
                                   out)[0] for image in pixels])


def signature_runner(interpreter, signature):
    """The interpreter's runner of signature key `signature`, or one clear error naming the
    keys the file has."""
    keys = sorted(interpreter.get_signature_list())
    if signature not in keys:
        raise SpvitError(f"the model has no signature {signature!r}; its signatures: "
                         f"{', '.join(keys) or 'none'}")
    return interpreter.get_signature_runner(signature)


def keras_logits(model, pixels, preprocessor, batch_size=64):
    """The float Keras model's logits on uint8 `pixels`, normalised by `preprocessor`.

    Traced once: called eagerly, the TF backend would trace and XLA-compile the selector's
    grouped convolutions again for every batch.
    """
    import tensorflow as tf

    predict = tf.function(lambda images: model(images, training=False))
    batches = (pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size))
    return np.concatenate([predict(preprocessor.normalize(b)).numpy() for b in batches])
