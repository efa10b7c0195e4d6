"""The report package, the ``summary`` and ``book`` stages and the notebooks, on a fabricated tree.

``fabricate_results`` writes a small but complete results tree in the format of CONTRIBUTING.md
(2 tasks, petl=adapter, methods sls, last_k, random (2 draws), block_influence, angular,
taylor_layer at ``matched`` plus a ``d4``/``d8`` sweep, SLS at ``a0.3``). Its numbers are fake but
well formed and chosen so that the expected tables can be computed by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from petlprune import report
from petlprune.report.book import BookError, prepare_notebook
from petlprune.report.load import ResultsError
from petlprune.report.rulegraph import parse_rulegraph, rulegraph_figure

ROOT = Path(__file__).resolve().parents[1]
N_BLOCKS, N_CLASSES, N_POINTS = 12, 3, 45
BLOCK_PARAMS, ADAPTER_PARAMS, EMBED_PARAMS = 111_000, 1_640, 12_000
SLS_DEPTH = {"alpha": 6, "beta": 8}  # the depth SLS "chooses" on each fabricated task
BASELINES = ("last_k", "random.0", "random.1", "block_influence", "angular", "taylor_layer")
FT_TOP1 = {"alpha": 0.80, "beta": 0.70}
N_TEST = 50  # test images per task; a model of top-1 q is right on the first round(q·50) (models nest)


def _predictions(out: Path, top1: float) -> None:
    labels = np.arange(N_TEST) % N_CLASSES
    right = np.arange(N_TEST) < round(top1 * N_TEST)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "predictions.npz", labels=labels, pred=np.where(right, labels, (labels + 1) % N_CLASSES),
             split=np.array("test"))


# --------------------------------------------------------------------------------------------
# the fabricated tree
# --------------------------------------------------------------------------------------------
def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _provenance(seed: int) -> dict:
    return {"versions": {"torch": "2.13.0", "timm": "1.0.31", "petlprune": "0.1.0"}, "git_commit": "abc123",
            "git_dirty": False, "device": "cpu", "seed": seed, "wall_seconds": 12.5, "peak_memory_mb": 321.0,
            "threads": 1, "argv": ["petlprune", "fabricated"]}


def _efficiency(depth: int, head: int, stored_plan: int) -> dict:
    forward = EMBED_PARAMS + depth * (BLOCK_PARAMS + ADAPTER_PARAMS) + head
    return {"params_forward": forward, "params_trainable": depth * ADAPTER_PARAMS + head,
            "params_stored": depth * ADAPTER_PARAMS + head + stored_plan,
            "stored_breakdown": {"petl": depth * ADAPTER_PARAMS, "head": head, "plan": stored_plan, "backbone": 0},
            "flops_per_image": 1000 * forward,
            "throughput": {"1": {"images_per_s": 1200.0 / (depth + 1), "latency_ms": (depth + 1) / 1.2},
                           "64": {"images_per_s": 24000.0 / (depth + 1), "latency_ms": (depth + 1) * 64 / 24}},
            "threads": 1, "device": "cpu", "peak_memory_mb": 100.0}


def _metrics(task: str, seed: int, method: str | None, budget: str | None, top1: float, depth: int,
             before: float | None = None) -> dict:
    out = {"task": task, "petl": "adapter", "seed": seed, "method": method, "budget": budget, "top1": top1,
           "n_eval": N_TEST, "eval_split": "test", "train_split": "train800val200", "depth": depth,
           "history": [{"epoch": 0, "loss": 1.0, "lr": 1e-3, "train_top1": 0.5, "seconds": 1.0}],
           "provenance": _provenance(seed)}
    if method is not None:
        out["top1_before_retrain"] = before
    return out


def _sls_scores(depth: int) -> list[float | None]:
    """Silhouettes whose alpha=0.3 walk stops right below block ``depth`` (1-based) — early stop:
    the blocks below the stopping point were never embedded (null)."""
    sc_n = 0.5
    scores: list[float | None] = [None] * N_BLOCKS
    for b in range(depth - 1, N_BLOCKS):  # 0-based kept blocks depth-1 .. N-1
        scores[b] = 0.3 * sc_n + 0.01 + (sc_n - 0.3 * sc_n - 0.01) * (b - depth + 1) / (N_BLOCKS - depth)
    scores[depth - 2] = 0.3 * sc_n - 0.05  # the first block below the threshold: stop
    return scores


def fabricate_results(root: Path, tasks=("alpha", "beta"), seeds=(0,)) -> Path:
    """Write a complete fake results tree under ``root`` and return it."""
    rng = np.random.default_rng(0)
    for task in tasks:
        meta = {"name": task, "classes": [f"c{i}" for i in range(N_CLASSES)], "num_classes": N_CLASSES,
                "counts": {"train800": 80, "val200": 20, "train800val200": 100, "test": 50},
                "sha256": {"test.txt": "0" * 64}, "image_size": 32, "seed": 0, "kind": "embedded",
                "description": f"fabricated task {task}"}
        _write(root / "data" / task / "meta.json", meta)
        head = 96 * N_CLASSES + N_CLASSES
        for seed in seeds:
            run = root / "runs" / task / "adapter" / f"seed{seed}"
            ft = FT_TOP1[task] + 0.01 * seed
            _write(run / "finetune" / "metrics.json", _metrics(task, seed, None, None, ft, N_BLOCKS))
            _predictions(run / "finetune", ft)
            _write(run / "finetune" / "efficiency.json", _efficiency(N_BLOCKS, head, 0))
            labels = np.repeat(np.arange(N_CLASSES), N_POINTS // N_CLASSES)
            np.savez(run / "features.npz", cls=rng.normal(size=(N_BLOCKS, N_POINTS, 8)).astype(np.float32),
                     labels=labels)
            depth = SLS_DEPTH[task]
            sls = _sls_scores(depth)
            _write(run / "score" / "sls.json", {
                "method": "sls", "values": sls, "seconds": 3.0,
                "extra": {"silhouette_raw": [0.01 * b for b in range(N_BLOCKS)], "alpha": 0.3, "note": "x"}})
            embedded = np.arange(depth - 2, N_BLOCKS)
            centres = rng.normal(size=(N_CLASSES, 2))
            emb = np.stack([centres[labels] * (1 + b) + rng.normal(size=(N_POINTS, 2)) for b in embedded])
            np.savez(run / "score" / "sls.npz", embeddings=emb, embedded_blocks=embedded)
            results = [("sls", "a0.3", depth, False)]
            for key in BASELINES:
                results += [(key, "matched", depth, key.startswith("random")), (key, "d4", 4, False),
                            (key, "d8", 8, False)]
            for key, budget, d, shuffled in results:
                if key != "sls":
                    _write(run / "score" / f"{key}.json", {"method": key.split(".")[0], "seconds": 0.5,
                                                             "values": rng.random(N_BLOCKS).tolist(), "extra": {}})
                kept = sorted(rng.choice(N_BLOCKS, d, replace=False).tolist()) if shuffled else list(range(d))
                _write(run / "plan" / f"{key}-{budget}.json", {
                    "method": key.split(".")[0], "budget": budget, "depth": d, "kept_blocks": kept,
                    "sharing": None, "masks": None, "scores": None, "decision_seconds": 2.0 + d / 10, "notes": ""})
                top1 = ft - 0.01 * (N_BLOCKS - d) - (0.02 if key != "sls" else 0.0)
                out = run / "pruned" / f"{key}-{budget}"
                _write(out / "metrics.json", _metrics(task, seed, key, budget, top1, d, before=top1 / 2))
                _predictions(out, top1)
                _write(out / "efficiency.json", _efficiency(d, head, 1 if not shuffled else d))
    (root / "data" / "gallery.png").write_bytes(_tiny_png())
    return root


def _tiny_png() -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().imshow(np.eye(4))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return fabricate_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def df(tree) -> pd.DataFrame:
    return report.load_results(tree)


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------
def test_split_key_and_result_dir():
    assert report.split_key("random.1") == ("random", 1)
    assert report.split_key("block_influence") == ("block_influence", None)
    assert report.split_result_dir("random.0-matched") == ("random.0", "matched")
    assert report.split_result_dir("sls-a0.3") == ("sls", "a0.3")
    with pytest.raises(ResultsError, match="method"):
        report.split_result_dir("nohyphen")


def test_load_results_one_row_per_result(df):
    per_run = 1 + 1 + 3 * len(BASELINES)  # finetune, sls, 3 budgets per baseline key
    assert len(df) == 2 * per_run
    assert list(df.columns[: len(report.COLUMNS)]) == report.COLUMNS
    assert not df.duplicated(["task", "petl", "seed", "key", "budget"]).any()
    random = df[df.method == "random"]
    assert sorted(random.draw.unique()) == [0, 1] and set(random.key) == {"random.0", "random.1"}
    assert df.loc[df.method == "sls", "draw"].isna().all()


def test_load_results_values_and_derived_columns(df):
    row = df[(df.task == "alpha") & (df.key == "last_k") & (df.budget == "d4")].iloc[0]
    ft = df[(df.task == "alpha") & (df.method == "finetune")].iloc[0]
    assert row.top1 == pytest.approx(100 * (0.80 - 0.08 - 0.02))  # fractions became percent
    assert row.top1_before_retrain == pytest.approx(row.top1 / 2)
    assert row.top1_drop == pytest.approx(ft.top1 - row.top1)
    assert row.depth == 4 and row.kept_blocks == "0 1 2 3"
    assert row.speedup_b1 == pytest.approx((N_BLOCKS + 1) / 5)
    assert row.speedup_b64 == pytest.approx((N_BLOCKS + 1) / 5)
    assert row.decision_seconds == pytest.approx(2.4)
    assert row.params_stored == 4 * ADAPTER_PARAMS + 96 * 3 + 3 + 1
    assert row.ppt == pytest.approx(row.top1 * math.exp(-math.log10(row.params_stored / 1e7 + 1)))
    assert ft.speedup_b1 == pytest.approx(1.0) and math.isnan(ft.decision_seconds)
    sls = df[(df.task == "beta") & (df.method == "sls")].iloc[0]
    assert sls.budget == "a0.3" and sls.depth == SLS_DEPTH["beta"]


def test_ppt_known_values():
    # P = 0 stores nothing: PPT = accuracy; P = 9e7: log10(10) = 1 → acc / e
    assert report.ppt(80.0, 0.0) == pytest.approx(80.0)
    assert report.ppt(80.0, 9e7) == pytest.approx(80.0 / math.e)


def test_speedup_empty_when_measured_differently(tmp_path):
    root = fabricate_results(tmp_path / "r", tasks=("alpha",))
    path = root / "runs/alpha/adapter/seed0/pruned/last_k-d4/efficiency.json"
    eff = json.loads(path.read_text())
    eff["threads"] = 2
    path.write_text(json.dumps(eff))
    df = report.load_results(root)
    row = df[(df.key == "last_k") & (df.budget == "d4")].iloc[0]
    assert math.isnan(row.speedup_b1) and not math.isnan(row.throughput_b1)


def test_load_results_names_the_bad_file(tmp_path):
    root = fabricate_results(tmp_path / "r", tasks=("alpha",))
    path = root / "runs/alpha/adapter/seed0/pruned/angular-d8/metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["top1"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(ResultsError, match=r"angular-d8/metrics.json: missing key 'top1'"):
        report.load_results(root)
    metrics["top1"], metrics["seed"] = 0.5, 3
    path.write_text(json.dumps(metrics))
    with pytest.raises(ResultsError, match=r"angular-d8/metrics.json: seed=3"):
        report.load_results(root)
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="angular-d8/metrics.json: not valid JSON"):
        report.load_results(root)


def test_load_results_plan_depth_must_agree(tmp_path):
    root = fabricate_results(tmp_path / "r", tasks=("alpha",))
    path = root / "runs/alpha/adapter/seed0/plan/last_k-d8.json"
    plan = json.loads(path.read_text())
    plan["depth"] = 7
    path.write_text(json.dumps(plan))
    with pytest.raises(ResultsError, match="last_k-d8/metrics.json: depth=8 but its plan says depth=7"):
        report.load_results(root)
    plan["kept_blocks"] = [3, 1]
    path.write_text(json.dumps(plan))
    with pytest.raises(ResultsError, match="last_k-d8.json: 'kept_blocks' must be ascending"):
        report.load_results(root)


def test_absent_results_are_skipped_not_errors(tmp_path):
    root = fabricate_results(tmp_path / "r", tasks=("alpha",))
    run = root / "runs/alpha/adapter/seed0"
    (run / "pruned/angular-d8/metrics.json").unlink()  # a job still running
    shutil.rmtree(run / "pruned/taylor_layer-d4")
    with pytest.warns(UserWarning, match="angular-d8: no metrics.json"):
        df = report.load_results(root)
    assert not ((df.key == "angular") & (df.budget == "d8")).any()
    assert len(df) == 1 + 1 + 3 * len(BASELINES) - 2


def test_accuracy_must_be_a_fraction(tmp_path):
    root = fabricate_results(tmp_path / "r", tasks=("alpha",))
    path = root / "runs/alpha/adapter/seed0/pruned/angular-d8/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["top1"] = 72.5  # percent where a fraction is expected
    path.write_text(json.dumps(metrics))
    with pytest.raises(ResultsError, match=r"angular-d8/metrics.json: top1=72.5 is not a fraction"):
        report.load_results(root)


def test_summary_csv_round_trip(df, tmp_path):
    out = tmp_path / "summary.csv"
    report.write_summary(df, out)
    back = report.read_summary(out)
    pd.testing.assert_frame_equal(back[report.COLUMNS], df[report.COLUMNS], check_dtype=False)


def test_summary_stage(tree, tmp_path, capsys):
    from petlprune.stages import summary

    parser = argparse.ArgumentParser()
    summary.add_arguments(parser)
    out = tmp_path / "s" / "summary.csv"
    summary.run(parser.parse_args(["--results", str(tree), "--out", str(out)]))
    back = report.read_summary(out)
    assert len(back) == 2 * (2 + 3 * len(BASELINES))
    assert str(out) in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no runs directory"):
        summary.run(parser.parse_args(["--results", str(tmp_path / "none"), "--out", str(out)]))


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def test_aggregate_pools_seeds_and_draws(tmp_path):
    df = report.load_results(fabricate_results(tmp_path / "r", tasks=("alpha",), seeds=(0, 1)))
    agg = report.aggregate(df)
    rnd = agg[(agg.method == "random") & (agg.budget == "d4")].iloc[0]
    assert rnd.n == 4 and rnd.n_seeds == 2  # 2 seeds × 2 draws
    rows = df[(df.method == "random") & (df.budget == "d4")]
    assert rnd.top1_mean == pytest.approx(rows.top1.mean())
    assert rnd.top1_std == pytest.approx(rows.top1.std(ddof=1))
    # seed 1's fine-tune is 1 point better: std over the two seeds of the unpruned model
    ft = agg[agg.method == "finetune"].iloc[0]
    assert ft.top1_std == pytest.approx(np.std([80.0, 81.0], ddof=1))
    assert list(agg.method[:2]) == ["finetune", "sls"]  # reading order: reference, SLS, baselines


def test_a_task_interval_over_seeds_includes_test_image_sampling(tmp_path):
    """Two seeds: the per-task interval is stats.seed_image over each run's saved predictions (seeds and
    images), not Student t over the two top-1 values (which knows nothing of the 50 test images)."""
    df = report.load_results(fabricate_results(tmp_path / "r", tasks=("alpha",), seeds=(0, 1)))
    agg = report.aggregate(df)
    ft_rows = df[df.method == "finetune"].sort_values("seed")
    per_seed = []
    for path in ft_rows.predictions_path:
        with np.load(path) as npz:
            per_seed.append(100.0 * (npz["pred"] == npz["labels"]))
    ft = agg[agg.method == "finetune"].iloc[0]
    assert (ft.top1_lo, ft.top1_hi) == pytest.approx(report.stats.seed_image(per_seed).interval())
    t_lo, t_hi = report.stats.t_interval(ft_rows.top1.tolist())[1:]
    assert ft.top1_lo < ft.top1_mean < ft.top1_hi and (ft.top1_lo, ft.top1_hi) != pytest.approx((t_lo, t_hi))


def test_mean_std_format():
    assert report.mean_std(71.26, 0.44) == "71.3 ± 0.4"
    assert report.mean_std(71.26, float("nan")) == "71.3"
    assert report.mean_std(float("nan")) == "—"


def test_comparison_table_and_ranks(df):
    agg = report.aggregate(df)
    table = report.comparison_table(agg)
    assert list(table.columns) == ["method", "budget", "alpha", "beta", "mean"]
    sls = table[table.method == "SLS"].iloc[0]
    lo, hi = report.stats.wilson(37, 50)  # one run: its Wilson interval over the 50 test images
    assert sls.alpha == f"74.0 [{lo:.1f}, {hi:.1f}]" == "74.0 [60.4, 84.1]" and sls["mean"] == "70.0"
    assert sls.beta.startswith("66.0 ")
    rnd = table[(table.method == "random") & (table.budget == "d4")].iloc[0]
    assert rnd.alpha == "70.0 [70.0, 70.0]"  # the two draws agree: a zero-width t interval, same format
    ranks = report.rank_table(agg[agg.budget.isin(["none", "a0.3", "matched"])])
    assert ranks.loc[ranks.method == "unpruned", "alpha"].item() == 1
    assert ranks.loc[ranks.method == "SLS", "alpha"].item() == 2
    # the five baselines tie at matched depth: they share rank 3
    assert set(ranks.loc[~ranks.method.isin(["SLS", "unpruned"]), "alpha"]) == {3}
    assert ranks.loc[ranks.method == "SLS", "mean rank"].item() == 2


def test_comparison_table_mean_needs_every_task(df):
    agg = report.aggregate(df[~((df.task == "beta") & (df.key == "angular"))])
    table = report.comparison_table(agg)
    ang = table[(table.method == "angular distance") & (table.budget == "d4")].iloc[0]
    assert ang.beta == "—" and ang["mean"] == "—"


def test_pareto_mask_known_answer():
    #     x  y : (1,1) is dominated by (2,2); (3,0) and (0,3) are extreme; (2,2) on the front
    x, y = [1, 2, 3, 0, np.nan], [1, 2, 0, 3, 5]
    assert report.pareto_mask(x, y).tolist() == [False, True, True, True, False]
    # lower x better: (0,3) is best on both axes and dominates every other point
    assert report.pareto_mask(x, y, x_higher=False).tolist() == [False, False, False, True, False]
    assert report.pareto_mask([1, 1], [2, 2]).tolist() == [True, True]  # ties do not dominate


def test_result_table_strings(df):
    agg = report.aggregate(df[df.task == "alpha"])
    table = report.result_table(agg)
    assert table.columns[:3].tolist() == ["method", "budget", "n"]
    md = report.to_markdown(table)
    # a number and its spread or interval are joined by non-breaking spaces: the page never splits them
    assert md.splitlines()[0].startswith("| method") and "\u00a0±\u00a0" in md and " ± " not in md
    assert re.search(r"\d\u00a0\[\d+\.\d,\u00a0\d+\.\d\]", md) and not re.search(r"\d \[\d", md)


def test_one_interval_format_everywhere():
    assert report.fmt_interval(76.9, 74.3, 79.5) == "76.9 [74.3, 79.5]"  # symmetric-looking: still both ends
    assert report.fmt_interval(98.0, 93.0, 99.4) == "98.0 [93.0, 99.4]"
    assert report.fmt_interval(3.2, 1.0, 5.4, signed=True) == "+3.2 [1.0, 5.4]"
    assert report.fmt_interval(5.0, float("nan"), 1) == "5.0" and report.fmt_interval(float("nan"), 0, 1) == "—"


def test_result_tables_split_with_units_in_the_header(df):
    agg = report.aggregate(df[df.task == "alpha"])
    tables = dict(report.result_tables(agg))
    assert list(tables) == ["Accuracy", "Size", "Speed"]
    acc = tables["Accuracy"]
    assert "top-1 (%) [95% interval]" in acc and all("±" not in c for c in acc["top-1 (%) [95% interval]"])
    for table in tables.values():  # each is narrow: the row labels and a few numbers
        assert table.columns[:3].tolist() == ["method", "budget", "n"] and table.shape[1] <= 9
    size = tables["Size"]
    stored = next(c for c in size if c.startswith("params stored"))
    unit = stored[stored.index("(") + 1:-1]
    scale = {"G": 1e9, "M": 1e6, "k": 1e3, "count": 1}[unit]
    # the unit is in the header only, and the cells are the numbers in that unit
    for cell, value in zip(size[stored], agg["params_stored_mean"], strict=True):
        assert cell[-1].isdigit() and float(cell.replace(",", "")) == pytest.approx(value / scale, abs=0.01)


def test_to_markdown_splits_per_petl_with_the_caption_once(df):
    two = pd.concat([df, df.assign(petl="lora")])
    table = report.comparison_table(report.aggregate(two))
    assert "petl" in table
    md = report.to_markdown(table)
    heads = [line for line in md.splitlines() if line.startswith("**")]
    assert heads == [f"**PETL {p} · top-1 (%), mean [95% interval] per task**" for p in table.petl.unique()]
    assert all(not line.startswith("| petl") for line in md.splitlines())
    assert md.count("| method") == 2
    assert report.to_markdown(table, split=False).count("| petl") == 1


# --------------------------------------------------------------------------------------------
# figures and sections
# --------------------------------------------------------------------------------------------
def test_accuracy_figures_draw_every_point_and_the_front(df):
    agg = report.aggregate(df)
    fig = report.accuracy_figure(agg, "throughput_b64")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["alpha", "beta"]
    n_points = len(agg[agg.task == "alpha"])
    # one errorbar container per point, plus the dashed Pareto line
    assert len(axes[0].containers) == n_points
    assert any(line.get_linestyle() == "--" for line in axes[0].get_lines())
    assert report.accuracy_figure(agg, "params_stored").axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="one task at a time"):
        report.accuracy_vs(agg, "throughput_b1", fig.axes[0])


def test_depth_bars(df):
    agg = report.aggregate(df)
    ax = report.depth_bars(agg).axes[0]
    heights = [p.get_height() for p in ax.patches]
    n_rows = len(agg[(agg.method != "finetune")][["method", "budget"]].drop_duplicates())
    assert len(heights) == 2 * n_rows and SLS_DEPTH["alpha"] in heights and SLS_DEPTH["beta"] in heights


def test_sls_section(tree):
    run = report.RunDir.locate(tree, "alpha", "adapter", 0)
    section = dict(report.method_section(run, "sls"))
    grid = section["t-SNE map of each block (sls)"]
    titles = [ax.get_title() for ax in grid.axes if ax.get_visible()]
    depth = SLS_DEPTH["alpha"]
    assert len(titles) == N_BLOCKS - depth + 2  # early stop: one block below the kept ones
    # blocks 1..depth are kept; the deeper, better-separated ones are what SLS removes
    assert titles[0].startswith(f"block {depth - 1} · kept\n")
    assert sum(" · removed" in t for t in titles) == N_BLOCKS - depth and " · removed" in titles[-1]
    assert sum(" · kept" in t for t in titles) == 2
    # the kept maps are framed (thick spines), the removed ones are not
    shown = [ax for ax in grid.axes if ax.get_visible()]
    assert [ax.spines["left"].get_linewidth() > 2 for ax in shown] == [" · kept" in t for t in titles]
    curve = section["Silhouette per block and the threshold (sls)"]
    ax = curve.axes[0]
    hlines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert hlines[0].get_ydata()[0] == pytest.approx(0.3 * 0.5)  # alpha · SC_N
    vlines = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert vlines[0].get_xdata()[0] == pytest.approx(depth + 0.5)
    assert len(curve.axes) == 2 and curve.axes[1].get_title() == "silhouette_raw"  # the ablation panel


def test_sls_sidecar_stored_for_every_block(tmp_path):
    """The other sidecar layout: maps for all N blocks (NaN where skipped) and a boolean mask."""
    root = fabricate_results(tmp_path / "r", tasks=("alpha",))
    run = report.RunDir.locate(root, "alpha", "adapter", 0)
    sidecar = run.sidecar("sls")
    full = np.full((N_BLOCKS, N_POINTS, 2), np.nan)
    full[sidecar["embedded_blocks"]] = sidecar["embeddings"]
    mask = np.zeros(N_BLOCKS, dtype=bool)
    mask[sidecar["embedded_blocks"]] = True
    np.savez(run.root / "score" / "sls.npz", embeddings=full, embedded_blocks=mask)
    grid = dict(report.method_section(run, "sls"))["t-SNE map of each block (sls)"]
    assert len([ax for ax in grid.axes if ax.get_visible()]) == mask.sum()
    np.savez(run.root / "score" / "sls.npz", embeddings=full[:3], embedded_blocks=mask)
    with pytest.raises(ResultsError, match="3 embeddings for embedded blocks"):
        report.method_section(run, "sls")


def test_default_section_for_baselines(tree):
    run = report.RunDir.locate(tree, "alpha", "adapter", 0)
    section = dict(report.method_section(run, "random"))
    assert set(section) == {"Scores", "Blocks kept by each plan"}
    kept = section["Blocks kept by each plan"].axes[0]
    assert len(kept.get_yticklabels()) == 6  # 2 draws × 3 budgets
    img = kept.get_images()[0].get_array()
    assert img.shape == (6, N_BLOCKS) and sorted(img.sum(axis=1)) == sorted([SLS_DEPTH["alpha"]] * 2 + [4, 4, 8, 8])
    assert report.method_section(run, "not_run") == []


def test_sections_dict_is_the_extension_point(tree, monkeypatch):
    run = report.RunDir.locate(tree, "alpha", "adapter", 0)
    monkeypatch.setitem(report.SECTIONS, "angular", lambda r, m: [("custom", None)])
    assert report.method_section(run, "angular") == [("custom", None)]


def test_rulegraph_parse_and_draw(tmp_path):
    dot = """digraph snakemake_dag {
    graph[bgcolor=white, margin=0];
    node[shape=box, style=rounded, fontname=sans,                 fontsize=10, penwidth=2];
    edge[penwidth=2, color=grey];
\t0[label = "all", color = "0.00 0.6 0.85", style="rounded"];
\t1[label = "book", color = "0.10 0.6 0.85", style="rounded"];
\t2[label = "finetune", color = "0.20 0.6 0.85", style="rounded"];
\t1 -> 0
\t2 -> 1
\t2 -> 0
}"""
    graph = parse_rulegraph(dot)
    assert sorted(graph.edges) == [("book", "all"), ("finetune", "all"), ("finetune", "book")]
    fig = rulegraph_figure(graph)
    assert {t.get_text() for t in fig.axes[0].texts} == {"all", "book", "finetune"}
    with pytest.raises(ValueError, match="rg.dot:2: not Snakemake"):
        parse_rulegraph("digraph x {\nfoo bar\n}", "rg.dot")
    with pytest.raises(ValueError, match="undeclared"):
        parse_rulegraph('0[label = "a"];\n0 -> 7', "rg.dot")


# --------------------------------------------------------------------------------------------
# notebooks and the book
# --------------------------------------------------------------------------------------------
NOTEBOOKS = {"result": ["results_dir", "task", "method", "petl", "seed"],
             "dataset": ["results_dir", "task", "petl"], "summary": ["results_dir", "summary_csv", "matched_alpha"],
             "claims": ["results_dir", "matched_alpha", "tier", "tiers_json"]}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_templates_are_clean(name):
    """In git: a tagged parameters cell, no outputs, no execution counts."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    names = re.findall(r"^(\w+)\s*(?::[^=]+)?=", params[0].source, flags=re.M)
    assert names == NOTEBOOKS[name]
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _papermill(name: str, out: Path, **params) -> Path:
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=params,
                               kernel_name="python3", progress_bar=False, cwd=str(out.parent))
    return out


@pytest.fixture(scope="module")
def executed(tree, tmp_path_factory) -> Path:
    """Run the notebooks over the fabricated tree as the DAG does: results/notebooks/..."""
    report.write_summary(report.load_results(tree), tree / "summary.csv")
    nbs = tree / "notebooks"
    (nbs / "alpha").mkdir(parents=True, exist_ok=True)
    _papermill("summary", nbs / "summary.ipynb", results_dir=str(tree))
    _papermill("claims", nbs / "claims.ipynb", results_dir=str(tree), tier="default",
               tiers_json=json.dumps({"full": {"methods": {"depgraph": {}}, "budgets": {"depgraph": ["matched"]}}}))
    _papermill("dataset", nbs / "alpha.ipynb", results_dir=str(tree), task="alpha")
    for method in ("sls", "random"):
        _papermill("result", nbs / "alpha" / f"{method}.ipynb", results_dir=str(tree), task="alpha", method=method)
    return nbs


def _outputs(path: Path) -> tuple[list[str], list[str], dict]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    md, images, glued = [], [], {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/markdown" in data:
                md.append(data["text/markdown"])
            if "image/png" in data:
                images.append(data["image/png"])
            if "scrapbook" in out.get("metadata", {}):
                key = out["metadata"]["scrapbook"]["name"]
                glued[key] = next(v for k, v in data.items() if k.endswith("text/plain"))
    return md, images, glued


@pytest.mark.slow
def test_notebooks_execute_on_the_tree(executed):
    md, images, glued = _outputs(executed / "summary.ipynb")
    assert any("| method" in m for m in md) and len(images) >= 3
    assert glued["n_tasks"] == "'2'" and glued["sls_depth"] == "'7.0'"  # mean of 6 and 8
    # 6 points below the unpruned model on alpha (3 of 50 images), 4 on beta (2 of 50): paired, a loss
    assert glued["sls_vs_ref"].startswith("'5.0 points below the unpruned model (95% interval")
    assert glued["sls_vs_ref"].endswith("a loss)'") and glued["n_collapsed"] == "'0'"
    md, images, glued = _outputs(executed / "claims.ipynb")
    assert glued["verdict_SLS_1"] == "'not run in this tier'" and "run in the full tier" in "".join(md)
    # SLS beats every importance selector by 2 points (1 image of 50 per task): inconclusive
    assert glued["verdict_SLS_2"] == "'inconclusive'"
    md, images, _ = _outputs(executed / "alpha.ipynb")
    assert any("SLS" in m for m in md) and len(images) == 3
    md, images, _ = _outputs(executed / "alpha" / "sls.ipynb")
    assert any("a0.3" in m for m in md) and len(images) == 3  # t-SNE grid, silhouette, kept blocks
    md, images, _ = _outputs(executed / "alpha" / "random.ipynb")
    assert any("random.1" in m for m in md) and len(images) == 2


def test_prepare_notebook_titles_and_refuses_errors(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Template title\n\ntext"),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 2", metadata={"tags": ["injected-parameters"]}),
    ])
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    prepare_notebook(src, tmp_path / "out" / "o.ipynb", "alpha: SLS")
    out = nbformat.read(tmp_path / "out" / "o.ipynb", as_version=4)
    assert out.cells[0].source == "# alpha: SLS\n\ntext"
    assert "remove-cell" in out.cells[1].metadata.tags and "hide-cell" in out.cells[2].metadata.tags
    nb.cells[2].outputs = [nbformat.v4.new_output("error", ename="E", evalue="boom", traceback=[])]
    nbformat.write(nb, src)
    with pytest.raises(BookError, match="in.ipynb: cell 2 was executed with an error"):
        prepare_notebook(src, tmp_path / "o2.ipynb", None)


def test_assemble_book_refuses_an_incomplete_tree(tree, tmp_path):
    from petlprune.report.book import assemble_book

    book = tmp_path / "book"
    book.mkdir()
    with pytest.raises(BookError, match="no _toc.yml"):
        assemble_book(tree, book)
    (book / "_toc.yml").write_text("root: intro\n")
    with pytest.raises(BookError, match="summary.ipynb: the summary notebook is missing"):
        assemble_book(tmp_path / "empty", book)
    assert not (book / "generated").exists() and list(book.iterdir()) == [book / "_toc.yml"]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.remote: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        ref = attrs.get("src") if tag in ("img", "script") else attrs.get("href") if tag == "link" else None
        if ref and re.match(r"^(https?:)?//", ref):
            self.remote.append(ref)


@pytest.mark.slow
def test_book_builds_offline(executed, tree, tmp_path):
    book = tmp_path / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build", "generated"))
    (tree / "rulegraph.dot").write_text(
        'digraph snakemake_dag {\n\t0[label = "all", color = "0 0 0", style="rounded"];\n'
        '\t1[label = "summary", color = "0 0 0", style="rounded"];\n\t1 -> 0\n}\n')
    from petlprune.stages import book as book_stage

    parser = argparse.ArgumentParser()
    book_stage.add_arguments(parser)
    config = tmp_path / "default.yaml"
    config.write_text("seeds: [0]\n")
    book_stage.run(parser.parse_args(["--results", str(tree), "--book", str(book), "--config", str(config),
                                      "--config-json", '{"seeds": [0], "results": "results"}']))
    generated = book / "generated"
    assert (generated / "summary.ipynb").is_file() and (generated / "tasks" / "alpha.ipynb").is_file()
    assert (generated / "results" / "alpha" / "01-sls.ipynb").is_file() and (generated / "rulegraph.png").is_file()
    proc = subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), "build", str(book), "-W", "-n",
                           "--keep-going"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = book / "_build" / "html"
    assert (html / "index.html").is_file()
    pages = list(html.rglob("*.html"))
    assert any(p.name == "01-sls.html" for p in pages) and any(p.name == "summary.html" for p in pages)
    for page in pages:
        refs = _Refs()
        refs.feed(page.read_text())
        assert refs.remote == [], f"{page}: remote assets {refs.remote}"
        for src in refs.images:
            if not src.startswith("data:"):
                assert (page.parent / src).resolve().is_file(), f"{page}: broken image {src}"
    from petlprune.report.htmlcheck import book_problems

    assert book_problems(html) == {}  # no warning, traceback, error or stderr in any cell output
    intro = (html / "intro.html").read_text()
    assert "keeps on average\n<span class=\"pasted-text\">7.0</span>" in intro  # glued from the summary notebook
    repro = (html / "reproducibility.html").read_text()
    assert "Configuration as run" in repro and "abc123" in repro and "rulegraph.png" in repro
