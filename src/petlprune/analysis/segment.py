"""Fisher's optimal segmentation of an ordered sequence (Fisher, "On Grouping for Maximum Homogeneity", 1958).

Split ``v_0 .. v_{N-1}`` into ``k`` contiguous segments minimising the total within-segment sum of
squared deviations from the segment mean, ``D(i, j) = Σ_{i <= t < j} (v_t - mean(v_i..v_{j-1}))²``.
Exact dynamic programme (SGLP, step 2)::

    P(n, 1) = D(0, n)
    P(n, k) = min_{k-1 <= j <= n-1} P(j, k-1) + D(j, n)      (last segment [j, n))

and the cut points are recovered by back-tracking the stored argmins. O(k N²) after the O(N²) table
of D. This is the exact optimum (tests compare it with brute force): SGLP option ``boundaries: exact``,
the default.

SGLP's official code (itsnotacie/information-fusion-SGLP, ``Network_Partition.py``, ``get_split_loss``
lines 36-65 and ``get_split_info`` lines 89-103) fills the same table exactly but recovers the cuts
with a heuristic (line 98): going down from the current n, it takes the first (largest) n whose
prefix loss ``P(n, k-1)`` is strictly below the current loss, not the argmin of
``P(n, k-1) + D(n, N)``. :func:`official_segments` reproduces it line for line (SGLP option
``boundaries: official``, an ablation). Measured (book/methods/sglp.md, benchmarks/sglp_boundaries.py)
at the k SGLP's rule picks: sub-optimal on 4 of 4 CKA column sums of a default-tier run (CLS-token and
all-token CKA alike, often with fewer than k segments) and on 394 of 400 random walks of length 12;
on exactly piecewise-constant input it finds no cut at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["within_costs", "fisher_segments", "official_segments", "segments_loss", "segmentation_losses",
           "choose_k"]


def _as_values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D sequence, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"values: contains NaN or inf at position(s) {np.flatnonzero(~np.isfinite(v)).tolist()}")
    return v


def within_costs(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``D[i, j]``: sum of squared deviations of ``values[i:j]`` from their mean (0 where j <= i + 1).

    Computed per slice (two-pass), not from prefix sums of squares, so no cancellation.

    Returns:
        (N + 1, N + 1) float64 array; only ``i < j`` entries are meaningful.
    """
    v = _as_values(values)
    n = v.size
    cost = np.zeros((n + 1, n + 1))
    for i in range(n):
        for j in range(i + 2, n + 1):
            seg = v[i:j]
            cost[i, j] = np.square(seg - seg.mean()).sum()
    return cost


def _dynamic_programme(values: Sequence[float] | np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray, int]:
    """P[k, n] (optimal loss of the first n values in k segments) and the argmin start of the last segment."""
    v = _as_values(values)
    n = v.size
    if isinstance(k_max, bool) or not isinstance(k_max, (int, np.integer)) or not 1 <= k_max <= n:
        raise ValueError(f"number of segments must be an integer in 1..{n} (the sequence length), got {k_max!r}")
    cost = within_costs(v)
    loss = np.full((k_max + 1, n + 1), np.inf)
    start = np.zeros((k_max + 1, n + 1), dtype=np.int64)
    loss[1, 1:] = cost[0, 1:]
    for k in range(2, k_max + 1):
        for end in range(k, n + 1):
            cands = loss[k - 1, k - 1 : end] + cost[k - 1 : end, end]  # last segment [j, end), j = k-1..end-1
            best = int(np.argmin(cands))  # first minimum: ties go to the earliest cut
            loss[k, end] = cands[best]
            start[k, end] = k - 1 + best
    return loss, start, n


def fisher_segments(values: Sequence[float] | np.ndarray, k: int) -> list[tuple[int, int]]:
    """Exact optimal split of ``values`` into ``k`` contiguous segments.

    Args:
        values: 1-D sequence of N finite numbers (SGLP: CKA column sums, one per block).
        k: number of segments, 1 <= k <= N.

    Returns:
        ``k`` half-open ``(start, end)`` pairs, in order, covering ``0..N``.
    """
    _, start, n = _dynamic_programme(values, k)
    segments: list[tuple[int, int]] = []
    end = n
    for kk in range(k, 1, -1):
        begin = int(start[kk, end])
        segments.append((begin, end))
        end = begin
    segments.append((0, end))
    return segments[::-1]


def _official_diameter(v: np.ndarray, start: int, end: int) -> float:
    """``get_class_diameter`` (Network_Partition.py lines 21-33): mean and squares summed in order."""
    ave = 0.0
    for i in range(start, end):
        ave += v[i]
    ave = ave / (end - start)
    diameter = 0.0
    for i in range(start, end):
        diameter += (v[i] - ave) ** 2
    return float(diameter)


def _official_table(v: np.ndarray, k_max: int) -> np.ndarray:
    """``get_split_loss`` (Network_Partition.py lines 36-65): (N + 1, k_max + 1), zeros where unset."""
    n_samples = v.size
    table = np.zeros((n_samples + 1, k_max + 1))
    for n in range(1, n_samples + 1):
        table[n, 1] = _official_diameter(v, 0, n)
    for k in range(2, k_max + 1):
        for n in range(k, n_samples + 1):
            table[n, k] = min(table[j, k - 1] + _official_diameter(v, j, n) for j in range(k - 1, n))
    return table


def official_segments(values: Sequence[float] | np.ndarray, k: int) -> list[tuple[int, int]]:
    """SGLP's official boundary recovery for ``k`` segments, line for line (an ablation; a heuristic).

    Network_Partition.py ``get_split_info`` lines 89-103, with ``k_best = k``::

        split_point = []; k = k_best - 1; n = len(samples); split_loss = split_loss_result[n][k_best]
        while k > 0:
            while n > 0:
                if split_loss_result[n][k] < split_loss:      # line 98: strict, first n from the top
                    split_point.insert(0, n); split_loss = split_loss_result[n][k]; break
                n -= 1
            k -= 1

    ``split_loss_result`` is the official table (:func:`_official_table`: the same exact P(n, k),
    diameters summed in order as ``get_class_diameter`` does, zeros where n < k). A cut ``n`` starts
    a new segment at value ``n`` (lines 110-120). Because of the strict ``<``, a prefix whose loss
    equals the current one is passed over, and once the current loss is 0 no cut is found: the result
    can have fewer than ``k`` segments (one, on exactly piecewise-constant input).

    Args:
        values: 1-D sequence of N finite numbers.
        k: number of segments asked for, 1 <= k <= N.

    Returns:
        Half-open ``(start, end)`` pairs, in order, covering ``0..N``; at most ``k`` of them.
    """
    v = _as_values(values)
    n = v.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"number of segments must be an integer in 1..{n} (the sequence length), got {k!r}")
    table = _official_table(v, int(k))
    split_point: list[int] = []
    level = int(k) - 1
    split_loss = table[n, int(k)]
    while level > 0:
        while n > 0:
            if table[n, level] < split_loss:
                split_point.insert(0, n)
                split_loss = table[n, level]
                break
            n -= 1
        level -= 1
    bounds = [0, *sorted(set(split_point)), v.size]  # a cut found twice (an empty segment) is one cut
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def segments_loss(values: Sequence[float] | np.ndarray, segments: Sequence[tuple[int, int]]) -> float:
    """Total within-segment sum of squares of a split (what :func:`fisher_segments` minimises)."""
    v = _as_values(values)
    return float(sum(np.square(v[a:b] - v[a:b].mean()).sum() for a, b in segments))


def segmentation_losses(values: Sequence[float] | np.ndarray, k_max: int) -> list[float]:
    """``P(N, k)`` for ``k = 1..k_max``: the optimal total within-segment sum of squares.

    Args:
        values: 1-D sequence of N finite numbers.
        k_max: largest number of segments, 1 <= k_max <= N.
    """
    loss, _, n = _dynamic_programme(values, k_max)
    return [float(loss[k, n]) for k in range(1, k_max + 1)]


def choose_k(values: Sequence[float] | np.ndarray, k_max: int = 6, threshold: float = 0.05) -> int:
    """SGLP's "auto" number of segments: the LARGEST ``k <= k_max`` whose relative loss drop exceeds ``threshold``.

    The rule is read literally: with ``P_k = P(N, k)`` and ``drop_k = (P_{k-1} - P_k) / P_{k-1}``
    for ``k = 2..k_max``, the answer is ``max{k : drop_k > threshold}``, or 1 when no ``k`` qualifies.
    It is NOT "stop at the first small drop": a small drop at k = 3 followed by a large one at k = 4
    gives 4. Once ``P_{k-1}`` is 0 (the sequence is already piecewise constant), ``drop_k`` is 0/0
    and counts as no drop. ``k_max`` larger than N is clamped to N.

    Args:
        values: 1-D sequence of N finite numbers.
        k_max: largest number of segments considered (official: 6).
        threshold: relative drop a split must exceed (official: 0.05).
    """
    v = _as_values(values)
    if isinstance(k_max, bool) or not isinstance(k_max, (int, np.integer)) or k_max < 1:
        raise ValueError(f"k_max must be a positive integer, got {k_max!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    losses = segmentation_losses(v, min(int(k_max), v.size))
    # P_{k-1} at rounding level of the data's total sum of squares is an exact fit: no further drop
    floor = 1e-12 * max(losses[0], np.finfo(np.float64).tiny)
    best = 1
    for k in range(2, len(losses) + 1):
        prev, cur = losses[k - 2], losses[k - 1]
        if prev > floor and (prev - cur) / prev > threshold:
            best = k
    return best
