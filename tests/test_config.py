"""Config validation: a bad config stops snakemake at once, and the message names the culprit."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "workflow" / "config").glob("*.yaml"))


def snakemake_dry_run(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(cfg),
         "--directory", str(ROOT), "-s", str(ROOT / "Snakefile")],
        capture_output=True, text=True, timeout=120,
    )


def smoke() -> dict:
    return yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


def _set(cfg: dict, dotted: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg


BAD = {
    "unknown top-level key": (lambda c: _set(c, "epochs", 3), "epochs"),
    "unknown nested key": (lambda c: _set(c, "finetune.epoch", 3), "epoch"),
    "wrong type": (lambda c: _set(c, "finetune.epochs", "ten"), "ten"),
    "unknown dataset": (lambda c: _set(c, "data.tasks", ["digits", "imagenet"]), "imagenet"),
    "unknown method": (lambda c: _set(c, "methods.magic_prune", {}), "magic_prune"),
    "budget for a method not configured": (
        lambda c: _set(_set(c, "methods", {k: v for k, v in c["methods"].items() if k != "angular"}), "budgets.angular", ["d3"]),
        "budgets.angular",
    ),
    "malformed budget": (lambda c: _set(c, "budgets.last_k", ["half"]), "half"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_config_fails_before_any_job_naming_the_key(case: str, tmp_path: Path) -> None:
    mutate, culprit = BAD[case]
    result = snakemake_dry_run(mutate(smoke()), tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert culprit in output, output[-2000:]
    assert "Job stats" not in output  # stopped before building the DAG


def test_smoke_config_builds_a_dag(tmp_path: Path) -> None:
    result = snakemake_dry_run(smoke(), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prune" in result.stdout
