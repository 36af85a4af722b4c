"""A real app runtime on the exported files: MediaPipe Tasks' ImageClassifier.

MediaPipe reads everything it needs from the file's TFLite metadata, as an Android app using
it does: the input size and type, the normalisation of a float input, and the packed
`labels.txt`. Fed the uint8 RGB images at the model's input size (so that it resamples
nothing), it must name the classes from the packed labels and reproduce the LiteRT
interpreter's outputs and top-1 when that is fed as the card says. For the float-input GPU
file that proves the normalisation metadata right; for the uint8 files, that the runtime
feeds the bytes unnormalised.
"""

import json

import keras
import numpy as np
import pytest

import spvit_tf
from conftest import REPO, shipped_main_run
from spvit_tf import export
from spvit_tf.data import load_pixels
from spvit_tf.preprocessing import Preprocessor
from spvit_tf.tflite.runner import keras_logits, run_tflite
from spvit_tf.workdir import FINAL_WEIGHTS
from test_export import CIFAR, make_workdir

mp = pytest.importorskip("mediapipe", reason="the app runtime is MediaPipe Tasks: "
                         "pip install -e '.[test]'")
from mediapipe.tasks.python import vision  # noqa: E402
from mediapipe.tasks.python.core.base_options import BaseOptions  # noqa: E402

IMAGES = 256
SHIPPED = REPO / "tflite_models" / "cifar10"


def fit_head(workdir):
    """Replaces the random model's head by a least-squares fit on its backbone's features
    (train split): a classifier whose top-1 depends on the image and spans the classes, at
    the cost of one forward pass, so top-1 agreement means something."""
    source = export.source_from_workdir(str(workdir))
    model = export.build_model(source)
    width = model.embed_dim
    features = spvit_tf.create_model(source.model_name, **dict(source.model_config,
                                                                num_classes=width))
    features.build_weights()
    features.set_weights([theirs if theirs.shape == mine.shape else mine
                          for mine, theirs in zip(features.get_weights(), model.get_weights())])
    features.head.kernel.assign(np.eye(width, dtype=np.float32))
    features.head.bias.assign(np.zeros(width, np.float32))
    pixels, labels, _ = load_pixels("cifar10_embedded", "train", 2000, source.preprocessor)
    x = keras_logits(features, pixels, source.preprocessor)
    x = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    targets = 10.0 * np.eye(len(CIFAR), dtype=np.float32)[labels]
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(width + 1), x.T @ targets).astype(np.float32)
    model.head.kernel.assign(w[:-1])
    model.head.bias.assign(w[-1])
    model.save_weights(workdir / FINAL_WEIGHTS)
    return workdir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fp32, int8 and the GPU file of a tiny pruned DeiT with a fitted head."""
    keras.utils.set_random_seed(0)
    workdir = fit_head(make_workdir(tmp_path_factory.mktemp("run") / "cifar_demo"))
    out = tmp_path_factory.mktemp("tflite")
    options = export.Options(formats=("fp32", "int8"), output_dir=str(out), gpu_friendly=True,
                             eval_examples=16, calibration_examples=64)
    cards = export.export(export.source_from_workdir(str(workdir)), options, log=lambda line: None)
    return out, {card["file"].removeprefix("cifar_demo_").removesuffix(".tflite"): card
                 for card in cards}


@pytest.fixture(scope="module")
def images():
    """Test images already at the models' 32x32 input size: MediaPipe resamples nothing."""
    pixels, _, _ = load_pixels("cifar10_embedded", "eval", IMAGES, Preprocessor(32, 1.0))
    return pixels


def litert_outputs(content, card, pixels):
    if card["input"]["value_range"] is None:  # the normalised image in
        preprocessor = Preprocessor.from_json(card["input"]["preprocessor"])
        return run_tflite(content, pixels, "float", preprocessor)
    return run_tflite(content, pixels, "uint8")  # the pixel values, as the tensor's type takes them


def mediapipe_outputs(path, pixels, num_classes):
    """(scores (N, classes) by category index, category names by index) from MediaPipe."""
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    scores = np.full((len(pixels), num_classes), np.nan, np.float32)
    names = {}
    # closed explicitly: this mediapipe's classifier destructor raises at interpreter exit
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for i, image in enumerate(pixels):
            result = classifier.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            (classification,) = result.classifications
            for category in classification.categories:
                scores[i, category.index] = category.score
                assert names.setdefault(category.index, category.category_name) \
                    == category.category_name
    return scores, names


def check_file(path, card, pixels):
    content = path.read_bytes()
    reference = litert_outputs(content, card, pixels)
    scores, names = mediapipe_outputs(path, pixels, len(CIFAR))
    assert names == dict(enumerate(CIFAR)), names  # the packed labels.txt, in output order
    assert not np.isnan(scores).any()
    agreement = float(np.mean(scores.argmax(1) == reference.argmax(1)))
    assert agreement >= 0.995, (path.name, agreement)
    np.testing.assert_allclose(scores, reference, atol=1e-4, rtol=1e-5, err_msg=path.name)
    assert len(set(reference.argmax(1))) >= 5, "the predictions must span the classes"
    return agreement


@pytest.mark.parametrize("name", ["fp32", "int8", "gpu_fp32"])
def test_mediapipe_classifies_an_export_like_litert_with_the_packed_labels(
        name, exported, images):
    out, cards = exported
    card = cards[name]
    meta = card["tflite_metadata"]
    assert meta["written"], meta
    normalization = meta["input"]["normalization"]
    if name == "gpu_fp32":  # float pixels in, per-channel normalisation inside the graph
        assert card["input"]["dtype"] == "float32"
        assert normalization == {"mean": [0.0], "std": [1.0]}
    else:  # uint8 bytes in, normalised inside the graph: nothing for the runtime to apply
        assert card["input"]["dtype"] == "uint8" and normalization is None
    check_file(out / card["file"], card, images)


SHIPPED_FILES = [f"cifar10_{run}_{fmt}" for run in ("teacher", shipped_main_run())
                 for fmt in ("fp32", "int8", "gpu_fp32")]


@pytest.mark.parametrize("stem", SHIPPED_FILES)
def test_mediapipe_classifies_a_shipped_file_like_litert(stem, images):
    path = SHIPPED / f"{stem}.tflite"
    card = json.loads(path.with_suffix(".json").read_text())
    assert (card.get("tflite_metadata") or {}).get("written"), f"{path.name} has no metadata"
    check_file(path, card, images)
