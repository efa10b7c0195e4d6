"""Validate ``petlprune cost``'s FLOPs model where it can be measured: the default tier on this CPU.

The model (src/petlprune/costmodel.py, book/cost.md) predicts each job's seconds as a fixed cost plus
FLOPs over a measured rate. Here the rate is this CPU's (a rates JSON in the format of
``benchmarks/roofline.py``: ``train_flops_per_s``, ``eval_flops_per_s``), the jobs are those of a
finished default-tier run, and the measured seconds are its Snakemake benchmark files
(``benchmarks/stage_costs.py`` reads them; the CPU seconds of a job run by the warm worker come from its
log). The jobs come from a dry run of the same config into an empty results folder, which gives each
job's wildcards and its benchmark file.

The rates should be per CPU-second of one thread (the default tier's jobs use ``threads: 1``), so the
prediction compares directly with each job's CPU seconds; wall seconds are inflated where the machine
is shared, and the table gives both ratios.

    python benchmarks/cost_validation.py --results /work/baseline/results --rates cpu_rates.json
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from petlprune.costmodel import FixedCost, Study, read_rates_file
from petlprune.stages.cost import _JOB_RE, dry_run, parse_jobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_costs import read_benchmark_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_BENCH_RE = re.compile(r"^\s+benchmark: (.*)$")


def job_benchmarks(text: str) -> list[str | None]:
    """The benchmark file of every job block of the dry run, in the order of ``parse_jobs``."""
    out: list[str | None] = []
    for line in text.rsplit("Job stats:", 1)[0].splitlines():
        if _JOB_RE.match(line):
            out.append(None)
        elif out and (m := _BENCH_RE.match(line)):
            out[-1] = m.group(1).strip()
    return out


def compare(configfile: Path, results: Path, rates_file: Path, fixed: FixedCost) -> list[dict]:
    """Per rule: jobs, predicted seconds, measured wall and CPU seconds (sums over the matched jobs)."""
    cfg = yaml.safe_load(configfile.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "results"
        cfg_tmp = Path(tmp) / configfile.name
        cfg_tmp.write_text(yaml.safe_dump({**cfg, "results": str(empty)}, sort_keys=False))
        text = dry_run(cfg_tmp, ROOT / "Snakefile")
    rates, study = read_rates_file(rates_file), Study(cfg, Path.home() / ".cache/petlprune/flops.json")
    measured = {j["job"]: j for j in read_benchmark_files(results / "benchmarks")}
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "predicted_s": 0.0, "wall_s": 0.0, "cpu_s": 0.0})
    for (rule, wc, n_out), bench in zip(parse_jobs(text), job_benchmarks(text), strict=True):
        if bench is None:
            continue
        key = str(Path(bench).relative_to(empty / "benchmarks").with_suffix(""))
        cost = study.job(rule, wc, n_out, rates, fixed)
        if cost is None or key not in measured:
            continue
        row = rows["measure" if rule.startswith("measure_") else rule]
        row["jobs"] += 1
        row["predicted_s"] += cost.seconds
        row["wall_s"] += measured[key]["s"]
        row["cpu_s"] += measured[key]["cpu_time"]
    return [{"rule": r, **v} for r, v in rows.items()]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(b) else "-"


def format_rows(rows: list[dict]) -> str:
    head = f"{'rule':<10}{'jobs':>6}{'predicted s':>13}{'wall s':>10}{'pred/wall':>11}{'CPU s':>10}{'pred/CPU':>10}"
    lines = [head, "-" * len(head)]
    for r in [*rows, {"rule": "total", **{k: sum(x[k] for x in rows) for k in ("jobs", "predicted_s", "wall_s",
                                                                                 "cpu_s")}}]:
        lines.append(f"{r['rule']:<10}{r['jobs']:>6}{r['predicted_s']:>13.1f}{r['wall_s']:>10.1f}"
                     f"{_ratio(r['predicted_s'], r['wall_s']):>11}{r['cpu_s']:>10.1f}"
                     f"{_ratio(r['predicted_s'], r['cpu_s']):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished run's results folder")
    parser.add_argument("--configfile", type=Path, default=ROOT / "workflow/config/default.yaml")
    parser.add_argument("--rates", type=Path, required=True, help="this CPU's rates (benchmarks/roofline.py's JSON)")
    parser.add_argument("--startup-s", type=float, default=0.5,
                        help="fixed seconds per job: 0.5 with the warm worker (a fork; the cold start it saves "
                             "is about 4 CPU-seconds of imports, workflow/schemas/config.schema.yaml: worker)")
    parser.add_argument("--read-gbps", type=float, default=1.0)
    args = parser.parse_args(argv)
    rows = compare(args.configfile, args.results, args.rates, FixedCost(args.startup_s, args.read_gbps * 1e9))
    print(f"FLOPs model vs {args.results} (rates {args.rates}; start-up {args.startup_s:g} s/job)")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
