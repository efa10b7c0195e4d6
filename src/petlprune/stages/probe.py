"""``petlprune probe``: logistic regression on raw pixels per task (is each task learnable, not trivial?)."""

from __future__ import annotations

import argparse
import time

__all__ = ["add_arguments", "run", "format_table"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output JSON")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="task folders")


def format_table(rows: list[dict]) -> str:
    """Plain-text table: task, classes, chance, probe top-1."""
    lines = [f"{'task':<16} {'classes':>7} {'chance':>7} {'probe top-1':>11}"]
    for r in rows:
        lines.append(f"{r['task']:<16} {r['num_classes']:>7d} {r['chance']:>7.3f} {r['probe_top1']:>11.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    import torch

    from petlprune.data.probe import raw_pixel_probe
    from petlprune.io import atomic_write_json, provenance

    start = time.perf_counter()
    rows = []
    for d in args.dirs:
        result = raw_pixel_probe(d)
        print(
            f"probe: {result['task']}: top-1 {result['probe_top1']:.3f} (chance {result['chance']:.3f}, "
            f"{result['seconds']:.1f}s)",
            flush=True,
        )
        rows.append(result)
    print(format_table(rows), flush=True)
    atomic_write_json(
        args.out,
        {
            "probe": "standardised raw pixels -> LogisticRegression(max_iter=1000), train800val200 -> test",
            "tasks": rows,
            "provenance": provenance(
                argv=getattr(args, "argv", None),
                wall_seconds=round(time.perf_counter() - start, 3),
                threads=torch.get_num_threads(),
            ),
        },
    )
