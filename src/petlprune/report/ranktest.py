"""A test over tasks (Demšar, JMLR 2006): Friedman, the Nemenyi post-hoc, the critical-difference diagram.

Per PETL and budget family (the ``matched`` family, each fixed depth ``dK``), the methods are ranked on
every task by their top-1 retained averaged over seeds (:func:`petlprune.report.aggregates.run_scores`);
the Friedman test asks whether the mean ranks differ, the Nemenyi test which pairs do, and the
critical-difference (CD) diagram draws the mean ranks with the pairs closer than the CD joined.

We use ``autorank`` (Herbold, JOSS 2020) rather than scikit-posthocs: it runs exactly Demšar's
procedure (Friedman → Nemenyi → CD diagram) in one call and draws the diagram itself, where
scikit-posthocs would leave the diagram and the CD to us. Mode forced ``nonparametric``: with a handful
of tasks a normality test decides nothing, and ranks are what Demšar recommends for comparisons over
data sets. The test needs at least :data:`MIN_TASKS` tasks (autorank's and Demšar's lower limit; with
fewer the Friedman statistic's χ² approximation is meaningless) and at least 3 methods.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd

from petlprune.report.tables import budget_family, method_label

__all__ = ["MIN_TASKS", "MIN_METHODS", "families", "rank_data", "friedman", "friedman_table", "cd_figure",
           "needs_more_tasks"]

MIN_TASKS = 5
MIN_METHODS = 3
ALPHA = 0.05


def families(scores: pd.DataFrame, matched_alpha: str | None) -> list[tuple[str, str]]:
    """(petl, family) pairs: ``matched`` and every budget that is not (``d6``, ``p0.5`` ...)."""
    fam = [budget if budget_family(budget, matched_alpha) != "matched" else "matched" for budget in scores["budget"]]
    return sorted(set(zip(scores["petl"], fam, strict=True)))


def rank_data(scores: pd.DataFrame, petl: str, family: str, matched_alpha: str | None) -> pd.DataFrame:
    """Tasks × methods: each method's score averaged over seeds; tasks where every method ran."""
    rows = scores[scores["petl"] == petl]
    if family == "matched":
        rows = rows[[budget_family(b, matched_alpha) == "matched" for b in rows["budget"]]]
    else:
        rows = rows[rows["budget"] == family]
    wide = rows.groupby(["task", "method"])["score"].mean().unstack("method")
    wide = wide.dropna(axis=0)
    wide.columns = [method_label(m) for m in wide.columns]
    return wide


def needs_more_tasks(n_tasks: int) -> str:
    """The sentence a page prints where the tier has too few tasks for the test."""
    return (f"The Friedman test and its critical-difference diagram need at least {MIN_TASKS} tasks; this tier "
            f"has {n_tasks}, so none is drawn (the full and paper tiers run it).")


def friedman(data: pd.DataFrame):
    """autorank's frequentist, non-parametric analysis of a tasks × methods table (higher is better)."""
    from autorank import autorank

    with contextlib.redirect_stdout(io.StringIO()):  # autorank prints that the mode is forced
        return autorank(data, alpha=ALPHA, verbose=False, order="descending", force_mode="nonparametric")


def friedman_table(scores: pd.DataFrame, matched_alpha: str | None) -> tuple[pd.DataFrame, dict]:
    """Every family with enough tasks and methods: its Friedman p-value, CD and mean ranks.

    Returns:
        (table with columns petl, family, n_tasks, n_methods, omnibus, posthoc, p, cd, mean_ranks;
        {(petl, family): autorank result} for :func:`cd_figure`).
    """
    rows, results = [], {}
    for petl, family in families(scores, matched_alpha):
        data = rank_data(scores, petl, family, matched_alpha)
        if len(data) < MIN_TASKS or data.shape[1] < MIN_METHODS:
            continue
        res = friedman(data)
        results[(petl, family)] = res
        ranks = "; ".join(f"{m} {r:.2f}" for m, r in res.rankdf["meanrank"].items())
        rows.append(dict(petl=petl, family=family, n_tasks=len(data), n_methods=data.shape[1],
                         omnibus=res.omnibus, posthoc=res.posthoc, p=float(res.pvalue),
                         cd=float(res.cd) if res.cd is not None else np.nan, mean_ranks=ranks))
    cols = ["petl", "family", "n_tasks", "n_methods", "omnibus", "posthoc", "p", "cd", "mean_ranks"]
    return pd.DataFrame(rows, columns=cols), results


def cd_figure(result, title: str):
    """The critical-difference diagram of one autorank result (drawn even when Friedman's p ≥ 0.05:
    the title says so, and every method then sits under one bar). Save with ``bbox_inches="tight"``:
    the title sits above autorank's axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from autorank import plot_stats

    ax = plot_stats(result, allow_insignificant=True)
    fig = ax.figure
    sig = "ranks differ" if result.pvalue < ALPHA else "no difference in ranks detected"
    fig.suptitle(f"{title}: Friedman p = {result.pvalue:.3g} ({sig}), CD = {result.cd:.2f}", fontsize=10, y=1.08)
    plt.close(fig)
    return fig
