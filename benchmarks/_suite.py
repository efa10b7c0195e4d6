"""What the benchmark scripts share: where their JSON goes, the machine note, the table printer.

Every script of the suite writes ``{results}/benchmarks-suite/{name}.json`` (``--out`` overrides);
``petlprune book`` reads that folder for the page "Reliability and performance"
(``petlprune.report.benchmarks``). Each JSON holds ``{"benchmark", "command", "machine", ...}``;
``machine`` records the load average before and after, because timings taken on a busy machine are
not comparable with those of an idle one.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import petlprune  # noqa: F401  (must precede timm: the torchvision compatibility step)

# isort: split
import torch

from petlprune.io import atomic_write_json

__all__ = ["SUITE_DIR", "add_common_arguments", "default_out", "machine", "format_table", "write_result", "Timer"]

SUITE_DIR = "benchmarks-suite"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--results`` (the tree read), ``--out`` (the JSON written) and ``--threads``."""
    parser.add_argument("--results", type=Path, default=Path("results"), help="results tree to read (default: results)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON to write (default: RESULTS/{SUITE_DIR}/NAME.json); '-' writes none")
    # One thread by default: what the study's jobs use, and on a shared machine one thread's CPU time
    # (reported next to wall time) hardly moves with the load of other processes.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")


def default_out(results: Path, name: str) -> Path:
    return Path(results) / SUITE_DIR / f"{name}.json"


def machine(load_before: float | None = None) -> dict[str, Any]:
    """Machine, software and load: what a timing needs next to it to be read."""
    return {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain fixed-width text table; floats with 3 significant decimals."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
        return "—" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def write_result(args: argparse.Namespace, name: str, payload: dict[str, Any], load_before: float) -> Path | None:
    """Write ``payload`` (plus name, command line and machine) as the benchmark's JSON; return its path."""
    out = args.out if args.out is not None else default_out(args.results, name)
    if str(out) == "-":
        return None
    doc = {"benchmark": name, "command": " ".join(["python", *sys.argv]), "machine": machine(load_before), **payload}
    atomic_write_json(out, doc)
    print(f"wrote {out}")
    return Path(out)


class Timer:
    """``with Timer() as t: ...``; afterwards ``t.seconds`` (wall) and ``t.cpu_seconds`` (this process's
    CPU time, all threads: less sensitive than wall time to other processes on the machine)."""

    def __enter__(self) -> Timer:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
