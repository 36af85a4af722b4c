"""Image-classification input: a source named by one string (the `--data` flag) as tf.data.

Sources:
  cifar10_embedded  the 5,000-image CIFAR-10 subset shipped in spvit_tf/datasets (no download)
  folder:<path>     an ImageFolder directory <path>/{train,val|test}/<class>/*.{jpg,jpeg,png}, or a
                    .tar/.tar.gz holding that layout under one top-level folder
  tfds:<name>       a TensorFlow Datasets builder, e.g. tfds:imagenet2012 (`name/config` works)

Every source is first reduced to (image source, int32 label, name) records, the source being a
file path or encoded bytes and the name what messages call the image (its path, or
archive:member), so reading, decoding, geometry, augmentation and normalisation are shared by
all sources (the evaluation crop and the normalisation are a
`spvit_tf.preprocessing.Preprocessor`'s). An image that cannot be read or decoded (a
truncated download, an HTML page saved as .jpg) is skipped in training, named once on stderr
and counted per epoch; in evaluation it is an error naming the file, since a top-1 and its
per-image results must cover the whole split (see `Unreadable`). Training augmentation comes
from kept libraries in two recipes:
  resized  DeiT's ImageNet recipe: random resized crop (`tf.image.sample_distorted_bounding_box`)
           and flip per image, then Keras' RandAugment, MixUp and CutMix per batch.
  pad      the small-image recipe: reflect-pad and random-crop back (a translation of up to
           `crop_padding` pixels) and flip per image, then Keras layers whose parameters are drawn
           per image (rotation, colour jitter, random erasing), each op computed once per batch.
Keras' RandAugment draws one op for the whole batch and computes all of its ops to select one,
so it is slow and coarse on 32x32 images; the pad recipe avoids it. Labels follow the
ImageFolder convention: class folder names sorted, numbered 0..K-1, and every split must have
the same classes.
"""

import dataclasses
import math
import os
import pathlib
import posixpath
import sys
import tarfile
from typing import Any

import numpy as np
import tensorflow as tf

from spvit_tf.errors import GRAPH_ERROR_END, GRAPH_ERROR_START, SpvitError, first_line
from spvit_tf.preprocessing import DEFAULT_CROP_RATIO

EMBEDDED = "cifar10_embedded"
EMBEDDED_ARCHIVE = pathlib.Path(__file__).resolve().parent / "datasets" / "cifar10_embedded.tar.gz"
TRAIN = "train"
EVAL = "eval"  # alias resolved to the first of EVAL_SPLITS that the source has
EVAL_SPLITS = ("val", "validation", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# TFDS reads whole files, so a shuffle buffer is needed on top of file shuffling; this many
# encoded ImageNet images take about 1.5 GB.
TFDS_SHUFFLE_BUFFER = 10_000
# Split indices each record carries of the records up to it (see `decode_batches`): a run of
# more unreadable images in a row than this is still counted exactly, but not all are named.
UNREADABLE_WINDOW = 16
# Datasets whose TFDS builders need files the user downloads by hand, for a precise error.
TFDS_MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}

_SOURCES = f"expected '{EMBEDDED}', 'folder:<path>' or 'tfds:<name>'"
_LAYOUT = "{train,val|test}/<class>/*.{jpg,jpeg,png}"


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed `--data` string. `kind` is 'embedded', 'folder' or 'tfds'; `location` is a path
    or a TFDS name. The TFDS directories default to TFDS's own (~/tensorflow_datasets)."""

    kind: str
    location: str
    spec: str
    tfds_data_dir: str | None = None
    tfds_manual_dir: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class SplitData:
    """One split of an embedded or folder source, before decoding.

    Exactly one of `encoded` (images read from an archive, held in memory) and `paths` (files of
    a directory, read lazily by tf.data) is set; both are ordered by (label, file path).
    `names` (archive:member for archives; default: the paths) name the images in messages.
    """

    split: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    encoded: list[bytes] | None = None
    paths: list[str] | None = None
    names: list[str] | None = None

    def __len__(self):
        return len(self.labels)

    def records(self, shuffle=False, seed=None, reshuffle=True):
        """(image source, label, int32 index in the split) triples, in file order or fully
        shuffled (`seed` None: unseeded; `reshuffle=False`: the same order on every pass);
        `read` turns a source into encoded bytes, `name` an index into what messages call it.

        Shuffling happens before any file is read, over the whole split: exact, and cheap since
        only paths (or the bytes already in memory) move through the buffer.
        """
        items = self.paths if self.paths is not None else np.array(self.encoded, dtype=object)
        indices = np.arange(len(self), dtype=np.int32)
        ds = tf.data.Dataset.from_tensor_slices((items, self.labels, indices))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=reshuffle)
        return ds

    def read(self, source):
        """Encoded image bytes of a record's source: the file's contents, or the bytes held."""
        return tf.io.read_file(source) if self.paths is not None else source

    def name(self, index):
        return (self.names if self.names is not None else self.paths)[index]


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSplit:
    """One split of a prepared TFDS dataset; records come with image decoding skipped so that
    the shared pipeline decodes them like every other source."""

    split: str
    class_names: tuple[str, ...]
    num_examples: int
    builder: Any
    image_key: str

    def __len__(self):
        return self.num_examples

    def records(self, shuffle=False, seed=None, reshuffle=True):
        """(encoded image, label, int32 position) triples; shuffling shuffles files, then a
        TFDS_SHUFFLE_BUFFER."""
        import tensorflow_datasets as tfds

        ds = self.builder.as_dataset(
            split=self.split,
            as_supervised=True,
            shuffle_files=shuffle,
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        if shuffle:
            ds = ds.shuffle(TFDS_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=reshuffle)
        return ds.enumerate().map(
            lambda i, record: (record[0], tf.cast(record[1], tf.int32), tf.cast(i, tf.int32)))

    def read(self, source):
        return source

    def name(self, index):
        """TFDS keeps no file names: an image is named by its position in the stream read."""
        return f"image {index} of {self.builder.name} {self.split} as read"


def parse_source(spec, *, tfds_data_dir=None, tfds_manual_dir=None):
    """Parses a `--data` string; the TFDS directories only matter for `tfds:` sources."""
    if isinstance(spec, Source):
        return spec
    spec = str(spec).strip()
    if spec == EMBEDDED:
        return Source("embedded", str(EMBEDDED_ARCHIVE), spec)
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        return Source("folder", os.path.expanduser(rest), spec)
    if kind == "tfds" and rest:
        return Source("tfds", rest, spec, tfds_data_dir, tfds_manual_dir)
    raise SpvitError(f"unknown data source {spec!r}; {_SOURCES}")


def resolve_split(available, split, where):
    """`split` itself if `available` has it; 'eval' means the first of EVAL_SPLITS present."""
    available = sorted(available)
    if split == EVAL:
        for name in EVAL_SPLITS:
            if name in available:
                return name
        raise SpvitError(f"{where} has no evaluation split: expected one of "
                         f"{', '.join(EVAL_SPLITS)}, found {', '.join(available) or 'none'}")
    if split not in available:
        raise SpvitError(f"{where} has no split {split!r}; found {', '.join(available) or 'none'}")
    return split


def load_split(source, split):
    """The split's records and class names. `split` is 'train', 'eval' or an explicit name.

    Archives (the embedded one included) are read once and the split's encoded images kept in
    memory: ~1 KB per CIFAR image, so about 50 MB for the full CIFAR-10 train split, but far too
    much for ImageNet, which should be extracted (folder:<dir>) or read through tfds:.
    """
    source = parse_source(source)
    if source.kind == "tfds":
        return _load_tfds(source, split)
    path = pathlib.Path(source.location)
    if source.kind == "embedded" and not path.is_file():
        raise SpvitError(f"the embedded dataset {path} is missing; reinstall spvit_tf or rebuild "
                         "it with scripts/make_embedded_cifar10.py")
    if path.is_dir():
        return _load_directory(path, split, source.spec)
    if path.is_file() and tarfile.is_tarfile(path):
        return _load_archive(path, split, source.spec)
    what = "is not a directory or a .tar/.tar.gz archive" if path.exists() else "does not exist"
    raise SpvitError(f"{source.spec}: {path} {what}; expected a directory {path}/{_LAYOUT} "
                     "or an archive holding that layout under one top-level folder")


CROP_MODES = ("resized", "pad")


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation (zero/None switches a part off).

    `crop`: 'resized' (DeiT's random resized crop; `min_crop_scale` is its smallest area
    fraction, DeiT 0.08) or 'pad' (reflect-pad by `crop_padding` pixels and crop back: the
    CIFAR recipe). `randaugment_ops`/`randaugment_factor`: Keras RandAugment (one op drawn per
    batch). `rotation_degrees`, `color_jitter` (brightness/contrast/saturation factor) and
    `erasing` (probability of erasing one rectangle, its sides 14-45% of the image's, with noise): Keras layers drawing
    their parameters per image. `mixup_alpha`/`cutmix_alpha`: one of the two is applied to each
    batch (with equal chance when both are set); labels then become soft (B, classes) targets.
    """

    crop: str = "resized"
    min_crop_scale: float = 0.08
    crop_padding: int = 4
    flip: bool = True
    randaugment_ops: int = 2
    randaugment_factor: float = 0.5
    rotation_degrees: float = 0.0
    color_jitter: float = 0.0
    erasing: float = 0.0
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.crop not in CROP_MODES:
            raise SpvitError(f"unknown crop mode {self.crop!r}; expected one of {', '.join(CROP_MODES)}")
        if self.crop_padding < 0 or not 0.0 < self.min_crop_scale <= 1.0:
            raise SpvitError("crop_padding must be >= 0 and min_crop_scale in (0, 1]")
        if not 0.0 <= self.erasing <= 1.0 or self.color_jitter < 0 or self.rotation_degrees < 0:
            raise SpvitError("erasing must be a probability in [0, 1]; color_jitter and "
                             "rotation_degrees must be >= 0")

    @property
    def soft_labels(self):
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def check_image_size(self, image_size):
        """Raises unless the crop works at `image_size`: reflect padding mirrors the image's
        own pixels, so it must be smaller than the image. `to_dataset` calls this before it
        traces the pipeline (an error raised inside a traced function reaches the user wrapped
        in TensorFlow's trace), and a CLI may call it before it creates anything."""
        if self.crop == "pad" and self.crop_padding >= image_size:
            raise SpvitError(
                f"crop_padding {self.crop_padding} must be smaller than the image size "
                f"{image_size} (reflect padding mirrors the image's own pixels); pass "
                f"--crop_padding below {image_size}")


def pad_and_crop(image, image_size, padding):
    """The CIFAR crop: the image at image_size, reflect-padded by `padding` pixels on every side,
    then a random image_size square of it (a random translation of up to `padding` pixels).
    `padding` must be smaller than `image_size` (`Augment.check_image_size`)."""
    image = tf.image.resize(image, (image_size, image_size), method="bicubic", antialias=True)
    if padding:
        image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
        image = tf.image.random_crop(image, (image_size, image_size, 3))
    image.set_shape([image_size, image_size, 3])
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(image, image_size, min_scale):
    """Inception-style crop (area in [min_scale, 1], aspect 3/4..4/3) resized to image_size."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), area_range=(min_scale, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0, max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    crop = tf.image.resize(crop, (image_size, image_size), method="bicubic", antialias=True)
    crop.set_shape([image_size, image_size, 3])
    return tf.clip_by_value(crop, 0.0, 255.0)


def _batch_augmenter(augment, num_classes):
    """A function on (images 0-255, int labels) batches applying the per-batch layers
    (RandAugment, rotation, colour jitter, erasing) and MixUp/CutMix.

    The Keras layers are built once here: they own random-seed state that tf.data's traced
    functions cannot create.
    """
    import keras

    layers = []
    if augment.randaugment_ops:
        layers.append(keras.layers.RandAugment(
            value_range=(0, 255), num_ops=augment.randaugment_ops,
            factor=augment.randaugment_factor, seed=augment.seed))
    if augment.rotation_degrees:
        layers.append(keras.layers.RandomRotation(
            augment.rotation_degrees / 360.0, fill_mode="reflect", seed=augment.seed))
    if augment.color_jitter:
        j = augment.color_jitter
        layers.append(keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=j, contrast_factor=j, saturation_factor=j,
            seed=augment.seed))
    if augment.erasing:
        layers.append(keras.layers.RandomErasing(
            factor=(augment.erasing, augment.erasing), scale=(0.02, 0.2), value_range=(0, 255),
            seed=augment.seed))
    mixers = []
    if augment.mixup_alpha:
        mixers.append(keras.layers.MixUp(alpha=augment.mixup_alpha, seed=augment.seed))
    if augment.cutmix_alpha:
        mixers.append(keras.layers.CutMix(factor=augment.cutmix_alpha, seed=augment.seed))

    def apply(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        if not mixers:
            return images, labels
        batch = {"images": images, "labels": tf.one_hot(labels, num_classes)}
        if len(mixers) == 1:
            mixed = mixers[0](batch, training=True)
        else:
            mixed = tf.cond(tf.random.uniform([]) < 0.5, lambda: mixers[0](batch, training=True),
                            lambda: mixers[1](batch, training=True))
        return mixed["images"], mixed["labels"]

    return apply


class Unreadable:
    """The images a training pipeline skipped because they cannot be read or decoded.

    `report` is called from the pipeline (through `tf.py_function`, in the rare batches that
    lost an image only) with the split indices of the lost images: each is named once per run
    in a `warning:` line on stderr and counted towards the epoch until `end_epoch`. Reports
    come as the pipeline meets the images, which may be a few batches ahead of the step being
    trained.
    """

    def __init__(self, split_data):
        self.split_data = split_data
        self.named = set()  # every image reported in this run
        self._epoch = set()
        self._unnamed = 0  # lost in runs longer than the window of names

    def report(self, gaps, rings):
        for name in _lost_names(self.split_data, gaps.numpy(), rings.numpy(), self):
            if name not in self.named:
                print(f"warning: skipped {name}: not a readable image (the "
                      f"{self.split_data.split} split goes on without it)", file=sys.stderr,
                      flush=True)
            self.named.add(name)
            self._epoch.add(name)
        return True

    def end_epoch(self):
        """How many images the epoch skipped; starts the next epoch's count."""
        count = len(self._epoch) + self._unnamed
        self._epoch, self._unnamed = set(), 0
        return count


def _lost_names(split_data, gaps, rings, unreadable=None):
    """Names of the images lost before each batch element with a gap (numpy arrays)."""
    window = rings.shape[1]
    names = []
    for gap, ring in zip(gaps.tolist(), rings):
        if gap > 0:
            named = ring[window - 1 - min(gap, window - 1):window - 1]
            names += [split_data.name(int(index)) for index in named]
            if unreadable is not None:
                unreadable._unnamed += gap - len(named)
    return names


def decode_batches(split_data, records, preprocess, batch_size, drop_remainder=False,
                   unreadable=None):
    """Batches of (`preprocess(uint8 RGB image)`, label) over the `records` of `split_data`
    whose image reads and decodes.

    TensorFlow cannot catch a failed decode inside the graph, and the op error it raises names
    no file. So the records are numbered as they enter (a scan per chunk of records gives each
    its sequence number and the split indices of the UNREADABLE_WINDOW records up to it),
    failures are dropped (`ignore_errors`), and a scan per batch finds the numbers missing
    between consecutive images, which the indices they carry name. Each image is decoded once,
    in one parallel map as before; the bookkeeping costs two small scans per chunk and per
    batch, not per image. With `unreadable` (training) lost images are reported to it and
    skipped (a failure after the last readable image goes unreported: nothing follows it);
    without, the first is an error naming it, found at the end too by a sentinel record: an
    evaluation and its per-image results must cover the whole split.
    """
    window = UNREADABLE_WINDOW
    strict = unreadable is None
    if strict:
        records = records.concatenate(tf.data.Dataset.from_tensors(
            (tf.constant(""), tf.constant(-1, tf.int32), tf.constant(-1, tf.int32))))

    def number(state, chunk):
        seq0, ring = state
        sources, labels, indices = chunk
        count = tf.shape(indices, out_type=tf.int64)[0]
        history = tf.concat([ring, indices], 0)  # the previous chunk's last `window`, then these
        rows = tf.range(tf.size(indices))[:, None] + tf.range(1, window + 1)[None, :]
        numbered = (sources, labels, seq0 + tf.range(count), tf.gather(history, rows))
        return (seq0 + count, history[-window:]), numbered

    def load(source, label, seq, ring):
        image = tf.cond(label < 0, lambda: tf.zeros([1, 1, 3], tf.uint8),  # the sentinel
                        lambda: tf.io.decode_image(split_data.read(source), channels=3,
                                                   expand_animations=False))
        return preprocess(image), label, seq, ring

    def lost(gaps, rings):
        if not strict:
            return tf.py_function(unreadable.report, [gaps, rings], tf.bool)
        first = tf.argmax(tf.cast(gaps > 0, tf.int32))
        gap = gaps[first]
        name = tf.py_function(lambda g, r: _lost_names(split_data, g.numpy(), r.numpy())[0],
                              [gaps[first:first + 1], rings[first:first + 1]], tf.string)
        more = tf.where(gap > 1, tf.strings.join(
            [" (one of ", tf.strings.as_string(gap), " unreadable images in a row)"]), "")
        message = tf.strings.join([
            GRAPH_ERROR_START, name, more, f" in the {split_data.split} split cannot be read "
            "as an image; remove or replace it: an evaluation covers every image of its split",
            GRAPH_ERROR_END])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    def check(last, batch):
        images, labels, seqs, rings = batch
        gaps = seqs - tf.concat([[last], seqs[:-1]], 0) - 1
        reported = tf.cond(tf.reduce_any(gaps > 0), lambda: lost(gaps, rings),
                           lambda: tf.constant(True))
        with tf.control_dependencies([reported]):
            images, labels = tf.identity(images), tf.identity(labels)
        if strict:
            keep = labels >= 0
            images, labels = tf.boolean_mask(images, keep), tf.boolean_mask(labels, keep)
        return seqs[-1], (images, labels)

    ds = records.batch(256).scan((tf.constant(0, tf.int64), tf.fill([window], -1)), number)
    ds = ds.unbatch().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(batch_size, drop_remainder=drop_remainder,
                                  num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.scan(tf.constant(-1, tf.int64), check)
    return ds.filter(lambda images, labels: tf.size(labels) > 0) if strict else ds


def to_dataset(split_data, *, preprocessor, batch_size, training, shuffle_seed=0,
               drop_remainder=None, augment=None, skip_batches=0, subset_seed=None,
               unreadable=None, passes=1):
    """Batches of (float32 NHWC model inputs, labels): images `preprocessor` normalises.

    Training shuffles with `shuffle_seed` (reshuffled each epoch, reproducibly; None for an
    unseeded shuffle) and by default drops the last partial batch; evaluation keeps the file
    order and every example. Without `augment` both use the preprocessor's float evaluation
    crop (`Preprocessor.crop`); with it, training images are augmented at its image size and,
    under MixUp/CutMix, labels are soft (B, classes) targets instead of int32 ids.
    `skip_batches` resumes inside an epoch: the records are skipped before decoding, so
    resuming costs no image work. `subset_seed` shuffles evaluation once, reproducibly, so that
    its first N examples are a fair sample (files are ordered by class). Training skips images
    that cannot be read or decoded and reports them to `unreadable` (default: a fresh
    `Unreadable`); evaluation stops at the first with an error naming it (`decode_batches`).
    `passes` > 1 makes a training stream run on over that many shuffled passes of the split:
    the caller takes an epoch's batches from it, so that skipped images cannot leave the epoch
    short.
    """
    if drop_remainder is None:
        drop_remainder = training
    image_size = preprocessor.image_size
    augment = augment if training else None
    if augment is not None:
        augment.check_image_size(image_size)
    if training and unreadable is None:
        unreadable = Unreadable(split_data)

    def preprocess(image):
        if augment is None:
            return preprocessor.crop(image)
        image = tf.cast(image, tf.float32)
        if augment.crop == "pad":
            image = pad_and_crop(image, image_size, augment.crop_padding)
        else:
            image = random_resized_crop(image, image_size, augment.min_crop_scale)
        if augment.flip:
            image = tf.image.random_flip_left_right(image)
        return image

    if training:
        ds = split_data.records(shuffle=True, seed=shuffle_seed).repeat(passes)
    else:
        ds = split_data.records(shuffle=subset_seed is not None, seed=subset_seed, reshuffle=False)
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)
    ds = decode_batches(split_data, ds, preprocess, batch_size, drop_remainder,
                        unreadable if training else None)
    if augment is not None:
        ds = ds.map(_batch_augmenter(augment, len(split_data.class_names)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda images, labels: (preprocessor.normalize(images), labels),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_dataset(source, split, **kwargs):
    """`to_dataset(load_split(source, split), **kwargs)`; use the two steps when the caller also
    needs the split's size or class names, so the source is read once."""
    return to_dataset(load_split(source, split), **kwargs)


def resize_center_crop(image, image_size, crop_ratio=DEFAULT_CROP_RATIO):
    """timm/DeiT evaluation geometry: the shorter side to floor(image_size / crop_ratio), bicubic
    with antialiasing, then the central image_size square. Returns float32 on a 0-255 scale.

    crop_ratio=1.0 resizes the shorter side straight to image_size: the CIFAR demo uses it, so
    32x32 images at image_size 32 pass through unchanged instead of being upscaled and cropped.
    """
    if not 0.0 < crop_ratio <= 1.0:
        raise SpvitError(f"crop_ratio must be in (0, 1], got {crop_ratio}; 0.875 is the DeiT value")
    scale_size = math.floor(image_size / crop_ratio)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * (scale_size / tf.reduce_min(hw))), tf.int32)
    new_hw = tf.maximum(new_hw, scale_size)  # guards the shorter side against float rounding
    image = tf.image.resize(image, new_hw, method="bicubic", antialias=True)
    top, left = tf.unstack((new_hw - image_size) // 2)
    image = image[top:top + image_size, left:left + image_size]
    image.set_shape([image_size, image_size, 3])
    return tf.clip_by_value(image, 0.0, 255.0)  # bicubic overshoots at edges


def eval_pixels(image, image_size, crop_ratio=DEFAULT_CROP_RATIO):
    """An encoded JPEG/PNG (or a decoded uint8 image) as uint8 (image_size, image_size, 3) RGB
    with the evaluation geometry, rounded to bytes as a camera app would feed them."""
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return tf.cast(tf.round(resize_center_crop(image, image_size, crop_ratio)), tf.uint8)


def load_pixels(source, split, count, preprocessor, seed=0):
    """(uint8 images (N, H, W, 3), int32 labels, class names): `count` images of `split`.

    A seeded shuffle of the whole split, since sources list images class by class. Images are
    `preprocessor.pixels`: the evaluation crop rounded to bytes, as a camera app feeds them.
    An image that cannot be read or decoded is an error naming it.
    """
    data = load_split(source, split)
    if count < 1:
        raise SpvitError(f"need at least one {split} example, got {count}")
    ds = decode_batches(data, data.records(shuffle=True, seed=seed).take(count),
                        preprocessor.pixels, 256)
    images, labels = zip(*ds.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels), tuple(data.class_names)


def _is_image(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _check_same_classes(classes_by_split, split, where):
    """The ImageFolder labels only agree between splits when the class lists do."""
    if split != TRAIN:
        other = TRAIN
    else:
        other = next((s for s in EVAL_SPLITS if s in classes_by_split), None)
    if other not in classes_by_split:
        return
    mine, theirs = set(classes_by_split[split]), set(classes_by_split[other])
    if mine != theirs:
        raise SpvitError(
            f"{where}: splits {split!r} and {other!r} must have the same class folders; only in "
            f"{split!r}: {', '.join(sorted(mine - theirs)) or '-'}; only in {other!r}: "
            f"{', '.join(sorted(theirs - mine)) or '-'}")


def _check_not_empty(classes_by_split, split, where):
    if not classes_by_split[split]:
        raise SpvitError(f"{where}: split {split!r} is empty; expected {split}/<class>/*.jpg")


def _flatten(files_by_class):
    """(class names, files, labels) from {class: sorted files}: classes sorted, labels 0..K-1."""
    class_names = tuple(sorted(files_by_class))
    files, labels = [], []
    for label, name in enumerate(class_names):
        files += files_by_class[name]
        labels += [label] * len(files_by_class[name])
    return class_names, files, np.array(labels, np.int32)


def _load_directory(root, split, where):
    """Lists class folders of every split (cheap) but files of the requested split only."""
    def subdirs(path):
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))

    classes_by_split = {s: subdirs(root / s) for s in subdirs(root)}
    split = resolve_split(classes_by_split, split, f"{where} ({root}/{_LAYOUT})")
    _check_not_empty(classes_by_split, split, where)
    _check_same_classes(classes_by_split, split, where)
    files_by_class = {}
    for name in classes_by_split[split]:
        class_dir = root / split / name
        files = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, filenames in os.walk(class_dir, followlinks=True)
            for f in filenames if _is_image(f))
        if not files:
            raise SpvitError(f"{where}: class folder {class_dir} has no .jpg/.jpeg/.png images")
        files_by_class[name] = files
    class_names, paths, labels = _flatten(files_by_class)
    return SplitData(split, class_names, labels, paths=paths)


def _load_archive(path, split, where):
    """Indexes every member name, then reads only the requested split's images, in tar order
    (so a compressed archive is decompressed at most twice)."""
    with tarfile.open(path, "r:*") as tar:
        index = {}  # (split, class, name) -> TarInfo
        tops = set()
        for member in tar.getmembers():
            parts = posixpath.normpath(member.name).split("/")
            if member.isfile() and len(parts) >= 4 and _is_image(parts[-1]) and not any(
                    p.startswith(".") for p in parts[:-1]):
                tops.add(parts[0])
                index[parts[1], parts[2], "/".join(parts[3:])] = member
        if not index:
            raise SpvitError(f"{where}: archive {path} has no images at <top folder>/{_LAYOUT}")
        if len(tops) > 1:
            raise SpvitError(f"{where}: archive {path} must hold one top-level folder with "
                             f"{_LAYOUT}; found {', '.join(sorted(tops))}")
        (top,) = tops
        classes_by_split = {}
        for s, c, _ in index:
            classes_by_split.setdefault(s, set()).add(c)
        split = resolve_split(classes_by_split, split, f"{where} ({path}: {top}/{_LAYOUT})")
        _check_same_classes(classes_by_split, split, where)
        wanted = sorted((m.offset, key) for key, m in index.items() if key[0] == split)
        blobs = {key: tar.extractfile(index[key]).read() for _, key in wanted}
    files_by_class = {}
    for key in sorted(blobs):
        files_by_class.setdefault(key[1], []).append((f"{path}:{index[key].name}", blobs[key]))
    class_names, files, labels = _flatten(files_by_class)
    names, encoded = (list(column) for column in zip(*files))
    return SplitData(split, class_names, labels, encoded=encoded, names=names)


def _load_tfds(source, split):
    """Builds a TFDS dataset, preparing it first if needed, after checking its manual files."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(source.location, data_dir=source.tfds_data_dir)
    except ValueError as error:  # DatasetNotFoundError subclasses it; its message lists all
        raise SpvitError(f"{source.spec}: {first_line(error)} (see tfds.list_builders())") from None
    if not builder.is_prepared():
        manual_dir = _tfds_manual_dir(builder, source)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    info = builder.info
    keys = info.supervised_keys
    if not keys or not isinstance(info.features[keys[0]], tfds.features.Image):
        raise SpvitError(f"{source.spec} has no (image, label) supervised keys; pick an "
                         "image-classification dataset")
    split = resolve_split(info.splits.keys(), split, source.spec)
    return TfdsSplit(split, tuple(info.features[keys[1]].names), info.splits[split].num_examples,
                     builder, keys[0])


def _tfds_manual_dir(builder, source):
    """The manual directory TFDS will read, after checking it has what the builder needs."""
    root = source.tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    manual_dir = os.path.expanduser(
        source.tfds_manual_dir or os.path.join(root, "downloads", "manual"))
    if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        return manual_dir
    needed = TFDS_MANUAL_FILES.get(builder.name)
    if needed:
        missing = [f for f in needed if not os.path.isfile(os.path.join(manual_dir, f))]
    else:
        has_files = os.path.isdir(manual_dir) and any(os.scandir(manual_dir))
        missing = [] if has_files else ["the files of its manual download instructions"]
    if missing:
        raise SpvitError(f"{source.spec} needs {' and '.join(missing)} in its manual directory "
                         f"{manual_dir}; download them there or pass the folder holding them as "
                         "the TFDS manual dir")
    return manual_dir
