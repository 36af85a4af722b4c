"""Which patches each selector kept: `python -m spvit_tf.visualize --workdir=W [--images=...]`.

One row per image, one column per pruning location: patches still kept stay as they are,
those dropped at that location are tinted (into the package token for SPViT and EViT,
discarded for hard/static), those dropped earlier are washed out. The model runs as it ships
(gathered top-k at the fixed per-stage counts), so the figure is what the `.tflite` computes.

    python -m spvit_tf.visualize --workdir=results/cifar10/spvit_b050 --output=keep.png
    python -m spvit_tf.visualize --workdir=W --images=cat.jpg,dog.png   # or a folder of images
"""

import io
import os
import pathlib

import numpy as np
from absl import app, flags

from spvit_tf.errors import SpvitError, parse_flags, run_cli
from spvit_tf.workdir import atomic_write, check_output_file

DROPPED_NOW = np.array([230, 60, 40], np.float32)  # tint of tokens dropped at this location
WASH = 0.8  # how far earlier-dropped patches fade to white


def read_images(paths, preprocessor):
    """uint8 (N, S, S, 3) from image files or folders: `preprocessor.pixels` of each."""
    import tensorflow as tf

    from spvit_tf.data import IMAGE_EXTENSIONS

    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise SpvitError(f"--images: {path} does not exist")
    if not files:
        raise SpvitError(f"--images={','.join(paths)} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    images = []
    for file in files:
        try:
            images.append(preprocessor.pixels(file.read_bytes()).numpy())
        except tf.errors.InvalidArgumentError:
            raise SpvitError(f"{file} is not a readable JPEG/PNG image; remove it or pass "
                             "other --images") from None
    return np.stack(images), [f.name for f in files]


def keep_maps(model, pixels, preprocessor):
    """Per location j: (kept, dropped_here) boolean grids (N, h, w) of that location's stage,
    for uint8 `pixels` that `preprocessor` normalises."""
    output = model.forward(preprocessor.normalize(pixels), training=False, mode="gather")
    maps, previous = [], {}
    for step, record in zip(model.schedule.steps, output.records):
        h, w = step.grid
        index = np.asarray(record["index"])
        kept = np.zeros((len(pixels), h * w), bool)
        np.put_along_axis(kept, index, True, axis=1)
        before = previous.get(step.stage, np.ones_like(kept))
        maps.append((kept.reshape(-1, h, w), (before & ~kept).reshape(-1, h, w)))
        previous[step.stage] = kept
    return maps


def _upsample(grid, size):
    """(h, w) cells -> (size, size) pixels, nearest cell."""
    h, w = grid.shape
    return grid[np.arange(size) * h // size][:, np.arange(size) * w // size]


def render(pixels, names, maps, titles, output, note):
    """Draws the figure to `output` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, size = len(pixels), len(maps) + 1, pixels.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.5), squeeze=False)
    for i, image in enumerate(pixels.astype(np.float32)):
        axes[i, 0].imshow(image.astype(np.uint8))
        axes[i, 0].set_ylabel(names[i][:18], fontsize=7)
        for j, (kept, dropped_now) in enumerate(maps):
            keep, now = _upsample(kept[i], size)[..., None], _upsample(dropped_now[i], size)[..., None]
            washed = image + WASH * (255.0 - image)
            tinted = 0.45 * image + 0.55 * DROPPED_NOW
            shown = np.where(keep, image, np.where(now, tinted, washed))
            axes[i, j + 1].imshow(shown.astype(np.uint8))
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    for j, title in enumerate(titles):
        axes[0, j + 1].set_title(title, fontsize=8)
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=130)
    plt.close(fig)
    atomic_write(os.fspath(output), png.getvalue(), mode="wb")


def visualize(workdir, images=(), num_images=6, output="token_keep.png"):
    """Loads the run, picks the images, renders; returns the output path."""
    from spvit_tf.data import load_pixels
    from spvit_tf.preprocessing import Preprocessor
    from spvit_tf.workdir import load_model

    model, run = load_model(workdir)
    if model.pruner is None:
        raise SpvitError(f"{workdir} is a dense run: there are no token selections to show")
    preprocessor = Preprocessor.from_run(run, f"{workdir}/run.json")
    if images:
        pixels, names = read_images(images, preprocessor)
    else:
        pixels, labels, classes = load_pixels(run["data"], "eval", num_images, preprocessor)
        names = [classes[label] for label in labels]
    maps = keep_maps(model, pixels, preprocessor)
    config = model.pruner.config
    titles = [f"block {step.block}: keep {step.kept}/{step.stage_patches}"
              for step in model.schedule.steps]
    fate = config.method_object.fate
    note = (f"{pathlib.Path(workdir).name} ({config.method}): red = dropped at this selector, "
            f"{fate}; faded = dropped earlier")
    render(pixels, names, maps, titles, output, note)
    return output


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; pass options as --name=value")
    if not FLAGS.workdir:
        raise SpvitError("--workdir is required: a pruned python -m spvit_tf.train run")
    check_output_file(FLAGS.output, "--output")  # before the model and images load
    print(visualize(FLAGS.workdir, FLAGS.images, FLAGS.num_images, FLAGS.output))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A training workdir of a pruned model.")
    flags.DEFINE_list("images", [], "Image files or folders; default: --num_images test images "
                      "of the run's data.")
    flags.DEFINE_integer("num_images", 6, "Test images to show without --images.", lower_bound=1)
    flags.DEFINE_string("output", "token_keep.png", "PNG to write.")
    app.run(run_cli(main), flags_parser=parse_flags)
