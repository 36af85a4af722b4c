"""Per-op latency profiles from TFLite's `benchmark_model`, attributed to blocks and selectors.

The question a profile answers is "why is my pruned model not as fast as its FLOPs say": where
the milliseconds go, by op type and by the part of the network an op belongs to. Two sources,
one parser:

- the phone: `python -m spvit_tf.adb_benchmark --op_profiling` runs the phone build of
  `benchmark_model` with `--enable_op_profiling=true`;
- the host: `python -m spvit_tf.benchmark --profile --benchmark_model=PATH` runs a host build
  of the same tool. The LiteRT Python interpreter (`ai_edge_litert` 2.3) has no per-op profiler
  of its own, so without that binary the host has no profile, and the CLI says so.

The tool prints, after the timed runs, "Operator-wise Profiling Info for Regular Benchmark
Runs" with a "Run Order" table per subgraph: node type, start, first, avg ms, %, cdf%, mem KB,
times called, name (tab-aligned, or comma-separated with `--op_profiling_output_mode=csv`). A
node's name is its output tensor names and node index, `[out_a, out_b]:17`; the converter
names tensors after the Keras layer scopes (`.../blocks_3_1/attn_1/...`), which is what
attributes an op to `block 3` or `selector 3` here. Ops with no layer in their names (the
converter's own QUANTIZE/DEQUANTIZE tensors, fused constants) stay unattributed rather than
guessed. A delegate (XNNPACK, the default CPU backend) replaces the ops it takes by one fused
node, so for a per-layer breakdown profile with the builtin kernels (`xnnpack_off`); the
delegate's internal per-kernel timings, where it reports them, are kept as `delegate` rows.

Pure Python: the adb runner imports it on machines without TensorFlow.
"""

import collections
import dataclasses
import re

MARKER = "Operator-wise Profiling Info for Regular Benchmark Runs"
# benchmark_model's flags per backend, shared by the host and the phone runners.
BACKEND_FLAGS = {
    "cpu": ["--use_xnnpack=true"],
    "xnnpack_off": ["--use_xnnpack=false"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
}
PROFILE_FLAGS = ["--enable_op_profiling=true"]


def signature_flags(signature):
    """benchmark_model's flags to run signature `signature` of a file with several (`export
    --budgets`); none for "" (the file's first subgraph)."""
    return [f"--signature_to_run_for_benchmark={signature}"] if signature else []


_NAME = re.compile(r"^\[(?P<outputs>.*)\]:(?P<node>\d+)$")
_DELEGATE_NAME = re.compile(r"^Delegate/(?P<kernel>.*):(?P<node>\d+)$")
# Keras layer scopes in tensor names; Keras 3 suffixes each scope with `_<n>`.
_REGIONS = (
    (re.compile(r"(?:^|/)selector_(\d+)(?:_\d+)?/"), "selector {}"),
    (re.compile(r"(?:^|/)blocks_(\d+)(?:_\d+)?/"), "block {}"),
    (re.compile(r"(?:^|/)pool_(\d+)(?:_\d+)?/"), "pool {}"),
    (re.compile(r"(?:^|/)patch_embed(?:_\d+)?/"), "patch embed"),
    (re.compile(r"(?:^|/)(?:norm|head|head_dist)(?:_\d+)?/"), "head"),
)
# An op under the model's own scope but in no layer: token selection, the package token,
# class/position embeddings.
_MODEL_SCOPE = re.compile(r"^(?:functional(?:_\d+)*/)?[a-z][a-z0-9_]*/[^/]+$")


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One profiled node: per-invoke milliseconds (avg per call x calls per invoke)."""

    node: int | None
    op_type: str
    ms: float
    outputs: tuple = ()
    subgraph: int = 0
    delegate: bool = False  # a delegate's internal kernel, already inside a fused node's time

    @property
    def region(self):
        """`block 3`, `selector 3`, `pool 1`, `patch embed`, `head`, `model` (model-level
        glue: token selection, package token, embeddings) or None where the names do not say."""
        names = [part for output in self.outputs for part in output.split(";")]
        for name in names:  # the first name that says wins: a fused op is named after its first
            for pattern, label in _REGIONS:
                match = pattern.search(name)
                if match:
                    return label.format(*match.groups())
        if names and _MODEL_SCOPE.match(names[0]):
            return "model"
        return None


def _float(text):
    return float(text.strip().rstrip("%"))


def _row(line, subgraph, delegate):
    """An OpTime from one table line (tab-aligned or CSV), or None for anything else."""
    if "\t" in line:
        parts = [part.strip() for part in line.strip("\n").split("\t")]
        while parts and not parts[0]:
            parts.pop(0)
        cells, name = parts[:8], "\t".join(parts[8:])
    else:
        parts = [part.strip() for part in line.split(",", 8)]
        cells, name = parts[:8], parts[8] if len(parts) > 8 else ""
    if len(cells) < 8 or not name:
        return None
    try:
        avg_ms, calls = _float(cells[3]), int(float(cells[7]))
    except ValueError:  # a header line
        return None
    op_type = cells[0].split("/")[0]  # "CONV_2D/<kernel description>" in some builds
    match = _NAME.match(name)
    if match:
        outputs = tuple(o.strip() for o in match["outputs"].split(", ") if o.strip())
        return OpTime(int(match["node"]), op_type, avg_ms * calls, outputs, subgraph, delegate)
    match = _DELEGATE_NAME.match(name)
    if match:
        return OpTime(int(match["node"]), match["kernel"], avg_ms * calls, (), subgraph, True)
    return OpTime(None, op_type, avg_ms * calls, (), subgraph, delegate)


def parse_op_profile(text):
    """The OpTimes of the timed runs' "Run Order" tables, or [] when `text` has no profile.

    Only the regular runs count (the initialization profile before them is load time); each
    subgraph's table is read in order, and a "Delegate internal" table marks its rows.
    """
    start = text.find(MARKER)
    if start < 0:
        return []
    ops, subgraph, delegate, in_table = [], 0, False, False
    for line in text[start + len(MARKER):].splitlines():
        stripped = line.strip()
        graph = re.match(r"Subgraph \(index: (\d+)\) profile:", stripped)
        if graph:
            subgraph, delegate = int(graph.group(1)), False
        elif stripped.startswith("Primary graph profile"):
            subgraph, delegate = 0, False
        elif stripped.startswith("Delegate internal"):
            delegate = True
        if stripped.startswith("=====") and "=====" in stripped[5:]:
            in_table = "Run Order" in stripped
            continue
        if not in_table:
            continue
        if not stripped:
            in_table = False
            continue
        op = _row(line, subgraph, delegate)
        if op is not None:
            ops.append(op)
    return ops


def summarise(ops):
    """The profile table: one dict per (region, op type) with nodes, ms and share.

    Shares are of the profiled invoke time: the sum over nodes that are not a delegate's
    internal kernels (those are already inside their fused node). Sorted by ms, largest first.
    """
    total = sum(op.ms for op in ops if not op.delegate) or 1.0
    groups = collections.defaultdict(lambda: [0, 0.0])
    for op in ops:
        key = (op.region, op.op_type, op.delegate)
        groups[key][0] += 1
        groups[key][1] += op.ms
    rows = [
        {"region": region, "op_type": op_type, "delegate": delegate, "nodes": nodes,
         "ms": round(ms, 6), "share": round(ms / total, 6)}
        for (region, op_type, delegate), (nodes, ms) in groups.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: (-r["ms"], r["op_type"], r["region"] or ""))


def totals(profile, by):
    """(key, nodes, ms, share) per `by` ("op_type" or "region") over a summarised profile,
    delegate-internal rows left out; largest first."""
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for row in profile:
        if row["delegate"]:
            continue
        group = groups[row[by]]
        group[0] += row["nodes"]
        group[1] += row["ms"]
        group[2] += row["share"]
    return sorted(((key, *values) for key, values in groups.items()),
                  key=lambda t: (-t[2], str(t[0])))

