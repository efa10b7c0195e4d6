"""Aggregates across tasks × seeds (report/aggregates.py), the Friedman test (report/ranktest.py), the
pandas-3 shim that lets rliable import (report/rliable_compat.py) and the stage/rules around them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from petlprune.report import aggregates as agg
from petlprune.report import ranktest
from petlprune.report.load import COLUMNS
from petlprune.report.rliable_compat import _legacy_compatible, ensure_arch, needs_shim

ROOT = Path(__file__).resolve().parents[1]

X = np.array([[1, 2], [2, 2], [1, 1], [2, 1]], dtype=float)  # (runs, tasks): rliable's reference case
Y = np.array([[1, 1], [2, 2], [3, 3]], dtype=float)


def test_rliable_reference_case_through_the_wrapper() -> None:
    assert ensure_arch() in ("shimmed", "native")
    assert agg.interval_estimates(X, reps=200)["iqm"][0] == pytest.approx(1.5)
    assert agg.interval_estimates(Y, reps=200)["iqm"][0] == pytest.approx(2.0)
    assert agg.interval_estimates(X, reps=200)["mean"][0] == pytest.approx(1.5)
    value, lo, hi = agg.probability_of_improvement(X, Y, reps=200)
    assert value == pytest.approx(1 / 3)
    assert 0.0 <= lo <= value <= hi <= 1.0


def test_intervals_are_reproducible_and_leave_the_global_rng_alone() -> None:
    m = np.random.default_rng(0).random((3, 4))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, b = agg.interval_estimates(m, reps=300), agg.interval_estimates(m, reps=300)
    assert a == b and np.array_equal(np.random.get_state()[1], before)


def test_one_seed_has_no_interval_rather_than_a_zero_width_one() -> None:
    est = agg.interval_estimates(X[:1], reps=50)
    assert est["mean"][0] == pytest.approx(1.5) and np.isnan(est["mean"][1]) and np.isnan(est["mean"][2])


def test_shim_maps_the_legacy_call_and_leaves_the_new_one() -> None:
    seen = []

    def new_style(klass, old_arg_name, new_arg_name, mapping=None, stacklevel=2):
        seen.append((klass, old_arg_name, new_arg_name))
        return lambda f: f

    def old_style(old_arg_name, new_arg_name, mapping=None, stacklevel=2):
        return lambda f: f

    assert needs_shim(new_style) and not needs_shim(old_style)
    shim = _legacy_compatible(new_style)
    shim("type", "plot_type")
    shim(DeprecationWarning, "a", "b")
    assert seen == [(FutureWarning, "type", "plot_type"), (DeprecationWarning, "a", "b")]


def _tree(n_tasks: int = 6, seeds=(0, 1, 2), effects=None, rng: int = 0) -> pd.DataFrame:
    """A fabricated summary table: per task × seed a re-trained control and pruned arms whose top-1 is
    the control's × (0.95 + effect + noise)."""
    effects = effects or {("sls", "a0.3"): 0.0, ("sglp", "matched"): 0.02, ("depgraph", "matched"): -0.05,
                          ("last_k", "d6"): -0.03, ("sglp", "d6"): 0.01, ("random", "d6"): -0.04}
    r = np.random.default_rng(rng)
    rows = []
    for t in range(n_tasks):
        for s in seeds:
            base = 60 + 5 * t + r.normal(0, 1)
            rows.append(dict(task=f"t{t}", petl="adapter", seed=s, method="finetune", budget="none", top1=base + 1,
                             depth=12))
            rows.append(dict(task=f"t{t}", petl="adapter", seed=s, method="adapter_unpruned", budget="d12",
                             top1=base, depth=12))
            for (m, b), eff in effects.items():
                rows.append(dict(task=f"t{t}", petl="adapter", seed=s, method=m, budget=b, depth=6,
                                 top1=base * (0.95 + eff + r.normal(0, 0.01))))
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = np.nan
    df["collapsed"] = ""
    return df[COLUMNS]


def test_scores_are_retained_fractions_of_the_retrained_control() -> None:
    df = _tree(n_tasks=2, seeds=(0,))
    scores = agg.run_scores(df)
    assert set(scores["method"]) == {"sls", "sglp", "depgraph", "last_k", "random"}  # controls are not arms
    row = scores[(scores["method"] == "sls") & (scores["task"] == "t1")].iloc[0]
    ctrl = df[(df["method"] == "adapter_unpruned") & (df["task"] == "t1")]["top1"].iloc[0]
    sls = df[(df["method"] == "sls") & (df["task"] == "t1")]["top1"].iloc[0]
    assert row["score"] == pytest.approx(sls / ctrl)


def test_a_run_whose_control_collapsed_is_left_out_and_named() -> None:
    df = _tree(n_tasks=2, seeds=(0,))
    df.loc[(df["method"] == "adapter_unpruned") & (df["task"] == "t0"), "collapsed"] = "collapsed"
    left_out: list[str] = []
    scores = agg.run_scores(df, left_out)
    assert set(scores["task"]) == {"t1"} and left_out == ["t0/adapter/seed0"]


def test_aggregates_csv_agrees_with_rliable_from_the_summary(tmp_path: Path) -> None:
    """The stage's rows against rliable called directly on a matrix built here from summary.csv."""
    from petlprune.report import write_summary
    from petlprune.report.rliable_compat import ensure_arch

    df = _tree(n_tasks=3)
    write_summary(df, tmp_path / "summary.csv")
    proc = subprocess.run([sys.executable, "-m", "petlprune.cli", "aggregates", "--summary",
                           str(tmp_path / "summary.csv"), "--matched-alpha", "a0.3", "--out",
                           str(tmp_path / "aggregates.csv"), "--figures", str(tmp_path / "fig")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pd.read_csv(tmp_path / "aggregates.csv")
    assert list(out.columns) == agg.AGG_COLUMNS
    assert (tmp_path / "fig/profile_adapter.png").is_file()

    ensure_arch()
    from rliable import library, metrics

    summary = pd.read_csv(tmp_path / "summary.csv")
    ctrl = summary[summary["method"] == "adapter_unpruned"].set_index(["task", "seed"])["top1"]
    arm = summary[(summary["method"] == "sglp") & (summary["budget"] == "matched")].set_index(["task", "seed"])
    matrix = (arm["top1"] / ctrl.loc[arm.index]).unstack("task").to_numpy()  # (seeds, tasks)

    def func(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])

    np.random.seed(agg.SEED)  # rliable draws its bootstrap indices from numpy's global RNG
    point, ci = library.get_interval_estimates({"k": matrix}, func, reps=agg.REPS,
                                               random_state=np.random.RandomState(agg.SEED))
    rows = out[(out["method"] == "sglp") & (out["budget"] == "matched")].set_index("statistic")
    for i, stat in enumerate(("mean", "iqm")):
        assert rows.loc[stat, "value"] == pytest.approx(point["k"][i])
        assert rows.loc[stat, "lo"] == pytest.approx(ci["k"][0][i])
        assert rows.loc[stat, "hi"] == pytest.approx(ci["k"][1][i])
        assert rows.loc[stat, "n_tasks"] == 3 and rows.loc[stat, "n_seeds"] == 3
    assert 0.9 < rows.loc["mean", "value"] < 1.0  # a fraction, not percent
    # P(improvement) over last-k at the same depth, and between the matched arms (SLS at matched_alpha too)
    assert "poi_vs:last_k" in set(out.loc[(out["method"] == "sglp") & (out["budget"] == "d6"), "statistic"])
    assert {"poi_vs:sls", "poi_vs:depgraph"} <= set(rows.index)


def test_six_tasks_draw_a_critical_difference_diagram(tmp_path: Path) -> None:
    scores = agg.run_scores(_tree(n_tasks=6, seeds=(0, 1)))
    table, results = ranktest.friedman_table(scores, "a0.3")
    assert set(table["family"]) == {"matched", "d6"} and (table["n_tasks"] == 6).all()
    matched = table.set_index("family").loc["matched"]
    assert matched["omnibus"] == "friedman" and matched["posthoc"] == "nemenyi" and matched["p"] < 0.05
    assert "SGLP 1.00" in matched["mean_ranks"] and "DepGraph 3.00" in matched["mean_ranks"]  # best, worst everywhere
    fig = ranktest.cd_figure(results[("adapter", "matched")], "adapter, matched")
    fig.savefig(tmp_path / "cd.png", bbox_inches="tight")
    assert (tmp_path / "cd.png").stat().st_size > 1000


def test_friedman_stage_writes_the_table_and_the_diagrams(tmp_path: Path) -> None:
    from petlprune.report import write_summary

    write_summary(_tree(n_tasks=6, seeds=(0,)), tmp_path / "summary.csv")
    proc = subprocess.run([sys.executable, "-m", "petlprune.cli", "aggregates", "--summary",
                           str(tmp_path / "summary.csv"), "--matched-alpha", "a0.3", "--friedman",
                           str(tmp_path / "friedman.csv"), "--figures", str(tmp_path / "friedman")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "friedman.csv")
    assert set(table["family"]) == {"matched", "d6"}
    assert sorted(p.name for p in (tmp_path / "friedman").glob("cd_*.png")) == ["cd_adapter_d6.png",
                                                                                 "cd_adapter_matched.png"]


def test_fewer_than_five_tasks_give_no_friedman_row() -> None:
    scores = agg.run_scores(_tree(n_tasks=4, seeds=(0,)))
    table, results = ranktest.friedman_table(scores, "a0.3")
    assert table.empty and not results
    assert "at least 5 tasks" in ranktest.needs_more_tasks(4)


def _dry_run(config: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1", "--configfile",
                           str(ROOT / "workflow/config" / config), "--directory", str(ROOT), "-s",
                           str(ROOT / "Snakefile"), "--quiet", "rules"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_full_tier_has_the_friedman_step_and_the_default_tier_not() -> None:
    full = _dry_run("full.yaml")
    assert "friedman" in full and "aggregates" in full
    default = _dry_run("default.yaml")
    assert "aggregates" in default and "friedman" not in default


def test_leaderboard_section_opens_with_one_row_per_arm(tmp_path: Path) -> None:
    from petlprune.report import leaderboard

    df = _tree(n_tasks=3, seeds=(0, 1))
    df["speedup_b64"] = 2.0
    df["params_stored"] = 12_000
    scores = agg.run_scores(df)
    agg.aggregates_table(scores, "a0.3", reps=100, poi_reps=50).to_csv(tmp_path / "aggregates.csv", index=False)
    (tmp_path / "aggregates").mkdir()
    items = leaderboard.section(tmp_path, df, "a0.3")
    text = "\n".join(str(v) for k, v in items if k == "markdown")
    assert "### adapter" in text
    assert "need at least 5 tasks" in text and "One seed" not in text
    board = leaderboard.leaderboard(df, pd.read_csv(tmp_path / "aggregates.csv"), "a0.3")["adapter"]
    assert len(board) == 6 and board["speed-up"].eq("2.00×").all() and board["stored / task"].eq("12.0k").all()
    sglp = board.set_index("method").loc["SGLP (matched)"]
    assert sglp["top-1 retained, IQM [95%]"].count("[") == 1 and sglp["tasks × seeds"] == "3 × 2"
    assert sglp["P(better than last-k)"].startswith("1.00")  # over SLS at matched, 2 points better on all
    one = leaderboard.section(tmp_path, df[df["seed"] == 0], "a0.3")
    assert one[0][0] == "markdown" and "One seed" in one[0][1]
    assert leaderboard.MARKS["contradicted"] == "✗"
    assert "one seed" in leaderboard.seeds_sentence(1) and "3 seeds" in leaderboard.seeds_sentence(3)
    assert leaderboard.bracket(0.9712, 0.96, 0.98) == "0.971 [0.960, 0.980]"
