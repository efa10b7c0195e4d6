"""SPA's (and fine-pruning's) section of a result notebook: the pruning schedule and the kept width per block.

Read from the scores file (``extra``: ``history``, ``criterion``, ``step``) and the plans (``masks``:
``blocks.{i}.mlp`` one bit per MLP hidden channel, ``blocks.{i}.attn`` one bit per head); nothing is
recomputed. Blocks are numbered from 1.
"""

from __future__ import annotations

import re

import numpy as np
from matplotlib.figure import Figure

from petlprune.report.load import ResultsError, RunDir
from petlprune.report.style import FIG_WIDTH, styled

__all__ = ["spa_section", "schedule_figure", "kept_width_figure"]

_GROUP = re.compile(r"^blocks\.(\d+)\.(mlp|attn)$")


@styled
def schedule_figure(history: list[dict], title: str = "") -> Figure:
    """Channel and weight density after each pruning step, and the recovery loss."""
    steps = [h["step"] for h in history]
    fig = Figure(figsize=(0.8 * FIG_WIDTH, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, [h["density_channels"] for h in history], marker="o", ms=3, label="channels kept")
    ax.plot(steps, [h["density_weights"] for h in history], marker="s", ms=3, label="weights kept")
    ax.set_xlabel("pruning step")
    ax.set_ylabel("density")
    ax.set_ylim(0, 1.02)
    losses = [(h["step"], h["recover_loss"]) for h in history if "recover_loss" in h]
    if losses:
        ax2 = ax.twinx()
        ax2.plot(*zip(*losses, strict=True), color="C3", ls="--", lw=1, label="recovery loss")
        ax2.set_ylabel("recovery loss (last epoch)", color="C3")
    ax.legend(loc="lower left")
    ax.set_title(title)
    return fig


def _kept_per_block(masks: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(mlp kept fraction, heads kept fraction) per block from a Plan's unit masks."""
    per: dict[str, dict[int, float]] = {"mlp": {}, "attn": {}}
    for name, bits in masks.items():
        m = _GROUP.match(name)
        if m is None:
            raise ResultsError(f"{where}: unexpected mask group {name!r}")
        per[m[2]][int(m[1])] = float(np.mean(bits))
    n = 1 + max(max(d, default=-1) for d in per.values())
    return (np.array([per["mlp"].get(i, np.nan) for i in range(n)]),
            np.array([per["attn"].get(i, np.nan) for i in range(n)]))


@styled
def kept_width_figure(plans: dict[str, dict], where: str) -> Figure:
    """Kept fraction of MLP hidden channels (bars) and of heads (dots) per block, one panel per budget."""
    fig = Figure(figsize=(0.8 * FIG_WIDTH, 2.1 * len(plans) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(plans), 1, sharex=True))
    for ax, (budget, plan) in zip(axes, plans.items(), strict=True):
        mlp, heads = _kept_per_block(plan["masks"], where)
        x = np.arange(1, len(mlp) + 1)
        ax.bar(x, mlp, color="#3b6ea8", label="MLP channels")
        ax.plot(x, heads, "o", color="C1", label="heads")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept")
        dens = plan.get("extra", {}).get("density_channels")
        ax.set_title(f"{budget}" + (f": {dens:.1%} of channels kept" if dens is not None else ""))
        ax.set_xticks(x, [str(i) for i in x])
    axes[0].legend(ncols=2)
    axes[-1].set_xlabel("block")
    return fig


def spa_section(run: RunDir, method: str) -> list[tuple[str, Figure]]:
    """SPA / fine-pruning: the iterative schedule and the width each plan keeps per block."""
    out: list[tuple[str, Figure]] = []
    for key, scores, plans in run.scored(method):
        extra = scores["extra"]
        where = str(run.root / "score" / f"{key}.json")
        if "history" not in extra:
            raise ResultsError(f"{where}: SPA scores lack 'history' (written by an older version? re-run score)")
        title = f"{key}: {extra.get('criterion')} criterion, steps of {extra.get('step', 0):.0%} of the channels"
        out.append((f"Pruning schedule ({key})", schedule_figure(extra["history"], title)))
        key_plans = {b: p for (_, b), p in plans.items() if p.get("masks")}
        if key_plans:
            out.append((f"Width kept per block ({key})", kept_width_figure(key_plans, where)))
    return out
