"""``petlprune cost``: its per-rule job counts are the dry run's; seconds per job from benchmark files,
then the GPU check's JSON, then the runtime asked (stated as an assumption)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from petlprune.cli import main
from petlprune.stages.cost import parse_dry_run, rule_costs

ROOT = Path(__file__).resolve().parents[1]

DRY = """Building DAG of jobs...
rule finetune:
    output: r/a/model.pt
    resources: tmpdir=/tmp, runtime=240, gpu=1, mem_mb=32000, mem=32 GB
rule finetune:
    output: r/b/model.pt
    resources: tmpdir=/tmp, runtime=240, gpu=1, mem_mb=32000, mem=32 GB
rule prune:
    output: r/a/p/model.pt
    resources: tmpdir=/tmp, runtime=120, gpu=2
localrule plan:
    output: r/a/plan.json
    resources: tmpdir=/tmp, runtime=30
Job stats:
job         count
--------  -------
finetune        2
prune           1
plan            1
total           4

Reasons:
"""


def test_parse_and_the_order_of_sources(tmp_path):
    counts, res = parse_dry_run(DRY)
    assert counts == {"finetune": 2, "prune": 1, "plan": 1}
    assert res["finetune"]["gpu"] == 1 and res["prune"]["gpu"] == 2 and res["plan"]["local"] == 1.0
    bench = tmp_path / "benchmarks" / "finetune"
    bench.mkdir(parents=True)
    for i, s in enumerate((100.0, 300.0, 200.0)):
        (bench / f"{i}.tsv").write_text(f"s\th:m:s\tmax_rss\n{s}\t0:01:40\t1.0\n")
    costs = {c.rule: c for c in rule_costs(counts, res, tmp_path / "benchmarks", {"per_job_seconds": {"prune": 50.0,
                                                                                                      "finetune": 9}})}
    assert costs["finetune"].seconds == 200.0 and "measured" in costs["finetune"].source  # benchmarks first
    assert costs["prune"].seconds == 50.0 and "GPU check" in costs["prune"].source
    assert costs["prune"].gpu_hours == pytest.approx(1 * 2 * 50 / 3600)
    assert costs["plan"].seconds is None  # a local rule: its runtime is no job's cost
    nothing = {c.rule: c for c in rule_costs(counts, res)}
    assert nothing["prune"].seconds == 120 * 60 and nothing["prune"].source.startswith("assumed")


def _dry_run_counts(configfile: Path) -> dict[str, int]:
    """The dry run's own table (``--quiet rules``), read independently of the cost code."""
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(ROOT),
                           "--configfile", str(configfile), "-n", "--quiet", "rules", "--cores", "1"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = (done.stdout + done.stderr).split("Job stats:")[-1].splitlines()
    rows = [line.split() for line in table[3:]]
    out = {}
    for row in rows:
        if len(row) != 2 or not row[1].isdigit():
            break
        out[row[0]] = int(row[1])
    out.pop("total")
    return out


def _cost_counts(configfile: Path, tmp_path: Path, capsys) -> dict[str, int]:
    out = tmp_path / "cost.json"
    assert main(["cost", "--configfile", str(configfile), "--snakefile", str(ROOT / "Snakefile"),
                 "--gpus", "1", "8", "--benchmarks", str(tmp_path / "none"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    for r in got["rules"]:  # the printed table says the same
        assert any(line.split()[:2] == [r["rule"], str(r["jobs"])] for line in printed.splitlines())
    assert "wall time on 8 GPU(s)" in printed
    return {r["rule"]: r["jobs"] for r in got["rules"]}


def test_cost_counts_equal_the_dry_run_on_smoke(tmp_path, capsys):
    cfg = ROOT / "workflow/config/smoke.yaml"
    assert _cost_counts(cfg, tmp_path, capsys) == _dry_run_counts(cfg)


@pytest.mark.slow
def test_cost_counts_equal_the_dry_run_on_paper(tmp_path, capsys):
    """paper.yaml itself, its data folder absent (cost stubs it); the reference dry run reads a fake tree."""
    from _helpers import make_fake_vtab, paper_config_for

    cfg = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    vtab = make_fake_vtab(tmp_path / "vtab-1k", cfg["data"]["num_classes"])
    reference = _dry_run_counts(paper_config_for(vtab, tmp_path))
    assert _cost_counts(ROOT / "workflow/config/paper.yaml", tmp_path, capsys) == reference
    assert reference["prune"] > 1000  # the paper tier, not a stub of it
