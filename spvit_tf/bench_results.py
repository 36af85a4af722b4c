"""The one result schema shared by the host and the Android benchmarks, and its writers.

Pure Python on purpose: the adb runner imports it on machines that have no TensorFlow, and
host and phone rows must land in identical Markdown/CSV/JSON files so that they can be
compared and merged.
"""

import csv
import dataclasses
import io
import json
import pathlib
import re

from spvit_tf.errors import SpvitError, first_line
from spvit_tf.workdir import atomic_write, read_json

# 2 added the per-op `profile`, 3 the `signature` run; older files still read (no profiles,
# every row its file's first subgraph)
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
STATUSES = ("ok", "failed")


@dataclasses.dataclass
class BenchResult:
    """One model run with one backend and thread count on one device.

    Latencies are per invoke, in milliseconds. `peak_memory_mb` is how much the process's
    peak resident memory grew while loading and running the model (host: `ru_maxrss` of a
    fresh worker process; Android: benchmark_model's "overall" max-RSS delta), so the two
    targets measure the same thing. Fields a tool cannot measure stay None (benchmark_model
    prints no p90, older builds no median). `signature`: the signature that ran, for a file
    with several (`export --budgets`); "" for a file's only graph. A file's row is compared
    with the other files' rows whatever signature each ran, so that one budget of a
    multi-budget file compares with its dense reference.
    """

    model: str
    model_path: str
    size_bytes: int
    target: str  # "host" or "android"
    device: str
    backend: str  # cpu (XNNPACK), xnnpack_off, gpu, nnapi
    num_threads: int | None
    runs: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    peak_memory_mb: float | None = None
    status: str = "ok"
    error: str = ""
    note: str = ""  # e.g. how many nodes a delegate took
    # Per-op profile (`spvit_tf.tflite.profile.summarise`): one dict per (region, op type)
    # with nodes, ms and share; None when the run was not profiled.
    profile: list | None = None
    signature: str = ""  # the signature key run, "" for the file's first subgraph

    @classmethod
    def for_model(cls, model, **fields):
        """A row for the .tflite at path `model` (a pathlib.Path), named after its stem."""
        return cls(model=model.stem, model_path=str(model), size_bytes=model.stat().st_size,
                   **fields)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    @property
    def name(self):
        """How tables, comparisons and FLOPs maps name the run: `row_name`."""
        return row_name(self.model, self.signature)

    @property
    def label(self):
        """How messages name the run: `<model>[ [<signature>]] <backend> t<threads>`."""
        return f"{self.name} {self.backend} t{self.num_threads}"

    @property
    def key(self):
        """Rows with the same key were measured under the same conditions."""
        return (self.target, self.device, self.backend, self.num_threads)

    def latency_ms(self):
        """(metric name, value): the median where measured, else the mean."""
        if self.median_ms is not None:
            return "median_ms", self.median_ms
        return "mean_ms", self.mean_ms


def row_name(model, signature=""):
    """`<model>`, or `<model> [<signature>]` for a run of one signature of a file with several:
    the one name of a timed graph, so several signatures of one file stay apart."""
    return f"{model} [{signature}]" if signature else model


def signature_keys(signatures, model):
    """The signature keys to run of `model` from a {model: key or [keys]} map: [""] (the
    file's first subgraph) when it has none."""
    value = (signatures or {}).get(model, "")
    return [value] if isinstance(value, str) else list(value)


FIELDS = [field.name for field in dataclasses.fields(BenchResult) if field.name != "profile"]
PROFILE_FIELDS = ["model", "signature", "device", "backend", "num_threads", "region", "op_type",
                  "delegate", "nodes", "ms", "share"]


@dataclasses.dataclass
class Comparison:
    """A pruned model against its dense reference under the same conditions.

    Both ratios are pruned / dense, so a token-pruned model that saves 30% of FLOPs but only
    10% of latency shows flops_ratio 0.70 next to latency_ratio 0.90.
    """

    dense: str
    pruned: str
    device: str
    backend: str
    num_threads: int | None
    metric: str
    dense_ms: float
    pruned_ms: float
    latency_ratio: float
    dense_gflops: float | None = None
    pruned_gflops: float | None = None
    flops_ratio: float | None = None


def compare(rows, dense, pruned, dense_gflops=None, pruned_gflops=None):
    """Latency ratio next to FLOPs ratio for every condition both models ran under.

    Only successful rows are paired; both sides use the median when both have it, else the
    mean, so that Android builds without percentiles still compare. `dense` and `pruned` are
    row names (`row_name`: the model, with its signature for a signature run).
    """
    flops_ratio = None
    if dense_gflops and pruned_gflops is not None:
        flops_ratio = pruned_gflops / dense_gflops
    pruned_rows = {r.key: r for r in rows if r.name == pruned and r.status == "ok"}
    comparisons = []
    for dense_row in rows:
        pruned_row = pruned_rows.get(dense_row.key)
        if dense_row.name != dense or dense_row.status != "ok" or pruned_row is None:
            continue
        metric = "median_ms"
        if dense_row.median_ms is None or pruned_row.median_ms is None:
            metric = "mean_ms"
        dense_ms, pruned_ms = getattr(dense_row, metric), getattr(pruned_row, metric)
        if not dense_ms or pruned_ms is None:
            continue
        comparisons.append(
            Comparison(
                dense=dense,
                pruned=pruned,
                device=dense_row.device,
                backend=dense_row.backend,
                num_threads=dense_row.num_threads,
                metric=metric,
                dense_ms=dense_ms,
                pruned_ms=pruned_ms,
                latency_ratio=pruned_ms / dense_ms,
                dense_gflops=dense_gflops,
                pruned_gflops=pruned_gflops,
                flops_ratio=flops_ratio,
            )
        )
    return comparisons


def cli_comparisons(rows, models, gflops, flops_given):
    """What both CLIs print after the table: with exactly two models (dense, pruned) or with
    FLOPs given on the command line, every later model against the first; else nothing. A
    file timed at several signatures is one model per signature (`row_name`)."""
    if len(models) != 2 and not flops_given:
        return []
    return compare_to_first(rows, list(dict.fromkeys(row.name for row in rows)), gflops)


def compare_to_first(rows, names, gflops):
    """Every later model against the first one (the dense reference); `names` and `gflops`'s
    keys are row names (`row_name`)."""
    dense = names[0]
    return [
        comparison
        for pruned in names[1:]
        for comparison in compare(rows, dense, pruned, gflops.get(dense), gflops.get(pruned))
    ]


# ---- inputs shared by both CLIs ----


def check_models(paths):
    """Validated .tflite paths; their stems name the rows, so they must be unique."""
    if not paths:
        raise SpvitError("no models given; pass --models=dense.tflite,pruned.tflite")
    models = [pathlib.Path(p) for p in paths]
    for path in models:
        if path.suffix.lower() != ".tflite":
            raise SpvitError(f"{path} is not a .tflite file; export the model to TFLite first")
        if not path.is_file():
            raise SpvitError(f"model {path} does not exist")
    stems = [path.stem for path in models]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise SpvitError(f"several models are named {duplicates}; rename them so rows differ")
    return models


SIGNATURE_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def check_signature(signature):
    """A --signature value both CLIs pass on (to the interpreter, or on the phone's command
    line): letters, digits, '_', '.' and '-' only; "" means the file's first subgraph."""
    if signature and not SIGNATURE_PATTERN.fullmatch(signature):
        raise SpvitError(f"bad --signature {signature!r}: a signature key has letters, digits, "
                         "'_', '.' and '-' only (export --budgets names them keep_<ratios>)")
    return signature or ""


def card_signatures(models, signature):
    """{model: `signature`} for the models whose card (the exporter's `<model>.json`) lists
    it among its "signatures", for a runner that cannot open the files themselves (the phone
    script); a model without a card or without signatures runs its one graph. One clear error
    for a model whose card lists other signatures only."""
    if not signature:
        return {}
    resolved = {}
    for model in models:
        card = pathlib.Path(model).with_suffix(".json")
        try:
            keys = sorted(json.loads(card.read_text(encoding="utf-8")).get("signatures") or {})
        except (OSError, json.JSONDecodeError, AttributeError):
            keys = []
        if signature in keys:
            resolved[model] = signature
        elif keys:
            raise SpvitError(f"{model} has no signature {signature!r}; its card lists "
                             f"{', '.join(keys)}")
    return resolved


def parse_threads(values):
    """The thread counts of a --num_threads list, positive integers in the given order."""
    try:
        threads = [int(v) for v in values]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise SpvitError(
            f"bad --num_threads {','.join(values)!r}; pass positive integers, e.g. 1,4"
        )
    return list(dict.fromkeys(threads))


def failure_line(rows, output_dir):
    """The `error:` line both CLIs print (and exit 1 on) when runs failed, else None.

    A failed row stays in the results, where its error is the record of what broke; the
    exit status is what a script or CI job sees, so a broken, truncated or empty model must
    not pass as a finished benchmark unless the caller says so (--allow_failures)."""
    failed = [r for r in rows if r.status != "ok"]
    if not failed:
        return None
    names = ", ".join(r.label for r in failed[:5])
    if len(failed) > 5:
        names += f" and {len(failed) - 5} more"
    first = " ".join(failed[0].error.split()) or "no error recorded"
    return (f"error: {len(failed)} of {len(rows)} runs failed ({names}), e.g. {failed[0].model}: "
            f"{first}; their rows are in {pathlib.Path(output_dir) / 'results.md'}; pass "
            "--allow_failures to exit 0 with failed rows")


def model_gflops(models, flops_flag=(), signatures=None):
    """{row name: GFLOPs} from --flops=name:gflops entries, else each model's card.

    The card is the exporter's `<model>.json` beside the .tflite; without one (or without a
    "gflops" key) the model simply has no FLOPs and comparisons show latency only. For a model
    run at signatures (`signatures`: {model: key or [keys]}) each is named `row_name(model,
    key)` and takes that signature's entry of the card; a --flops entry names the file and
    holds for each of its signatures.
    """
    given = {}
    for entry in flops_flag:
        name, _, value = entry.rpartition(":")
        try:
            given[pathlib.Path(name).stem] = float(value)
        except ValueError:
            raise SpvitError(
                f"bad --flops entry {entry!r}; use name:gflops, e.g. deit_s:4.6"
            ) from None
    names = {model.stem for model in models}
    unknown = sorted(set(given) - names)
    if unknown:
        raise SpvitError(f"--flops names {unknown} match no model in --models ({sorted(names)})")
    gflops = {}
    for model in models:
        keys = signature_keys(signatures, model)
        if model.stem in given:
            gflops.update({row_name(model.stem, key): given[model.stem] for key in keys})
            continue
        card = model.with_suffix(".json")
        if not card.is_file():
            continue
        try:
            document = json.loads(card.read_text(encoding="utf-8"))
            entries = document.get("signatures") or {}
            values = {key: (entries[key] if key in entries else document).get("gflops")
                      for key in keys}
        except (json.JSONDecodeError, AttributeError) as error:
            raise SpvitError(
                f"model card {card} is not a JSON object ({error}); fix or remove it"
            ) from None
        gflops.update({row_name(model.stem, key): float(value)
                       for key, value in values.items() if value is not None})
    return gflops


# ---- writers ----


def _cell(value):
    if value is None or value == "":
        return "-"
    if isinstance(value, float):  # sub-millisecond host timings keep 3 significant digits
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return re.sub(r"\s+", " ", str(value)).replace("|", "\\|")


def format_markdown(rows, comparisons=()):
    """The results table (and the pruned-vs-dense table) as GitHub Markdown."""
    header = [
        "model", "MB", "device", "backend", "threads", "runs", "median ms", "p90 ms",
        "mean ms", "min ms", "init ms", "first ms", "peak mem MB", "status",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        status = r.status if r.status == "ok" else f"failed: {r.error}"
        if r.note:
            status += f" ({r.note})"
        cells = [
            r.name, r.size_bytes / 1e6, r.device, r.backend, r.num_threads, r.runs, r.median_ms,
            r.p90_ms, r.mean_ms, r.min_ms, r.init_ms, r.first_ms, r.peak_memory_mb, status,
        ]  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if comparisons:
        header = [
            "dense", "pruned", "device", "backend", "threads", "latency", "dense ms",
            "pruned ms", "latency ratio", "FLOPs ratio", "latency / FLOPs",
        ]  # fmt: skip
        lines += ["", "Ratios are pruned / dense; latency / FLOPs above 1 is time the FLOPs miss.",
                  ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in comparisons:
            cells = [
                c.dense, c.pruned, c.device, c.backend, c.num_threads, c.metric.split("_")[0],
                c.dense_ms, c.pruned_ms, c.latency_ratio, c.flops_ratio,
                c.flops_ratio and f"{c.latency_ratio / c.flops_ratio:.3f}",  # 1.049 vs 1.05
            ]  # fmt: skip
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    for r in rows:
        if r.profile:
            lines += ["", *format_profile(r)]
    return "\n".join(lines) + "\n"


def format_profile(row):
    """Markdown lines of one row's per-op profile: time by op type, then by region."""
    from spvit_tf.tflite.profile import totals  # pure Python, like this module

    title = f"Per-op profile: {row.name}, {row.device}, {row.backend}, {row.num_threads} threads"
    lines = [f"#### {title}", "", "| op type | nodes | ms | share |", "|---|---|---|---|"]
    for op_type, nodes, ms, share in totals(row.profile, "op_type"):
        lines.append(f"| {_cell(op_type)} | {nodes} | {ms:.3f} | {share:.1%} |")
    lines += ["", "| block / selector | nodes | ms | share |", "|---|---|---|---|"]
    for region, nodes, ms, share in totals(row.profile, "region"):
        lines.append(f"| {region or 'unattributed'} | {nodes} | {ms:.3f} | {share:.1%} |")
    return lines


def format_csv(rows):
    """One CSV line per row, every schema field, empty cells for None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})
    return buffer.getvalue()


def format_profile_csv(rows):
    """Every profiled row's profile table, one CSV line per (row, region, op type)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PROFILE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        for entry in row.profile or ():
            writer.writerow({"model": row.model, "signature": row.signature,
                             "device": row.device, "backend": row.backend,
                             "num_threads": row.num_threads,
                             **{k: "" if v is None else v for k, v in entry.items()}})
    return buffer.getvalue()


def format_json(rows, comparisons=(), meta=None):
    """Rows, comparisons and run metadata (tool, device properties) in one document."""
    document = {
        "schema_version": SCHEMA_VERSION,
        "meta": meta or {},
        "results": [dataclasses.asdict(r) for r in rows],
        "comparisons": [dataclasses.asdict(c) for c in comparisons],
    }
    return json.dumps(document, indent=2) + "\n"


def write_results(output_dir, rows, comparisons=(), meta=None):
    """Writes results.md, results.csv and results.json (and profile.csv when a row has a
    per-op profile) atomically; returns their paths.

    All three are formatted before any is written, so bad data leaves the old set intact.
    """
    texts = {
        "md": format_markdown(rows, comparisons),
        "csv": format_csv(rows),
        "json": format_json(rows, comparisons, meta),
    }
    paths = {ext: pathlib.Path(output_dir) / f"results.{ext}" for ext in texts}
    if any(row.profile for row in rows):
        texts["profile_csv"] = format_profile_csv(rows)
        paths["profile_csv"] = pathlib.Path(output_dir) / "profile.csv"
    for ext, text in texts.items():
        atomic_write(paths[ext], text)
    return paths


def merge_results(earlier, now):
    """(rows, comparisons, meta) of the results `earlier` with the run `now` added (each a
    (rows, comparisons, meta) triple), for a benchmark that times a few files into the results
    of a larger one: a row of `now` replaces the earlier row of the same model, signature,
    target, backend and thread count, in place, and the rest of `now` follows; earlier
    comparisons that involve a row timed again are dropped. The meta is `now`'s, with both
    runs' FLOPs, `timed` (the rows this run timed) and `earlier_runs` (every earlier run's
    meta, oldest first), so that the file still says which rows were timed when."""
    (old_rows, old_comparisons, old_meta), (new_rows, new_comparisons, new_meta) = earlier, now

    def same(row):
        return (row.model, row.signature, row.target, row.backend, row.num_threads)

    fresh = {same(row): row for row in new_rows}
    rows = [fresh.pop(same(row), row) for row in old_rows] + list(fresh.values())
    timed = {row.name for row in new_rows}
    comparisons = [c for c in old_comparisons if c.dense not in timed and c.pruned not in timed]
    old_meta = dict(old_meta)
    meta = {**new_meta,
            "gflops": {**(old_meta.get("gflops") or {}), **(new_meta.get("gflops") or {})},
            "timed": [row.label for row in new_rows],
            "earlier_runs": old_meta.pop("earlier_runs", []) + [old_meta]}
    return rows, comparisons + list(new_comparisons), meta


def read_results(path):
    """(rows, comparisons, meta) from a results.json, e.g. to merge host and phone runs."""
    fix = "rerun the benchmark that wrote it"
    document = read_json(path, fix)
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version not in READABLE_VERSIONS:
        raise SpvitError(
            f"{path} has schema {version}, not one of {READABLE_VERSIONS}; rerun the benchmark "
            "with this version of spvit_tf"
        )
    try:
        rows = [BenchResult(**r) for r in document["results"]]
        comparisons = [Comparison(**c) for c in document["comparisons"]]
        return rows, comparisons, document["meta"]
    except (KeyError, TypeError) as error:
        raise SpvitError(f"{path} is damaged ({type(error).__name__}: {first_line(error)}); "
                         f"{fix}") from None
