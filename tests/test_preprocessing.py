"""The one preprocessing contract: run.json's entry on its stated scale, earlier run.json files
read by the one legacy rule, and the float32 constants the exported graphs bake in."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from spvit_tf.errors import SpvitError
from spvit_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD, RUN_KEY, Preprocessor

COMMITTED_RUNS = sorted(p for p in (REPO / "results").rglob("run.json"))
SHIPPED_CARDS = sorted(p for p in (REPO / "tflite_models").rglob("*.json")
                       if not p.name.endswith(".fpga_report.json"))


def test_the_entry_names_its_format_and_scale_and_round_trips():
    preprocessor = Preprocessor(32, crop_ratio=1.0)
    entry = json.loads(json.dumps(preprocessor.to_json()))  # as run.json holds it
    assert entry["mean_std_scale"] == "0-1" and entry["mean"] == list(IMAGENET_MEAN)
    assert entry["std"] == list(IMAGENET_STD) and entry["image_size"] == 32
    assert Preprocessor.from_json(entry) == preprocessor
    assert Preprocessor.from_run({RUN_KEY: entry}) == preprocessor


@pytest.mark.parametrize("path", COMMITTED_RUNS, ids=lambda p: p.parent.name)
def test_committed_run_files_load_in_either_layout(path):
    """Files written before the entry existed read by the legacy keys; newer ones by the entry."""
    run = json.loads(path.read_text())
    if RUN_KEY in run:
        assert Preprocessor.from_run(run) == Preprocessor.from_json(run[RUN_KEY])
    else:
        assert Preprocessor.from_run(run) == Preprocessor(run["image_size"], run["crop_ratio"])


def test_the_legacy_keys_read_as_their_preprocessor():
    legacy = {"image_size": 32, "crop_ratio": 0.875, "mean": list(IMAGENET_MEAN),
              "std": list(IMAGENET_STD)}
    assert Preprocessor.from_run(legacy) == Preprocessor(32, crop_ratio=0.875)


def test_pixel_scale_constants_are_the_shipped_files_bits():
    """255 * mean in float32: the constants every shipped card (and graph) holds."""
    preprocessor = Preprocessor(32, crop_ratio=1.0)
    assert SHIPPED_CARDS
    for path in SHIPPED_CARDS:
        card = json.loads(path.read_text())
        np.testing.assert_array_equal(card["input"]["mean"], preprocessor.pixel_mean)
        np.testing.assert_array_equal(card["input"]["std"], preprocessor.pixel_std)
    pixels = np.arange(3 * 4, dtype=np.uint8).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(preprocessor.normalize(pixels),
                                  (pixels.astype(np.float32) - np.float32(IMAGENET_MEAN) * 255)
                                  / (np.float32(IMAGENET_STD) * 255))


@pytest.mark.parametrize("run,message", [
    ({"image_size": 32, "crop_ratio": 1.0, "mean": [123.675, 116.28, 103.53],
      "std": [58.395, 57.12, 57.375]}, "on the 0-1 scale"),  # never rescaled by a guess
    ({"image_size": 32, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, "crop_ratio"),
    ({RUN_KEY: dict(Preprocessor(32).to_json(), mean_std_scale="0-255")}, "mean_std_scale"),
    ({RUN_KEY: dict(Preprocessor(32).to_json(), format="other.v9")}, "is not a"),
    ({RUN_KEY: dict(Preprocessor(32).to_json(), crop_ratio=1.5)}, "crop_ratio must be in"),
    ({RUN_KEY: dict(Preprocessor(32).to_json(), std=[0.2, 0.0, 0.2])}, "std needs 3 values"),
])
def test_bad_entries_are_one_clear_error(run, message):
    with pytest.raises(SpvitError, match=message) as error:
        Preprocessor.from_run(run, "w/run.json")
    assert str(error.value).startswith("w/run.json") and "\n" not in str(error.value)


def test_the_contract_imports_without_tensorflow():
    code = ("import sys, spvit_tf.preprocessing; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
