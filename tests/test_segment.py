"""Fisher's optimal segmentation (analysis/segment.py) against brute force and known answers."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import brute_force, ss
from petlprune.analysis.segment import choose_k, fisher_segments, segmentation_losses, within_costs


@pytest.mark.parametrize("seed", range(40))
def test_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    values = rng.normal(size=n) * rng.choice([0.1, 1.0, 5.0], size=n) + rng.normal()
    losses = segmentation_losses(values, n)
    for k in range(1, n + 1):
        loss, segs = brute_force(values, k)
        assert fisher_segments(values, k) == segs, (seed, k)
        assert losses[k - 1] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(losses, losses[1:], strict=False))  # P(N, k) non-increasing


def test_segments_cover_in_order() -> None:
    values = np.random.default_rng(1).normal(size=12)
    for k in range(1, 13):
        segs = fisher_segments(values, k)
        assert len(segs) == k and segs[0][0] == 0 and segs[-1][1] == 12
        assert all(a < b for a, b in segs)
        assert all(segs[i][1] == segs[i + 1][0] for i in range(k - 1))


def test_within_costs() -> None:
    values = [1.0, 2.0, 4.0, 8.0]
    cost = within_costs(values)
    assert cost[0, 4] == pytest.approx(ss(np.array(values)))
    assert cost[1, 3] == pytest.approx(2.0)
    assert cost[2, 3] == 0.0


def test_planted_steps() -> None:
    values = [1.0] * 4 + [5.0] * 3 + [9.0] * 5
    assert fisher_segments(values, 3) == [(0, 4), (4, 7), (7, 12)]
    losses = segmentation_losses(values, 6)
    assert losses[2:] == [0.0, 0.0, 0.0, 0.0]
    assert choose_k(values) == 3  # P(N, 3) = 0: no further split can drop the loss


def test_choose_k_takes_the_largest_qualifying_k() -> None:
    # Known answer: P(N, k) = 41/6, 2.8, 2.5, 1.0; relative drops 0.590, 0.107, 0.600.
    values = [0.0, 2.0, 3.0, 1.0, 3.0, 2.0]
    np.testing.assert_allclose(segmentation_losses(values, 4), [41 / 6, 2.8, 2.5, 1.0], rtol=1e-12)
    assert choose_k(values, k_max=4, threshold=0.2) == 4  # the k = 3 drop is small, k = 4 qualifies
    assert choose_k(values, k_max=3, threshold=0.2) == 2
    assert choose_k(values, k_max=4, threshold=0.595) == 4  # only the k = 4 drop exceeds 0.595
    assert choose_k(values, k_max=4, threshold=0.65) == 1  # no drop qualifies
    assert choose_k(values, k_max=50, threshold=0.0) == 6  # k_max clamped to N


def test_errors() -> None:
    with pytest.raises(ValueError, match="1..3"):
        fisher_segments([1.0, 2.0, 3.0], 4)
    with pytest.raises(ValueError, match="1..3"):
        fisher_segments([1.0, 2.0, 3.0], 0)
    with pytest.raises(ValueError, match=r"position\(s\) \[1\]"):
        fisher_segments([1.0, float("nan"), 3.0], 2)
    with pytest.raises(ValueError, match="1-D"):
        segmentation_losses(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="threshold"):
        choose_k([1.0, 2.0], threshold=1.5)
