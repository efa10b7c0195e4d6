"""Comparison figures: accuracy against measured throughput and stored parameters, depth bars.

Figures are built on :class:`matplotlib.figure.Figure` objects (never pyplot's global state), so
they can be drawn in a notebook (``display(fig)``), saved by a stage, or inspected by a test. Every
method is drawn in its one colour and marker (:func:`petlprune.report.style.method_style`), with the
book's text sizes (:func:`petlprune.report.style.styled`); budgets are written next to their points,
moved apart by adjustText so that no two labels overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from petlprune.report.load import FINETUNE
from petlprune.report.style import FIG_WIDTH, FONT, method_style, styled
from petlprune.report.tables import METHOD_ORDER, method_label, pareto_mask

__all__ = ["AXES", "method_color", "accuracy_vs", "accuracy_figure", "tradeoff_figure", "depth_bars"]

# x-axes of the trade-off plots: column → (axis label, larger is better, log scale)
AXES: dict[str, tuple[str, bool, bool]] = {
    "throughput_b64": ("images/s, batch 64 (measured)", True, False),
    "throughput_b1": ("images/s, batch 1 (measured)", True, False),
    "speedup_b64": ("speed-up vs unpruned, batch 64 (×)", True, False),
    "speedup_b1": ("speed-up vs unpruned, batch 1 (×)", True, False),
    "params_stored": ("parameters stored per task", False, True),
    "params_forward": ("parameters in the forward pass", False, False),
    "flops": ("FLOPs per image", False, False),
}


def method_color(method: str) -> str:
    """The method's colour in every figure (:func:`petlprune.report.style.method_style`)."""
    return method_style(method)[0]


def _spread_labels(ax: Axes, texts: list, xs: list[float], ys: list[float]) -> None:
    """Move point labels apart (adjustText 1.4) so that none overlaps another label or a point.

    adjustText needs the final axes geometry, so the figure is laid out first (constrained layout)."""
    if len(texts) < 2:
        return
    import logging

    from adjustText import adjust_text

    ax.figure.draw_without_rendering()
    # adjustText logs "labels too long to fit" through logging's last-resort stderr handler: in a notebook
    # that is a stderr block, which the book check (report/htmlcheck.py) rightly fails; the figure shows it
    log = logging.getLogger("adjustText")
    level, log.level = log.level, logging.ERROR
    try:
        adjust_text(texts, x=xs, y=ys, ax=ax, expand=(1.2, 1.4), time_lim=2.0,
                    arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6))
    finally:
        log.setLevel(level)


def accuracy_vs(
    agg: pd.DataFrame,
    x: str,
    ax: Axes,
    metric: str = "top1",
    pareto: bool = True,
    annotate: bool = True,
) -> Axes:
    """Scatter of accuracy (mean ± std) against a cost column for the rows of ONE task.

    Args:
        agg: aggregated rows (``aggregate``) of a single task and petl.
        x: a key of :data:`AXES`.
        ax: axes to draw on.
        metric: the y column (its ``_mean``/``_std`` are used).
        pareto: draw the Pareto front (dashed) over all points.
        annotate: write each point's budget next to it.
    """
    if agg["task"].nunique() > 1:
        raise ValueError(f"accuracy_vs: one task at a time, got {sorted(agg['task'].unique())}")
    if "petl" in agg and agg["petl"].nunique() > 1:
        raise ValueError(f"accuracy_vs: one PETL at a time (each has its own reference), got {sorted(agg['petl'].unique())}")
    label, x_higher, logx = AXES[x]
    data = agg.dropna(subset=[f"{x}_mean", f"{metric}_mean"])
    texts, tx, ty = [], [], []
    for _, row in data.iterrows():
        colour, marker = method_style(row["method"])
        ax.errorbar(
            row[f"{x}_mean"], row[f"{metric}_mean"],
            xerr=None if pd.isna(row[f"{x}_std"]) else row[f"{x}_std"],
            yerr=None if pd.isna(row[f"{metric}_std"]) else row[f"{metric}_std"],
            color=colour, marker=marker, markeredgecolor="white", markeredgewidth=0.5,
            markersize=15 if row["method"] == FINETUNE else 9, linestyle="none", capsize=2,
        )
        if annotate and row["method"] != FINETUNE:
            texts.append(ax.text(row[f"{x}_mean"], row[f"{metric}_mean"], row["budget"], fontsize=FONT - 1,
                                 color=colour))
            tx.append(row[f"{x}_mean"])
            ty.append(row[f"{metric}_mean"])
    if pareto and len(data) > 1:
        on = pareto_mask(data[f"{x}_mean"], data[f"{metric}_mean"], x_higher=x_higher)
        front = data[on].sort_values(f"{x}_mean")
        ax.plot(front[f"{x}_mean"], front[f"{metric}_mean"], "--", color="0.5", lw=1, zorder=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 (%)" if metric == "top1" else metric)
    ax.grid(alpha=0.3)
    ax.margins(x=0.1, y=0.1)  # room for the labels at the edges
    ax._petlprune_labels = (texts, tx, ty)  # spread once the whole figure is laid out
    return ax


def _spread_all(fig: Figure) -> None:
    for ax in fig.axes:
        if getattr(ax, "_petlprune_labels", None):
            _spread_labels(ax, *ax._petlprune_labels)


def _legend_handles(methods: Sequence[str]) -> list[Line2D]:
    return [
        Line2D([], [], color=method_style(m)[0], marker=method_style(m)[1], linestyle="none",
               markersize=11 if m == FINETUNE else 9, label=method_label(m))
        for m in methods
    ]


def _legend_below(fig: Figure, methods: Sequence[str]) -> None:
    """One legend under the panels, as wide as the figure: the panels keep the whole width."""
    fig.legend(handles=_legend_handles(methods), loc="outside lower center", ncols=min(4, len(methods)),
               frameon=False)


def _ordered_methods(agg: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(agg["method"]))
    return sorted(present, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


@styled
def accuracy_figure(agg: pd.DataFrame, x: str, tasks: Sequence[str] | None = None, ncols: int = 2) -> Figure:
    """One accuracy-vs-cost panel per task and PETL, one legend.

    Accuracies are comparable neither across tasks nor across PETLs (each PETL's methods start from
    its own fine-tune), so each panel holds one (task, PETL): one series per method, that PETL's
    unpruned reference (the star) and its own Pareto front.
    """
    tasks = list(tasks) if tasks is not None else sorted(agg["task"].unique())
    if not tasks:
        raise ValueError("accuracy_figure: no task to draw")
    petls = sorted(agg["petl"].unique()) if "petl" in agg else [None]
    panels = [(t, p) for p in petls for t in tasks
              if not agg[(agg["task"] == t) & ((agg["petl"] == p) if p is not None else True)].empty]
    ncols = min(ncols, 2, len(panels))  # at most two panels a row: each stays about 420 px wide on the page
    nrows = -(-len(panels) // ncols)
    methods = _ordered_methods(agg)
    fig = Figure(figsize=(FIG_WIDTH if ncols == 2 else 0.6 * FIG_WIDTH, 3.6 * nrows + 0.35 * -(-len(methods) // 4) + 0.4),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (task, petl) in zip(axes, panels, strict=False):
        rows = agg[(agg["task"] == task) & ((agg["petl"] == petl) if petl is not None else True)]
        accuracy_vs(rows, x, ax)
        ax.set_title(task if petl is None or len(petls) == 1 else f"{task} · {petl}")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    _legend_below(fig, methods)
    _spread_all(fig)
    return fig


@styled
def tradeoff_figure(agg: pd.DataFrame, xs: Sequence[str]) -> Figure:
    """One task and PETL, several cost axes side by side (e.g. throughput at batch 1 and at batch 64),
    at most two a row."""
    if agg["task"].nunique() != 1:
        raise ValueError(f"tradeoff_figure: one task at a time, got {sorted(agg['task'].unique())}")
    methods = _ordered_methods(agg)
    ncols = min(2, len(xs))
    nrows = -(-len(xs) // ncols)
    fig = Figure(figsize=(FIG_WIDTH if ncols == 2 else 0.6 * FIG_WIDTH, 3.6 * nrows + 0.35 * -(-len(methods) // 4) + 0.4),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, x in zip(axes, xs, strict=False):
        accuracy_vs(agg, x, ax)
    for ax in axes[len(xs):]:
        ax.set_visible(False)
    _legend_below(fig, methods)
    _spread_all(fig)
    return fig


@styled
def depth_bars(agg: pd.DataFrame, budgets: Sequence[str] | None = None) -> Figure:
    """Kept depth (mean ± std over seeds/draws) per method × budget, one bar per task."""
    data = agg[agg["method"] != FINETUNE]
    if budgets is not None:
        data = data[data["budget"].isin(budgets)]
    if data.empty:
        raise ValueError("depth_bars: no pruned result to draw")
    # one bar group per (PETL, method, budget): the same method on two PETLs is two series
    petl = data["petl"] if "petl" in data else pd.Series("", index=data.index)
    several = petl.nunique() > 1
    rows = list(dict.fromkeys(zip(petl, data["method"], data["budget"], strict=True)))
    tasks = sorted(data["task"].unique())
    width = 0.8 / len(tasks)
    fig = Figure(figsize=(FIG_WIDTH, 4.4), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["Set2"]
    for j, task in enumerate(tasks):
        sub = data[data["task"] == task].assign(_petl=petl).set_index(["_petl", "method", "budget"])
        means = [sub["depth_mean"].get(r, np.nan) for r in rows]
        stds = [sub["depth_std"].get(r, np.nan) for r in rows]
        ax.bar(np.arange(len(rows)) + (j - (len(tasks) - 1) / 2) * width, means, width,
               yerr=np.nan_to_num(stds), color=cmap(j % 8), label=task, capsize=2)
    full = agg.loc[agg["method"] == FINETUNE, "depth_mean"]
    if not full.empty:
        ax.axhline(full.max(), color="0.3", lw=1, ls=":", label="unpruned depth")
    ax.set_xticks(np.arange(len(rows)), [f"{method_label(m)} · {b}" + (f" · {p}" if several else "") for p, m, b in rows],
                  rotation=60 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center",
                  rotation_mode="anchor")
    ax.set_ylabel("blocks kept")
    ax.legend(ncols=min(4, len(tasks) + 1), loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig
