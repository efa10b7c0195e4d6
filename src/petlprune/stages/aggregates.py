"""``petlprune aggregates``: results/summary.csv → aggregates across tasks × seeds (rliable), or the
Friedman test with its critical-difference diagrams (autorank).

``--out results/aggregates.csv --figures DIR``: the mean, IQM and P(improvement) rows with their
stratified-bootstrap intervals (``report.aggregates.aggregates_table``) and one performance-profile
figure per PETL, ``DIR/profile_<petl>.png``. A run whose unpruned control collapsed has no denominator
and is left out (the log names it); where every run's did (the smoke tier's tiny models), the CSV has
its header and no rows.

``--friedman results/friedman.csv --figures DIR``: per PETL and budget family with at least 5 tasks
and 3 methods, the Friedman p-value, Nemenyi's CD and the mean ranks (``report.ranktest``), and the
diagram ``DIR/cd_<petl>_<family>.png``; a tier with fewer tasks writes the table with no rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", type=Path, required=True, help="results/summary.csv")
    parser.add_argument("--matched-alpha", default=None, help="SLS alpha whose depth the matched budgets got")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="aggregates CSV to write (results/aggregates.csv)")
    what.add_argument("--friedman", type=Path, help="Friedman table to write (results/friedman.csv)")
    parser.add_argument("--figures", type=Path, required=True, help="folder for the figures")


def run(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from petlprune.report import read_summary
    from petlprune.report.aggregates import aggregates_table, profile_figure, run_scores

    left_out: list[str] = []
    scores = run_scores(read_summary(args.summary), left_out)
    if left_out:
        print(f"left out (their unpruned control collapsed, no denominator): {', '.join(left_out)}", flush=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        table = aggregates_table(scores, args.matched_alpha)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        for petl in sorted(scores["petl"].unique()):
            fig = profile_figure(scores, petl)
            if fig is not None:
                fig.savefig(args.figures / f"profile_{petl}.png", dpi=110)
        print(f"{args.out}: {len(table)} rows, {scores['task'].nunique()} tasks, "
              f"seeds {sorted(scores['seed'].unique())}", flush=True)
        return
    from petlprune.report.ranktest import cd_figure, friedman_table

    table, results = friedman_table(scores, args.matched_alpha)
    args.friedman.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.friedman, index=False)
    for (petl, family), res in results.items():
        cd_figure(res, f"{petl}, {family}").savefig(args.figures / f"cd_{petl}_{family}.png", dpi=110,
                                                    bbox_inches="tight")
    print(f"{args.friedman}: {len(table)} families tested", flush=True)
