"""The ops and tensors of a `.tflite`, read from its flatbuffer: `Graph`.

What the exporter's checks, cards and reports ask of a converted file (op types, versions and
options; tensor dtypes, shapes and quantization; which ops compute in float) comes from here,
read with LiteRT's own schema classes, so no interpreter has to be built to inspect a file.
"""

import collections
import dataclasses

import numpy as np

from spvit_tf.errors import SpvitError


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
    """Ops and tensors of one subgraph of a .tflite, read from the flatbuffer.

    ops: dicts with index, type, version, options, inputs and outputs (tensor indices, -1 for
    an absent optional input); tensors: dicts with name, dtype, shape, scale, zero_point,
    quantized_dimension and constant; signature: the key of the signature that runs this
    subgraph (None when the file names none).
    """

    ops: list
    tensors: list
    inputs: list
    outputs: list
    signature: str | None = None

    @classmethod
    def read(cls, content):
        """The graph of a .tflite with one subgraph (`read_all` for files with several)."""
        graphs = cls.read_all(content)
        if len(graphs) != 1:
            raise SpvitError(f"the model has {len(graphs)} subgraphs (signatures "
                             f"{[g.signature for g in graphs]}); read them with Graph.read_all")
        return graphs[0]

    @classmethod
    def read_all(cls, content):
        """Every subgraph of a .tflite, in file order."""
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        keys = {}
        for signature in model.signatureDefs or []:
            key = signature.signatureKey
            keys[signature.subgraphIndex] = key.decode() if isinstance(key, bytes) else key
        return [cls._subgraph(model, graph, keys.get(i)) for i, graph in enumerate(model.subgraphs)]

    @classmethod
    def _subgraph(cls, model, graph, signature):
        from ai_edge_litert import schema_py_generated as schema

        op_names, type_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
        activations = _enum_names(schema.ActivationFunctionType)
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
        return cls(ops, tensors, _indices(graph.inputs), _indices(graph.outputs), signature)

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
        """Raises unless every op is a TFLite builtin (no custom or Flex op)."""
        custom = sorted({op["type"] for op in self.ops if op["type"].startswith("CUSTOM")})
        if custom:
            raise SpvitError(f"{what} contains non-builtin ops {custom}; the export allows TFLite "
                             "builtin ops only")

    def check_integer_only(self, what):
        """Raises, naming the ops, unless no tensor is float and the I/O is int8 (the FPGA flow)."""
        islands = self.float_ops()
        floats = [t for t in self.tensors if t["dtype"] in ("float32", "float16")]
        io_types = {self.tensors[t]["dtype"] for t in self.inputs + self.outputs}
        if islands or floats or io_types != {"int8"}:
            named = ", ".join(f"{op['type']} (op {op['index']})" for op in islands) or "constants"
            raise SpvitError(f"{what} is not integer-only: {len(floats)} float tensor(s) at "
                             f"{named}, I/O {sorted(io_types)}; the FPGA flow needs int8 everywhere")
