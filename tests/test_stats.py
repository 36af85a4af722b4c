import numpy as np
import pytest

from spvit_tf import stats
from spvit_tf.errors import SpvitError


def test_per_image_correctness_round_trips_through_its_text_form():
    correct = np.random.default_rng(0).random(10_001) < 0.7
    text = stats.encode_correct(correct)
    assert len(text) < 1800  # packed bits, base64: what eval.json commits per run
    np.testing.assert_array_equal(stats.decode_correct(text, 10_001), correct)
    with pytest.raises(SpvitError, match="expected 20000"):
        stats.decode_correct(text, 20_000)


def test_seed_summary_is_the_mean_and_sample_std():
    summary = stats.seed_summary([0.80, 0.82, 0.84])
    assert summary.mean == pytest.approx(0.82) and summary.std == pytest.approx(0.02)
    assert stats.seed_summary([0.5]).std == 0.0 and stats.seed_summary([0.5]).count == 1
    with pytest.raises(SpvitError):
        stats.seed_summary([])


def test_paired_bootstrap_finds_a_real_gap_and_not_a_reordering():
    rng = np.random.default_rng(1)
    base = rng.random(4000) < 0.8
    better = base | (rng.random(4000) < 0.1)  # right on every image base gets, and more
    gap = stats.paired_bootstrap([better], [base], resamples=2000)
    assert gap.delta == pytest.approx((better.mean() - base.mean()) * 100)
    assert gap.low > 0 and gap.p_not_better == 0.0 and gap.low < gap.delta < gap.high
    shuffled = stats.paired_bootstrap([base], [rng.permutation(base)], resamples=2000)
    assert shuffled.delta == pytest.approx(0.0) and shuffled.low < 0 < shuffled.high
    # Seeds are averaged per image before resampling.
    two = stats.paired_bootstrap([better, base], [base], resamples=500)
    assert two.delta == pytest.approx(gap.delta / 2)
    with pytest.raises(SpvitError, match="same test set"):
        stats.paired_bootstrap([base], [base[:10]])
