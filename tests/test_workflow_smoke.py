"""The whole DAG end to end on the smoke config, in a scratch copy of the workflow's inputs."""

from __future__ import annotations

import json

import pytest

from _helpers import smoke_snakemake as snakemake


@pytest.mark.slow
def test_smoke_study_builds_the_book_and_a_second_run_does_nothing(smoke_study) -> None:
    tmp_path, run = smoke_study  # the session's one smoke run (tests/conftest.py), shared with the browser test
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]

    results = tmp_path / "results-smoke"
    assert (tmp_path / "book/_build/html/index.html").is_file()
    summary = (results / "summary.csv").read_text().splitlines()
    from petlprune.methods import METHOD_MODULES

    missing = [m for m in METHOD_MODULES if not any(f",{m}" in line for line in summary)]
    assert not missing, f"the smoke tier runs every registered method once; no result for {missing}"
    import csv

    keys = {row["key"] for row in csv.DictReader((results / "summary.csv").open())}
    controls = {"splora_unpruned", "spa_recovered", "pear_nn_scale"}
    assert controls <= keys, f"every control of the tiers is a row of the summary; missing {controls - keys}"

    # Aggregates across tasks x seeds (rliable): mean and IQM per arm; one seed, so no interval over seeds.
    import pandas as pd

    from petlprune.report.aggregates import AGG_COLUMNS

    # (the smoke tier's tiny models may all collapse: a run whose control did has no denominator, no row)
    aggregates = pd.read_csv(results / "aggregates.csv")
    assert list(aggregates.columns) == AGG_COLUMNS and (results / "aggregates").is_dir()
    if len(aggregates):
        assert {"mean", "iqm"} <= set(aggregates["statistic"]) and aggregates["value"].between(0, 2).all()
        assert (aggregates["n_seeds"] == 1).all() and aggregates["lo"].isna().all()
    assert not (results / "friedman.csv").exists()  # two tasks: the test over tasks needs 5

    # Every pruned result is a real re-trained model with a Plan and a measured efficiency.
    pruned = sorted((results / "runs").glob("*/adapter/seed0/pruned/*/metrics.json"))
    # 2 tasks × (sls, last_k, random.0, BI, angular×2, taylor, sglp, depgraph, pear, pear_nn_scale, adapter_drop,
    # last_k_rec1, last_k_bridge, p3b, attn_drop)
    assert len(pruned) == 2 * 16
    assert len(sorted((results / "runs").glob("*/lora/seed0/pruned/*/metrics.json"))) == 2 * 1  # lora_drop
    # instances with their own PETL run only there: spa, fine_pruning and the controls splora_unpruned and
    # spa_recovered on splora, spa_block on splopa
    assert len(sorted((results / "runs").glob("*/splora/seed0/pruned/*/metrics.json"))) == 2 * 4
    assert len(sorted((results / "runs").glob("*/splopa/seed0/pruned/*/metrics.json"))) == 2 * 1
    pruned += sorted((results / "runs").glob("*/splo*/seed0/pruned/*/metrics.json"))
    for path in pruned:
        metrics = json.loads(path.read_text())
        assert 0.0 <= metrics["top1"] <= 1.0 and 0.0 <= metrics["top1_before_retrain"] <= 1.0
        eff = json.loads((path.parent / "efficiency.json").read_text())
        assert eff["params_forward"] > 0 and eff["flops_per_image"] > 0

    # The jobs ran in the warm worker (petlprune/worker.py): its child ends each job's log with its figures.
    assert "ready on" in (results / "logs/worker.log").read_text()
    # (a job that starts while the worker is still importing runs on its own: the finetune jobs come later)
    finetune_logs = sorted((results / "logs/finetune").glob("*.log"))
    assert finetune_logs and all("petlprune worker: job resources" in p.read_text() for p in finetune_logs)

    again = snakemake(tmp_path, "--cores", "2", "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
