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


def split_with_unreadable(bad, count=40):
    """A split of `count` 4x4 PNGs whose value is their index, with the images at `bad`
    replaced by bytes no decoder reads (an HTML page, a cut-off PNG, nothing)."""
    encoded = [tf.io.encode_png(tf.fill([4, 4, 3], tf.constant(k, tf.uint8))).numpy()
               for k in range(count)]
    junk = [b"<html>404</html>", encoded[0][:30], b""]
    for n, k in enumerate(bad):
        encoded[k] = junk[n % len(junk)]
    names = [f"img{k:02d}.png" for k in range(count)]
    return data.SplitData("train", ("a",), np.zeros(count, np.int32), encoded=encoded, names=names)


def pixels_of(split, unreadable=None, batch_size=5):
    """The value of every image the pipeline yields, in order (batches of 5: runs of
    unreadable images cross batch boundaries). Images are brought to one size, as every
    pipeline's preprocessing does."""
    ds = data.decode_batches(split, split.records(),
                             lambda image: tf.image.resize(image, (4, 4), method="nearest"),
                             batch_size, unreadable=unreadable)
    return [int(v) for x, _ in ds for v in x.numpy()[:, 0, 0, 0]]


# In the middle, at the start, a run longer than the window of names, and at the end.
RUNS = {"middle": [7, 8, 21], "start": [0, 1], "long run": list(range(10, 30)), "end": [39]}


@pytest.mark.parametrize("where", RUNS)
def test_training_skips_unreadable_images_naming_and_counting_them(where, capfd):
    bad = RUNS[where]
    split = split_with_unreadable(bad)
    unreadable = data.Unreadable(split)
    assert pixels_of(split, unreadable) == [k for k in range(40) if k not in bad]  # in order
    named = {f"img{k:02d}.png" for k in bad[-(data.UNREADABLE_WINDOW - 1):]}
    if where == "end":  # no image follows to reveal it, and none is trained on after it
        named = set()
    assert unreadable.named == named
    assert unreadable.end_epoch() == (0 if where == "end" else len(bad))
    assert unreadable.end_epoch() == 0  # a new epoch starts at 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning:" in line]
    assert sorted(warnings) == sorted(f"warning: skipped {name}: not a readable image (the train "
                                      "split goes on without it)" for name in named)


@pytest.mark.parametrize("where", ["middle", "start", "end"])
def test_evaluation_stops_at_an_unreadable_image_with_one_line_naming_it(where):
    from spvit_tf.errors import _graph_error_line

    bad = RUNS[where]
    split = split_with_unreadable(bad)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        pixels_of(split)
    run = " (one of 2 unreadable images in a row)" if bad[1:2] == [bad[0] + 1] else ""
    assert _graph_error_line(error.value) == (
        f"error: img{bad[0]:02d}.png{run} in the train split cannot be read as an image; remove "
        "or replace it: an evaluation covers every image of its split")


def test_a_training_stream_over_two_passes_keeps_full_batches():
    """As train's epochs use it: two shuffled passes, so skipped images leave no batch short;
    each pass's lost images are followed by more of the stream, so both are named."""
    split = split_with_unreadable([3, 4])
    unreadable = data.Unreadable(split)
    batches_ = list(data.to_dataset(split, preprocessor=Preprocessor(4, 1.0), batch_size=8,
                                    training=True, unreadable=unreadable, passes=2))
    assert [len(y) for _, y in batches_] == [8] * 9  # 2 x 38 readable: 9 full batches
    assert unreadable.end_epoch() == 2 and unreadable.named == {"img03.png", "img04.png"}


def test_reflect_padding_must_be_smaller_than_the_image(embedded):
    train, _ = embedded
    augment = data.Augment(crop="pad", crop_padding=32, randaugment_ops=0, mixup_alpha=0,
                           cutmix_alpha=0)
    with pytest.raises(SpvitError, match="crop_padding 32 must be smaller than the image size 32"):
        data.to_dataset(train, preprocessor=Preprocessor(32), batch_size=8, training=True,
                        augment=augment)
    data.Augment(crop="resized", crop_padding=32).check_image_size(32)  # only the pad crop
    augment.check_image_size(33)
