"""``petlprune plan``: turn a scores file and a budget into a pruning Plan.

``--budget matched`` is resolved here, not by the method: it becomes a depth budget equal to the
depth of the given SLS plan (same task and seed), and the Plan keeps the text ``matched``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "resolve_budget"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="registered method name")
    parser.add_argument("--scores", type=Path, required=True, help="RUN_DIR/score/NAME.json")
    parser.add_argument("--budget", required=True, help="matched, d{n} (keep n blocks), a{alpha}, r{ratio}, p{density}")
    parser.add_argument("--matched-plan", type=Path, default=None,
                        help="the SLS plan whose depth 'matched' means (RUN_DIR/plan/sls-a0.3.json)")
    parser.add_argument("--out", type=Path, required=True, help="plan file to write (RUN_DIR/plan/NAME-BUDGET.json)")


def resolve_budget(text: str, matched_plan: Path | None):
    """Parse ``text``; ``matched`` becomes the depth of ``matched_plan`` (text kept as ``matched``)."""
    from petlprune.methods import Budget, Plan

    try:
        budget = Budget.parse(text)
    except ValueError as err:
        raise SystemExit(f"petlprune plan: --budget {err}") from None
    if budget.kind == "matched":
        if matched_plan is None:
            raise SystemExit("petlprune plan: --budget matched needs --matched-plan (the SLS plan of this run)")
        return Budget.depth(Plan.load(matched_plan).depth, text=budget.text)
    if matched_plan is not None:
        raise SystemExit(f"petlprune plan: --matched-plan is only read for --budget matched, not {text!r}")
    return budget


def run(args: argparse.Namespace) -> None:
    from petlprune.methods import Scores, get

    t0 = time.perf_counter()
    method = get(args.method)
    scores = Scores.load(args.scores)
    if scores.method != method.name:
        raise SystemExit(f"petlprune plan: {args.scores} holds scores of {scores.method!r}, not {method.name!r}")
    budget = resolve_budget(args.budget, args.matched_plan)
    plan = method.plan(scores, budget)
    plan.save(args.out)
    resolved = f" (= depth {budget.value} from {args.matched_plan})" if args.budget == "matched" else ""
    print(f"plan: {method.name} {args.budget}{resolved}: keep {plan.depth} blocks {plan.kept_blocks}"
          f"{'; ' + plan.notes if plan.notes else ''} -> {args.out} ({time.perf_counter() - t0:.2f}s)", flush=True)
