"""Model cards of exported files: the JSON card (read by people, apps, the benchmarks and the
report), its Markdown summary, and the FPGA op report of an integer-only file.

A card states what the file is (model, pruning schedule, GFLOPs, params, format, graph
variant, size, ops), how to feed it (input tensor, layout, value range, the `Preprocessor`
and its normalisation), what it outputs, what the exporter checked (logit parity with Keras,
accuracy on evaluation images), why ops of a quantized file compute in float, and, for
exports checked for the GPU delegate, which ops it would leave to the CPU.
"""

import collections
import datetime

from spvit_tf.preprocessing import VALUE_RANGE
from spvit_tf.tflite.convert import MOBILE_INT8_OPS, QUANTIZED
from spvit_tf.tflite.metadata import LABELS_FILE, card_line

CARD_FORMAT = "spvit_tf.model_card.v1"
REPORT_FORMAT = "spvit_tf.fpga_report.v1"

# Why an op of a quantized export computes in float, for the card.
ISLAND_REASONS = {
    "QUANTIZE": "entry into integer ops",
    "DEQUANTIZE": "exit from integer ops",
    "int8": "float by design: the phone int8 format quantizes only "
    f"{', '.join(MOBILE_INT8_OPS)}; XNNPACK runs the rest in float in the same partition",
    ("int16x8", "CAST"): "the uint8/int8 input is cast to float before the first quantize",
}

FEED = {
    "uint8": "RGB bytes 0-255 as decoded and cropped; (x - mean) / std happens inside the graph",
    "int8": "RGB bytes minus 128 (int8); (x - mean) / std happens inside the graph",
    "pixels": "RGB bytes 0-255 quantized with the input's scale and zero point (1 and 0 for "
    "uint8, 1 and -128 for int8: the bytes themselves); (x - mean) / std happens inside the graph",
    "float": "float32 (pixel - mean) / std per channel of RGB pixels 0-255",
    "float pixels": "RGB pixels 0-255 as float32, not normalised (the bytes converted to float); "
    "(x - mean) / std happens inside the graph",
}

# What the card's accuracies are measured on (`spvit_tf.preprocessing` says why).
EVALUATION_INPUT = ("uint8 pixels of the evaluation crop, as an app feeds them, for both the "
                    "file and the Keras model (training's evaluation feeds unrounded float "
                    "crops)")


def island_reason(fmt, op):
    """Why `op` of a quantized export in `fmt` computes in float."""
    return (ISLAND_REASONS.get((fmt, op)) or ISLAND_REASONS.get(op)
            or ISLAND_REASONS.get(fmt) or f"the {fmt} quantizer has no integer kernel for it here")


def feed(kind, tensor):
    """How to feed an input tensor of graph input `kind`, for cards and metadata."""
    return FEED["float pixels" if kind == "pixels" and tensor["dtype"] == "float32" else kind]


def converter_versions(fmt):
    """The versions of the tools that converted (and, for int16x8, quantized) a file."""
    import ai_edge_litert
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__,
                "ai_edge_litert": ai_edge_litert.__version__}
    if fmt == "int16x8":
        from importlib.metadata import version

        versions["ai_edge_quantizer"] = version("ai-edge-quantizer")
    return versions


def evaluation(tflite, keras, labels, data):
    """The card's "evaluation" entry from the file's and the Keras model's logits on the same
    images (None without labels)."""
    import numpy as np

    if labels is None:
        return None
    keras_acc = float(np.mean(keras.argmax(1) == labels))
    tflite_acc = float(np.mean(tflite.argmax(1) == labels))
    return {
        "data": data, "split": "eval", "examples": int(len(labels)),
        "measured_on": EVALUATION_INPUT,
        "keras_accuracy": keras_acc, "tflite_accuracy": tflite_acc,
        "accuracy_drop": keras_acc - tflite_acc,
        "top1_agreement": float(np.mean(tflite.argmax(1) == keras.argmax(1))),
    }


def _tensor_spec(tensor):
    return {key: tensor[key] for key in ("name", "shape", "dtype", "scale", "zero_point")}


def model_card(*, stem, fmt, source, model, graph_name, content, graph, kind, checks, evaluation,
               tflite_metadata=None, gpu=None):
    """The JSON card of one exported file.

    `source`: what was exported (`model_name`, `model_config`, `weights`, `preprocessor` and
    the training `run`'s identity, as `spvit_tf.export.Source` holds them); `model`: the Keras model converted; `graph`: the
    file's `spvit_tf.tflite.graph.Graph`; `kind`: its serving input (`convert.IO_TYPES`).
    The input's "mean"/"std" are on the 0-255 pixel scale an app subtracts them at;
    "preprocessor" is the contract itself as run.json stores it (0-1 scale, named there).
    """
    from spvit_tf.flops import model_cost

    cost = model_cost(model)
    config = model.get_config()
    preprocessor = source.preprocessor
    islands = collections.Counter(op["type"] for op in graph.float_ops())
    card = {
        "format": CARD_FORMAT,
        "file": f"{stem}_{fmt}.tflite",
        "export_format": fmt,
        "model": source.model_name,
        "family": type(model).family,
        "model_config": dict(source.model_config),
        "weights": source.weights,
        "run": source.run,
        "pruning": config.get("pruning"),
        "tokens_per_block": list(cost.tokens_per_block),
        "gflops": cost.gflops,
        "params": int(model.count_params()),
        "graph": graph_name,
        "input": {
            **_tensor_spec(graph.tensors[graph.inputs[0]]),
            "layout": "NHWC, RGB",
            "feed": feed(kind, graph.tensors[graph.inputs[0]]),
            "value_range": list(VALUE_RANGE) if kind != "float" else None,
            "mean": preprocessor.pixel_mean.tolist(),
            "std": preprocessor.pixel_std.tolist(),
            "preprocessing": preprocessor.describe(),
            "preprocessor": preprocessor.to_json(),
        },
        "output": {**_tensor_spec(graph.tensors[graph.outputs[0]]),
                   "meaning": "class logits (softmax not applied)"},
        "labels": LABELS_FILE,
        "tflite_metadata": tflite_metadata,
        "converter": converter_versions(fmt),
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
            op: {"count": n, "why": island_reason(fmt, op)}
            for op, n in sorted(islands.items())
        }
    if gpu is not None:
        card["gpu"] = gpu
    return card


def card_markdown(card):
    """The short Markdown card beside the file."""
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
        card_line(card.get("tflite_metadata")),
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
    budgets = card.get("budgets")
    if budgets:
        ratio = budgets["size_ratio"]
        lines.append(f"- {len(card['signatures'])} signatures, one per token budget, sharing the "
                     "weights" + (f": {ratio:.3f}x the size of {budgets['single_budget_file']}"
                                  if ratio else "")
                     + f"; subgraph 0 (the rest of this card) is {budgets['first_subgraph']}")
        for key, entry in card["signatures"].items():
            e, latency = entry.get("evaluation"), entry.get("host_latency") or {}
            lines.append(
                f"  - `{key}`: keep {entry['keep_ratios']}, {entry['gflops']:.3f} GFLOPs"
                + (f", accuracy {e['tflite_accuracy']:.4f} (Keras {e['keras_accuracy']:.4f})"
                   if e else "")
                + (f", host {latency['median_ms']:.3g} ms (1 thread)"
                   if latency.get("median_ms") is not None else ""))
    if "gpu" in card:
        fallback = card["gpu"]["cpu_fallback"]
        lines.append("- GPU delegate: " + ("every op delegated" if not fallback else
                     "CPU fallback for " + "; ".join(f"{k} (x{n})" for k, n in fallback.items())))
    return "\n".join(lines) + "\n"


def budgets_entry(card, signatures, single):
    """`card` (the card of a file with one signature per token budget, made for subgraph 0)
    with "signatures" ({key: its keep ratios, subgraph, tokens, GFLOPs, checks, evaluation and
    host latency}, in subgraph order) and "budgets" (the file's size against `single`, the
    card of the same export's one-signature file, which is how the shared weights are
    checked)."""
    card = dict(card, signatures=signatures, budgets={
        "shared_weights": "one trained model; each signature is its top-k at other keep "
        "ratios, the weights stored once",
        "first_subgraph": next(iter(signatures)),
        "single_budget_file": single["file"] if single else None,
        "single_budget_size_bytes": single["size_bytes"] if single else None,
        "size_ratio": card["size_bytes"] / single["size_bytes"] if single else None,
        "runtimes": "call a signature with LiteRT's signature runner (Interpreter"
        ".getSignatureRunner / CompiledModel); MediaPipe Tasks' ImageClassifier takes models "
        "with one subgraph only",
    })
    return card


def summary(card):
    """One log line about an exported file."""
    line = f"{card['file']}: {card['size_bytes'] / 1e6:.2f} MB, max |dlogit| " \
           f"{card['checks']['max_abs_logit_diff']:.2g}"
    if card["evaluation"]:
        e = card["evaluation"]
        line += (f", acc {e['tflite_accuracy']:.4f} (Keras {e['keras_accuracy']:.4f}, "
                 f"agree {e['top1_agreement']:.4f})")
    return line


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
