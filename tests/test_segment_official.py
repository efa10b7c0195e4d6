"""SGLP's official boundary recovery (analysis/segment.py ``official_segments``, option ``boundaries: official``).

Known answers worked out by hand from Network_Partition.py lines 89-103 (itsnotacie/information-fusion-SGLP):
going down from the current n, the first n with P(n, k-1) strictly below the current loss is a cut.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import brute_force
from petlprune.analysis.segment import choose_k, fisher_segments, official_segments, segments_loss


def test_hand_worked_strict_less_skips_a_zero_cost_prefix() -> None:
    """v = 0 0 4 4 10 11, k = 3. P(6, 3) = 0.5 ({0 0}{4 4}{10 11}).
    Level 2 from n = 6: P(6, 2) = 16.5, P(5, 2) = 16 are not < 0.5; P(4, 2) = 0 is: cut at 4, loss 0.
    Level 1 from n = 4: P(4, 1) = 16, P(3, 1) = 32/3 are not < 0; P(2, 1) = 0 is not < 0 either (strict:
    the zero-cost prefix {0 0} is passed over), P(1, 1) = 0 neither. One cut: {0 0 4 4}{10 11}, loss 16.5."""
    v = [0, 0, 4, 4, 10, 11]
    assert official_segments(v, 3) == [(0, 4), (4, 6)]
    assert fisher_segments(v, 3) == [(0, 2), (2, 4), (4, 6)]
    assert segments_loss(v, official_segments(v, 3)) == pytest.approx(16.5)
    assert segments_loss(v, fisher_segments(v, 3)) == pytest.approx(0.5)


def test_hand_worked_last_prefix_below_not_the_argmin() -> None:
    """v = 0 1 10 10 10 20, k = 2. P(6, 2) = 75.5 at the cut 2 (0.5 + 75). Level 1 from n = 6: P(6, 1) = 267.5,
    P(5, 1) = 108.8, P(4, 1) = 90.75 are not < 75.5, P(3, 1) = 182/3 = 60.67 is:
    cut at 3, total 60.67 + 66.67 = 127.33, where the argmin of P(n, 1) + D(n, 6) is n = 2."""
    v = [0, 1, 10, 10, 10, 20]
    assert official_segments(v, 2) == [(0, 3), (3, 6)]
    assert fisher_segments(v, 2) == [(0, 2), (2, 6)]
    assert segments_loss(v, official_segments(v, 2)) == pytest.approx(382 / 3)
    assert segments_loss(v, fisher_segments(v, 2)) == pytest.approx(75.5)


def test_piecewise_constant_input_gets_no_cut() -> None:
    """P(N, k) = 0: nothing is strictly below it, so the official rule returns one segment."""
    v = [0, 0, 0, 1, 1, 1]
    assert fisher_segments(v, 2) == [(0, 3), (3, 6)]
    assert official_segments(v, 2) == [(0, 6)]


def test_agrees_where_the_last_prefix_below_is_the_argmin() -> None:
    """v = 0 0 3 3 4, k = 2: P(5, 2) = 2/3 at the cut 2, and the last prefix below 2/3 is n = 2 too."""
    assert official_segments([0, 0, 3, 3, 4], 2) == fisher_segments([0, 0, 3, 3, 4], 2) == [(0, 2), (2, 5)]
    assert official_segments([5.0, 1.0, 2.0], 1) == [(0, 3)]


@pytest.mark.parametrize("seed", range(30))
def test_never_better_than_exact_and_covers_in_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=int(rng.integers(4, 10))).cumsum()
    k = min(choose_k(v), len(v))
    segs = official_segments(v, k)
    assert segs[0][0] == 0 and segs[-1][1] == len(v) and len(segs) <= k
    assert all(a < b for a, b in segs) and all(b == c for (_, b), (c, _) in zip(segs[:-1], segs[1:], strict=True))
    exact = brute_force(np.asarray(v), k)[0]
    assert segments_loss(v, fisher_segments(v, k)) == pytest.approx(exact)
    if len(segs) == k:
        assert segments_loss(v, segs) >= exact - 1e-12


def test_errors() -> None:
    with pytest.raises(ValueError, match="number of segments"):
        official_segments([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="NaN"):
        official_segments([1.0, float("nan")], 1)
