"""The shipped CIFAR-10 `.tflite` files reach their cards' accuracy on the full test set.

What an app gets: each file run by the LiteRT interpreter on the 10,000 CIFAR-10 test images,
fed RGB bytes as its card says, must match the accuracy its card (and so the README) states
to within 0.2 points. Also checks the cards' promises that do not need data.
"""

import json
import pathlib

import numpy as np
import pytest

from conftest import REPO, SHARED, require_shared

SHIPPED = REPO / "tflite_models" / "cifar10"
CIFAR10 = SHARED / "data" / "cifar10-jpeg.tar.gz"
CARDS = sorted(p for p in SHIPPED.glob("*.json") if not p.name.endswith(".fpga_report.json"))


def test_the_shipped_files_are_all_there():
    files = {p.stem for p in SHIPPED.glob("*.tflite")}
    expected = {f"cifar10_{run}_{fmt}" for run in ("teacher", "spvit_b050")
                for fmt in ("fp32", "int8", "fpga_int8", "gpu_fp32")}
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
