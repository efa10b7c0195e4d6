"""``petlprune summary``: collect every result of the tree into one tidy CSV.

One row per task × petl × seed × method key × budget (the unpruned fine-tune is method
``finetune``, budget ``none``), with the columns of ``petlprune.report.COLUMNS``: accuracies in
percent with their 95% Wilson interval (``top1_lo``/``top1_hi``), the run's chance rate and whether
the model collapsed, measured costs, speed-ups against the unpruned model of the same run, PPT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True, help="the results/ directory")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (results/summary.csv)")


def run(args: argparse.Namespace) -> None:
    from petlprune.report import load_results, write_summary

    skipped: list[str] = []
    df = load_results(args.results, skipped)
    for note in skipped:
        print(f"left out: {note}", flush=True)
    write_summary(df, args.out)
    print(f"{args.out}: {len(df)} results, {df['task'].nunique()} tasks, "
          f"{df['method'].nunique()} methods (incl. the unpruned reference), seeds {sorted(df['seed'].unique())}",
          flush=True)
