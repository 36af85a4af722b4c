"""Shared test fixtures: paths to ../shared and small model builders."""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TIMM = SHARED / "fixtures" / "timm"
SHIPPED = REPO / "tflite_models" / "cifar10"


def shipped_main_run():
    """The main SPViT run whose exports ship in tflite_models/cifar10 (None if none does): its
    name follows its budget (results/cifar10/run.sh), so tests read it from the files."""
    runs = {p.name[len("cifar10_"):-len("_fp32.tflite")]
            for p in SHIPPED.glob("cifar10_spvit_*_fp32.tflite")
            if not p.name.endswith(("_gpu_fp32.tflite", "_budgets_fp32.tflite"))}
    assert len(runs) <= 1, f"expected one shipped SPViT run in {SHIPPED}, found {sorted(runs)}"
    return runs.pop() if runs else None


# The longest test files (minutes each on 2 CPU cores), longest first. pytest-xdist hands
# whole files to its workers in collection order (pyproject: --dist loadfile
# --no-loadscope-reorder), so starting these first keeps one long file from running alone at
# the end while the other workers sit idle. The rest keep pytest's order.
LONGEST_FILES = ("test_train.py", "test_export.py", "test_shipped_models.py", "test_faults.py",
                 "test_multi_worker.py", "test_pruning.py", "test_selector_learning.py",
                 "test_bad_inputs.py", "test_tome.py", "test_app_runtime.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def require_shared(path):
    """Skips (with the reason) when ../shared is absent, as on a user's fresh clone."""
    if not path.exists():
        pytest.skip(f"{path} not found: the ../shared fixtures sit beside the checkout in CI")
    return path


@pytest.fixture(scope="session")
def timm_input():
    """The fixture batch, NCHW in the file, transposed to the NHWC Keras expects."""
    return np.load(require_shared(TIMM / "input_2x3x224x224.npy")).transpose(0, 2, 3, 1)


def checkpoint_step(workdir):
    """The step of the checkpoint a training workdir's index names as its latest."""
    with open(pathlib.Path(workdir) / "checkpoints" / "checkpoint") as index:
        line = index.readline()  # model_checkpoint_path: "ckpt-12"
    return int(line.rsplit("ckpt-", 1)[1].strip().strip('"'))


def timm_fixture(name):
    """(checkpoint path, timm logits) for a fixture model."""
    path = require_shared(TIMM / f"{name}.safetensors")
    return path, np.load(TIMM / f"{name}_logits.npy")
