"""Aggregates across tasks × seeds with rliable: mean, IQM, probability of improvement, profiles.

The unit is a run (one task, PETL and seed); its score is the **top-1 retained**: the pruned model's
top-1 divided by the top-1 of the same run's re-trained unpruned control (``claim_defs.reference_rows``,
the reference the Claims page uses; the fine-tune itself where a tier has no control). Random draws of
one run are averaged first (one run, one score). Scores are fractions (0.97), not percent.

Everything statistical is rliable's (Agarwal et al., NeurIPS 2021), never re-written here:

- the mean and the interquartile mean (IQM) over every task × seed of an arm (``rliable.metrics``);
- their 95% intervals: rliable's stratified bootstrap, which resamples the seeds *within* each task
  (tasks are fixed strata, seeds the random unit), percentile method, numpy's global RNG seeded with
  :data:`SEED` for the call (rliable draws its indices there) and restored after it;
- the probability of improvement P(X > Y), averaged over tasks (Mann–Whitney per task), with the
  same stratified bootstrap drawn independently for X and Y;
- performance profiles (the fraction of runs whose score exceeds τ), with bootstrap bands.

With one seed per task the stratified bootstrap has nothing to resample (every replicate is the data),
so ``lo``/``hi`` are left empty rather than printed as a zero-width interval: a one-seed aggregate is a
statement about one trained model per method and task.

A run whose *control* collapsed has no meaningful denominator and is left out; a pruned model that
collapsed stays in (a failure of the method is part of its distribution).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd

from petlprune.report.claim_defs import reference_rows
from petlprune.report.load import FINETUNE
from petlprune.report.rliable_compat import ensure_arch
from petlprune.report.tables import budget_family, budget_order, method_label, retrained_reference

__all__ = ["AGG_COLUMNS", "REPS", "SEED", "run_scores", "score_matrix", "arms", "interval_estimates",
           "probability_of_improvement", "aggregates_table", "performance_profiles", "profile_figure",
           "lastk_reference"]

AGG_COLUMNS = ["petl", "method", "budget", "statistic", "value", "lo", "hi", "n_tasks", "n_seeds"]
# Bootstrap replicates (rliable's default is 50000). 2000 for the mean and IQM (a percentile end moves by
# well under 0.1 point between bootstrap seeds); 1000 for P(improvement), whose every replicate runs a
# Mann–Whitney test per task; 200 for the profiles' bands, which are drawn, not read off.
REPS = 2000
POI_REPS = 1000
PROFILE_REPS = 200
SEED = 0


def _rliable():
    ensure_arch()
    import warnings

    from rliable import library, metrics

    # arch 7.2 warns that rliable's ``random_state`` keyword is deprecated (its reason for pinning arch<8)
    warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
    return library, metrics


@contextlib.contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """rliable 1.2 draws every bootstrap index from numpy's *global* RNG (``np.random.choice`` in
    ``StratifiedBootstrap.update_indices``; its ``random_state`` only reaches arch), so a seeded,
    reproducible interval needs the global state seeded: seed it, then put the caller's state back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def run_scores(df: pd.DataFrame, left_out: list[str] | None = None) -> pd.DataFrame:
    """Top-1 retained per run: columns petl, method, budget, task, seed, score (a fraction).

    Args:
        df: the tidy table (``read_summary`` / ``load_results``), top-1 in percent.
        left_out: if given, ``task/petl/seedN`` of every run left out because its control collapsed.
    """
    ref = reference_rows(df)
    if "collapsed" in ref:
        bad = ref["collapsed"].fillna("").astype(bool)
        if left_out is not None:
            left_out += [f"{r.task}/{r.petl}/seed{r.seed}" for r in ref[bad].itertuples()]
        ref = ref[~bad]
    denom = ref.set_index(["task", "petl", "seed"])["top1"]
    controls = (df["method"] == FINETUNE) | retrained_reference(df)
    rows = df[~controls & df["top1"].notna()].copy()
    key = pd.MultiIndex.from_frame(rows[["task", "petl", "seed"]])
    rows["score"] = rows["top1"].to_numpy() / denom.reindex(key).to_numpy()
    rows = rows[rows["score"].notna()]
    out = rows.groupby(["petl", "method", "budget", "task", "seed"], as_index=False)["score"].mean()
    return out  # random draws of one run averaged: one score per run


def score_matrix(scores: pd.DataFrame, petl: str, method: str, budget: str,
                 tasks: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """The (seeds, tasks) matrix rliable takes, for one arm; tasks missing a seed are left out.

    Returns:
        (matrix of shape (n_seeds, n_tasks), its tasks).
    """
    arm = scores[(scores["petl"] == petl) & (scores["method"] == method) & (scores["budget"] == budget)]
    wide = arm.pivot_table(index="seed", columns="task", values="score").dropna(axis=1)
    if tasks is not None:
        wide = wide[[t for t in tasks if t in wide.columns]]
    return wide.to_numpy(dtype=float), list(wide.columns)  # (S, T)


def arms(scores: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Every (petl, method, budget) with scores, in the tables' budget order."""
    keys = scores[["petl", "method", "budget"]].drop_duplicates()
    return sorted(map(tuple, keys.to_numpy()), key=lambda k: (k[0], budget_order(k[2]), k[1]))


def interval_estimates(matrix: np.ndarray, *, reps: int = REPS, seed: int = SEED) -> dict[str, tuple]:
    """Mean and IQM of a (runs, tasks) matrix with rliable's stratified-bootstrap 95% intervals.

    Returns:
        {"mean": (value, lo, hi), "iqm": (value, lo, hi)}; lo = hi = NaN for a single run per task.
    """
    library, metrics = _rliable()

    def func(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])

    if matrix.shape[0] < 2:
        mean, iqm = func(matrix)
        return {"mean": (float(mean), np.nan, np.nan), "iqm": (float(iqm), np.nan, np.nan)}
    with _global_seed(seed):
        point, ci = library.get_interval_estimates({"x": matrix}, func, reps=reps,
                                                   random_state=np.random.RandomState(seed))
    (mean, iqm), (lo, hi) = point["x"], ci["x"]
    return {"mean": (float(mean), float(lo[0]), float(hi[0])), "iqm": (float(iqm), float(lo[1]), float(hi[1]))}


def probability_of_improvement(x: np.ndarray, y: np.ndarray, *, reps: int = POI_REPS,
                               seed: int = SEED) -> tuple[float, float, float]:
    """P(X > Y) over tasks (rliable), X and Y of shape (runs, tasks) with the same tasks in order.

    Returns:
        (value, lo, hi); lo = hi = NaN when either arm has a single run per task.
    """
    library, metrics = _rliable()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"probability_of_improvement: {x.shape[1]} and {y.shape[1]} tasks")
    value = float(metrics.probability_of_improvement(x, y))
    if min(x.shape[0], y.shape[0]) < 2:
        return value, np.nan, np.nan
    with _global_seed(seed):
        _, ci = library.get_interval_estimates({"p": (x, y)}, metrics.probability_of_improvement, reps=reps)
    lo, hi = np.ravel(ci["p"])
    return value, float(lo), float(hi)


def lastk_reference(scores: pd.DataFrame, petl: str, budget: str, matched_alpha: str | None) -> tuple[str, str] | None:
    """The last-k arm an arm at ``budget`` is compared with: last_k at the same budget, or, in the
    matched family where last_k does not run, SLS at ``matched_alpha`` (it keeps the first blocks at
    its depth: the same plan, workflow/config/default.yaml). None where neither ran."""
    have = set(map(tuple, scores.loc[scores["petl"] == petl, ["method", "budget"]].to_numpy()))
    if ("last_k", budget) in have:
        return "last_k", budget
    if budget_family(budget, matched_alpha) == "matched" and ("sls", matched_alpha) in have:
        return "sls", matched_alpha
    return None


def _row(petl, method, budget, statistic, est, n_tasks, n_seeds) -> dict:
    value, lo, hi = est
    return dict(petl=petl, method=method, budget=budget, statistic=statistic, value=value, lo=lo, hi=hi,
                n_tasks=n_tasks, n_seeds=n_seeds)


def aggregates_table(scores: pd.DataFrame, matched_alpha: str | None = None, *, reps: int = REPS,
                     poi_reps: int = POI_REPS, seed: int = SEED) -> pd.DataFrame:
    """``results/aggregates.csv``: per PETL, method and budget the mean and IQM with their intervals,
    P(improvement) over last-k at the same depth and between the arms of the matched family.

    Args:
        scores: :func:`run_scores`.
        matched_alpha: SLS's alpha whose depth the ``matched`` budgets got (SLS there is "matched").
    """
    rows = []
    all_arms = arms(scores)
    for petl, method, budget in all_arms:
        m, _ = score_matrix(scores, petl, method, budget)
        if m.size == 0:
            continue
        for stat, est in interval_estimates(m, reps=reps, seed=seed).items():
            rows.append(_row(petl, method, budget, stat, est, m.shape[1], m.shape[0]))
        ys = []
        ref = lastk_reference(scores, petl, budget, matched_alpha)
        if ref is not None and ref != (method, budget):
            ys.append(ref)
        if budget_family(budget, matched_alpha) == "matched":
            ys += [(mo, bo) for p, mo, bo in all_arms if p == petl and mo != method and (mo, bo) not in ys
                   and budget_family(bo, matched_alpha) == "matched"]
        for other, other_budget in ys:
            y, tasks = score_matrix(scores, petl, other, other_budget)
            x, tasks = score_matrix(scores, petl, method, budget, tasks)
            y, _ = score_matrix(scores, petl, other, other_budget, tasks)
            if x.size == 0 or y.size == 0:
                continue
            est = probability_of_improvement(x, y, reps=poi_reps, seed=seed)
            rows.append(_row(petl, method, budget, f"poi_vs:{other}", est, len(tasks), min(x.shape[0], y.shape[0])))
    return pd.DataFrame(rows, columns=AGG_COLUMNS)


def performance_profiles(scores: pd.DataFrame, petl: str, *, taus: np.ndarray | None = None,
                         reps: int = PROFILE_REPS, seed: int = SEED) -> tuple[dict, dict, np.ndarray]:
    """Score distributions (rliable): per arm of ``petl``, the fraction of runs scoring above each τ,
    with stratified-bootstrap bands (none for a single seed). Returns (profiles, cis, taus)."""
    library, _ = _rliable()
    mats = {}
    for p, method, budget in arms(scores):
        if p == petl:
            m, _ = score_matrix(scores, petl, method, budget)
            if m.size:
                mats[f"{method_label(method)} ({budget})"] = m
    if taus is None:
        lo = min((float(m.min()) for m in mats.values()), default=0.9)
        hi = max((float(m.max()) for m in mats.values()), default=1.0)
        taus = np.linspace(lo - 0.02, max(hi, 1.0) + 0.02, 81)

    def profile(x):
        return library.score_distributions(x, taus)

    profiles, cis = {}, {}
    for name, m in mats.items():
        if m.shape[0] < 2:
            profiles[name] = profile(m)
            continue
        with _global_seed(seed):
            point, ci = library.get_interval_estimates({name: m}, profile, reps=reps,
                                                       random_state=np.random.RandomState(seed))
        profiles[name], cis[name] = point[name], ci[name]
    return profiles, cis, taus


def profile_figure(scores: pd.DataFrame, petl: str, *, reps: int = PROFILE_REPS, seed: int = SEED):
    """One PETL's performance profiles drawn with rliable's ``plot_performance_profiles``."""
    from matplotlib.figure import Figure

    ensure_arch()
    from rliable import plot_utils

    profiles, cis, taus = performance_profiles(scores, petl, reps=reps, seed=seed)
    if not profiles:
        return None
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    # line style by budget family: solid at the depth SLS chose, dashed at a fixed depth, dotted otherwise
    styles = {name: "-" if "(matched)" in name or "(a" in name else "--" if "(d" in name else ":" for name in profiles}
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis or None, ax=ax,
                                         linestyles=styles,
                                         xlabel=r"top-1 retained $\tau$ (pruned / re-trained unpruned)",
                                         ylabel=r"fraction of runs with score $> \tau$", labelsize=11,
                                         ticklabelsize=10)
    lines = list(ax.get_lines())  # one per profile, in order (the bands are collections)
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.legend(lines, list(profiles), fontsize=8, loc="lower left", frameon=False)
    n_seeds = int(scores.loc[scores["petl"] == petl, "seed"].nunique())
    ax.set_title(f"{petl}: performance profiles over tasks × {n_seeds} seed(s)", fontsize=11)
    return fig
