"""What TFLite's GPU delegate runs: the model variant it can take whole, and the rule check
that says which ops of a converted file it would leave to the CPU.

The delegate implements neither TOPK_V2 nor GATHER as the gathered token selection uses them,
so `gpu_twin` rebuilds a model with `selection="matmul"` (one-hot matmuls instead). The ops
it implements, and under which conditions, are restated from TFLite's
tensorflow/lite/tools/versioning/gpu_compatibility.cc: the pip Analyzer's gpu_compatibility
check flags nothing on this stack (it calls a model with TOPK_V2 and BROADCAST_TO
compatible), so `gpu_compatibility` applies these rules itself and reports the Analyzer's
verdict beside them.
"""

import collections

from spvit_tf.tflite.capture import captured_stdout
from spvit_tf.tflite.convert import retarget

GPU_FORMATS = ("fp32", "fp16")  # what the GPU delegate computes in
GPU_OPS = frozenset("""
    ABS ADD AVERAGE_POOL_2D BATCH_MATMUL CAST CONCATENATION CONV_2D COS DEPTHWISE_CONV_2D
    DEQUANTIZE DIV ELU EQUAL EXP FLOOR FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL
    HARD_SWISH LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC MAXIMUM MAX_POOL_2D MEAN
    MINIMUM MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN
    REDUCE_PROD RELU RELU6 RESHAPE RSQRT SELECT SELECT_V2 SIN SLICE SOFTMAX SPLIT SPLIT_V SQRT
    SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE
""".split())
GPU_CASTS = {("bool", "float32"), ("float32", "bool"), ("float32", "int32"),
             ("int32", "float32"), ("int32", "int32"), ("float32", "float32")}


def gpu_twin(model):
    """`model` with selection="matmul" (no TOPK_V2/GATHER, which the GPU delegate lacks) and
    the same weights, so both compute the same function; a dense model as it is."""
    return retarget(model, **({"selection": "matmul"} if model.get_config().get("pruning")
                              else {}))


def op_problem(op, tensors):
    """Why the GPU delegate would leave `op` (a `Graph` op) to the CPU, or None."""
    kind, options = op["type"], op["options"]
    ins = [tensors[t] for t in op["inputs"] if t >= 0]
    out = tensors[op["outputs"][0]]
    if kind not in GPU_OPS:
        return "op not implemented by the GPU delegate"
    if kind == "CAST" and (ins[0]["dtype"], out["dtype"]) not in GPU_CASTS:
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


def analyzer_verdict(content):
    """The GPU lines of tf.lite's Analyzer report."""
    import tensorflow as tf

    with captured_stdout() as text:
        tf.lite.experimental.Analyzer.analyze(model_content=content, gpu_compatibility=True)
    lines = [line.strip() for line in text[0].splitlines()]
    return [line for line in lines
            if "GPU" in line and ("compatib" in line.lower() or "WARNING" in line)]


def gpu_compatibility(content, graph):
    """What the GPU delegate would run of `content` (its `Graph` is `graph`): the Analyzer's
    verdict and, by the rule check, every op it would leave to the CPU and why."""
    fallback = [
        {"index": op["index"], "op": op["type"], "version": op["version"], "reason": reason}
        for op in graph.ops
        if (reason := op_problem(op, graph.tensors)) is not None
    ]
    return {
        "analyzer": analyzer_verdict(content),
        "compatible": not fallback,
        "cpu_fallback": dict(collections.Counter(f"{f['op']}: {f['reason']}" for f in fallback)),
        "cpu_fallback_ops": fallback,
        "op_versions": graph.op_versions(),
    }
