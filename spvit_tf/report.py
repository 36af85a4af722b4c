"""The results table and plots, regenerated from committed run logs only.

    python -m spvit_tf.report --results=results/cifar10 [--readme=README.md]

Reads every training workdir under `--results` (`run.json` with the run's identity,
`final/eval.json`), the model cards of their `.tflite` exports (`--tflite_dirs`; a card
carries its run's `run_id`, which ties it to the run) and the host benchmark's `results.json`. Writes
`results.md` (the table) and `top1_vs_gflops.png` / `latency_vs_gflops.png` into `--results`,
and `tflite_models/<results name>/README.md` (one row per shipped file, and one per signature
of a file with several token budgets); with `--readme`, the table replaces the part of that
file between the results markers. A multi-budget file's host latency is the benchmark's row
for each signature (`benchmark --all_signatures`).
Nothing is measured here: a missing log is a clear error or an empty cell, never a number.
"""

import dataclasses
import io
import os
import pathlib

from absl import app, flags

from spvit_tf.errors import SpvitError, first_line, parse_flags, run_cli
from spvit_tf.stats import decode_correct, paired_bootstrap, seed_summary
from spvit_tf.pruning.methods import get_method, method_names
from spvit_tf.workdir import (atomic_write, check_output_dir, check_output_file, read_json, read_run,
                              run_identity)

BEGIN, END = "<!-- results:start -->", "<!-- results:end -->"
# The dense teacher first, then the pruning methods in registry order, named and drawn as
# their method objects say.
METHOD_ORDER = ("dense",) + method_names()
METHOD_LABEL = {"dense": "teacher (dense)", **{m: get_method(m).label for m in method_names()}}
METHOD_MARKER = {"dense": "*", **{m: get_method(m).marker for m in method_names()}}


@dataclasses.dataclass
class RunResult:
    """What the logs say about one run and its exports."""

    name: str
    method: str
    budget_gflops: float | None
    gflops: float
    top1: float
    examples: int
    keep_ratios: tuple = ()
    seed: int = 0
    correct: object = None  # per-image top-1 correctness (numpy bool), where eval.json has it
    eval_order: str | None = None  # which images `correct` covers, in which order (stats.eval_order)
    tflite: dict = dataclasses.field(default_factory=dict)  # format -> card
    # (variant, threads) -> median; a multi-budget file's: (variant, threads, signature)
    latency_ms: dict = dataclasses.field(default_factory=dict)
    model_config: dict = dataclasses.field(default_factory=dict)  # run.json's
    training: dict = dataclasses.field(default_factory=dict)  # run.json's (runs since it has one)


def read_runs(results_dir):
    """RunResult per finished workdir directly under `results_dir`, teacher first."""
    runs = []
    for workdir in sorted(pathlib.Path(results_dir).iterdir()):
        eval_file = workdir / "final" / "eval.json"
        if not (workdir / "run.json").is_file():
            continue
        if not eval_file.is_file():
            raise SpvitError(f"{workdir} has not finished (no final/eval.json); finish or remove it")
        fix = "restore it or rerun the training"
        run, result = read_run(str(workdir)), read_json(eval_file, fix)
        try:
            identity = run_identity(str(workdir), run)
            runs.append(RunResult(
                name=identity["run_id"], method=identity["method"],
                budget_gflops=(identity["budget"] or {}).get("gflops"),
                gflops=result["gflops"], top1=result["eval_top1"],
                examples=result["eval_examples"],
                keep_ratios=tuple(result.get("keep_ratios", ())), seed=identity["seed"],
                correct=(decode_correct(result["top1_correct"], result["eval_examples"])
                         if "top1_correct" in result else None),
                eval_order=result.get("eval_order"),
                model_config=run.get("model_config") or {}, training=run.get("training") or {},
            ))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SpvitError(f"{workdir} holds a damaged run record ({type(error).__name__}: "
                             f"{first_line(error)} in run.json, flags.txt or final/eval.json); "
                             f"{fix}") from None
    if not runs:
        raise SpvitError(f"no training workdirs in {results_dir}; run results/<dataset>/run.sh")
    teachers = [r for r in runs if r.method == "dense"]
    if len(teachers) != 1:
        raise SpvitError(f"{results_dir} needs exactly one dense (teacher) run, has {len(teachers)}")
    return sorted(runs, key=lambda r: (METHOD_ORDER.index(r.method), -(r.budget_gflops or 1e9),
                                       r.seed))


def attach_exports(runs, tflite_dirs, bench_json=None):
    """Adds each run's export cards and benchmark medians (CPU backend) to `runs`; a row of a
    multi-budget file counts for its signature (a plain invoke runs subgraph 0)."""
    by_workdir = {r.name: r for r in runs}
    for folder in tflite_dirs:
        for card_file in sorted(pathlib.Path(folder).glob("*.json")):
            card = read_json(card_file, "export the model again or remove the file")
            if not isinstance(card, dict) or card.get("format") != "spvit_tf.model_card.v1" \
                    or not card.get("weights"):
                continue
            # The card's run identity; cards from before it name the run by its weights' path.
            workdir = (card.get("run") or {}).get("run_id") or \
                pathlib.Path(card["weights"]).parent.parent.name
            variant = card["export_format"] + ("_budgets" if card.get("signatures") else
                                               "_gpu" if card["graph"] != "as trained" else "")
            if workdir in by_workdir:
                by_workdir[workdir].tflite[variant] = {**card, "path": str(card_file.with_suffix(".tflite"))}
    if bench_json:
        from spvit_tf.bench_results import read_results

        rows, _, _ = read_results(bench_json)
        for run in runs:
            for variant, card in run.tflite.items():
                stem = pathlib.Path(card["file"]).stem
                signatures = card.get("signatures")
                for row in rows:
                    if row.model != stem or row.backend != "cpu" or row.status != "ok":
                        continue
                    if signatures:
                        key = row.signature or next(iter(signatures))
                        run.latency_ms[(variant, row.num_threads, key)] = row.median_ms
                    elif not row.signature:
                        run.latency_ms[(variant, row.num_threads)] = row.median_ms
    return runs


def _num(value, fmt):
    return "–" if value is None else format(value, fmt)


def markdown_table(runs):
    """The results table: one row per run, teacher first."""
    teacher = next(r for r in runs if r.method == "dense")
    head = ("| method | budget GFLOPs | GFLOPs | keep ratios | top-1 | Δ top-1 | int8 top-1 "
            "| fp32 ms 1T / 2T | int8 ms 1T / 2T | fp32 / int8 MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        fp32, int8 = r.tflite.get("fp32"), r.tflite.get("int8")
        int8_top1 = int8["evaluation"]["tflite_accuracy"] if int8 and int8.get("evaluation") else None
        latency = lambda fmt: (f"{_num(r.latency_ms.get((fmt, 1)), '.2f')} / "  # noqa: E731
                               f"{_num(r.latency_ms.get((fmt, 2)), '.2f')}")
        size = lambda card: _num(card["size_bytes"] / 1e6 if card else None, ".2f")  # noqa: E731
        delta = "" if r is teacher else f"{100 * (r.top1 - teacher.top1):+.2f}"
        lines.append(
            f"| {METHOD_LABEL[r.method]}{f', seed {r.seed}' if r.seed else ''} "
            f"| {_num(r.budget_gflops, '.3f')} | {r.gflops:.4f} "
            f"| {', '.join(f'{k:g}' for k in r.keep_ratios) or '1'} | {100 * r.top1:.2f} | {delta} "
            f"| {_num(None if int8_top1 is None else 100 * int8_top1, '.2f')} "
            f"| {latency('fp32')} | {latency('int8')} | {size(fp32)} / {size(int8)} |")
    examples = {r.examples for r in runs}
    notes = (f"Top-1 of the Keras model on {', '.join(map(str, sorted(examples)))} test images; "
             "int8 top-1 of the int8 `.tflite` through the LiteRT interpreter on the same images; "
             "latency: median of the host benchmark (LiteRT, XNNPACK, batch 1) at 1 and 2 threads.")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def seeds_table(runs):
    """Seed mean ± std of every method at every budget, and SPViT against each baseline at
    the same budget on the same test images (paired bootstrap over images, seeds averaged;
    `spvit_tf.stats`) where every run involved logged its per-image results over the same
    images in the same order (`eval_order`). Empty when no
    method has more than one seed and nothing can be paired."""
    groups = {}
    for r in runs:
        if r.method != "dense":
            groups.setdefault((r.method, r.budget_gflops), []).append(r)
    rows = []
    for (method, budget), group in groups.items():
        summary = seed_summary([100 * r.top1 for r in group])
        ours = groups.get(("spvit", budget))
        paired = "–"
        paired_runs = (ours or []) + group
        if (method != "spvit" and ours and all(r.correct is not None for r in paired_runs)
                and len({r.eval_order for r in paired_runs}) == 1):  # the same images, in order
            c = paired_bootstrap([r.correct for r in ours], [r.correct for r in group])
            paired = f"{c.delta:+.2f} [{c.low:+.2f}, {c.high:+.2f}], P(≤ 0) = {c.p_not_better:.3f}"
        rows.append((method, budget, summary, paired))
    if all(s.count == 1 and p == "–" for _, _, s, p in rows):
        return ""
    lines = ["| method | budget GFLOPs | seeds | top-1 mean ± std | SPViT − method, same images "
             "[95% CI] |", "|---|---|---|---|---|"]
    for method, budget, summary, paired in rows:
        lines.append(f"| {METHOD_LABEL[method]} | {_num(budget, '.3f')} | {summary.count} "
                     f"| {summary.mean:.2f} ± {summary.std:.2f} | {paired} |")
    return ("\n".join(lines) + "\n\nStd over seeds (sample std; 0 for one seed). The last column "
            "resamples the test images 10,000 times, the same draw for both methods.\n")


def _epochs(training, key="steps"):
    return f"{training[key] / training['steps_per_epoch']:g}"


def setup_markdown(runs):
    """The setup the runs record in run.json (architecture, schedule, pruning locations), as a
    sentence or two; parts a run does not record (runs from before `training`) are left out."""
    teacher = next(r for r in runs if r.method == "dense")
    c, t = teacher.model_config, teacher.training
    parts = []
    if {"patch_size", "embed_dim", "depth", "num_heads", "image_size"} <= c.keys():
        side = c["image_size"] // c["patch_size"]
        parts.append(f"The dense teacher is a ViT with {c['patch_size']}×{c['patch_size']} patches "
                     f"on {c['image_size']}×{c['image_size']} images ({side * side} tokens), width "
                     f"{c['embed_dim']}, {c['depth']} blocks, {c['num_heads']} heads")
        if t:
            parts[-1] += (f", trained from scratch for {_epochs(t)} epochs ({t['steps']:,} steps "
                          f"of {t['batch_size']} images, {t['examples']:,} training images)")
        parts[-1] += f": top-1 {100 * teacher.top1:.2f}."
    trained = {(_epochs(r.training), _epochs(r.training, "frozen_backbone_steps"))
               for r in runs if r.method != "dense" and r.training and r.training["steps"]}
    if len(trained) == 1:
        (epochs, frozen), = trained
        parts.append(f"Every trained pruned run fine-tunes it for {epochs} epochs"
                     + (f", of which the first {frozen} train only the selectors, the backbone "
                        "frozen (methods without selectors train the backbone throughout)"
                        if frozen != "0" else "") + ".")
    elif len(trained) > 1:
        parts.append("The pruned runs' schedules differ: see each run's run.json.")
    locations = {tuple((r.model_config.get("pruning") or {}).get("locations", ()))
                 for r in runs if r.method != "dense"}
    if len(locations) == 1 and c.get("depth"):
        where = ", ".join(map(str, next(iter(locations))))
        parts.append(f"Tokens are pruned before blocks {where} (0-based) of {c['depth']}.")
    return " ".join(parts)


def main_budget(runs):
    """The budget most methods were compared at (ties: the one with more runs), or None."""
    budgets = {}
    for r in runs:
        if r.method != "dense" and r.budget_gflops is not None:
            methods, count = budgets.get(r.budget_gflops, (set(), 0))
            budgets[r.budget_gflops] = (methods | {r.method}, count + 1)
    if not budgets:
        return None
    return max(budgets, key=lambda b: (len(budgets[b][0]), budgets[b][1], -b))


def verdict_markdown(runs):
    """SPViT's seed mean at the main budget against the teacher and against every other
    method's seed mean at that budget: the claim the results make, recomputed from the logs
    each time, so the prose around it cannot drift from them. Empty without SPViT there."""
    budget = main_budget(runs)
    teacher = next(r for r in runs if r.method == "dense")
    means = {}
    for r in runs:
        if r.method != "dense" and r.budget_gflops == budget:
            means.setdefault(r.method, []).append(100 * r.top1)
    if "spvit" not in means:
        return ""
    ours = seed_summary(means.pop("spvit"))
    gap = ours.mean - 100 * teacher.top1
    text = (f"**At the main budget, {budget:.3f} GFLOPs ({1 - budget / teacher.gflops:.1%} below "
            f"the teacher's {teacher.gflops:.4f}):** SPViT's mean over {ours.count} "
            f"seed{'s' * (ours.count > 1)} is {ours.mean:.2f}, {abs(gap):.2f} points "
            f"{'under' if gap < 0 else 'over'} the teacher ({100 * teacher.top1:.2f}).")
    if means:
        others = [(m, seed_summary(v).mean) for m, v in sorted(
            means.items(), key=lambda kv: METHOD_ORDER.index(kv[0]))]
        ahead = [m for m, mean in others if ours.mean > mean]
        text += (" Other methods' seed means there: " + "; ".join(
            f"{METHOD_LABEL[m]} {mean:.2f} (SPViT {ours.mean - mean:+.2f})" for m, mean in others)
            + ". SPViT is " + ("ahead of every one of them." if len(ahead) == len(others) else
                               "behind every one of them." if not ahead else
                               f"ahead of {len(ahead)} of these {len(others)}."))
    return text + "\n"


def results_markdown(runs):
    """What results.md and the README's results section hold: the setup and the verdict the
    logs give, the run table, then the seeds table and the multi-budget files' table when
    there are any."""
    setup = setup_markdown(runs)
    parts = [(setup + "\n") if setup else "", verdict_markdown(runs), markdown_table(runs),
             seeds_table(runs), budgets_table(runs)]
    return "\n".join(part for part in parts if part)


FILES_HEADER = """# {name}: shipped `.tflite` files

Generated by `python -m spvit_tf.report` from the model cards beside this file (written by
`python -m spvit_tf.export`) and the host benchmark log; do not edit by hand. Every file takes
RGB pixels `[1, 32, 32, 3]` with the normalisation inside the graph (`uint8` bytes;
`fpga_int8`: `int8`, the bytes minus 128; the `_gpu_` files: `float32` 0-255, as the GPU
delegate has no uint8 input cast) and outputs 10 logits in the order of `labels.txt`. Each
file also carries TFLite metadata (input spec, normalisation, `labels.txt` packed), so
MediaPipe Tasks' `ImageClassifier` loads the fp32, int8 and GPU files as they are and returns
class names; each `.md`/`.json` card has the full input spec, ops and checks. Accuracy: the `.tflite` itself
through the LiteRT interpreter on the CIFAR-10 test images; agreement: share of images whose
top-1 matches the float Keras model. Latency: median host latency (LiteRT, XNNPACK, batch 1).
See `android_benchmark/README.md` for benchmarking on a phone and (its section 5) the few lines
of Kotlin that load a file with MediaPipe's `ImageClassifier` or LiteRT's `CompiledModel`.

"""


def _in(card, folder):
    return pathlib.Path(card["path"]).parent.resolve() == pathlib.Path(folder).resolve()


def files_table(runs, folder):
    """Markdown of every card in `folder` (the shipped files) with its logged numbers: one
    row per file with one graph, then `budgets_table` for the files with several."""
    lines = ["| file | run | format | graph | MB | top-1 | agreement | ms 1T / 2T | GPU fallback |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for variant, card in sorted(run.tflite.items()):
            if not _in(card, folder) or card.get("signatures"):
                continue
            e = card.get("evaluation") or {}
            fallback = card.get("gpu", {}).get("cpu_fallback")
            gpu = "–" if fallback is None else (", ".join(fallback) or "none")
            lines.append(
                f"| `{card['file']}` | {run.name} | {card['export_format']} | {card['graph']} "
                f"| {card['size_bytes'] / 1e6:.2f} "
                f"| {_num(100 * e['tflite_accuracy'] if e else None, '.2f')} "
                f"| {_num(e.get('top1_agreement'), '.4f')} "
                f"| {_num(run.latency_ms.get((variant, 1)), '.2f')} / "
                f"{_num(run.latency_ms.get((variant, 2)), '.2f')} | {gpu} |")
    budgets = budgets_table(runs, folder)
    return "\n".join(lines) + "\n" + ("\n" + budgets if budgets else "")


BUDGETS_INTRO = """Several token budgets in one file (`export --budgets`): one signature per budget over one
copy of the weights, so an app switches budget at run time by calling another signature of
the file it loaded (LiteRT's signature runner; MediaPipe's `ImageClassifier` takes files with
one subgraph only, and a runtime that names no signature runs subgraph 0).

"""


def budgets_table(runs, folder=None):
    """Markdown of the files with one signature per token budget (in `folder` when given),
    one row per signature: its keep ratios, GFLOPs, top-1 and agreement (the file through
    LiteRT), host latency (the benchmark's row for that signature, else the exporter's own
    1-thread timing, marked), the whole file's size against its one-budget file, and the
    top-1 of the run of the same method trained at those keep ratios; "" when there is none."""
    lines = []
    for run in runs:
        for variant, card in sorted(run.tflite.items()):
            if not card.get("signatures") or (folder is not None and not _in(card, folder)):
                continue
            budgets = card.get("budgets") or {}
            ratio = budgets.get("size_ratio")
            for subgraph, (key, entry) in enumerate(card["signatures"].items()):
                e = entry.get("evaluation") or {}
                ms = [run.latency_ms.get((variant, threads, key)) for threads in (1, 2)]
                latency = f"{_num(ms[0], '.2f')} / {_num(ms[1], '.2f')}"
                export_ms = (entry.get("host_latency") or {}).get("median_ms")
                if ms == [None, None] and export_ms is not None:
                    latency = f"{export_ms:.2f} (export) / –"
                ratios = [round(k, 3) for k in entry["keep_ratios"]]
                trained = next((r for r in runs if r.method == run.method and not r.seed
                                and [round(k, 3) for k in r.keep_ratios] == ratios), None)
                lines.append(
                    f"| `{card['file']}` | `{key}`{' (subgraph 0)' if subgraph == 0 else ''} "
                    f"| {run.name} | {', '.join(f'{k:g}' for k in entry['keep_ratios'])} "
                    f"| {entry['gflops']:.4f} "
                    f"| {_num(100 * e['tflite_accuracy'] if e else None, '.2f')} "
                    f"| {_num(e.get('top1_agreement'), '.4f')} | {latency} "
                    f"| {card['size_bytes'] / 1e6:.2f} "
                    f"| {_num(ratio, '.3f')}{'' if ratio is None else '×'} "
                    f"| {f'{trained.name}: {100 * trained.top1:.2f}' if trained else '–'} |")
    if not lines:
        return ""
    head = ("| file | signature | run | keep ratios | GFLOPs | top-1 | agreement | ms 1T / 2T "
            "| MB | × one budget | trained at these ratios: top-1 |")
    notes = ("Top-1 and agreement: the signature through the LiteRT interpreter on the test "
             "images, agreement with its Keras model at the same keep ratios; ms: the host "
             "benchmark timing that signature (a signature call, with the runner's input and "
             "output copies); MB: the whole file; × one budget: its size over the run's "
             "one-budget file of the same format; the last column: the Keras top-1 of the run of "
             "the same method trained at those keep ratios, where there is one.")
    return (BUDGETS_INTRO + "\n".join([head, "|" + "---|" * (head.count("|") - 1), *lines])
            + "\n\n" + notes + "\n")


def plot(runs, results_dir):
    """top1_vs_gflops.png and latency_vs_gflops.png in `results_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for what, ylabel, value in (
        ("top1", "top-1 (%)", lambda r, fmt: 100 * r.top1),
        ("latency", "host latency, 1 thread (ms)", lambda r, fmt: r.latency_ms.get((fmt, 1))),
    ):
        fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
        formats = ("fp32",) if what == "top1" else ("fp32", "int8")
        for fmt in formats:
            for method in METHOD_ORDER:
                for reruns in (False, True):  # seed 0 as a curve, other seeds as bare markers
                    points = sorted((r.gflops, value(r, fmt)) for r in runs if r.method == method
                                    and bool(r.seed) == reruns and value(r, fmt) is not None)
                    if not points:
                        continue
                    xs, ys = zip(*points)
                    label = METHOD_LABEL[method] + ("" if len(formats) == 1 else f", {fmt}")
                    ax.plot(xs, ys, marker=METHOD_MARKER[method],
                            linestyle="-" if len(xs) > 1 and not reruns else "",
                            markersize=11 if method == "dense" else 7,
                            label=label + (", other seeds" if reruns else ""),
                            fillstyle="full" if fmt == "fp32" else "none")
        ax.set_xlabel("GFLOPs (32×32 input)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = pathlib.Path(results_dir) / f"{what}_vs_gflops.png"
        png = io.BytesIO()
        fig.savefig(png, format="png")
        plt.close(fig)
        atomic_write(os.fspath(path), png.getvalue(), mode="wb")
        paths.append(path)
    return paths


def replace_section(text, section, where):
    """`text` with the part between the results markers replaced by `section`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SpvitError(f"{where} needs one '{BEGIN}' line followed by one '{END}' line")
    head, rest = text.split(BEGIN)
    return head + BEGIN + "\n" + section + END + rest.split(END, 1)[1]


def report(results_dir, tflite_dirs, bench_json, readme=None, shipped=None):
    """Writes results.md and the plots (and the README section, and the shipped folder's
    README.md when `shipped` is one of `tflite_dirs`); returns the Markdown table."""
    runs = attach_exports(read_runs(results_dir), tflite_dirs, bench_json)
    table = results_markdown(runs)
    plots = plot(runs, results_dir)
    atomic_write(os.path.join(results_dir, "results.md"), table)
    if shipped:
        header = FILES_HEADER.format(name=pathlib.Path(shipped).name)
        atomic_write(os.path.join(shipped, "README.md"), header + files_table(runs, shipped))
    if readme:
        base = pathlib.Path(readme).parent.resolve()
        images = "".join(f"![{p.stem}]({os.path.relpath(p.resolve(), base)}) " for p in plots)
        text = pathlib.Path(readme).read_text(encoding="utf-8")
        atomic_write(readme, replace_section(text, table + "\n" + images.strip() + "\n", readme))
    return table


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; pass options as --name=value")
    results = FLAGS.results
    if not results or not os.path.isdir(results):
        what = "does not exist" if results and not os.path.exists(results) else "is not a folder"
        raise SpvitError(f"--results={results} {what}: pass the folder of training workdirs, "
                         "e.g. --results=results/cifar10")
    name = pathlib.Path(results).name
    shipped = os.path.join("tflite_models", name)
    tflite_dirs = FLAGS.tflite_dirs or [os.path.join(results, "tflite"), shipped]
    bench = FLAGS.bench or os.path.join(results, "bench", "results.json")
    if FLAGS.bench and not os.path.isfile(bench):
        raise SpvitError(f"--bench={bench} not found; run python -m spvit_tf.benchmark first")
    # Written into: the table and plots go to --results, README.md to the shipped folder.
    check_output_dir(results, "--results")
    if os.path.isdir(shipped) and shipped in tflite_dirs:
        check_output_dir(shipped, "--tflite_dirs")
    if FLAGS.readme:
        check_output_file(FLAGS.readme, "--readme")
    print(report(results, tflite_dirs, bench if os.path.isfile(bench) else None, FLAGS.readme,
                 shipped if os.path.isdir(shipped) and shipped in tflite_dirs else None))


if __name__ == "__main__":
    flags.DEFINE_string("results", None, "Folder of training workdirs (one dense teacher).")
    flags.DEFINE_list("tflite_dirs", [], "Folders of exported .tflite + cards; default: "
                      "<results>/tflite and tflite_models/<results name>.")
    flags.DEFINE_string("bench", None, "Host benchmark results.json; default: "
                        "<results>/bench/results.json if present.")
    flags.DEFINE_string("readme", None, "Markdown file whose results section is replaced.")
    app.run(run_cli(main), flags_parser=parse_flags)
