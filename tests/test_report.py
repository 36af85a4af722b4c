"""The results report (table, plots, README section) and the token-keep visualisation."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from spvit_tf import bench_results, report, stats, visualize
from spvit_tf.errors import SpvitError
from spvit_tf.workdir import write_run
from test_export import make_workdir

README = f"# title\n\nintro\n\n{report.BEGIN}\nold table\n{report.END}\n\ntail\n"


def fake_run(root, name, mode, top1, gflops, budget=None, ratios=(), seed=0, correct=None,
             order="cifar10|examples=all|order=files", legacy=False, model_config=None,
             training=None):
    """A finished workdir; `legacy`: as written before run.json held the run's identity
    (budget and seed only in flags.txt), which the report still reads."""
    workdir = root / name
    (workdir / "final").mkdir(parents=True)
    run = {"model": "deit_tiny_patch16_224", "model_config": model_config or {}, "mode": mode}
    if training:
        run["training"] = training
    if legacy:
        (workdir / "flags.txt").write_text(f"--mode={mode}\n--seed={seed}\n" + (
            f"--budget_gflops={budget}\n" if budget else ""))
    else:  # no flags.txt: the report joins on run.json's fields alone
        run.update(run_id=name, method=mode, seed=seed,
                   budget={"gflops": budget} if budget else None)
    write_run(workdir, run)
    (workdir / "final" / "eval.json").write_text(json.dumps({
        "eval_top1": top1, "eval_examples": 10000, "gflops": gflops,
        **({"keep_ratios": list(ratios)} if ratios else {}),
        **({"top1_correct": stats.encode_correct(correct), "eval_examples": len(correct),
            "eval_order": order} if correct is not None else {})}))
    return workdir


def fake_card(folder, workdir, fmt, size, accuracy=None, graph="as trained"):
    stem = f"cifar10_{workdir.name}{'_gpu' if graph != 'as trained' else ''}_{fmt}"
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.tflite").write_bytes(b"\0" * size)
    card = {"format": "spvit_tf.model_card.v1", "file": f"{stem}.tflite", "export_format": fmt,
            "graph": graph, "weights": str(workdir / "final" / "model.weights.h5"),
            "run": {"run_id": workdir.name},
            "size_bytes": size,
            "evaluation": None if accuracy is None else {"tflite_accuracy": accuracy}}
    (folder / f"{stem}.json").write_text(json.dumps(card))
    return folder / f"{stem}.tflite"


@pytest.fixture
def results(tmp_path):
    """A teacher and two pruned runs, their cards, a benchmark, and a README."""
    root = tmp_path / "results" / "cifar10"
    teacher = fake_run(root, "teacher", "dense", 0.80, 0.0836)
    spvit = fake_run(root, "spvit_b050", "spvit", 0.7925, 0.0495, 0.05, (0.631, 0.398))
    fake_run(root, "evit_b050", "evit", 0.7712, 0.0499, 0.05, (0.664, 0.441))
    fake_run(root, "spvit_b050_seed1", "spvit", 0.7810, 0.0495, 0.05, (0.631, 0.398), seed=1,
             legacy=True)
    ship = tmp_path / "ship"
    paths = [fake_card(ship, teacher, "fp32", 4_800_000), fake_card(ship, teacher, "int8", 1_300_000, 0.79),
             fake_card(ship, spvit, "fp32", 4_900_000), fake_card(ship, spvit, "fp32", 4_900_000,
                                                                  graph="selection=matmul")]
    rows = [bench_results.BenchResult.for_model(p, target="host", device="cpu", backend="cpu",
                                                num_threads=t, runs=10, median_ms=ms)
            for p, ms in zip(paths, (2.0, 0.5, 1.5, 9.9)) for t, ms in ((1, ms), (2, ms / 2))]
    bench_results.write_results(tmp_path / "bench", rows)
    (tmp_path / "README.md").write_text(README)
    return root, ship, tmp_path / "bench" / "results.json", tmp_path / "README.md"


def table_rows(table):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}


def test_report_table_numbers_come_from_the_logs(results):
    root, ship, bench, readme = results
    table = report.report(str(root), [str(ship)], str(bench), str(readme), shipped=str(ship))
    runs_table, seeds_head, seeds_table = table.partition("| method | budget GFLOPs | seeds |")
    rows = table_rows(runs_table)
    seeds = table_rows(seeds_head + seeds_table)
    assert seeds["SPViT (ours)"] == ["0.050", "2", "78.68 ± 0.81", "–"]  # no per-image logs
    assert seeds["EViT (CLS attention + fused token)"] == ["0.050", "1", "77.12 ± 0.00", "–"]
    assert list(rows)[1:] == ["teacher (dense)", "SPViT (ours)", "SPViT (ours), seed 1",
                              "EViT (CLS attention + fused token)"]  # header, then method order
    teacher, spvit, rerun, evit = (rows[k] for k in list(rows)[1:])
    assert rerun[:5] == ["0.050", "0.0495", "0.631, 0.398", "78.10", "-1.90"]
    assert teacher[:6] == ["–", "0.0836", "1", "80.00", "", "79.00"]
    assert teacher[6:] == ["2.00 / 1.00", "0.50 / 0.25", "4.80 / 1.30"]
    assert spvit[:5] == ["0.050", "0.0495", "0.631, 0.398", "79.25", "-0.75"]
    assert spvit[6:] == ["1.50 / 0.75", "– / –", "4.90 / –"]  # the _gpu variant is not fp32's
    assert evit[4] == "-2.88" and evit[6] == "– / –"
    text = readme.read_text()
    assert text.startswith("# title\n\nintro\n\n" + report.BEGIN + "\n**At the main budget, "
                           "0.050 GFLOPs")  # the verdict first (no setup: no architecture logged)
    assert "\n\n| method | budget GFLOPs | GFLOPs |" in text
    assert "old table" not in text and text.endswith(report.END + "\n\ntail\n")
    assert "![top1_vs_gflops](results/cifar10/top1_vs_gflops.png)" in text
    for name in ("top1_vs_gflops.png", "latency_vs_gflops.png"):
        assert (root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "results.md").read_text() == table
    report.report(str(root), [str(ship)], str(bench), str(readme))  # idempotent
    assert readme.read_text() == text
    files = table_rows((ship / "README.md").read_text())
    assert files["`cifar10_teacher_int8.tflite`"] == [
        "teacher", "int8", "as trained", "1.30", "79.00", "–", "0.50 / 0.25", "–"]
    assert files["`cifar10_spvit_b050_gpu_fp32.tflite`"][1:] == [
        "fp32", "selection=matmul", "4.90", "–", "–", "9.90 / 4.95", "–"]
    assert len(files) == 5  # header + the four shipped files


def budgets_card(folder, workdir, size, single_size):
    """The card of `export --budgets` with three signatures, subgraph 0 first (key order)."""
    stem = f"cifar10_{workdir.name}_budgets_fp32"
    (folder / f"{stem}.tflite").write_bytes(b"\0" * size)
    entries = {key: {"keep_ratios": ratios, "gflops": gflops,
                     "evaluation": {"tflite_accuracy": top1, "top1_agreement": agree}}
               for key, ratios, gflops, top1, agree in (
                   ("keep_0.46_0.212", [0.46, 0.212], 0.03773, 0.501, 0.999),
                   ("keep_0.631_0.398", [0.631, 0.398], 0.04939, 0.7925, 1.0),
                   ("keep_0.785_0.616", [0.785, 0.616], 0.06287, 0.803, 1.0))}
    entries["keep_0.785_0.616"]["host_latency"] = {"median_ms": 0.7, "threads": 1}
    card = {"format": "spvit_tf.model_card.v1", "file": f"{stem}.tflite", "export_format": "fp32",
            "graph": "as trained", "weights": str(workdir / "final" / "model.weights.h5"),
            "run": {"run_id": workdir.name}, "size_bytes": size,
            "evaluation": entries["keep_0.46_0.212"]["evaluation"], "signatures": entries,
            "budgets": {"first_subgraph": "keep_0.46_0.212", "size_ratio": size / single_size,
                        "single_budget_file": f"cifar10_{workdir.name}_fp32.tflite"}}
    (folder / f"{stem}.json").write_text(json.dumps(card))
    return folder / f"{stem}.tflite"


def test_a_multi_budget_file_is_a_row_per_signature_with_its_own_latency(results):
    """Each signature of an `export --budgets` file: its keep ratios, GFLOPs, top-1, the
    benchmark's latency for that signature (a plain invoke's row counts for subgraph 0; with
    no row, the exporter's own timing, marked), the file's size against the one-budget file,
    and the top-1 of the run trained at those keep ratios."""
    root, ship, bench, readme = results
    fake_run(root, "spvit_b063", "spvit", 0.801, 0.0629, 0.063, (0.785, 0.616))
    budgets = budgets_card(ship, root / "spvit_b050", 5_000_000, 4_900_000)
    rows, _, _ = bench_results.read_results(bench)
    one = rows[0]
    rows += [dataclasses.replace(one, model=budgets.stem, model_path=str(budgets),
                                 num_threads=threads, signature=key, median_ms=ms, backend=backend)
             for key, threads, ms, backend in (
                 ("", 1, 1.1, "cpu"), ("keep_0.631_0.398", 1, 1.3, "cpu"),
                 ("keep_0.631_0.398", 2, 0.7, "cpu"), ("keep_0.785_0.616", 1, 9.0, "xnnpack_off"))]
    bench_results.write_results(bench.parent, rows)
    table = report.report(str(root), [str(ship)], str(bench), str(readme), shipped=str(ship))
    shipped = (ship / "README.md").read_text()

    def signature_rows(text):
        return {cells[1]: cells[2:] for cells in (
            [c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith(f"| `{budgets.name}` |"))}

    want = {
        "`keep_0.46_0.212` (subgraph 0)": ["spvit_b050", "0.46, 0.212", "0.0377", "50.10",
                                           "0.9990", "1.10 / –", "5.00", "1.020×", "–"],
        "`keep_0.631_0.398`": ["spvit_b050", "0.631, 0.398", "0.0494", "79.25", "1.0000",
                               "1.30 / 0.70", "5.00", "1.020×", "spvit_b050: 79.25"],
        "`keep_0.785_0.616`": ["spvit_b050", "0.785, 0.616", "0.0629", "80.30", "1.0000",
                               "0.70 (export) / –", "5.00", "1.020×", "spvit_b063: 80.10"],
    }
    assert signature_rows(shipped) == want
    assert signature_rows(table) == want  # results.md and the README's section list it too
    assert report.BUDGETS_INTRO in shipped and report.BUDGETS_INTRO in readme.read_text()
    files = table_rows(shipped.split(report.BUDGETS_INTRO)[0])
    assert f"`{budgets.name}`" not in files and len(files) == 5  # one-graph files only
    assert files["`cifar10_spvit_b050_fp32.tflite`"][-2] == "1.50 / 0.75"  # not the budgets'
    runs = report.attach_exports(report.read_runs(root), [ship], bench)
    assert not report.budgets_table(runs, root)  # none in that folder


def test_seeds_table_pairs_spvit_with_each_baseline_on_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.75
    better = base | (rng.random(2000) < 0.2)
    root = tmp_path / "cifar10"
    fake_run(root, "teacher", "dense", 0.8, 0.0836)
    for seed in (0, 1):
        fake_run(root, f"spvit_s{seed}", "spvit", better.mean(), 0.05, 0.05, seed=seed,
                 correct=better)
    fake_run(root, "hard", "hard", base.mean(), 0.05, 0.05, correct=base)
    fake_run(root, "evit", "evit", 0.7, 0.05, 0.05)  # logged without per-image results
    fake_run(root, "static", "static", base.mean(), 0.05, 0.05, correct=base,
             order="cifar10|examples=2000|order=shuffled:0")  # other images: not paired
    rows = table_rows(report.seeds_table(report.read_runs(root)))
    gap = 100 * (better.mean() - base.mean())
    ours, hard = rows["SPViT (ours)"], rows["hard drop (DynamicViT-style)"]
    assert ours[1:3] == ["2", f"{100 * better.mean():.2f} ± 0.00"] and ours[3] == "–"
    assert hard[3].startswith(f"{gap:+.2f} [") and hard[3].endswith("P(≤ 0) = 0.000")
    assert rows["EViT (CLS attention + fused token)"][3] == "–"
    assert rows["static centre crop"][3] == "–"


def test_report_refuses_incomplete_inputs(results, tmp_path):
    root, ship, bench, readme = results
    readme.write_text("# no markers\n")
    with pytest.raises(SpvitError, match="results:start"):
        report.report(str(root), [str(ship)], str(bench), str(readme))
    assert readme.read_text() == "# no markers\n"
    (root / "hard_b050").mkdir()
    write_run(root / "hard_b050", {"mode": "hard"})
    with pytest.raises(SpvitError, match="hard_b050 has not finished"):
        report.read_runs(root)
    with pytest.raises(SpvitError, match="exactly one dense"):
        report.read_runs(fake_run(tmp_path / "other", "a", "spvit", 0.5, 0.05).parent)


def test_setup_and_verdict_are_recomputed_from_the_runs(tmp_path):
    """The results section opens with the setup the runs record and SPViT's standing at the
    main budget (the one most methods share), both recomputed from the logs."""
    arch = {"image_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4}
    pruned = {**arch, "pruning": {"locations": [2, 4]}}

    def training(epochs, frozen=0):
        return {"examples": 50000, "batch_size": 128, "steps_per_epoch": 390,
                "steps": 390 * epochs, "frozen_backbone_steps": 390 * frozen}

    root = tmp_path / "cifar10"
    fake_run(root, "teacher", "dense", 0.85, 0.0836, model_config=arch, training=training(120))
    for seed, top1 in ((0, 0.846), (1, 0.844)):
        fake_run(root, f"spvit_s{seed}", "spvit", top1, 0.054, 0.054, seed=seed,
                 model_config=pruned, training=training(6, 1))
    fake_run(root, "spvit_b063", "spvit", 0.849, 0.063, 0.063, model_config=pruned,
             training=training(6, 1))
    fake_run(root, "hard", "hard", 0.84, 0.054, 0.054, model_config=pruned,
             training=training(6, 1))
    fake_run(root, "evit", "evit", 0.847, 0.054, 0.054, model_config=pruned,
             training=training(6, 1))
    fake_run(root, "tome", "tome", 0.80, 0.054, 0.054, model_config=pruned,
             training=training(0))  # training-free: not a fine-tune schedule
    runs = report.read_runs(root)
    assert report.setup_markdown(runs) == (
        "The dense teacher is a ViT with 4×4 patches on 32×32 images (64 tokens), width 128, 6 "
        "blocks, 4 heads, trained from scratch for 120 epochs (46,800 steps of 128 images, "
        "50,000 training images): top-1 85.00. Every trained pruned run fine-tunes it for 6 "
        "epochs, of which the first 1 train only the selectors, the backbone frozen (methods "
        "without selectors train the backbone throughout). Tokens are pruned before blocks "
        "2, 4 (0-based) of 6.")
    verdict = report.verdict_markdown(runs)
    assert verdict.startswith(
        "**At the main budget, 0.054 GFLOPs (35.4% below the teacher's 0.0836):** SPViT's mean "
        "over 2 seeds is 84.50, 0.50 points under the teacher (85.00).")
    assert "EViT (CLS attention + fused token) 84.70 (SPViT -0.20)" in verdict
    assert verdict.endswith("SPViT is ahead of 2 of these 3.\n")
    table = report.results_markdown(runs)
    assert table.startswith(report.setup_markdown(runs) + "\n\n" + verdict + "\n| method |")
    (root / "evit" / "final" / "eval.json").write_text(json.dumps(
        {"eval_top1": 0.83, "eval_examples": 10000, "gflops": 0.054}))
    assert report.verdict_markdown(report.read_runs(root)).endswith(
        "SPViT is ahead of every one of them.\n")
    for other in ("hard", "evit", "tome"):
        (root / other / "final" / "eval.json").write_text(json.dumps(
            {"eval_top1": 0.86, "eval_examples": 10000, "gflops": 0.054}))
    assert report.verdict_markdown(report.read_runs(root)).endswith(
        "SPViT is behind every one of them.\n")
    for seed in (0, 1):  # without SPViT at the main budget there is no claim to make
        shutil.rmtree(root / f"spvit_s{seed}")
    assert report.verdict_markdown(report.read_runs(root)) == ""


@pytest.fixture(scope="module")
def pruned_workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("viz") / "run")


def test_keep_maps_match_the_masked_decisions(pruned_workdir):
    """The gathered indices drawn are the tokens the masked graph keeps, location by location."""
    from spvit_tf.data import load_pixels
    from spvit_tf.preprocessing import Preprocessor
    from spvit_tf.workdir import load_model

    model, run = load_model(str(pruned_workdir))
    preprocessor = Preprocessor.from_run(run)
    pixels, _, _ = load_pixels("cifar10_embedded", "eval", 4, preprocessor)
    maps = visualize.keep_maps(model, pixels, preprocessor)
    masked = model.forward(preprocessor.normalize(pixels), training=False, mode="mask")
    previous = np.ones((4, 64), bool)
    for (kept, dropped_now), record, k in zip(maps, masked.records, model.pruner.counts):
        decision = np.asarray(record["decision"]) > 0.5
        np.testing.assert_array_equal(kept.reshape(4, -1), decision)
        assert (kept.reshape(4, -1).sum(1) == k).all()
        np.testing.assert_array_equal(dropped_now.reshape(4, -1), previous & ~decision)
        previous = decision


def test_visualize_cli(pruned_workdir, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    import tensorflow as tf

    tf.io.write_file(str(image_dir / "a.png"), tf.io.encode_png(pixels))
    tf.io.write_file(str(image_dir / "b.jpg"), tf.io.encode_jpeg(pixels))
    (image_dir / "notes.txt").write_text("not an image")
    out = tmp_path / "fig" / "keep.png"

    def cli(*flags):
        return subprocess.run([sys.executable, "-m", "spvit_tf.visualize", *flags], cwd=REPO,
                              capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    result = cli(f"--workdir={pruned_workdir}", f"--images={image_dir}", f"--output={out}")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["keep.png"]  # nothing temporary left
    missing = cli(f"--workdir={pruned_workdir}", f"--images={tmp_path / 'nope.jpg'}",
                  f"--output={tmp_path / 'x.png'}")
    assert missing.returncode == 2 and "nope.jpg does not exist" in missing.stderr
    assert not (tmp_path / "x.png").exists()
    dense = make_workdir(tmp_path / "dense")
    run = json.loads((dense / "run.json").read_text())
    run["model_config"].pop("pruning")
    write_run(dense, run)
    import spvit_tf

    spvit_tf.create_model("deit_tiny_patch16_224", **run["model_config"]).save_weights(
        dense / "final" / "model.weights.h5")
    refused = cli(f"--workdir={dense}", f"--output={tmp_path / 'x.png'}")
    assert refused.returncode == 2 and "is a dense run" in refused.stderr


def test_readme_results_are_the_committed_logs():
    """The README's table, results.md and the shipped files' README regenerate exactly."""
    results = REPO / "results" / "cifar10"
    shipped = REPO / "tflite_models" / "cifar10"
    runs = report.attach_exports(report.read_runs(results), [results / "tflite", shipped],
                                 results / "bench" / "results.json")
    methods = {r.method for r in runs}  # ToMe: in rounds from the one with the 150-epoch teacher
    assert {"dense", "spvit", "hard", "evit", "static"} <= methods <= {
        "dense", "spvit", "hard", "evit", "static", "tome"}
    assert len([r for r in runs if r.method == "spvit"]) >= 3
    table = report.results_markdown(runs)
    readme = (REPO / "README.md").read_text()
    assert f"{report.BEGIN}\n{table}" in readme
    assert (results / "results.md").read_text() == table
    assert (shipped / "README.md").read_text() == (
        report.FILES_HEADER.format(name="cifar10") + report.files_table(runs, shipped))


def test_a_run_is_identified_by_run_json_or_by_the_legacy_flags_txt(tmp_path):
    from spvit_tf.workdir import run_identity

    new = fake_run(tmp_path, "a", "spvit", 0.7, 0.05, 0.05, seed=2)
    old = fake_run(tmp_path, "b", "spvit", 0.7, 0.05, 0.05, seed=2, legacy=True)
    assert not (new / "flags.txt").exists()
    want = {"method": "spvit", "budget": {"gflops": 0.05}, "seed": 2}
    assert run_identity(str(new)) == {"run_id": "a", **want}
    assert run_identity(str(old)) == {"run_id": "b", **want}
    dense = fake_run(tmp_path, "c", "dense", 0.8, 0.08, legacy=True)
    assert run_identity(str(dense)) == {"run_id": "c", "method": "dense", "budget": None, "seed": 0}
