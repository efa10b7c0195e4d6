"""The summary's opening: a one-screen leaderboard per PETL, then the performance profiles and the
critical-difference diagram (or why there is none), from ``results/aggregates.csv`` and
``results/friedman.csv`` (``petlprune aggregates``; report/aggregates.py, report/ranktest.py).

One row per arm (a method at a budget, as summary.csv writes it), ordered by budget family: the
aggregate top-1 retained (IQM over tasks × seeds, rliable's stratified-bootstrap 95% interval), the
probability of improvement over last-k at the same depth (at ``matched``: over SLS, which keeps the
first blocks there, the plan last-k would have), the mean measured speed-up over the unpruned model, the
parameters stored per task, and the verdicts of the claims the method is an arm of. Every interval is
written ``v [lo, hi]``; the comparison ("over last-k") is named once, in the column heading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from petlprune.report.aggregates import lastk_reference
from petlprune.report.ranktest import MIN_TASKS, needs_more_tasks
from petlprune.report.tables import budget_order, method_label

__all__ = ["bracket", "one_seed_note", "method_verdicts", "leaderboard", "section", "parts_table", "seeds_sentence"]


def bracket(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.971 [0.962, 0.979]``; the value alone without an interval; ``—`` without a value."""
    if value is None or np.isnan(value):
        return "—"
    if np.isnan(lo) or np.isnan(hi):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def one_seed_note(n_seeds: int) -> str:
    """The sentence every page of a one-seed tier carries (empty with several seeds)."""
    if n_seeds != 1:
        return ""
    return ("**One seed.** This tier trains one model per method, task and PETL: every statement here is about "
            "those trained models, not about the methods, and carries no seed-to-seed variation (on VTAB-1k one "
            "method on one task can move by more than 15 points between seeds). No verdict is settled until "
            "several seeds agree; the default tier runs three.")


MARKS = {"supported": "✓", "contradicted": "✗", "inconclusive": "?"}
MARKS_LEGEND = "Verdicts: ✓ supported, ✗ contradicted, ? inconclusive (the Claims page has each part)."


def seeds_sentence(n_seeds: int) -> str:
    """What the verdicts rest on, for the intro page's list of claims."""
    if n_seeds == 1:
        return ("These verdicts rest on one seed: each is about one trained model per method, not settled for "
                "the method.")
    return f"These verdicts rest on {n_seeds} seeds per method, the parts of each claim adjusted as one family (Holm)."


def method_verdicts(claims: Sequence | None) -> dict[str, list[str]]:
    """Method name → ``SLS-1 ✓`` for every judged claim with a measured part that has it as an arm."""
    out: dict[str, list[str]] = {}
    for r in claims or ():
        if r.verdict not in MARKS:
            continue
        mark = f"{r.claim.id} {MARKS[r.verdict]}"
        measured = list(r.parts["comparison"]) if not r.parts.empty else []

        def ran(part, measured=measured) -> bool:  # parts measured in this tier (fixed depths: "(dK)")
            a, b = (arm.label.replace("(dK)", "") for arm in (part.a, part.b))
            return any(c.startswith(a) and b in c for c in measured)

        for method in dict.fromkeys(m for p in r.claim.parts if ran(p) for m in (p.a.method, p.b.method)):
            out.setdefault(method, []).append(mark)
    return out


def parts_table(parts: pd.DataFrame) -> pd.DataFrame:
    """A claim's family for the Claims page: per part its raw and Holm-adjusted p, its call after the
    adjustment, and the smallest difference it would probably (80%) have seen (accuracy parts)."""
    def p(v: float) -> str:
        return "—" if np.isnan(v) else "<0.001" if v < 1e-3 else f"{v:.3f}"

    return pd.DataFrame({
        "part": parts["comparison"], "measure": parts["kind"],
        "p raw": [p(v) for v in parts["p_raw"]], "p Holm": [p(v) for v in parts["p_holm"]],
        "call (Holm)": parts["call"],
        "detectable (points)": ["—" if np.isnan(v) else f"≥ {v:.1f}" for v in parts["mde_points"]],
    })


def _speedup(rows: pd.DataFrame) -> float:
    cols = sorted((c for c in rows if c.startswith("speedup_b") and rows[c].notna().any()),
                  key=lambda c: int(c.removeprefix("speedup_b")))
    return float(rows[cols[-1]].mean()) if cols else np.nan  # the largest batch measured


def _count(n: float) -> str:
    if n is None or np.isnan(n):
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def leaderboard(df: pd.DataFrame, aggregates: pd.DataFrame, matched_alpha: str | None,
                claims: Sequence | None = None) -> dict[str, pd.DataFrame]:
    """PETL → its leaderboard table (display strings), one row per arm with aggregates.

    Args:
        df: the tidy table (``read_summary``).
        aggregates: ``results/aggregates.csv``.
        matched_alpha: SLS's alpha whose depth the ``matched`` budgets got.
        claims: ``evaluate_claims`` results, for the verdicts column (optional).
    """
    verdicts = method_verdicts(claims)
    scores = aggregates[aggregates["statistic"].isin(["mean", "iqm"])]
    have = scores[["petl", "method", "budget"]].drop_duplicates()
    out = {}
    for petl, arms in have.groupby("petl", sort=True):
        rows = []
        arms = sorted(arms[["method", "budget"]].itertuples(index=False), key=lambda a: (budget_order(a[1]), a[0]))
        for method, budget in arms:
            a = aggregates[(aggregates["petl"] == petl) & (aggregates["method"] == method)
                           & (aggregates["budget"] == budget)].set_index("statistic")
            ref = lastk_reference(have, petl, budget, matched_alpha)
            poi = f"poi_vs:{ref[0]}" if ref else None
            runs = df[(df["petl"] == petl) & (df["method"] == method) & (df["budget"] == budget)]
            iqm = a.loc["iqm"] if "iqm" in a.index else None
            rows.append({
                "method": f"{method_label(method)} ({budget})",
                "top-1 retained, IQM [95%]": bracket(iqm["value"], iqm["lo"], iqm["hi"]) if iqm is not None else "—",
                "P(better than last-k)": (bracket(a.loc[poi, "value"], a.loc[poi, "lo"], a.loc[poi, "hi"], 2)
                                          if poi in a.index else "—"),
                "speed-up": f"{_speedup(runs):.2f}×" if not np.isnan(_speedup(runs)) else "—",
                "stored / task": _count(float(runs["params_stored"].mean())) if "params_stored" in runs else "—",
                "verdicts": ", ".join(verdicts.get(method, [])) or "—",
                "tasks × seeds": f"{int(iqm['n_tasks'])} × {int(iqm['n_seeds'])}" if iqm is not None else "—",
            })
        out[petl] = pd.DataFrame(rows)
    return out


def section(results_dir: str | Path, df: pd.DataFrame, matched_alpha: str | None, claims: Sequence | None = None
            ) -> list[tuple[str, object]]:
    """The summary's opening, in order: ("markdown", text) and ("image", path) items for the notebook
    to display (it only displays them)."""
    from petlprune.report.tables import to_markdown

    results_dir = Path(results_dir)
    items: list[tuple[str, object]] = []
    n_seeds = int(df["seed"].nunique())
    note = one_seed_note(n_seeds)
    if note:
        items.append(("markdown", note))
    path = results_dir / "aggregates.csv"
    if not path.is_file():
        return items + [("markdown", f"No `{path}`: run `petlprune aggregates` (the `aggregates` rule).")]
    aggregates = pd.read_csv(path)
    if aggregates.empty:
        items.append(("markdown", "No aggregate: every run's unpruned control collapsed (its accuracy interval "
                                  "reaches chance), so no top-1 retained has a meaningful denominator."))
    for petl, table in leaderboard(df, aggregates, matched_alpha, claims).items():
        items.append(("markdown", f"### {petl}\n\n{to_markdown(table)}"))
    interval = ("with its stratified-bootstrap 95% interval over seeds within tasks" if n_seeds > 1 else
                "(no interval: with one seed the bootstrap has nothing to resample)")
    items.append(("markdown", f"Top-1 retained: the pruned model's top-1 over its run's re-trained unpruned control "
                              f"(a fraction); IQM over tasks × seeds {interval} (rliable). P(better than "
                              "last-k): the probability that a run of the method beats one of last-k on the same "
                              "task at the same depth (at `matched`, SLS: the first blocks). Speed-up over the "
                              "unpruned model at the largest batch measured; parameters each task stores. "
                              + (MARKS_LEGEND if claims else "")))
    items.append(("markdown", "### Performance profiles\n\nThe fraction of runs (tasks × seeds) whose top-1 "
                              "retained exceeds τ; a curve further right is better everywhere."))
    items += [("image", p) for p in sorted((results_dir / "aggregates").glob("profile_*.png"))]
    n_tasks = int(df["task"].nunique())
    items.append(("markdown", "### Ranks over tasks (Friedman, Nemenyi)"))
    if n_tasks < MIN_TASKS:
        items.append(("markdown", needs_more_tasks(n_tasks)))
        return items
    fried = results_dir / "friedman.csv"
    table = pd.read_csv(fried) if fried.is_file() and fried.stat().st_size else pd.DataFrame()
    if table.empty:
        items.append(("markdown", "No budget family has the 3 methods the test needs on every task."))
        return items
    shown = table[["petl", "family", "n_tasks", "n_methods", "p", "cd", "mean_ranks"]].rename(
        columns={"p": "Friedman p", "cd": "CD (Nemenyi)", "mean_ranks": "mean rank (1 = best)"})
    items.append(("markdown", to_markdown(shown.round({"Friedman p": 4, "CD (Nemenyi)": 2}))))
    items += [("image", p) for p in sorted((results_dir / "friedman").glob("cd_*.png"))]
    return items
