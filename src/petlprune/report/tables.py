"""Tidy results → aggregated tables: mean ± std over seeds (and random draws), ranks, Pareto fronts.

Every function takes the tidy table of :func:`petlprune.report.load.load_results` (or its
aggregate) and returns a new frame; none reads files. Accuracies are in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from petlprune.core.budgets import budget_family, budget_order
from petlprune.report.load import FINETUNE

__all__ = [
    "METHOD_LABELS",
    "METHOD_ORDER",
    "METRICS",
    "method_label",
    "budget_family",
    "matched_rows",
    "retrained_reference",
    "RETRAINED_LABEL",
    "COLLAPSED_MARK",
    "budget_order",
    "sort_results",
    "aggregate",
    "mean_std",
    "result_table",
    "comparison_table",
    "rank_table",
    "pareto_mask",
    "to_markdown",
]

# Display names; a method missing here is shown by its registry name.
METHOD_LABELS: dict[str, str] = {
    FINETUNE: "unpruned",
    "sls": "SLS",
    "sglp": "SGLP",
    "pear": "Pear",
    "spa": "SPA",
    "last_k": "last-k",
    "random": "random",
    "block_influence": "Block Influence",
    "angular": "angular distance",
    "taylor_layer": "Taylor (layer)",
    "depgraph": "DepGraph",
    "adapter_drop": "adapter drop",
    "fine_pruning": "fine-pruning",
}
# Table order: the reference, the studied methods, then the baselines; unknown methods last.
METHOD_ORDER: list[str] = list(METHOD_LABELS)

# Per-result numbers that are averaged (mean ± std) over seeds and draws.
METRICS: list[str] = [
    "top1", "top1_before_retrain", "top1_drop", "depth",
    "params_forward", "params_stored", "flops",
    "throughput_b1", "throughput_b64", "latency_b1_ms", "latency_b64_ms",
    "speedup_b1", "speedup_b64", "decision_seconds", "ppt",
]



RETRAINED_LABEL = "unpruned, re-trained"  # a tier's `{petl}_unpruned` control


def method_label(method: str) -> str:
    if method not in METHOD_LABELS and method.endswith("_unpruned"):
        return RETRAINED_LABEL
    return METHOD_LABELS.get(method, method)


def retrained_reference(agg: pd.DataFrame) -> pd.Series:
    """Rows of the re-trained unpruned control: a ``{petl}_unpruned`` instance, or ``last_k`` at the
    fine-tune's depth (tidy rows or ``aggregate``'s). Where a tier has one, it is the reference of every
    paired comparison (``claim_defs.reference_rows`` picks it from these), so a table that shows the
    fine-tune shows it too. ``tier.reference_instances`` is the same rule read from a config."""
    depth = "depth_mean" if "depth_mean" in agg else "depth"
    full = agg[agg["method"] == FINETUNE].groupby(["task", "petl"])[depth].max()
    at_full = [full.get((t, p), np.nan) == d for t, p, d in zip(agg["task"], agg["petl"], agg[depth], strict=True)]
    return (agg["method"] == agg["petl"] + "_unpruned") | (
        (agg["method"] == "last_k") & (agg["budget"] != "matched") & pd.Series(at_full, index=agg.index))


def matched_rows(agg: pd.DataFrame, matched_alpha: str, with_reference: bool = True) -> pd.DataFrame:
    """The rows compared "at the depth SLS chose": SLS itself at ``matched_alpha`` only, every
    ``matched`` result, and (``with_reference``) each PETL's unpruned model: the fine-tune and, where
    the tier has it, the re-trained control that the paired comparisons use.

    Other SLS alphas and SLS variants (``sls_raw`` ...) are left out: their depth is not the one the
    baselines were matched to.
    """
    keep = (agg["budget"] == "matched") | ((agg["method"] == "sls") & (agg["budget"] == matched_alpha))
    if with_reference:
        keep |= (agg["method"] == FINETUNE) | retrained_reference(agg)
    return agg[keep]


COLLAPSED_MARK = "†"  # after a number whose model collapsed (its accuracy interval reaches chance)


def _method_key(method: str) -> tuple:
    if method in METHOD_ORDER:
        return (METHOD_ORDER.index(method), "")
    if method.endswith("_unpruned"):  # the re-trained control, next to the fine-tune
        return (0.5, method)
    return (len(METHOD_ORDER), method)


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: task, petl, method (reference first), budget, seed, draw."""
    order = sorted(
        df.index,
        key=lambda i: (
            *(str(df.at[i, c]) for c in ("task", "petl") if c in df),
            _method_key(df.at[i, "method"]),
            budget_order(df.at[i, "budget"]),
            *(df.at[i, c] if c in df and pd.notna(df.at[i, c]) else -1 for c in ("seed", "draw")),
        ),
    )
    return df.loc[order].reset_index(drop=True)


def aggregate(
    df: pd.DataFrame,
    by: Sequence[str] = ("task", "petl", "method", "budget"),
    metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """Mean and std (ddof=1) of each metric over the rows of each group.

    Random draws and seeds are pooled: a group of ``random`` at one budget holds seeds × draws rows.

    Args:
        df: the tidy table.
        by: grouping columns.
        metrics: columns to average.

    Returns:
        One row per group with ``n`` (rows pooled), ``n_seeds``, ``{metric}_mean``, ``{metric}_std``.
    """
    by = list(by)
    metrics = [m for m in metrics if m in df]
    grouped = df.groupby(by, sort=False, dropna=False)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "n_seeds", grouped["seed"].nunique())
    stats.insert(0, "n", grouped.size())
    if "top1" in df:
        stats[["top1_lo", "top1_hi"]] = grouped.apply(_top1_interval, include_groups=False).tolist()
    if "collapsed" in df:
        stats["collapsed"] = grouped["collapsed"].agg(lambda c: any(isinstance(v, str) and v for v in c))
    return sort_results(stats.reset_index())


def _top1_interval(rows: pd.DataFrame) -> tuple[float, float]:
    """One result: its Wilson interval over test images; several (seeds, draws): Student t over them."""
    from petlprune.report.stats import t_interval

    if len(rows) == 1:
        return (float(rows["top1_lo"].iloc[0]), float(rows["top1_hi"].iloc[0])) if "top1_lo" in rows else (np.nan, np.nan)
    _, lo, hi = t_interval(rows["top1"].tolist())
    return lo, hi


def mean_std(mean: float, std: float = np.nan, digits: int = 1) -> str:
    """``71.3 ± 0.4``; just the mean when the std is undefined (one seed); ``—`` when no mean."""
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def _fmt_count(value: float) -> str:
    if pd.isna(value):
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


# Columns of the per-result table: (header, metric, formatter of (mean, std)).
_RESULT_COLUMNS: list[tuple[str, str, object]] = [
    ("top-1 %", "top1", lambda m, s: mean_std(m, s, 1)),
    ("before re-train %", "top1_before_retrain", lambda m, s: mean_std(m, s, 1)),
    ("depth", "depth", lambda m, s: mean_std(m, s, 1)),
    ("params fwd", "params_forward", lambda m, s: _fmt_count(m)),
    ("params stored", "params_stored", lambda m, s: _fmt_count(m)),
    ("FLOPs/img", "flops", lambda m, s: _fmt_count(m)),
    ("img/s b1", "throughput_b1", lambda m, s: mean_std(m, s, 0)),
    ("img/s b64", "throughput_b64", lambda m, s: mean_std(m, s, 0)),
    ("latency b1 ms", "latency_b1_ms", lambda m, s: mean_std(m, s, 2)),
    ("speed-up b1", "speedup_b1", lambda m, s: mean_std(m, s, 2)),
    ("speed-up b64", "speedup_b64", lambda m, s: mean_std(m, s, 2)),
    ("decision s", "decision_seconds", lambda m, s: mean_std(m, s, 2)),
    ("PPT", "ppt", lambda m, s: mean_std(m, s, 1)),
]


def result_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Aggregated rows → a display table (strings): method, (key,) budget, n, and every cost column."""
    out = pd.DataFrame({
        **({"PETL": agg["petl"]} if "petl" in agg and agg["petl"].nunique() > 1 else {}),
        **({"task": agg["task"]} if "task" in agg and agg["task"].nunique() > 1 else {}),
        "method": agg["method"].map(method_label),
        # one row per random draw when the caller grouped by key
        **({"key": agg["key"]} if "key" in agg and (agg["key"] != agg["method"]).any() else {}),
        "budget": agg["budget"],
        "n": agg["n"],
    })
    for header, metric, fmt in _RESULT_COLUMNS:
        if f"{metric}_mean" in agg:
            out[header] = [fmt(m, s) for m, s in zip(agg[f"{metric}_mean"], agg[f"{metric}_std"], strict=True)]
    if "top1_lo" in agg and "top-1 %" in out:
        from petlprune.report.stats import format_interval

        out["top-1 %"] = [format_interval(m, lo, hi) for m, lo, hi in zip(agg["top1_mean"], agg["top1_lo"], agg["top1_hi"], strict=True)]
    if "collapsed" in agg and "top-1 %" in out:
        out["top-1 %"] = [f"{c} {COLLAPSED_MARK}" if f else c for c, f in zip(out["top-1 %"], agg["collapsed"].astype(bool), strict=True)]
    return out.reset_index(drop=True)


def _row_frame(agg: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """Prefix a (petl, method, budget)-indexed frame of per-task columns with display labels."""
    values = values.reset_index()
    values.columns.name = None
    key = values[["method", "budget"]].apply(lambda r: (_method_key(r["method"]), budget_order(r["budget"])), axis=1)
    values = values.assign(_order=key).sort_values(["petl", "_order"]).drop(columns="_order")
    values.insert(1, "method", values.pop("method").map(method_label))
    if agg["petl"].nunique() == 1:
        values = values.drop(columns="petl")
    return values.reset_index(drop=True)


def comparison_table(agg: pd.DataFrame, metric: str = "top1", digits: int = 1) -> pd.DataFrame:
    """Method × budget rows, one column per task (``mean ± std`` of ``metric``), and the mean over tasks.

    The mean over tasks is given only for rows that have every task, so that a row is never
    flattered by the tasks it is missing.
    """
    tasks = sorted(agg["task"].unique())
    index = ["petl", "method", "budget"]
    means = agg.pivot_table(index=index, columns="task", values=f"{metric}_mean", dropna=False, sort=False)
    stds = agg.pivot_table(index=index, columns="task", values=f"{metric}_std", dropna=False, sort=False)
    means = means.reindex(columns=tasks).dropna(how="all")
    stds = stds.reindex(index=means.index, columns=tasks)
    if metric == "top1" and "top1_lo" in agg:
        from petlprune.report.stats import format_interval

        los, his = (agg.pivot_table(index=index, columns="task", values=c, dropna=False, sort=False)
                    .reindex(index=means.index, columns=tasks) for c in ("top1_lo", "top1_hi"))
        cells = pd.DataFrame({t: [format_interval(m, lo, hi, digits) for m, lo, hi in
                                  zip(means[t], los[t], his[t], strict=True)] for t in tasks}, index=means.index)
    else:
        cells = pd.DataFrame(
            {t: [mean_std(m, s, digits) for m, s in zip(means[t], stds[t], strict=True)] for t in tasks},
            index=means.index,
        )
    if "collapsed" in agg:
        flags = (agg.assign(collapsed=agg["collapsed"].astype(bool))
                 .pivot_table(index=index, columns="task", values="collapsed", aggfunc="any", dropna=False, sort=False)
                 .reindex(index=means.index, columns=tasks).fillna(False).astype(bool))
        for t in tasks:
            cells[t] = [f"{c} {COLLAPSED_MARK}" if f else c for c, f in zip(cells[t], flags[t], strict=True)]
    complete = means.notna().all(axis=1)
    cells["mean"] = [mean_std(v, np.nan, digits) for v in means.mean(axis=1).where(complete)]
    return _row_frame(agg, cells)


def rank_table(agg: pd.DataFrame, metric: str = "top1_mean", higher_is_better: bool = True) -> pd.DataFrame:
    """Per-task rank of each method × budget row within its PETL (1 = best, ties share the better
    rank) and the mean rank: methods pruning different PETLs start from different models, so they
    are never ranked against each other."""
    index = ["petl", "method", "budget"]
    values = agg.pivot_table(index=index, columns="task", values=metric, dropna=False, sort=False)
    values = values.dropna(how="all")
    ranks = values.groupby(level="petl", sort=False).rank(ascending=not higher_is_better, method="min")
    ranks["mean rank"] = ranks.mean(axis=1).round(2)
    return _row_frame(agg, ranks)


def pareto_mask(x: Sequence[float], y: Sequence[float], x_higher: bool = True, y_higher: bool = True) -> np.ndarray:
    """Points not dominated by any other (at least as good on both axes, better on one).

    Args:
        x, y: coordinates (NaN points are never on the front).
        x_higher, y_higher: whether larger is better on that axis.

    Returns:
        Boolean mask, True for points on the Pareto front.
    """
    x = np.asarray(x, dtype=float) * (1 if x_higher else -1)
    y = np.asarray(y, dtype=float) * (1 if y_higher else -1)
    ok = ~(np.isnan(x) | np.isnan(y))
    # (n, n): does point j dominate point i?
    ge = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
    gt = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
    dominated = (ge & gt & ok[None, :]).any(axis=1)
    return ok & ~dominated


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown table (rendered by myst-nb with ``nb_render_markdown_format: myst``)."""
    return df.to_markdown(index=False, disable_numparse=True)
