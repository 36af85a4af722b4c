"""Seed statistics and paired comparisons of evaluated runs (numpy only).

A run's evaluation can record which test images it classified correctly (`encode_correct`,
stored as `top1_correct` in final/eval.json: the packed bits in base64, ~1.7 KB for 10k
images), so two methods can be compared on the same images instead of by their means alone.
`paired_bootstrap` resamples the test images, the same resample for both sides, and reports
the difference of the seed-averaged accuracies with its 95% interval: the variation it
measures is the test set's, on top of the seeds' that `seed_summary` reports.
"""

import base64
import dataclasses

import numpy as np

from spvit_tf.errors import SpvitError


def encode_correct(correct):
    """A boolean vector (one entry per test image, in evaluation order) as a base64 string."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def eval_order(data_spec, examples):
    """What fixes which images a per-image vector covers, in which order: the evaluation
    source and the subset (`examples` > 0 takes the first of a seeded shuffle, 0 every image
    in file order). Two vectors pair only when these match."""
    return f"{data_spec}|examples={examples or 'all'}|order={'shuffled:0' if examples else 'files'}"


def decode_correct(text, count):
    """The inverse of `encode_correct` for `count` images."""
    bits = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    if bits.size * 8 < count:
        raise SpvitError(f"per-image results hold {bits.size * 8} images, expected {count}")
    return np.unpackbits(bits)[:count].astype(bool)


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single seed
    count: int


def seed_summary(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise SpvitError("no runs to summarise")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return SeedSummary(float(values.mean()), std, int(values.size))


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    delta: float  # mean accuracy of `a`'s seeds minus `b`'s, in points
    low: float  # 2.5th percentile of the bootstrap deltas
    high: float  # 97.5th percentile
    p_not_better: float  # share of resamples where a does not beat b


def paired_bootstrap(a, b, resamples=10_000, seed=0):
    """Compares two methods evaluated on the same test images.

    `a` and `b` are lists of per-image correctness vectors, one per seed. Every resample
    draws test images with replacement and uses the same draw for both methods; each side's
    accuracy is its seeds' mean on that draw.
    """
    a, b = np.atleast_2d(np.asarray(a, bool)), np.atleast_2d(np.asarray(b, bool))
    if a.shape[1] != b.shape[1]:
        raise SpvitError(f"runs evaluated on {a.shape[1]} and {b.shape[1]} images cannot be "
                         "paired: evaluate both on the same test set")
    per_image = a.mean(axis=0) - b.mean(axis=0)  # seed-averaged difference per image
    rng = np.random.default_rng(seed)
    n = per_image.size
    deltas = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks bound the (chunk, n) index array
        draws = rng.integers(0, n, size=(min(1000, resamples - start), n))
        deltas[start:start + len(draws)] = per_image[draws].mean(axis=1)
    low, high = np.percentile(deltas, [2.5, 97.5]) * 100
    return PairedComparison(float(per_image.mean() * 100), float(low), float(high),
                            float((deltas <= 0).mean()))
