"""``petlprune cost``: what a study will cost, before it runs: GPU-hours and wall time on N GPUs.

Job counts and each job's resources (``gpu``, ``runtime``) come from the DAG itself: one Snakemake dry
run (``snakemake -n``) of the given config. Seconds per job, per rule, come from the first of:
    1. Snakemake benchmark files of an earlier run (``{results}/benchmarks/{rule}/*.tsv``, median of
       the ``s`` column), measured on the machine that ran them;
    2. the GPU check's JSON (``benchmarks/gpu_check.py``: ``per_job_seconds`` measured on a GPU);
    3. an assumption, stated in the table: the rule's requested ``runtime`` (minutes), an upper bound.
GPU-hours = sum over rules of jobs x GPUs per job x seconds per job. The wall time on N GPUs is
GPU-hours / N: perfect packing, so a lower bound (the DAG's order and the CPU-only jobs add to it).

A dry run needs the VTAB-1k list files to exist, but the DAG's shape does not depend on their content:
when ``data.root`` is missing, the dry run reads a stub tree of empty list files instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from petlprune import costmodel
from petlprune.costmodel import FixedCost, Rates, Study
from petlprune.stages._args import positive_int

__all__ = ["add_arguments", "run", "RuleCost", "dry_run", "parse_dry_run", "parse_jobs", "rule_costs", "format_costs",
           "flops_estimate", "format_estimate"]

_JOB_RE = re.compile(r"^\s*(local)?rule (\w+):\s*$")
_RES_RE = re.compile(r"^\s+resources: (.*)$")
_WC_RE = re.compile(r"^\s+wildcards: (.*)$")
_OUT_RE = re.compile(r"^\s+output: (.*)$")
VTAB_LISTS = ("train800", "val200", "train800val200", "test")


@dataclass
class RuleCost:
    """One rule of the DAG: its jobs, GPUs and seconds per job, and where the seconds come from."""

    rule: str
    jobs: int
    gpus: float
    seconds: float | None
    source: str

    @property
    def gpu_hours(self) -> float:
        return self.jobs * self.gpus * (self.seconds or 0.0) / 3600

    @property
    def cpu_hours(self) -> float:
        return 0.0 if self.gpus else self.jobs * (self.seconds or 0.0) / 3600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", type=Path, required=True, help="the study's config (workflow/config/paper.yaml)")
    parser.add_argument("--snakefile", type=Path, default=Path("Snakefile"), help="the workflow (default: ./Snakefile)")
    parser.add_argument("--gpus", type=positive_int, nargs="+", default=[1, 8, 32], help="GPU counts to show wall time for")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="Snakemake benchmark folder of an earlier run (default: {results}/benchmarks of the config)")
    parser.add_argument("--gpu-check", type=Path, default=None, help="the GPU check's JSON (benchmarks/gpu_check.py)")
    parser.add_argument("--out", type=Path, default=None, help="also write the estimate as JSON here")
    # The FLOPs-based estimate (petlprune/costmodel.py, book/cost.md) printed beside the upper bound.
    parser.add_argument("--gpu", default="h100", choices=[*costmodel.PEAK_BF16, "cpu"],
                        help="device kind of the FLOPs estimate (default h100; cpu needs --rates)")
    parser.add_argument("--mfu", type=float, default=costmodel.DEFAULT_MFU,
                        help=f"sustained share of the bf16 peak (default {costmodel.DEFAULT_MFU})")
    parser.add_argument("--rates", type=Path, default=None,
                        help="measured rates JSON (benchmarks/roofline.py's format): replaces peak x MFU")
    parser.add_argument("--startup-s", type=float, default=FixedCost.startup_s,
                        help=f"fixed seconds per job: start-up, imports, CUDA (default {FixedCost.startup_s:g})")
    parser.add_argument("--read-gbps", type=float, default=FixedCost.read_bytes_per_s / 1e9,
                        help="data and backbone read rate, GB/s (default 1)")


def _stub_config(configfile: Path, tmp: Path) -> Path:
    """The config, with a stub VTAB-1k tree (empty list files) when its data.root is missing."""
    import yaml

    cfg = yaml.safe_load(configfile.read_text())
    data = cfg.get("data", {})
    if data.get("kind") != "vtab" or Path(data["root"]).is_dir():
        return configfile
    root = tmp / "vtab-stub"
    for task in data["tasks"]:
        (root / task).mkdir(parents=True)
        for split in VTAB_LISTS:
            (root / task / f"{split}.txt").write_text("")
    data["root"] = str(root)
    if data.get("manifest"):
        data["manifest"] = str(root / "SHA256SUMS")
        (root / "SHA256SUMS").write_text("")
    out = tmp / configfile.name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def dry_run(configfile: Path, snakefile: Path) -> str:
    """The text of ``snakemake -n`` (every job with its resources, then the job stats)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _stub_config(configfile, Path(tmp))
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--configfile", str(cfg), "-n",
             "--cores", "1", "--directory", str(snakefile.resolve().parent)],
            capture_output=True, text=True, timeout=1800,
        )
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"petlprune cost: the dry run of {configfile} failed:\n{text[-3000:]}")
    return text


def parse_dry_run(text: str) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """(jobs per rule from the job stats table, resources of each rule's jobs from their blocks).

    A rule's resources are the maxima over its jobs; ``local`` is 1.0 for Snakemake's localrules.
    """
    stats = text.rsplit("Job stats:", 1)
    if len(stats) < 2:
        if "Nothing to be done" in text:
            return {}, {}
        raise ValueError("no 'Job stats:' table in the dry run's output")
    counts: dict[str, int] = {}
    for line in stats[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    resources: dict[str, dict[str, float]] = {}
    rule = None
    for line in stats[0].splitlines():
        m = _JOB_RE.match(line)
        if m:
            rule = m.group(2)
            resources.setdefault(rule, {})["local"] = float(m.group(1) is not None)
            continue
        m = _RES_RE.match(line)
        if m and rule is not None:
            for item in m.group(1).split(", "):
                key, _, value = item.partition("=")
                try:
                    resources[rule][key] = max(resources[rule].get(key, 0.0), float(value))
                except ValueError:
                    pass  # tmpdir=/tmp, mem=32 GB
            rule = None
    return counts, resources


def parse_jobs(text: str) -> list[tuple[str, dict[str, str], int]]:
    """(rule, wildcards, number of outputs) of every job block of the dry run."""
    jobs: list[tuple[str, dict[str, str], int]] = []
    for line in text.rsplit("Job stats:", 1)[0].splitlines():
        m = _JOB_RE.match(line)
        if m:
            jobs.append((m.group(2), {}, 0))
            continue
        if not jobs:
            continue
        m = _WC_RE.match(line)
        if m:
            jobs[-1][1].update(dict(kv.split("=", 1) for kv in m.group(1).split(", ") if "=" in kv))
        m = _OUT_RE.match(line)
        if m:
            jobs[-1] = (jobs[-1][0], jobs[-1][1], len(m.group(1).split(", ")))
    return jobs


def _benchmark_seconds(folder: Path | None, rule: str) -> tuple[float, int] | None:
    """Median wall seconds of a rule's benchmark files (measure_{petl} rules share measure/)."""
    if folder is None:
        return None
    group = "measure" if rule.startswith("measure_") else rule
    files = sorted((folder / group).glob("*.tsv")) + ([folder / f"{group}.tsv"] if (folder / f"{group}.tsv").is_file() else [])
    secs = []
    for f in files:
        with f.open() as fh:
            secs += [float(row["s"]) for row in csv.DictReader(fh, delimiter="\t") if row.get("s")]
    return (statistics.median(secs), len(files)) if secs else None


def rule_costs(counts: dict[str, int], resources: dict[str, dict[str, float]], benchmarks: Path | None = None,
               gpu_check: dict | None = None) -> list[RuleCost]:
    """Cost of every rule of the dry run, seconds from benchmarks, then the GPU check, then the runtime asked."""
    per_job = (gpu_check or {}).get("per_job_seconds", {})
    out = []
    for rule, jobs in counts.items():
        res = resources.get(rule, {})
        gpus = res.get("gpu", 0.0)
        measured = _benchmark_seconds(benchmarks, rule)
        if measured is not None:
            secs, source = measured[0], f"measured: median of {measured[1]} benchmark file(s)"
        elif rule in per_job:
            secs, source = float(per_job[rule]), f"GPU check on {gpu_check.get('gpu', 'a GPU')}"
        elif "runtime" in res and not res.get("local"):
            secs, source = res["runtime"] * 60, "assumed: the requested runtime (upper bound)"
        else:
            secs, source = None, "no figure (runs where Snakemake runs)"
        out.append(RuleCost(rule, jobs, gpus, secs, source))
    return out


def format_costs(costs: list[RuleCost], gpus: list[int]) -> str:
    """The table of rules and the totals: GPU-hours, GPU-days, wall time on each GPU count."""
    lines = [f"{'rule':<18}{'jobs':>7}{'gpu/job':>9}{'s/job':>10}{'GPU-h':>10}  seconds from",
             "-" * 90]
    for c in costs:
        secs = "-" if c.seconds is None else f"{c.seconds:.0f}"
        lines.append(f"{c.rule:<18}{c.jobs:>7}{c.gpus:>9g}{secs:>10}{c.gpu_hours:>10.1f}  {c.source}")
    total = sum(c.gpu_hours for c in costs)
    cpu = sum(c.cpu_hours for c in costs)
    lines += ["-" * 90, f"{'total':<18}{sum(c.jobs for c in costs):>7}{'':>19}{total:>10.1f}",
              f"GPU-hours {total:,.0f} ({total / 24:,.1f} GPU-days); CPU-only jobs {cpu:,.1f} core-job-hours"]
    for n in gpus:
        lines.append(f"wall time on {n} GPU(s): >= {total / n:,.1f} h ({total / n / 24:,.2f} days; perfect packing)")
    return "\n".join(lines)


@dataclass
class RuleEstimate:
    """A rule's FLOPs-based job-seconds beside its upper bound (jobs x the runtime each requests)."""

    rule: str
    jobs: int
    gpus: float
    flops: float
    seconds: float  # FLOPs model, summed over the rule's jobs
    upper: float | None  # requested runtime x jobs; None for local rules

    def gpu_hours(self, seconds: float | None) -> float:
        return (seconds or 0.0) * max(self.gpus, 1.0 if self.gpus else 0.0) / 3600


def flops_estimate(jobs: list[tuple[str, dict[str, str], int]], resources: dict[str, dict[str, float]],
                   study: Study, rates: Rates, fixed: FixedCost) -> list[RuleEstimate]:
    """Every rule the FLOPs model covers (petlprune/costmodel.py: Study.job), summed over its jobs."""
    out: dict[str, RuleEstimate] = {}
    for rule, wc, n_out in jobs:
        cost = study.job(rule, wc, n_out, rates, fixed)
        if cost is None:
            continue
        res = resources.get(rule, {})
        upper = res["runtime"] * 60 if "runtime" in res and not res.get("local") else None
        est = out.setdefault(rule, RuleEstimate(rule, 0, res.get("gpu", 0.0), 0.0, 0.0, 0.0 if upper else None))
        est.jobs += 1
        est.flops += cost.flops
        est.seconds += cost.seconds
        if upper is not None:
            est.upper = (est.upper or 0.0) + upper
    return list(out.values())


def format_estimate(rows: list[RuleEstimate], rates: Rates, fixed: FixedCost, gpus: list[int]) -> str:
    """The FLOPs estimate per rule and in total, the upper bound beside it, the assumptions named."""
    unit = "GPU-h" if any(r.gpus for r in rows) else "job-h"
    lines = ["FLOPs-based estimate (petlprune/costmodel.py; book/cost.md) beside the upper bound (requested runtime):",
             *[f"  {a}" for a in costmodel.describe(rates, fixed)],
             "  pruned models at budgets other than dK are counted at full depth (an upper bound)",
             f"{'rule':<18}{'jobs':>7}{'PFLOP':>11}{'s/job':>9}{unit + ' est.':>12}{unit + ' bound':>13}{'bound/est':>10}",
             "-" * 80]
    for r in rows:
        est, bound = r.gpu_hours(r.seconds), r.gpu_hours(r.upper)
        ratio = f"{bound / est:.0f}x" if r.upper and est else "-"
        lines.append(f"{r.rule:<18}{r.jobs:>7}{r.flops / 1e15:>11.1f}{r.seconds / r.jobs:>9.1f}{est:>12.1f}"
                     f"{bound if r.upper is not None else float('nan'):>13.1f}{ratio:>10}")
    est, bound = sum(r.gpu_hours(r.seconds) for r in rows), sum(r.gpu_hours(r.upper) for r in rows)
    lines += ["-" * 80, f"{'total':<18}{sum(r.jobs for r in rows):>7}{sum(r.flops for r in rows) / 1e15:>11.1f}"
              f"{'':>9}{est:>12.1f}{bound:>13.1f}",
              f"estimate {est:,.1f} {unit} ({est / 24:,.2f} days of one device); upper bound {bound:,.0f} {unit}"]
    lines += [f"  on {n} device(s): >= {est / n:,.2f} h estimated, <= {bound / n:,.0f} h bound" for n in gpus]
    return "\n".join(lines)


GPU_CHECK_JSON = Path("results/benchmarks-suite/gpu_check.json")  # where `sh benchmarks/gpu_check.sh` writes


def _rates(args: argparse.Namespace, gpu_check: dict | None) -> Rates:
    """Measured rates first (--rates; the GPU check's JSON, --gpu-check or else the one gpu_check.sh wrote
    next to the Snakefile, when its GPU is of the kind asked), else peak x MFU."""
    if args.rates is not None:
        return costmodel.read_rates_file(args.rates)
    if args.gpu == "cpu":
        raise SystemExit("petlprune cost: --gpu cpu needs --rates FILE (benchmarks/roofline.py's JSON)")
    found = args.snakefile.resolve().parent / GPU_CHECK_JSON
    if gpu_check is None and found.is_file():
        gpu_check = json.loads(found.read_text())
    if gpu_check and args.gpu in str(gpu_check.get("gpu", "")).lower():
        measured = costmodel.rates_from_gpu_check(gpu_check)
        if measured is not None:
            return measured
    return costmodel.rates_for(args.gpu, args.mfu)


def run(args: argparse.Namespace) -> None:
    import yaml

    if not args.configfile.is_file():
        raise SystemExit(f"petlprune cost: --configfile {args.configfile} not found")
    if not args.snakefile.is_file():
        raise SystemExit(f"petlprune cost: --snakefile {args.snakefile} not found (run from the repository root)")
    benchmarks = args.benchmarks
    if benchmarks is None:
        results = yaml.safe_load(args.configfile.read_text()).get("results", "results")
        benchmarks = args.snakefile.resolve().parent / results / "benchmarks"
    gpu_check = json.loads(args.gpu_check.read_text()) if args.gpu_check else None
    text = dry_run(args.configfile, args.snakefile)
    counts, resources = parse_dry_run(text)
    costs = rule_costs(counts, resources, benchmarks if benchmarks.is_dir() else None, gpu_check)
    print(f"cost of {args.configfile} (dry run: {sum(counts.values())} jobs)")
    print(format_costs(costs, args.gpus))
    rates, fixed = _rates(args, gpu_check), FixedCost(args.startup_s, args.read_gbps * 1e9)
    study = Study(yaml.safe_load(args.configfile.read_text()), Path.home() / ".cache/petlprune/flops.json")
    estimate = flops_estimate(parse_jobs(text), resources, study, rates, fixed)
    print()
    print(format_estimate(estimate, rates, fixed, args.gpus))
    if args.out is not None:
        from petlprune.io import atomic_write_json

        total = sum(c.gpu_hours for c in costs)
        atomic_write_json(args.out, {
            "configfile": str(args.configfile), "rules": [c.__dict__ | {"gpu_hours": c.gpu_hours} for c in costs],
            "gpu_hours": total, "wall_hours": {str(n): total / n for n in args.gpus},
            "flops_model": {"rates": rates.__dict__, "fixed": fixed.__dict__,
                            "rules": [r.__dict__ for r in estimate]},
        })
