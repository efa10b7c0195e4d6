"""Known answers of the report's intervals: Wilson, Student t, paired bootstrap / McNemar, speed-up ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from petlprune.report import stats


def test_wilson_matches_hand_computation():
    # 8 of 10, z = 1.959964: centre (0.8 + z²/20) / (1 + z²/10), half z·sqrt(0.016 + z²/400) / (1 + z²/10)
    z = 1.959963984540054
    centre = (0.8 + z**2 / 20) / (1 + z**2 / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z**2 / 400) / (1 + z**2 / 10)
    lo, hi = stats.wilson(8, 10)
    assert (lo, hi) == pytest.approx((100 * (centre - half), 100 * (centre + half)), abs=1e-9)
    assert (lo, hi) == pytest.approx((49.02, 94.33), abs=0.01)  # the textbook value
    assert stats.wilson(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and stats.wilson(20, 20)[1] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="correct=11"):
        stats.wilson(11, 10)


def test_t_interval_over_seeds():
    mean, lo, hi = stats.t_interval([70.0, 72.0, 74.0])  # std 2, t(0.975, 2) = 4.302653
    assert mean == 72.0 and hi - mean == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-6) and mean - lo == hi - mean
    assert math.isnan(stats.t_interval([70.0])[1])


def _fabricated(n=1000, right_a=800, right_b=700, seed=0):
    """Labels and two models' predictions: A right on the first ``right_a`` images, B on the first
    ``right_b`` (a shuffled order), so the true difference is exactly (right_a − right_b) / n."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    order = rng.permutation(n)
    wrong = (labels + 1) % 5
    pa, pb = wrong.copy(), wrong.copy()
    pa[order[:right_a]] = labels[order[:right_a]]
    pb[order[:right_b]] = labels[order[:right_b]]
    return labels, pa, pb


def test_paired_difference_known_positive_and_negative():
    labels, pa, pb = _fabricated()
    ab = stats.paired_difference(labels, pa, pb)
    assert ab.diff == pytest.approx(10.0) and ab.lo < 10.0 < ab.hi and ab.lo > 0 and ab.call == "win"
    assert ab.p_mcnemar < 1e-20  # 100 discordant images, all one way: p = 2 · 0.5^100
    ba = stats.paired_difference(labels, pb, pa)
    assert ba.diff == pytest.approx(-10.0) and ba.hi < 0 and ba.call == "loss"
    assert (ba.lo, ba.hi) == pytest.approx((-ab.hi, -ab.lo))  # the same resamples, mirrored


def test_paired_difference_zero_is_indistinguishable():
    labels, pa, _ = _fabricated()
    same = stats.paired_difference(labels, pa, pa)
    assert (same.diff, same.lo, same.hi, same.call) == (0.0, 0.0, 0.0, "indistinguishable")
    # equal accuracy, 200 discordant images split evenly: true difference 0, interval covers it
    labels, pa, pb = _fabricated(right_a=700, right_b=700)
    pb = pb.copy()
    pb[np.flatnonzero(pa == labels)[:100]] = (labels[np.flatnonzero(pa == labels)[:100]] + 1) % 5
    swap = np.flatnonzero(pa != labels)[:100]
    pb[swap] = labels[swap]
    zero = stats.paired_difference(labels, pa, pb)
    assert zero.diff == pytest.approx(0.0) and zero.lo < 0 < zero.hi and zero.call == "indistinguishable"
    assert zero.p_mcnemar == pytest.approx(1.0)


def test_paired_difference_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equal non-empty"):
        stats.paired_difference(np.zeros(3), np.zeros(3), np.zeros(4))


def test_combine_seeds_averages_per_seed_differences():
    s0, s1 = _fabricated(seed=0), _fabricated(right_b=760, seed=1)  # true +10 and +4 points
    both = stats.combine_seeds([s0, s1])
    assert both.diff == pytest.approx(7.0) and both.seeds == 2 and both.n == 2000 and both.lo > 0
    assert both.hi - both.lo < stats.paired_difference(*s0).hi - stats.paired_difference(*s0).lo + 1e-9
    three = stats.combine_seeds([s0, s1, _fabricated(right_b=820, seed=2)])  # +10, +4, −2: seeds disagree
    _, tlo, thi = stats.t_interval([10.0, 4.0, -2.0])
    assert three.diff == pytest.approx(4.0) and three.lo <= tlo and three.hi >= thi and three.call == "indistinguishable"


def test_speedup_interval_of_a_model_twice_as_fast():
    rng = np.random.default_rng(1)
    model = 0.010 * (1 + 0.05 * rng.standard_normal(40))
    ref = 2 * model * (1 + 0.02 * rng.standard_normal(40))
    ratio, lo, hi = stats.speedup_interval(ref, model)
    assert ratio == pytest.approx(2.0, rel=0.05) and lo < 2.0 < hi and lo > 1.0
    same = stats.speedup_interval(model, model)
    assert same == (1.0, 1.0, 1.0)


def test_chance_and_collapse():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 10)
    assert stats.chance_rate(labels) == 60.0
    assert stats.covers_chance(stats.wilson(32, 50)[0], 60.0)  # 64% ± 13 reaches 60%: collapsed
    assert not stats.covers_chance(stats.wilson(45, 50)[0], 60.0)


def test_format_interval():
    assert stats.format_interval(76.9, 74.3, 79.5) == "76.9 ±2.6"
    assert stats.format_interval(98.0, 93.0, 99.4) == "98.0 [93.0, 99.4]"
    assert stats.format_interval(3.2, 1.0, 5.4, signed=True) == "+3.2 ±2.2"
    assert stats.format_interval(float("nan"), 0, 1) == "—" and stats.format_interval(5.0, float("nan"), 1) == "5.0"


def test_combine_seeds_takes_several_draws_as_one_stratum_of_their_mean():
    labels, pa, pb0 = _fabricated(right_a=800, right_b=700)
    pb1 = np.where(np.arange(labels.size) < 600, labels, (labels + 1) % 5)  # a second draw: right on 600
    draws = np.stack([pb0, pb1])  # (draws, images): B's expected accuracy 65%
    d = stats.combine_seeds([(labels, pa, draws)])
    assert d.diff == pytest.approx(15.0) and d.seeds == 1 and d.n == labels.size
    # the same images counted once: not the narrower interval of two "independent" strata, one per draw
    per_draw = stats.combine_seeds([(labels, pa, pb0), (labels, pa, pb1)])
    assert per_draw.diff == pytest.approx(d.diff) and per_draw.seeds == 2
    assert (d.hi - d.lo) > (per_draw.hi - per_draw.lo)
    with pytest.raises(ValueError, match="different lengths"):
        stats.combine_seeds([(labels, pa, draws[:, :-1])])


# ---- seeds × images, Holm, minimum detectable effect ----------------------------------------------
def _crossed_tree(rng, seeds=3, images=500, seed_sd=0.04, half_width=0.3, mu=0.6):
    """Per image 0/100 correct: P(correct) = mu + seed effect + image effect, the images shared by the
    seeds (the same test set): known seed variance seed_sd², image variance half_width²/3, mean mu."""
    a = rng.normal(0.0, seed_sd, seeds)
    b = rng.uniform(-half_width, half_width, images)
    p = np.clip(mu + a[:, None] + b[None, :], 0, 1)  # (S, I)
    return 100.0 * (rng.random((seeds, images)) < p)


def test_seed_image_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(5)
    hits = images_only = 0
    for _ in range(200):
        y = _crossed_tree(rng)
        lo, hi = stats.seed_image(list(y)).interval()
        hits += lo <= 60.0 <= hi
        # the same trees with the seed component ignored (images only, seeds pooled): far too narrow
        e = stats.seed_image([y.ravel()])
        lo, hi = e.interval()
        images_only += lo <= 60.0 <= hi
    coverage = hits / 200
    print(f"coverage of the seeds x images interval on 200 trees: {coverage:.3f}; images only: {images_only / 200:.3f}")
    assert 0.90 <= coverage <= 0.99
    assert images_only / 200 < 0.8


def test_seed_image_with_one_seed_is_the_image_level_t_interval():
    y = np.array([100.0, 0.0, 100.0, 100.0, 0.0, 100.0])
    e = stats.seed_image([y])
    assert e.seeds == 1 and e.value == pytest.approx(y.mean())
    assert e.se == pytest.approx(y.std(ddof=1) / np.sqrt(len(y))) and e.df == len(y) - 1


def test_seed_image_rejects_different_images_per_seed():
    with pytest.raises(ValueError, match="same"):
        stats.seed_image([np.ones(5), np.ones(6)])


def test_holm_on_a_hand_computed_family():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, np.nan, 0.2]), [0.5, np.nan, 0.4])  # NaN not in the family


@pytest.mark.parametrize("p_loss, verdict_loss", [(0.03, "indistinguishable"), (0.001, "loss")])
def test_one_loss_among_ten_parts_after_holm(p_loss, verdict_loss):
    directions = [+1.0] * 9 + [-1.0]
    pvalues = [0.4, 0.5, 0.6, 0.7, 0.8, 0.45, 0.55, 0.65, 0.9, p_loss]
    calls, adj = stats.family_calls(directions, pvalues)
    assert calls[-1] == verdict_loss and adj[-1] == pytest.approx(10 * p_loss)
    assert "win" not in calls


def test_minimum_detectable_effect_is_detected_80_percent_of_the_time():
    """Per-image paired differences with the MDE as true effect: the test rejects in about 80% of trees
    (one seed, where the degrees of freedom are many and the normal-theory formula is exact enough)."""
    rng = np.random.default_rng(0)
    mde = stats.seed_image([rng.normal(0, 30, 400)]).mde()
    assert mde == pytest.approx((1.96 + 0.84) * 30 / 20, rel=0.1)  # (z_0.975 + z_0.8) sigma / sqrt(n)
    rejections = sum(stats.seed_image([rng.normal(mde, 30, 400)]).p < 0.05 for _ in range(400))
    assert 0.72 <= rejections / 400 <= 0.88
    # at a Holm-adjusted alpha (the family's strictest step) more is needed to be seen
    assert stats.seed_image([rng.normal(0, 30, 400)]).mde(alpha=0.05 / 10) > 1.2 * mde
