"""Comparison figures: accuracy against measured throughput and stored parameters, depth bars.

Figures are built on :class:`matplotlib.figure.Figure` objects (never pyplot's global state), so
they can be drawn in a notebook (``display(fig)``), saved by a stage, or inspected by a test.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from petlprune.report.load import FINETUNE
from petlprune.report.tables import METHOD_ORDER, method_label, pareto_mask

__all__ = [
    "AXES", "method_color", "budget_marker", "accuracy_vs", "accuracy_figure", "tradeoff_figure", "depth_bars",
]

# Text size (points) of axis labels; figures are at most ~9 inches wide so that, shrunk to the book's
# text width, this stays readable.
FONT = 12

# x-axes of the trade-off plots: column → (axis label, larger is better, log scale)
AXES: dict[str, tuple[str, bool, bool]] = {
    "throughput_b64": ("throughput, batch 64 (images/s, measured)", True, False),
    "throughput_b1": ("throughput, batch 1 (images/s, measured)", True, False),
    "speedup_b64": ("speed-up vs unpruned, batch 64 (×)", True, False),
    "speedup_b1": ("speed-up vs unpruned, batch 1 (×)", True, False),
    "params_stored": ("parameters stored per task", False, True),
    "params_forward": ("parameters in the forward pass", False, False),
    "flops": ("FLOPs per image", False, False),
}


def method_color(method: str) -> tuple[float, float, float, float]:
    """A fixed colour per method (known methods in table order; others by a stable hash)."""
    if method == FINETUNE:
        return (0.0, 0.0, 0.0, 1.0)
    if method in METHOD_ORDER:
        return colormaps["tab10"]((METHOD_ORDER.index(method) - 1) % 10)
    return colormaps["tab20b"](zlib.crc32(method.encode()) % 20)


def budget_marker(budget: str) -> str:
    if budget == "none":
        return "*"
    if budget == "matched" or budget.startswith("a"):
        return "o"
    return "sD^v<>ph"[zlib.crc32(budget.encode()) % 8]


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
    for _, row in data.iterrows():
        ax.errorbar(
            row[f"{x}_mean"], row[f"{metric}_mean"],
            xerr=None if pd.isna(row[f"{x}_std"]) else row[f"{x}_std"],
            yerr=None if pd.isna(row[f"{metric}_std"]) else row[f"{metric}_std"],
            color=method_color(row["method"]), marker=budget_marker(row["budget"]),
            markersize=12 if row["method"] == FINETUNE else 6, linestyle="none", capsize=2,
        )
        if annotate and row["method"] != FINETUNE:
            ax.annotate(row["budget"], (row[f"{x}_mean"], row[f"{metric}_mean"]), fontsize=9,
                        xytext=(3, 3), textcoords="offset points")
    if pareto and len(data) > 1:
        on = pareto_mask(data[f"{x}_mean"], data[f"{metric}_mean"], x_higher=x_higher)
        front = data[on].sort_values(f"{x}_mean")
        ax.plot(front[f"{x}_mean"], front[f"{metric}_mean"], "--", color="0.5", lw=1, zorder=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(label, fontsize=FONT)
    ax.set_ylabel("top-1 (%)" if metric == "top1" else metric, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(alpha=0.3)
    return ax


def _legend_handles(methods: Sequence[str]) -> list[Line2D]:
    return [
        Line2D([], [], color=method_color(m), marker="*" if m == FINETUNE else "o", linestyle="none",
               markersize=8, label=method_label(m))
        for m in methods
    ]


def _ordered_methods(agg: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(agg["method"]))
    return sorted(present, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


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
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.6 * ncols + 2.2, 3.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (task, petl) in zip(axes, panels, strict=False):
        rows = agg[(agg["task"] == task) & ((agg["petl"] == petl) if petl is not None else True)]
        accuracy_vs(rows, x, ax)
        ax.set_title(task if petl is None or len(petls) == 1 else f"{task} · {petl}", fontsize=FONT)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.legend(handles=_legend_handles(_ordered_methods(agg)), loc="outside right upper", fontsize=FONT - 2)
    return fig


def tradeoff_figure(agg: pd.DataFrame, xs: Sequence[str]) -> Figure:
    """One task, several cost axes side by side (e.g. throughput at batch 1 and at batch 64)."""
    if agg["task"].nunique() != 1:
        raise ValueError(f"tradeoff_figure: one task at a time, got {sorted(agg['task'].unique())}")
    fig = Figure(figsize=(3.6 * len(xs) + 2.2, 3.4), layout="constrained")
    for ax, x in zip(np.atleast_1d(fig.subplots(1, len(xs))), xs, strict=True):
        accuracy_vs(agg, x, ax)
    fig.legend(handles=_legend_handles(_ordered_methods(agg)), loc="outside right upper", fontsize=FONT - 2)
    return fig


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
    fig = Figure(figsize=(min(9.0, max(5.0, 0.6 * len(rows) * max(1, len(tasks)) ** 0.5 + 2)), 3.8), layout="constrained")
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
    ax.set_xticks(np.arange(len(rows)), [f"{method_label(m)}\n{b}" + (f"\n{p}" if several else "") for p, m, b in rows], fontsize=FONT - 3,
                  rotation=45 if len(rows) > 8 else 0, ha="right" if len(rows) > 8 else "center")
    ax.set_ylabel("blocks kept", fontsize=FONT)
    ax.tick_params(axis="y", labelsize=FONT - 1)
    ax.legend(fontsize=FONT - 3, ncols=min(4, len(tasks) + 1))
    ax.grid(axis="y", alpha=0.3)
    return fig
