"""Uncertainty of the report's numbers: intervals on accuracies, paired differences, speed-up ratios.

Every interval is a two-sided 95% interval unless ``level`` says otherwise; accuracies and their
differences are in percent (points). The bootstrap uses a fixed seed, so a rebuilt book prints the
same intervals.

- one accuracy on one seed: the Wilson score interval over test images (:func:`wilson`);
- one accuracy over several seeds: the mean ± a Student-t interval over seeds (:func:`t_interval`);
- two models on the same images: the paired bootstrap over images of the accuracy difference, with
  the exact McNemar p-value on the discordant images (:func:`paired_difference`); over several seeds
  the per-seed differences are combined (:func:`combine_seeds`);
- a speed-up: the ratio of median batch times of two models timed interleaved, bootstrapped over
  the paired repeats (:func:`speedup_interval`).

A difference is a ``win`` or a ``loss`` only when its interval excludes 0 (:func:`call`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "LEVEL",
    "BOOTSTRAP_SEED",
    "N_BOOTSTRAP",
    "Difference",
    "wilson",
    "t_interval",
    "chance_rate",
    "covers_chance",
    "paired_difference",
    "combine_seeds",
    "speedup_interval",
    "call",
    "format_interval",
]

LEVEL = 0.95
BOOTSTRAP_SEED = 0
N_BOOTSTRAP = 4000


@dataclass(frozen=True)
class Difference:
    """A paired accuracy difference A − B in points, with its interval.

    Args:
        diff: the observed difference (points).
        lo, hi: the interval's ends (points).
        n: images compared (summed over seeds).
        seeds: seeds combined.
        p_mcnemar: exact McNemar p-value (one seed), or NaN.
    """

    diff: float
    lo: float
    hi: float
    n: int
    seeds: int = 1
    p_mcnemar: float = float("nan")

    @property
    def call(self) -> str:
        return call(self.lo, self.hi)


def wilson(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion, in percent.

    Args:
        correct: successes (correct images).
        n: trials (test images), > 0.

    Returns:
        (lo, hi) in percent.
    """
    if n <= 0:
        raise ValueError(f"wilson: n must be > 0, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson: correct={correct} is not in [0, n={n}]")
    ci = sps.binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return 100.0 * ci.low, 100.0 * ci.high


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval over seeds: (mean, lo, hi); lo = hi = NaN for fewer than 2 values."""
    x = np.asarray([v for v in values if not np.isnan(v)], dtype=float)
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def chance_rate(labels: np.ndarray) -> float:
    """Chance accuracy of a task, in percent: the majority-class rate of its test labels.

    The best a model that ignores its input can score; a model whose accuracy interval reaches it has
    learnt nothing measurable (a collapsed run).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("chance_rate: no labels")
    return 100.0 * np.bincount(labels.astype(np.int64)).max() / labels.size


def covers_chance(lo: float, chance: float) -> bool:
    """Whether an accuracy interval (lower end ``lo``) reaches chance: the run collapsed."""
    return bool(not np.isnan(lo) and lo <= chance)


def _mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar p-value: a binomial test on the images exactly one model gets right."""
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _check_pair(labels_a: np.ndarray, labels_b: np.ndarray, where: str) -> None:
    if labels_a.shape != labels_b.shape or not np.array_equal(labels_a, labels_b):
        raise ValueError(f"{where}: the two models were evaluated on different images (labels differ)")


def _stratified_bootstrap(diffs: Sequence[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the mean over seeds of per-seed mean differences, images resampled
    within each seed (the images of one seed are paired; seeds are independent strata)."""
    rng = np.random.default_rng(seed)
    reps = np.zeros(n_boot)
    for d in diffs:
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        reps += d[idx].mean(axis=1)
    return reps / len(diffs)


def _correct(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: 1.0 / 0.0 for one model, the fraction of draws right for (draws, images) predictions."""
    right = np.asarray(pred) == labels
    return right.mean(axis=0) if right.ndim == 2 else right.astype(float)


def paired_difference(
    labels: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Difference:
    """Accuracy of A minus accuracy of B on the same images: paired bootstrap interval, McNemar p.

    Args:
        labels: true classes of the images.
        pred_a, pred_b: each model's predicted classes, image by image.
    """
    labels, pred_a, pred_b = (np.asarray(v) for v in (labels, pred_a, pred_b))
    if not labels.shape == pred_a.shape == pred_b.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"paired_difference: labels {labels.shape}, pred_a {pred_a.shape}, pred_b {pred_b.shape}"
                         " must be equal non-empty 1-d arrays")
    a, b = pred_a == labels, pred_b == labels
    d = 100.0 * (a.astype(float) - b.astype(float))
    reps = _stratified_bootstrap([d], n_boot, seed)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Difference(float(d.mean()), float(lo), float(hi), int(d.size), 1, _mcnemar(a, b))


def combine_seeds(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Difference:
    """The paired difference A − B over seeds: the mean of the per-seed differences.

    Its interval is the stratified paired bootstrap (images resampled within each seed); with three
    or more seeds it is widened to the Student-t interval over the per-seed differences when that is
    wider, so that seed-to-seed variation is never hidden behind image-level precision.

    Args:
        pairs: per seed, (labels, pred_a, pred_b). A prediction array may be (draws, images) for an arm
            with several random draws in that run: it enters as the fraction of its draws right on each
            image, one stratum per run, never one per draw (that would count the same images, and the
            other arm's predictions, once per draw, and narrow the interval for nothing).
    """
    if not pairs:
        raise ValueError("combine_seeds: no seeds")
    diffs = []
    for i, (labels, pa, pb) in enumerate(pairs):
        labels = np.asarray(labels)
        if labels.ndim != 1 or not labels.shape == np.shape(pa)[-1:] == np.shape(pb)[-1:]:
            raise ValueError(f"combine_seeds: seed #{i}: arrays of different lengths")
        diffs.append(100.0 * (_correct(pa, labels) - _correct(pb, labels)))
    if len(diffs) == 1 and np.ndim(pairs[0][1]) == np.ndim(pairs[0][2]) == 1:
        return paired_difference(*pairs[0], level=level, n_boot=n_boot, seed=seed)
    reps = _stratified_bootstrap(diffs, n_boot, seed)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    per_seed = [float(d.mean()) for d in diffs]
    mean = float(np.mean(per_seed))
    if len(per_seed) >= 3:
        _, tlo, thi = t_interval(per_seed, level)
        lo, hi = min(lo, tlo), max(hi, thi)
    return Difference(mean, float(lo), float(hi), int(sum(len(d) for d in diffs)), len(diffs))


def speedup_interval(
    times_ref: Sequence[float],
    times_model: Sequence[float],
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """Speed-up of a model over its reference, median(t_ref) / median(t_model), with a bootstrap interval.

    The repeats are paired (the two models were timed interleaved, repeat i of one next to repeat i
    of the other), so they are resampled together.

    Returns:
        (ratio, lo, hi); lo = hi = NaN for fewer than 2 repeats.
    """
    ref, mod = np.asarray(times_ref, dtype=float), np.asarray(times_model, dtype=float)
    if ref.shape != mod.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"speedup_interval: {ref.shape} and {mod.shape} reference/model timings must pair up")
    ratio = float(np.median(ref) / np.median(mod))
    if ref.size < 2:
        return ratio, np.nan, np.nan
    idx = np.random.default_rng(seed).integers(0, ref.size, size=(n_boot, ref.size))
    reps = np.median(ref[idx], axis=1) / np.median(mod[idx], axis=1)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return ratio, float(lo), float(hi)


def call(lo: float, hi: float) -> str:
    """``win`` when the interval of A − B lies above 0, ``loss`` below, else ``indistinguishable``."""
    if np.isnan(lo) or np.isnan(hi):
        return "indistinguishable"
    if lo > 0:
        return "win"
    if hi < 0:
        return "loss"
    return "indistinguishable"


def format_interval(value: float, lo: float, hi: float, digits: int = 1, signed: bool = False) -> str:
    """``76.9 ±2.6`` (the half-width of a symmetric-looking interval); ``76.9 [74.0, 79.1]`` when it
    is clearly asymmetric; just the value when there is no interval; ``—`` when no value."""
    if np.isnan(value):
        return "—"
    v = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if np.isnan(lo) or np.isnan(hi):
        return v
    below, above = value - lo, hi - value
    half = max(below, above)
    if abs(below - above) <= 0.25 * max(half, 10 ** -digits):
        return f"{v} ±{half:.{digits}f}"
    return f"{v} [{lo:.{digits}f}, {hi:.{digits}f}]"
