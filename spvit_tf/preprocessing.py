"""The one contract between an image and a model's input: `Preprocessor`.

Every stage that feeds a model reads it, so that training's evaluation, `evaluate`, the
exporter's serving graph, checks, cards and TFLite metadata, and `visualize` agree:

- input: RGB pixels with values 0-255 (`VALUE_RANGE`): decoded bytes, or floats on that scale;
- geometry (timm/DeiT evaluation): the shorter side resized to floor(image_size / crop_ratio),
  bicubic with antialiasing, then the central image_size square (`spvit_tf.data`'s
  `resize_center_crop` draws it);
- normalisation per channel: (x - 255 * mean) / (255 * std).

`mean` and `std` are stored on ONE scale, 0-1 (fractions of the 0-255 range, as timm states
them), and scaled to pixels in float32 (`pixel_mean`, `pixel_std`). The float32 rule fixes the
bits of the constants a serving graph bakes in: the same run exports the same file.

Two forms of the evaluation image, and why both exist:

- `crop`: the resized crop as float32 0-255, unrounded. Training's evaluation and `evaluate`
  feed it, as timm's float pipeline does, so their top-1 compares with published numbers.
- `pixels`: the same crop rounded to uint8, which is what a camera app hands a `.tflite`. The
  exporter computes both its TFLite outputs and its Keras reference ("keras_accuracy") on
  these, so that the parity and accuracy checks compare the two models on identical input.

The two differ by the rounding (at most half a grey level per channel), so an export's
keras_accuracy measures the float model on app input and can differ slightly from training's
evaluation top-1 of the same weights. With crop_ratio 1 on images already image_size square
(the CIFAR-10 runs) the crop is the decoded image itself, and both forms hold the same values.

In `run.json` the preprocessor is the "preprocessing" entry written by `to_json`, which names
its format and its mean/std scale explicitly. `from_run` also reads the run.json of earlier
versions, which had none: their top-level `image_size`, `crop_ratio`, `mean` and `std` are read
as this same 0-1 scale, the only one `spvit_tf.train` ever wrote there (the one legacy rule).
Values outside 0-1 are an error, never rescaled by a guess.

This module imports neither TensorFlow nor Keras; `crop` and `pixels` load TensorFlow.
"""

import dataclasses

import numpy as np

from spvit_tf.errors import SpvitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's ImageNet statistics, 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_RATIO = 0.875  # timm/DeiT: resize to image_size / 0.875, centre-crop image_size
VALUE_RANGE = (0, 255)  # the pixel values a Preprocessor takes
FORMAT = "spvit_tf.preprocessor.v1"
MEAN_STD_SCALE = "0-1"  # the one scale `mean`/`std` are stored on
RUN_KEY = "preprocessing"  # the run.json entry
FIELDS = ("image_size", "crop_ratio", "mean", "std")  # also run.json's top-level keys before FORMAT


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """How RGB pixels 0-255 become the input of a model of side `image_size`.

    `crop_ratio` in (0, 1]: the evaluation crop's side over the resized shorter side (1.0
    resizes straight to image_size, so images already that size pass unchanged). `mean`, `std`:
    three values each, per RGB channel, on the 0-1 scale (module doc).
    """

    image_size: int
    crop_ratio: float = DEFAULT_CROP_RATIO
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)) \
                or self.image_size < 1:
            raise SpvitError(f"image_size must be a positive integer, got {self.image_size!r}")
        try:
            crop_ratio = float(self.crop_ratio)
        except (TypeError, ValueError):
            crop_ratio = float("nan")
        if not 0.0 < crop_ratio <= 1.0:
            raise SpvitError(f"crop_ratio must be in (0, 1], got {self.crop_ratio!r}; "
                             f"{DEFAULT_CROP_RATIO} is the DeiT value")
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "crop_ratio", crop_ratio)
        for name in ("mean", "std"):
            try:
                values = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                values = ()
            low_ok = all(v >= 0.0 if name == "mean" else v > 0.0 for v in values)
            if len(values) != 3 or not low_ok or max(values) > 1.0:
                raise SpvitError(f"{name} needs 3 values (RGB) on the {MEAN_STD_SCALE} scale, "
                                 f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, values)

    @property
    def pixel_mean(self):
        """`mean` on the 0-255 pixel scale, float32 (3,)."""
        return np.asarray(self.mean, np.float32) * np.float32(VALUE_RANGE[1])

    @property
    def pixel_std(self):
        """`std` on the 0-255 pixel scale, float32 (3,)."""
        return np.asarray(self.std, np.float32) * np.float32(VALUE_RANGE[1])

    def normalize(self, x):
        """The model input for float pixels 0-255 `x` (..., 3): a NumPy array (cast to float32),
        a TensorFlow tensor or a Keras tensor."""
        if isinstance(x, np.ndarray):
            x = x.astype(np.float32)
        return (x - self.pixel_mean) / self.pixel_std

    def crop(self, image):
        """The evaluation crop of a decoded (H, W, 3) image: float32 0-255 (TensorFlow)."""
        from spvit_tf.data import resize_center_crop

        return resize_center_crop(image, self.image_size, self.crop_ratio)

    def pixels(self, image):
        """An encoded JPEG/PNG (or a decoded uint8 (H, W, 3) image) as the uint8 (image_size,
        image_size, 3) RGB an app feeds: the evaluation crop rounded to bytes (TensorFlow)."""
        from spvit_tf.data import eval_pixels

        return eval_pixels(image, self.image_size, self.crop_ratio)

    def describe(self):
        """The geometry in words, for model cards."""
        return ("resize the shorter side to image_size / crop_ratio (bicubic, antialiased), "
                f"centre-crop image_size; crop_ratio {self.crop_ratio}")

    def to_json(self):
        """The run.json / model card form: plain values, its format and scale named."""
        return {"format": FORMAT, "input": f"RGB pixels {VALUE_RANGE[0]}-{VALUE_RANGE[1]}",
                "image_size": self.image_size, "crop_ratio": self.crop_ratio,
                "mean": list(self.mean), "std": list(self.std), "mean_std_scale": MEAN_STD_SCALE}

    @classmethod
    def from_json(cls, entry, where="preprocessing"):
        """The preprocessor `to_json` wrote; a clear error for any other entry."""
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
            raise SpvitError(f"{where} is not a {FORMAT} entry (format {found!r}); rerun "
                             "training or export with this version")
        if entry.get("mean_std_scale") != MEAN_STD_SCALE:
            raise SpvitError(f"{where}: mean_std_scale {entry.get('mean_std_scale')!r} is not "
                             f"{MEAN_STD_SCALE!r}, the one scale mean/std are stored on")
        missing = [k for k in FIELDS if k not in entry]
        if missing:
            raise SpvitError(f"{where} lacks {', '.join(missing)}")
        return cls._located(where, *(entry[k] for k in FIELDS))

    @classmethod
    def from_run(cls, run, where="run.json"):
        """The preprocessor of a run.json dict, of this version or an earlier one (module doc)."""
        if RUN_KEY in run:
            return cls.from_json(run[RUN_KEY], f"{where} {RUN_KEY}")
        missing = [k for k in FIELDS if k not in run]
        if missing:
            raise SpvitError(f"{where} lacks {RUN_KEY} (or, from earlier versions, "
                             f"{', '.join(missing)}); rerun training")
        return cls._located(where, *(run[k] for k in FIELDS))

    @classmethod
    def _located(cls, where, *fields):
        try:
            return cls(*fields)
        except SpvitError as error:
            raise SpvitError(f"{where}: {error}") from None
