"""The shipped CIFAR-10 `.tflite` files reach their cards' accuracy on the full test set.

What an app gets: each file run by the LiteRT interpreter on the 10,000 CIFAR-10 test images,
fed RGB bytes as its card says, must match the accuracy its card (and so the README) states
to within 0.2 points. Also checks the cards' promises that do not need data.
"""

import json
import pathlib

import numpy as np
import pytest

from conftest import SHARED, SHIPPED, require_shared, shipped_main_run

MAIN = shipped_main_run()
CIFAR10 = SHARED / "data" / "cifar10-jpeg.tar.gz"
CARDS = sorted(p for p in SHIPPED.glob("*.json") if not p.name.endswith(".fpga_report.json"))


def test_the_shipped_files_are_all_there():
    assert MAIN, f"no main SPViT run's files in {SHIPPED}"
    files = {p.stem for p in SHIPPED.glob("*.tflite")}
    expected = {f"cifar10_{run}_{fmt}" for run in ("teacher", MAIN)
                for fmt in ("fp32", "int8", "fpga_int8", "gpu_fp32")}
    expected.add(f"cifar10_{MAIN}_budgets_fp32")  # one signature per budget (run.sh)
    assert files == expected == {p.stem for p in CARDS}
    assert (SHIPPED / "labels.txt").read_text().split() == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for card in map(json.loads, map(pathlib.Path.read_text, CARDS)):
        assert card["evaluation"]["examples"] == 10_000, card["file"]
        if card["export_format"] == "fpga_int8":
            assert card["float_islands"] == {} and card["input"]["dtype"] == "int8"
        # what an app runtime reads from the file itself (MediaPipe: tests/test_app_runtime.py)
        assert card["tflite_metadata"]["written"], card["file"]
        if card["graph"] == "selection=matmul":  # the GPU files: float pixels, all delegated
            assert card["input"]["dtype"] == "float32" and card["gpu"]["cpu_fallback"] == {}


def test_the_multi_budget_file_holds_the_trained_budget_and_the_weights_once():
    """The budgets file: the run's own keep ratios among its signatures (that signature is the
    one-budget fp32 file's model: same GFLOPs, same accuracy), a milder and a harsher budget,
    every one evaluated on the 10k test images, and the weights stored once."""
    card = json.loads((SHIPPED / f"cifar10_{MAIN}_budgets_fp32.json").read_text())
    single = json.loads((SHIPPED / f"cifar10_{MAIN}_fp32.json").read_text())
    signatures = card["signatures"]
    assert len(signatures) == 3 and list(signatures) == sorted(signatures)  # subgraph order
    trained = signatures["keep_" + "_".join(f"{r:g}" for r in single["pruning"]["keep_ratios"])]
    assert trained["gflops"] == single["gflops"]
    assert trained["tokens_per_block"] == single["tokens_per_block"]
    assert trained["evaluation"]["tflite_accuracy"] == single["evaluation"]["tflite_accuracy"]
    gflops = sorted(entry["gflops"] for entry in signatures.values())
    assert gflops[0] < trained["gflops"] < gflops[2]
    for key, entry in signatures.items():
        assert key == "keep_" + "_".join(f"{r:g}" for r in entry["keep_ratios"])
        assert entry["evaluation"]["examples"] == 10_000, key
        assert entry["checks"]["max_abs_logit_diff"] <= 1e-4, key
    budgets = card["budgets"]
    assert budgets["single_budget_file"] == single["file"]
    assert budgets["single_budget_size_bytes"] == single["size_bytes"]
    assert card["size_bytes"] == (SHIPPED / card["file"]).stat().st_size
    assert budgets["size_ratio"] == card["size_bytes"] / single["size_bytes"] < 1.1


@pytest.fixture(scope="module")
def test_set():
    require_shared(CIFAR10)
    from spvit_tf.data import load_pixels
    from spvit_tf.preprocessing import Preprocessor

    pixels, labels, _ = load_pixels(f"folder:{CIFAR10}", "eval", 10_000, Preprocessor(32, 1.0))
    assert len(labels) == 10_000
    return pixels, labels


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_shipped_file_reaches_its_stated_accuracy(card_path, test_set):
    from spvit_tf.tflite.runner import run_tflite

    card = json.loads(card_path.read_text())
    pixels, labels = test_set
    content = card_path.with_suffix(".tflite").read_bytes()
    # Every shipped file takes the pixel values: uint8 bytes as is, int8 quantized with scale 1
    # and zero point -128, float32 (the GPU files) as floats 0-255.
    logits = run_tflite(content, pixels, "uint8")
    accuracy = float(np.mean(logits.argmax(1) == labels))
    assert abs(accuracy - card["evaluation"]["tflite_accuracy"]) <= 0.002, card["file"]
    for key, entry in (card.get("signatures") or {}).items():  # a multi-budget file: each one
        logits = run_tflite(content, pixels, "uint8", signature=key)
        accuracy = float(np.mean(logits.argmax(1) == labels))
        assert abs(accuracy - entry["evaluation"]["tflite_accuracy"]) <= 0.002, (card["file"], key)
