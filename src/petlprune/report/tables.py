"""Tidy results → aggregated tables: mean ± std over seeds (and random draws), ranks, Pareto fronts.

Every function takes the tidy table of :func:`petlprune.report.load.load_results` (or its
aggregate) and returns a new frame; none reads files. Accuracies are in percent.
"""

from __future__ import annotations

import re
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
    "fmt_interval",
    "result_table",
    "result_tables",
    "comparison_table",
    "rank_table",
    "pareto_mask",
    "to_markdown",
    "split_tables",
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
    """One result: its Wilson interval over test images. Several seeds: the seeds x images design
    (``stats.seed_image``: seed-to-seed variation and test-image sampling, book: Reliability), from each
    run's saved predictions; where those are missing or not over the same images, or with one seed and
    several random draws, Student t over the rows."""
    from petlprune.report.stats import seed_image, t_interval

    if len(rows) == 1:
        return (float(rows["top1_lo"].iloc[0]), float(rows["top1_hi"].iloc[0])) if "top1_lo" in rows else (np.nan, np.nan)
    per_seed = _correct_per_seed(rows)
    if per_seed is not None:
        return seed_image(per_seed).interval()
    _, lo, hi = t_interval(rows["top1"].tolist())
    return lo, hi


def _correct_per_seed(rows: pd.DataFrame) -> list[np.ndarray] | None:
    """Per seed, 100 x the fraction right on each test image (a seed's random draws averaged: one stratum
    per run, as ``stats.combine_seeds``); None unless there are 2+ seeds, all over the same labels."""
    from petlprune.report.stats import _correct

    if "predictions_path" not in rows or rows["seed"].nunique() < 2:
        return None
    per_seed, labels = [], None
    for _, group in rows.groupby("seed", sort=True):
        right = []
        for path in group["predictions_path"]:
            if not isinstance(path, str) or not path.endswith(".npz"):
                return None
            with np.load(path, allow_pickle=False) as npz:
                if labels is None:
                    labels = npz["labels"]
                elif not np.array_equal(labels, npz["labels"]):
                    return None
                right.append(_correct(npz["pred"], labels))
        per_seed.append(100.0 * np.mean(right, axis=0))
    return per_seed


def mean_std(mean: float, std: float = np.nan, digits: int = 1) -> str:
    """``71.3 ± 0.4``; just the mean when the std is undefined (one seed); ``—`` when no mean."""
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def fmt_interval(value: float, lo: float, hi: float, digits: int = 1, signed: bool = False) -> str:
    """The book's one interval format: ``76.9 [74.0, 79.1]``; the value alone without an interval;
    ``—`` without a value.

    Always the two ends, never ``±``: a Wilson or bootstrap interval is rarely symmetric, and one table
    mixing ``±h`` and ``[lo, hi]`` rows reads as two kinds of number (issue 26).
    """
    if pd.isna(value):
        return "—"
    v = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if pd.isna(lo) or pd.isna(hi):
        return v
    return f"{v} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _count_scale(values: Sequence[float]) -> tuple[float, str]:
    """One unit for a column of counts (its largest value decides), so the unit sits in the header."""
    finite = [abs(v) for v in values if pd.notna(v)]
    top = max(finite, default=0.0)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if top >= scale:
            return scale, suffix
    return 1.0, ""


def _fmt_scaled(value: float, scale: float) -> str:
    if pd.isna(value):
        return "—"
    v = value / scale
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


# Columns of the per-result tables: table → [(header with its unit, metric, decimals or "count")].
# Split in three so that each fits the content column at 1280 px (the cost columns of one table ran
# past the page's right edge).
_RESULT_TABLES: dict[str, list[tuple[str, str, int | str]]] = {
    "Accuracy": [
        ("top-1 (%) [95% interval]", "top1", 1),
        ("before re-train (%)", "top1_before_retrain", 1),
        ("blocks kept", "depth", 1),
        ("PPT", "ppt", 1),
    ],
    "Size": [
        ("params in forward ({unit})", "params_forward", "count"),
        ("params stored per task ({unit})", "params_stored", "count"),
        ("FLOPs per image ({unit})", "flops", "count"),
    ],
    "Speed": [
        ("images/s, batch 1", "throughput_b1", 0),
        ("images/s, batch 64", "throughput_b64", 0),
        ("latency, batch 1 (ms)", "latency_b1_ms", 2),
        ("speed-up, batch 1 (×)", "speedup_b1", 2),
        ("speed-up, batch 64 (×)", "speedup_b64", 2),
        ("deciding (s)", "decision_seconds", 2),
    ],
}


def _labels(agg: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        **({"PETL": agg["petl"]} if "petl" in agg and agg["petl"].nunique() > 1 else {}),
        **({"task": agg["task"]} if "task" in agg and agg["task"].nunique() > 1 else {}),
        "method": agg["method"].map(method_label),
        # one row per random draw when the caller grouped by key
        **({"key": agg["key"]} if "key" in agg and (agg["key"] != agg["method"]).any() else {}),
        "budget": agg["budget"],
        "n": agg["n"],
    })


def _column(agg: pd.DataFrame, header: str, metric: str, digits: int | str) -> tuple[str, list[str]]:
    means, stds = agg[f"{metric}_mean"], agg[f"{metric}_std"]
    if digits == "count":
        scale, unit = _count_scale(means)
        return header.format(unit=unit or "count"), [_fmt_scaled(m, scale) for m in means]
    if metric == "top1" and "top1_lo" in agg:
        cells = [fmt_interval(m, lo, hi, digits) for m, lo, hi in zip(means, agg["top1_lo"], agg["top1_hi"], strict=True)]
        if "collapsed" in agg:
            cells = [f"{c} {COLLAPSED_MARK}" if f else c for c, f in zip(cells, agg["collapsed"].astype(bool), strict=True)]
        return header, cells
    header = header.replace(" [95% interval]", "")
    return header, [mean_std(m, s, digits) for m, s in zip(means, stds, strict=True)]


def result_tables(agg: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Aggregated rows → ``[("Accuracy", table), ("Size", table), ("Speed", table)]`` of strings.

    Each table has the row labels (method, key, budget, n) and a few columns with the unit in the
    header; a table whose metrics are all missing is left out. Top-1 is ``mean [lo, hi]``
    (:func:`fmt_interval`), the costs ``mean ± std`` over seeds (every row alike).
    """
    out = []
    for title, columns in _RESULT_TABLES.items():
        table = _labels(agg)
        for header, metric, digits in columns:
            if f"{metric}_mean" in agg and agg[f"{metric}_mean"].notna().any():
                name, cells = _column(agg, header, metric, digits)
                table[name] = cells
        if table.shape[1] > _labels(agg).shape[1]:
            out.append((title, table.reset_index(drop=True)))
    return out


def result_table(agg: pd.DataFrame) -> pd.DataFrame:
    """All of :func:`result_tables` side by side (for a CSV or a test; too wide for the page)."""
    tables = [t for _, t in result_tables(agg)]
    if not tables:
        return _labels(agg).reset_index(drop=True)
    labels = list(_labels(agg).columns)
    return pd.concat([tables[0], *(t.drop(columns=labels) for t in tables[1:])], axis=1)


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


# What a comparison table's cells are, with the unit: said once in its caption, never in each cell.
_CAPTIONS = {
    "top1": "top-1 (%)",
    "top1_before_retrain": "top-1 before re-training (%)",
    "ppt": "PPT (top-1 per stored parameter)",
    "decision_seconds": "seconds spent deciding",
    "depth": "blocks kept",
}


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
        los, his = (agg.pivot_table(index=index, columns="task", values=c, dropna=False, sort=False)
                    .reindex(index=means.index, columns=tasks) for c in ("top1_lo", "top1_hi"))
        cells = pd.DataFrame({t: [fmt_interval(m, lo, hi, digits) for m, lo, hi in
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
    out = _row_frame(agg, cells)
    out.attrs["caption"] = _CAPTIONS.get(metric, metric) + (
        ", mean [95% interval] per task" if metric == "top1" and "top1_lo" in agg else ", mean ± std per task")
    return out


def rank_table(agg: pd.DataFrame, metric: str = "top1_mean", higher_is_better: bool = True) -> pd.DataFrame:
    """Per-task rank of each method × budget row within its PETL (1 = best, ties share the better
    rank) and the mean rank: methods pruning different PETLs start from different models, so they
    are never ranked against each other."""
    index = ["petl", "method", "budget"]
    values = agg.pivot_table(index=index, columns="task", values=metric, dropna=False, sort=False)
    values = values.dropna(how="all")
    ranks = values.groupby(level="petl", sort=False).rank(ascending=not higher_is_better, method="min")
    ranks["mean rank"] = ranks.mean(axis=1).round(2)
    out = _row_frame(agg, ranks)
    out.attrs["caption"] = "rank per task (1 = best)"
    return out


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


def split_tables(df: pd.DataFrame, by: Sequence[str] = ("PETL", "petl")) -> list[tuple[str | None, pd.DataFrame]]:
    """One table per PETL (the first column of ``by`` the frame has, when it holds several values),
    that column left out: a PETL's methods are compared only with each other (each starts from its own
    fine-tune), and the PETL column repeated on every row took the width the numbers need."""
    col = next((c for c in by if c in df), None)
    if col is None or df[col].nunique() <= 1:
        return [(None, df)]
    return [(f"PETL {value}", part.drop(columns=col).reset_index(drop=True))
            for value, part in df.groupby(col, sort=False)]


# A number with its interval or spread, ``74.0 [60.4, 84.1]`` / ``1,846 ± 12`` / ``74.0 †``: kept on one
# line in the page (non-breaking spaces), so a table may wrap its text cells but never a number.
_NUMBER = re.compile(r"([-+]?[\d,.]+)( \[[-+]?[\d,.]+, [-+]?[\d,.]+\]| ± [\d,.]+)?( " + COLLAPSED_MARK + ")?")


def _unbreakable(cell: object) -> object:
    if not isinstance(cell, str):
        return cell
    return _NUMBER.sub(lambda m: m[0].replace(" ", "\u00a0") if m[2] or m[3] else m[0], cell)


def to_markdown(df: pd.DataFrame, split: bool = True) -> str:
    """Markdown table(s) (rendered by myst-nb with ``nb_render_markdown_format: myst``).

    With ``split``, a table with several PETLs becomes one table per PETL under a bold heading
    (:func:`split_tables`); ``df.attrs["caption"]`` (what the cells are, with their unit) is written
    once above each table instead of in every cell. A number and its interval are joined by
    non-breaking spaces, so the page may wrap a long text cell but never split ``74.0 [60.4, 84.1]``.
    """
    caption = df.attrs.get("caption")
    parts = []
    for title, part in split_tables(df) if split else [(None, df)]:
        if head := " · ".join(x for x in (title, caption) if x):
            parts.append(f"**{head}**")
        part = part.map(_unbreakable) if not part.empty else part
        parts.append(part.to_markdown(index=False, disable_numparse=True))
    return "\n\n".join(parts)
