"""Cost of each stage of a study, from Snakemake's benchmark files (``RESULTS/benchmarks/**/*.tsv``).

Every rule that costs time has a ``benchmark:`` file: one row per run with wall seconds (``s``), CPU
seconds, peak RSS and mean load. This groups them by rule (the first folder under ``benchmarks/``,
or the file name for single-job rules), sums wall and CPU seconds, and prints each stage's share of the
total. The total is job-seconds: with ``--cores N`` the study's wall clock is between total / N and
total. A job run by the warm worker (petlprune/worker.py) was timed by Snakemake as its thin client:
its wall seconds are right, but its CPU seconds and peak RSS are taken from the line the worker's
child wrote at the end of the job's log (``RESULTS/logs/<same path>.log``).

    python benchmarks/stage_costs.py --results /tmp/timed/results
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from petlprune.worker import job_resources  # the format of the worker's line, read where it is written

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite import add_common_arguments, format_table, write_result  # noqa: E402

__all__ = ["read_benchmark_files", "stage_table", "main"]


def _number(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan  # Snakemake writes "NA" where psutil could not read a figure


def _mean(rows: list[dict[str, str]], key: str) -> float:
    values = [v for v in (_number(r.get(key)) for r in rows) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def read_benchmark_files(bench_dir: Path) -> list[dict[str, Any]]:
    """One record per benchmark file: ``{"rule", "job", "s", "cpu_time", "max_rss"}`` (means over
    the file's rows: a rule run with ``repeat()`` has several). CPU and RSS of a job the warm worker
    ran come from its log (``bench_dir/../logs``), not from the benchmark file, which saw the client."""
    jobs = []
    for path in sorted(Path(bench_dir).rglob("*.tsv")):
        rel = path.relative_to(bench_dir)
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue

        job = {
            "rule": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
            "job": str(rel.with_suffix("")),
            **{key: _mean(rows, key) for key in ("s", "cpu_time", "max_rss")},
        }
        job.update(job_resources(Path(bench_dir).parent / "logs" / rel.with_suffix(".log")) or {})
        jobs.append(job)
    return jobs


def stage_table(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-rule rows (largest wall time first) and the totals.

    Returns:
        (rows ``{"stage", "jobs", "wall_s", "cpu_s", "max_rss_mb", "share"}``, ``{"wall_s", "cpu_s", "jobs"}``).
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        groups[job["rule"]].append(job)
    total_wall = sum(j["s"] for j in jobs if not math.isnan(j["s"]))
    total_cpu = sum(j["cpu_time"] for j in jobs if not math.isnan(j["cpu_time"]))
    rows = []
    for rule, members in groups.items():
        wall = sum(j["s"] for j in members if not math.isnan(j["s"]))
        rss = [j["max_rss"] for j in members if not math.isnan(j["max_rss"])]
        rows.append({
            "stage": rule,
            "jobs": len(members),
            "wall_s": wall,
            "cpu_s": sum(j["cpu_time"] for j in members if not math.isnan(j["cpu_time"])),
            "max_rss_mb": max(rss) if rss else None,
            "share": wall / total_wall if total_wall > 0 else math.nan,
        })
    rows.sort(key=lambda r: -r["wall_s"])
    return rows, {"wall_s": total_wall, "cpu_s": total_cpu, "jobs": len(jobs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    bench_dir = args.results / "benchmarks"
    if not bench_dir.is_dir():
        print(f"{bench_dir}: no Snakemake benchmark folder (run the study first)", file=sys.stderr)
        return 1
    rows, total = stage_table(read_benchmark_files(bench_dir))
    print(format_table(rows, ["stage", "jobs", "wall_s", "cpu_s", "max_rss_mb", "share"]))
    print(f"total: {total['jobs']} jobs, {total['wall_s'] / 60:.1f} job-minutes wall, "
          f"{total['cpu_s'] / 60:.1f} CPU-minutes")
    write_result(args, "stage_costs", {"results": str(args.results), "stages": rows, "total": total}, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
