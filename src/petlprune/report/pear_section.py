"""Pear's part of the report: importance per adapter position, the sharing map over the blocks, and
the ablation (share rule × knowledge checkpoint × rho) of every Pear / adapter_drop result.

Config instances of Pear have their own names (``pear_nearest_distill``); what each one ran (share,
kc, rho) is read from its Plan's ``extra``, never from the name. Positions are numbered from 1 like
blocks (``3`` = the adapter of block 3; with two positions per block ``3a`` / ``3m``: attention, MLP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from petlprune.report.load import FINETUNE, RunDir, find_runs, split_result_dir
from petlprune.report.style import FIG_WIDTH, styled
from petlprune.report.tables import budget_order, mean_std

__all__ = [
    "PEAR_METHODS",
    "SHARE_ORDER",
    "KC_ORDER",
    "pear_section",
    "pear_plans",
    "position_labels",
    "importance_figure",
    "sharing_map_figure",
    "ablation_figure",
    "pear_variants",
    "ablation_table",
    "select_variant",
]

PEAR_METHODS = ("pear", "adapter_drop")  # registered names whose plans carry share / kc / rho
SHARE_ORDER = ("most_important", "nearest", "none")
KC_ORDER = ("none", "init", "distill")
_KEPT, _SHARED, _DROPPED = "#3b6ea8", "#e39b3a", "#dddddd"


def pear_plans(run: RunDir) -> dict[tuple[str, str], dict[str, Any]]:
    """Every Plan of a run made by Pear or adapter_drop (any instance name), keyed by (key, budget)."""
    out = {}
    plan_dir = run.root / "plan"
    for path in sorted(plan_dir.glob("*.json")) if plan_dir.is_dir() else []:
        key, budget = split_result_dir(path.stem)
        plan = run.plan(key, budget)
        if plan is not None and plan.get("method") in PEAR_METHODS:
            out[(key, budget)] = plan
    return out


def position_labels(names: list[str] | None, n: int) -> list[str]:
    """``blocks.2.mlp`` → ``3`` (one position per block) or ``3m`` / ``3a`` (two or more per block)."""
    if not names or len(names) != n:
        return [str(i + 1) for i in range(n)]
    blocks = [int(name.split(".")[1]) + 1 for name in names]
    if len(set(blocks)) == len(blocks):
        return [str(b) for b in blocks]
    return [f"{b}{name.rsplit('.', 1)[-1][0]}" for b, name in zip(blocks, names, strict=True)]


@styled
def importance_figure(scores: dict[str, Any], plan: dict[str, Any] | None, title: str) -> Figure:
    """Taylor importance per adapter position; positions the plan pruned are light (shared: orange edge).

    Args:
        scores: ``RunDir.scores(key)`` of a Pear key.
        plan: one of its plans (None: no pruning shown).
        title: axes title.
    """
    values = np.asarray(scores["scores"], dtype=float)
    labels = position_labels(scores["extra"].get("positions"), len(values))
    pruned = set((plan or {}).get("extra", {}).get("pruned_positions", []))
    shared = {int(p) for p in ((plan or {}).get("sharing") or {})}
    fig = Figure(figsize=(min(FIG_WIDTH, 0.4 * len(values) + 2.8), 3.2), layout="constrained")
    ax = fig.subplots()
    colors = [(_SHARED if i in shared else _DROPPED) if i in pruned else _KEPT for i in range(len(values))]
    ax.bar(np.arange(len(values)), values, color=colors, edgecolor="0.3", linewidth=0.5)
    ax.set_xticks(range(len(values)), labels)
    ax.set_xlabel("adapter position (block)")
    ax.set_ylabel("Taylor importance")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


@styled
def sharing_map_figure(plans: dict[tuple[str, str], dict[str, Any]]) -> Figure | None:
    """One row of positions per plan: kept (blue), pruned and served (orange, an arc from the adapter
    serving it), pruned and dropped (grey)."""
    if not plans:
        return None
    plans = dict(sorted(plans.items(), key=lambda kv: (kv[0][0], budget_order(kv[0][1]))))
    n = max(len(p.get("scores") or []) for p in plans.values()) or 1
    fig = Figure(figsize=(min(FIG_WIDTH, 0.45 * n + 2.8), 1.6 * len(plans) + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(plans), 1, squeeze=False)).ravel()
    for ax, ((key, budget), plan) in zip(axes, plans.items(), strict=True):
        extra = plan.get("extra") or {}
        pruned = set(extra.get("pruned_positions", []))
        sharing = {int(p): int(q) for p, q in (plan.get("sharing") or {}).items()}
        for i in range(n):
            color = (_SHARED if i in sharing else _DROPPED) if i in pruned else _KEPT
            ax.add_patch(Rectangle((i - 0.4, -0.4), 0.8, 0.8, facecolor=color, edgecolor="0.3", lw=0.5))
        top = 1.0
        for p, q in sharing.items():  # a parabola from the serving adapter q, ending in a tip over p
            height = 0.3 + 0.15 * abs(p - q)
            t = np.linspace(0.0, 1.0, 40)
            ax.plot(q + (p - q) * t, 0.45 + 4 * height * t * (1 - t), color=_SHARED, lw=1)
            ax.plot([p], [0.5], marker="v", ms=4, color=_SHARED)
            top = max(top, 0.45 + height + 0.15)
        labels = position_labels(extra.get("positions"), n)
        ax.set_xticks(range(n), labels)
        ax.set_yticks([])
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(-0.5, top)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.set_title(f"{key} · {budget}: share {extra.get('share')}, kc {extra.get('kc')}, "
                     f"{100 * extra.get('removed_fraction', 0):.0f}% of adapter params pruned")
    axes[-1].set_xlabel("adapter position (block); arcs: serving adapter → pruned position")
    return fig


def _run_variants(run: RunDir) -> pd.DataFrame:
    """One row per Pear/adapter_drop result of a run that finished: key, budget, share, kc, rho, top1s."""
    from petlprune.io import read_json

    rows = []
    for (key, budget), plan in pear_plans(run).items():
        metrics = run.root / "pruned" / f"{key}-{budget}" / "metrics.json"
        if not metrics.is_file():
            continue
        m, extra = read_json(metrics), plan.get("extra") or {}
        rows.append({"key": key, "budget": budget, "method": plan["method"], "share": extra.get("share"),
                     "kc": extra.get("kc"), "rho": extra.get("rho"), "top1": 100 * m["top1"],
                     "top1_before_retrain": 100 * m["top1_before_retrain"], "eval_split": m.get("eval_split")})
    return pd.DataFrame(rows)


@styled
def ablation_figure(run: RunDir) -> Figure | None:
    """Top-1 of every Pear variant of one run: groups = share rule, bars = knowledge checkpoint,
    one panel per rho; the dashed line is the unpruned model."""
    df = _run_variants(run)
    if df.empty:
        return None
    from petlprune.io import read_json

    ref_path = run.root / "finetune" / "metrics.json"
    ref = 100 * read_json(ref_path)["top1"] if ref_path.is_file() else None
    rhos = sorted(df.rho.dropna().unique())
    ncols = min(2, len(rhos))  # at most two panels a row
    nrows = -(-len(rhos) // ncols)
    fig = Figure(figsize=(FIG_WIDTH if ncols == 2 else 0.6 * FIG_WIDTH, 3.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    width = 0.8 / len(KC_ORDER)
    for ax in axes[len(rhos):]:
        ax.set_visible(False)
    for ax, rho in zip(axes, rhos, strict=False):
        sub = df[df.rho == rho].groupby(["share", "kc"]).top1.mean()
        for j, kc in enumerate(KC_ORDER):
            ys = [sub.get((s, kc), np.nan) for s in SHARE_ORDER]
            ax.bar(np.arange(len(SHARE_ORDER)) + (j - 1) * width, ys, width, label=f"kc {kc}", color=f"C{j}")
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=1, label="unpruned")
        ax.set_xticks(range(len(SHARE_ORDER)), ["most\nimportant", "nearest", "none\n(drop)"])
        ax.set_title(f"rho = {rho:g} ({df.eval_split.iloc[0] or 'test'} top-1)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    return fig


def pear_section(run: RunDir, method: str) -> list[tuple[str, Figure]]:
    """Importance per position, the sharing map of each plan, and the run's whole Pear ablation."""
    out: list[tuple[str, Figure]] = []
    plans = {kb: p for kb, p in pear_plans(run).items() if kb[0] in set(run.keys(method))}
    for key in run.keys(method):
        scores = run.scores(key)
        if scores is None:
            continue
        own = sorted(((b, p) for (k, b), p in plans.items() if k == key), key=lambda bp: budget_order(bp[0]))
        plan = own[0][1] if own else None
        title = f"{key}: Taylor importance" + (f" (pruned at {own[0][0]}: orange = served, grey = dropped)"
                                                if own else "")
        out.append((f"Importance per adapter position ({key})", importance_figure(scores, plan, title)))
    if (fig := sharing_map_figure(plans)) is not None:
        out.append(("Sharing map over the blocks", fig))
    if (fig := ablation_figure(run)) is not None:
        out.append(("Every Pear variant of this run (share rule × knowledge checkpoint × rho)", fig))
    return out


# ------------------------------------------------------------------------------ summary tables


def pear_variants(df: pd.DataFrame, results_dir: str | Path) -> pd.DataFrame:
    """The rows of the tidy table that are Pear / adapter_drop results, with their share, kc and rho.

    Args:
        df: tidy table (``load_results`` / ``read_summary``).
        results_dir: the results tree the table came from (the plans are read from it).
    """
    runs = {(r.task, r.petl, r.seed): r for r in find_runs(results_dir)}
    rows = []
    for i, row in df[df.method != FINETUNE].iterrows():
        run = runs.get((row.task, row.petl, int(row.seed)))
        plan = run.plan(row.key, row.budget) if run is not None else None
        if plan is None or plan.get("method") not in PEAR_METHODS:
            continue
        extra = plan.get("extra") or {}
        rows.append({"index": i, "share": extra.get("share"), "kc": extra.get("kc"), "rho": extra.get("rho")})
    if not rows:
        return df.iloc[0:0].assign(share=[], kc=[], rho=[])
    info = pd.DataFrame(rows).set_index("index")
    return df.loc[info.index].join(info)


def ablation_table(variants: pd.DataFrame, metric: str = "top1", digits: int = 1) -> pd.DataFrame:
    """share × kc × rho (rows) by task (columns), mean ± std over seeds; last column the mean over tasks
    (of the per-task means, given only where a row has every task) ± the std over those task means.

    Args:
        variants: :func:`pear_variants`.
        metric: a column of the tidy table (``top1``, ``top1_before_retrain``, ``params_stored``).
        digits: decimals shown.
    """
    if variants.empty:
        return pd.DataFrame()
    keys = ["share", "kc", "rho"]
    per_task = variants.groupby([*keys, "task"])[metric].agg(["mean", "std"]).reset_index()
    tasks = sorted(per_task.task.unique())
    rows = []
    for (share, kc, rho), g in per_task.groupby(keys, sort=False):
        row = {"share": share, "knowledge checkpoint": kc, "rho": f"{rho:g}"}
        g = g.set_index("task")
        for task in tasks:
            row[task] = mean_std(g["mean"].get(task, np.nan), g["std"].get(task, np.nan), digits)
        complete = g["mean"].reindex(tasks)
        row["mean over tasks"] = (mean_std(complete.mean(), complete.std() if len(tasks) > 1 else np.nan, digits)
                                  if complete.notna().all() else "—")
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(SHARE_ORDER)}, {k: i for i, k in enumerate(KC_ORDER)}
    out = out.sort_values(["rho", "share", "knowledge checkpoint"],
                          key=lambda c: c.map(order[0]) if c.name == "share"
                          else c.map(order[1]) if c.name == "knowledge checkpoint" else c)
    return out.reset_index(drop=True)


def select_variant(variants: pd.DataFrame, by: str = "kc", metric: str = "top1") -> pd.DataFrame:
    """Rank the values of one option (default: the knowledge checkpoint) by mean ``metric`` over every
    task, seed and other option: the selection rule for the main comparison, to be run on results of
    ``prune --val`` (train800 → val200), never on test.

    Returns:
        One row per value of ``by``: mean, std over the per-task means, number of results; best first.
    """
    evals = set(variants.get("eval_split", pd.Series(dtype=str)).dropna())
    if "test" in evals:
        raise ValueError("select_variant: these results were evaluated on test; select on val200 (prune --val)")
    per_task = variants.groupby([by, "task"])[metric].mean().reset_index()
    out = per_task.groupby(by)[metric].agg(["mean", "std", "count"]).rename(columns={"count": "tasks"})
    out["results"] = variants.groupby(by).size()
    return out.sort_values("mean", ascending=False).reset_index()
