import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, SHARED, require_shared
from spvit_tf import data
from spvit_tf.errors import SpvitError
from spvit_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessor

CIFAR_ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


@pytest.fixture(scope="module")
def embedded():
    return data.load_split(data.EMBEDDED, "train"), data.load_split(data.EMBEDDED, "eval")


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_embedded_archive_is_a_class_balanced_cifar10_subset(embedded):
    train, test = embedded
    assert (train.split, test.split) == ("train", "test")
    assert train.class_names == test.class_names == CIFAR_CLASSES
    np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    assert train.labels.dtype == np.int32 and train.paths is None
    assert all(b[:2] == b"\xff\xd8" for b in train.encoded)  # JPEG bytes, not re-encoded pixels


def test_eval_pipeline_is_normalised_identity_sized_and_in_file_order(embedded):
    _, test = embedded
    ds = data.to_dataset(test, preprocessor=Preprocessor(32, 1.0), batch_size=300,
                         training=False)
    first, second = batches(ds), batches(ds)
    assert [x.shape for x, _ in first] == [(300, 32, 32, 3)] * 3 + [(100, 32, 32, 3)]
    assert first[0][0].dtype == np.float32 and first[0][1].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([y for _, y in first]), test.labels)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # crop_ratio 1.0 at the native 32 px leaves the pixels as decoded: only normalisation acts.
    pixels = tf.io.decode_jpeg(test.encoded[0], channels=3).numpy() / 255.0
    np.testing.assert_allclose(first[0][0][0], (pixels - MEAN) / STD, atol=1e-4)


def test_training_shuffles_reproducibly_per_seed_and_epoch(embedded):
    train, _ = embedded

    def first_labels(ds):
        return next(iter(ds))[1].numpy()

    ds = data.to_dataset(train, preprocessor=Preprocessor(32, 1.0), batch_size=384, training=True,
                         shuffle_seed=3)
    epoch1, epoch2 = batches(ds), batches(ds)
    assert [x.shape for x, _ in epoch1] == [(384, 32, 32, 3)] * 10  # 4000 // 384, rest dropped
    again = data.to_dataset(train, preprocessor=Preprocessor(32), batch_size=384, training=True,
                            shuffle_seed=3)
    np.testing.assert_array_equal(first_labels(again), epoch1[0][1])
    assert not np.array_equal(epoch1[0][1], epoch2[0][1])  # reshuffled each epoch
    assert not np.array_equal(epoch1[0][1], train.labels[:384])
    other = data.to_dataset(train, preprocessor=Preprocessor(32), batch_size=384, training=True,
                            shuffle_seed=4)
    assert not np.array_equal(first_labels(other), epoch1[0][1])


def test_resize_center_crop_keeps_the_centre_of_the_shorter_side_scaled_image():
    # Wide 256x512 image whose value is the column index / 2: the crop's columns tell where it is.
    columns = np.tile(np.arange(512, dtype=np.float32) / 2, (256, 1))
    image = tf.constant(np.repeat(columns[..., None], 3, axis=-1))
    out = data.resize_center_crop(image, 64, crop_ratio=0.5).numpy()
    # Shorter side to 64 / 0.5 = 128, so 128x256; the central 64 columns are 96..159, i.e.
    # original columns 192..319, values 96..160.
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out[:, 0, 0], 96.5, atol=1.0)
    np.testing.assert_allclose(out[:, -1, 0], 159.5, atol=1.0)
    with pytest.raises(SpvitError, match="crop_ratio"):
        data.resize_center_crop(image, 64, crop_ratio=1.5)


COLOURS = {"bee": (255, 0, 0), "ant": (0, 0, 255)}


def write_tree(root, splits=("train", "val", "test")):
    """A small ImageFolder tree: PNG and JPEG files of uniform colour, non-square, plus noise."""
    for split in splits:
        for i, (name, rgb) in enumerate(sorted(COLOURS.items())):
            folder = root / split / name
            folder.mkdir(parents=True)
            pixels = tf.constant(np.full((20 + i, 30, 3), rgb, np.uint8))
            (folder / "a.png").write_bytes(tf.io.encode_png(pixels).numpy())
            (folder / "b.JPEG").write_bytes(tf.io.encode_jpeg(pixels, quality=100).numpy())
            (folder / "notes.txt").write_text("not an image")
            (folder / ".hidden.jpg").write_bytes(b"")
    return root


def expected_pixel(rgb):
    return (np.array(rgb) / 255.0 - MEAN) / STD


def test_folder_directory_streams_paths_with_sorted_class_labels(tmp_path):
    root = write_tree(tmp_path / "imgs")
    train = data.load_split(f"folder:{root}", "train")
    assert train.class_names == ("ant", "bee") and train.encoded is None
    assert [p.rsplit("/", 2)[1:] for p in train.paths] == [
        ["ant", "a.png"], ["ant", "b.JPEG"], ["bee", "a.png"], ["bee", "b.JPEG"]]
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1])
    assert data.load_split(f"folder:{root}", "eval").split == "val"  # val wins over test
    assert data.load_split(f"folder:{root}", "test").split == "test"

    (x, y), = batches(data.to_dataset(train, preprocessor=Preprocessor(8), batch_size=4,
                                      training=False))
    assert x.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    np.testing.assert_allclose(x[0], np.broadcast_to(expected_pixel(COLOURS["ant"]), (8, 8, 3)),
                               atol=1e-4)  # lossless PNG
    np.testing.assert_allclose(x[2], np.broadcast_to(expected_pixel(COLOURS["bee"]), (8, 8, 3)),
                               atol=0.05)


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_folder_archive_matches_the_directory(tmp_path, mode, suffix):
    root = write_tree(tmp_path / "imgs", splits=("train", "test"))
    archive = tmp_path / f"imgs{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(root, arcname="imgs")
    for split in ("train", "eval"):
        from_dir = data.load_split(f"folder:{root}", split)
        from_tar = data.load_split(f"folder:{archive}", split)
        assert from_tar.split == from_dir.split
        assert from_tar.class_names == from_dir.class_names
        np.testing.assert_array_equal(from_tar.labels, from_dir.labels)
        assert from_tar.encoded == [open(p, "rb").read() for p in from_dir.paths]


def test_full_shared_cifar10_archive_reads_without_extracting():
    path = require_shared(CIFAR_ARCHIVE)
    test = data.load_split(f"folder:{path}", "eval")
    assert test.split == "test" and test.class_names == CIFAR_CLASSES
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    x, y = next(iter(data.to_dataset(test, preprocessor=Preprocessor(32, 1.0), batch_size=8,
                                     training=False)))
    assert x.shape == (8, 32, 32, 3) and list(y.numpy()) == [0] * 8


def make_tar(path, names):
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    return path


def make_file(path):
    path.write_bytes(b"PK")
    return path


def make_dirs(tmp, *dirs):
    for d in dirs:
        (tmp / d).mkdir(parents=True)
    return tmp / "d"


BAD_INPUTS = {
    "unknown prefix": (lambda tmp: "imagenet", "unknown data source"),
    "empty folder path": (lambda tmp: "folder:", "unknown data source"),
    "missing path": (lambda tmp: f"folder:{tmp}/nope", "does not exist"),
    "plain file": (lambda tmp: f"folder:{make_file(tmp / 'x.zip')}", "not a directory or a .tar"),
    "flat archive": (lambda tmp: f"folder:{make_tar(tmp / 'a.tar.gz', ['train/cat/1.jpg'])}",
                     "no images at <top folder>/"),
    "two top folders": (lambda tmp: "folder:" + str(make_tar(
        tmp / "a.tar.gz", ["a/train/cat/1.jpg", "b/train/cat/1.jpg"])), "one top-level folder"),
    "no eval split": (lambda tmp: f"folder:{write_tree(tmp / 'd', splits=('train',))}",
                      "no evaluation split"),
    "empty split": (lambda tmp: f"folder:{make_dirs(tmp, 'd/train/x', 'd/val')}", "is empty"),
    "empty class": (lambda tmp: f"folder:{make_dirs(tmp, 'd/train/x', 'd/val/x')}",
                    "has no .jpg/.jpeg/.png"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_sources_raise_one_line_errors(tmp_path, case):
    make_spec, message = BAD_INPUTS[case]
    with pytest.raises(SpvitError, match=message) as error:
        data.load_split(make_spec(tmp_path), "eval")
    assert "\n" not in str(error.value)


def test_splits_with_different_classes_are_rejected(tmp_path):
    root = write_tree(tmp_path / "d", splits=("train", "val"))
    (root / "val" / "bee").rename(root / "val" / "wasp")
    with pytest.raises(SpvitError, match="only in 'train': bee; only in 'val': wasp"):
        data.load_split(f"folder:{root}", "train")
    with pytest.raises(SpvitError, match="only in 'val': wasp; only in 'train': bee"):
        data.load_split(f"folder:{root}", "eval")
    with pytest.raises(SpvitError, match="no split 'validation'; found train, val"):
        data.load_split(f"folder:{root}", "validation")


def test_missing_embedded_archive_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "EMBEDDED_ARCHIVE", tmp_path / "gone.tar.gz")
    with pytest.raises(SpvitError, match="make_embedded_cifar10.py"):
        data.load_split("cifar10_embedded", "train")


def test_tfds_source_names_missing_manual_files(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    source = data.parse_source("tfds:imagenet2012", tfds_data_dir=str(tmp_path / "tfds"),
                               tfds_manual_dir=str(tmp_path / "manual"))
    assert (source.kind, source.location) == ("tfds", "imagenet2012")
    with pytest.raises(SpvitError, match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
                       f"its manual directory {tmp_path / 'manual'}"):
        data.load_split(source, "train")
    with pytest.raises(SpvitError, match="not found") as error:
        data.load_split(data.parse_source("tfds:no_such_dataset_xyz",
                                          tfds_data_dir=str(tmp_path / "tfds")), "train")
    assert "\n" not in str(error.value)


def test_regeneration_script_reproduces_the_committed_archive(tmp_path):
    source = require_shared(CIFAR_ARCHIVE)
    output = tmp_path / "regenerated.tar.gz"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_embedded_cifar10.py"),
                    f"--source={source}", f"--output={output}"], check=True, capture_output=True)
    assert output.read_bytes() == data.EMBEDDED_ARCHIVE.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["regenerated.tar.gz"]  # no temp file left


def test_eval_subset_is_a_fixed_fair_sample():
    """Files are ordered by class; a seeded one-off shuffle makes the first N a fair sample."""
    from spvit_tf import data

    split = data.load_split("cifar10_embedded", "test")
    kwargs = dict(preprocessor=Preprocessor(32, 1.0), batch_size=50, training=False)
    in_order = next(iter(data.to_dataset(split, **kwargs)))[1].numpy()
    assert set(in_order) == {0}
    subset = data.to_dataset(split, subset_seed=0, **kwargs)
    first, again = (next(iter(subset))[1].numpy() for _ in range(2))
    assert len(set(first)) >= 8
    np.testing.assert_array_equal(first, again)  # the same sample on every pass
