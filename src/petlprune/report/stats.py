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

Seeds and images together: :func:`seed_image` (the design the Claims page's accuracy parts use). The
test images of a task are the same for every seed, so seeds and images are *crossed*, not nested: a
run's accuracy is ``mu + seed effect + image effect + interaction``, and the image effect is shared by
every seed. A between-seed standard error misses it (the images are one sample of the task), an
image-level bootstrap misses the seed effect, and a two-level bootstrap (seeds, then images within
each seed) treats the shared images as independent per seed and, with 3 seeds, resamples from only 10
distinct multisets of seeds, biased low by (S−1)/S. We therefore estimate the variance of the mean with
the two-way random-effects ANOVA of the (seeds × images) table, unbiased for both components,
``V = (MS_seed + MS_image − MS_residual) / (S·I)``, and use a Student-t interval with Satterthwaite's
degrees of freedom (about S−1 when seeds dominate: with 3 seeds the t quantile is 4.3, not 1.96).
tests/test_stats.py measures its coverage on 200 simulated trees with known seed and image variance.
With one seed the seed component cannot be estimated: the interval is over images only and is about
one trained model. Tasks combine as independent strata (:func:`combine_tasks`). :func:`holm` adjusts a
claim's parts as one family; :attr:`Estimate.mde` is the smallest difference the design would detect
with 80% power.
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
    "Estimate",
    "seed_image",
    "combine_tasks",
    "holm",
    "family_calls",
    "speedup_p",
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


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A mean (points) with its standard error, Satterthwaite degrees of freedom and design size."""

    value: float
    se: float
    df: float
    seeds: int
    images: int

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        if not np.isfinite(self.se) or self.se == 0:
            return self.value, self.value
        half = float(sps.t.ppf(0.5 + level / 2, self.df) * self.se)
        return self.value - half, self.value + half

    @property
    def p(self) -> float:
        """Two-sided p-value of "the mean is 0"."""
        if self.se == 0:
            return 1.0 if self.value == 0 else 0.0
        return float(2 * sps.t.sf(abs(self.value) / self.se, self.df))

    def mde(self, alpha: float = 1 - LEVEL, power: float = 0.8) -> float:
        """Minimum detectable effect: the true difference a two-sided test at ``alpha`` would detect with
        probability ``power`` under this design's standard error, (t_{1−α/2} + t_{power}) · se."""
        return float((sps.t.ppf(1 - alpha / 2, self.df) + sps.t.ppf(power, self.df)) * self.se)


def seed_image(per_seed: Sequence[np.ndarray]) -> Estimate:
    """Mean over seeds and images of per-image values (correct 0/1, or a paired difference, in points),
    the same images for every seed; see the module docstring for the design.

    Args:
        per_seed: one array of per-image values per seed, all of the same length.
    """
    rows = [np.asarray(v, dtype=float) for v in per_seed]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        raise ValueError("seed_image: one array per seed, all over the same (at least 2) images")
    y = np.stack(rows)  # (S, I)
    s, i = y.shape
    grand = float(y.mean())
    if s == 1:
        return Estimate(grand, float(y.std(ddof=1) / np.sqrt(i)), float(i - 1), 1, i)
    row, col = y.mean(axis=1), y.mean(axis=0)
    ms_seed = i * float(row.var(ddof=1))
    ms_image = s * float(col.var(ddof=1))
    resid = y - row[:, None] - col[None, :] + grand
    ms_res = float((resid ** 2).sum() / ((s - 1) * (i - 1)))
    # (S I) Var(grand) = s2_e + I s2_seed + S s2_image, estimated by ms_seed + ms_image - ms_res. That
    # estimate can fall below zero (a tie whose per-seed means are equal); each mean square alone estimates
    # a part of the sum (E ms_seed = s2_e + I s2_seed, E ms_image = s2_e + S s2_image), so neither is a
    # floor that claims more certainty than the data give.
    num = max(ms_seed + ms_image - ms_res, ms_seed, ms_image)
    df_den = ms_seed ** 2 / (s - 1) + ms_image ** 2 / (i - 1) + ms_res ** 2 / ((s - 1) * (i - 1))
    df = num ** 2 / df_den if df_den > 0 else float(s - 1)
    return Estimate(grand, float(np.sqrt(num / (s * i))), float(max(df, 1.0)), s, i)


def combine_tasks(estimates: Sequence[Estimate]) -> Estimate:
    """The mean over tasks of per-task estimates (tasks are independent strata; Satterthwaite df); its
    ``seeds`` is the runs summed over tasks."""
    if not estimates:
        raise ValueError("combine_tasks: no tasks")
    t = len(estimates)
    var = [e.se ** 2 / t ** 2 for e in estimates]
    total = float(sum(var))
    den = sum(v ** 2 / e.df for v, e in zip(var, estimates, strict=True) if v > 0)
    df = total ** 2 / den if den > 0 else min(e.df for e in estimates)
    return Estimate(float(np.mean([e.value for e in estimates])), float(np.sqrt(total)), float(df),
                    int(sum(e.seeds for e in estimates)), int(sum(e.images for e in estimates)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def family_calls(directions: Sequence[float], pvalues: Sequence[float], alpha: float = 1 - LEVEL
                 ) -> tuple[list[str], np.ndarray]:
    """Each part's call after Holm over the family: ``win``/``loss`` where its adjusted p < ``alpha``
    (by the sign of its direction: A better than B is positive), else ``indistinguishable``.

    Returns:
        (calls, adjusted p-values).
    """
    adj = holm(pvalues)
    calls = ["indistinguishable" if np.isnan(a) or a >= alpha or d == 0 else "win" if d > 0 else "loss"
             for d, a in zip(directions, adj, strict=True)]
    return calls, adj


def speedup_p(times_ref: Sequence[float], times_model: Sequence[float], *, n_boot: int = N_BOOTSTRAP,
              seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided bootstrap p-value of "speed-up = 1", from the same paired resamples as
    :func:`speedup_interval` (at least 1 / n_boot)."""
    ref, mod = np.asarray(times_ref, dtype=float), np.asarray(times_model, dtype=float)
    if ref.size < 2:
        return float("nan")
    idx = np.random.default_rng(seed).integers(0, ref.size, size=(n_boot, ref.size))
    reps = np.median(ref[idx], axis=1) / np.median(mod[idx], axis=1)
    tail = min(np.mean(reps <= 1.0), np.mean(reps >= 1.0))
    return float(min(1.0, max(2 * tail, 1.0 / n_boot)))
