"""benchmarks/select_on_val.py: searches on train800 -> val200 (never test), on the smoke tier."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _valsearch import load_tier, versus_first  # noqa: E402
from select_on_val import main, pear_variants, sglp_variants  # noqa: E402

SMOKE = ROOT / "workflow/config/smoke.yaml"


def test_pear_rows_are_every_declared_share_kc_pair_and_adapter_drop():
    names = [v.name for v in pear_variants(load_tier(SMOKE))]
    # share {most_important, nearest} x kc {init, distill, none, scale}, share none with kc distill;
    # share none with kc none is adapter_drop itself, kc init/scale need a serving adapter
    assert len(names) == 10 and names[-1] == "adapter_drop"
    assert {"pear_nearest_scale", "pear_most_important_scale", "pear_none_distill"} <= set(names)
    assert not {"pear_none_none", "pear_none_init", "pear_none_scale"} & set(names)
    sglp = sglp_variants(load_tier(SMOKE), ["official", "finetuned"])
    assert [v.options["context"] for v in sglp] == ["official", "finetuned"]
    assert all(v.options["gradnorm_batches"] == 1 and "pick" not in v.options for v in sglp)  # the tier's options
    assert [v.label for v in sglp] == ["official (pick largest_g)", "finetuned (pick lowest_loss)"]


@pytest.mark.parametrize("argv, culprit", [
    (["prune"], "invalid choice: 'prune'"),  # unknown mode: argparse's usage error
    (["pear", "--tasks", "imagenet"], "--tasks imagenet: not a task of"),
    (["pear", "--results", "/nonexistent/results"], "--results /nonexistent/results: no such results tree"),
    (["pear", "--config", "nope.yaml"], "--config nope.yaml: no such file"),
    (["finetune-lr", "--lr", "1e-3", "--petl", "foo"], "--petl foo: unknown PETL"),
    (["finetune-lr", "--lr", "1e-3", "3e"], "'3e' is not a number"),
    (["sglp-context", "--budget", "r0.5"], "--budget r0.5: sglp takes depth budgets"),
    (["backbone", "--candidates", "big=/nonexistent/vit.pt"], "give NAME=PATH of an existing backbone file"),
])
def test_bad_input_fails_naming_the_culprit(argv, culprit, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main([*argv, "--work", str(tmp_path / "work")])
    assert culprit in str(err.value) + capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing ran


def test_rows_after_the_first_get_their_paired_difference_from_it(tmp_path):
    labels = np.array([0, 1, 1, 0, 2, 2, 1, 0])

    def row(name, preds):  # one cell per (task, seed), each a metrics file with predictions beside it
        cells = []
        for i, pred in enumerate(preds):
            folder = tmp_path / name / str(i)
            folder.mkdir(parents=True)
            np.savez(folder / "predictions.npz", labels=labels, pred=np.array(pred), split="val200")
            cells.append({"metrics": str(folder / "metrics.json")})
        return {"name": name, "cells": cells}

    rows = [row("tier", [labels, labels]), row("same", [labels, labels]),
            row("worse", [[0, 1, 1, 0, 2, 2, 0, 1], [0, 1, 1, 0, 2, 2, 1, 1]])]  # 2 of 8, then 1 of 8 wrong
    versus_first(rows)
    assert "versus_first" not in rows[0]
    assert rows[1]["versus_first"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    worse = rows[2]["versus_first"]
    assert worse["diff"] == pytest.approx(-100 * (2 / 8 + 1 / 8) / 2) and worse["lo"] < worse["diff"] <= worse["hi"] <= 0


def test_a_results_tree_without_a_task_names_the_missing_file(tmp_path):
    with pytest.raises(SystemExit, match=r"data/textures/meta.json is missing"):
        main(["pear", "--config", str(SMOKE), "--results", str(tmp_path), "--tasks", "textures"])


@pytest.mark.slow
def test_one_search_of_each_mode_reads_only_train800_val200_results(tmp_path, capsys):
    work = tmp_path / "work"
    common = ["--config", str(SMOKE), "--work", str(work), "--tasks", "digits", "--seeds", "0"]
    # 1. no --results: the data and backbone come from the DAG's own targets under WORK/dag
    assert main(["finetune-lr", *common, "--petl", "adapter", "--lr", "3e-3", "1e-2"]) == 0
    results = work / "dag" / "results-smoke"
    assert (results / "data/digits/meta.json").is_file() and (results / "backbone/smoke-vit.pt").is_file()
    lr = json.loads((work / "finetune-lr-adapter.json").read_text())
    assert [r["name"] for r in lr["rows"]] == ["lr 3e-3", "lr 1e-2"]
    assert [r["lr"] for r in lr["rows"]] == [0.003, 0.01]
    for row in lr["rows"]:
        (cell,) = row["cells"]
        assert json.loads(Path(cell["metrics"]).read_text())["train"]["lr"] == row["lr"]

    # 2. an existing results tree; lr 3e-3 is the smoke tier's own, so its fine-tune is reused
    capsys.readouterr()
    assert main(["sglp-context", *common, "--results", str(results), "--budget", "d3"]) == 0
    out = capsys.readouterr().out
    assert "finetune adapter digits seed0 (tier recipe, lr 0.003) ... done before, skipped" in out
    assert "[2/8] features adapter digits seed0 (train800) ..." in out
    sg = json.loads((work / "sglp-context-adapter-d3.json").read_text())
    assert [r["name"] for r in sg["rows"]] == ["sglp_official", "sglp_finetuned"]
    assert all(len(c["kept_blocks"]) == 3 for r in sg["rows"] for c in r["cells"])
    (features,) = work.glob("runs/digits/adapter/seed0/*/features-train800.npz")
    n_train800 = len((results / "data/digits/train800.txt").read_text().splitlines())
    assert np.load(features)["labels"].shape == (n_train800,)  # scored on train800 only, val200 unseen

    # 3. Pear (two of its ten rows, one with kc scale) and adapter_drop
    pear_args = ["pear", *common, "--results", str(results), "--variants", "pear_nearest_scale", "adapter_drop"]
    assert main(pear_args) == 0
    pe = json.loads((work / "pear-adapter-r0.5.json").read_text())
    assert [r["name"] for r in pe["rows"]] == ["pear_nearest_scale", "adapter_drop"]
    assert all(c["kept_blocks"] == list(range(6)) and c["kept_adapters"] for r in pe["rows"] for c in r["cells"])

    # 4. backbones: a byte-identical copy of the tier's backbone is a second row equal to the first
    copy = tmp_path / "copy-of-smoke-vit.pt"
    copy.write_bytes((results / "backbone/smoke-vit.pt").read_bytes())
    assert main(["backbone", *common, "--results", str(results), "--petl", "adapter", "--candidates", f"copy={copy}"]) == 0
    bb = json.loads((work / "backbone-adapter.json").read_text())
    assert [r["name"] for r in bb["rows"]] == ["tier", "copy"] and bb["rows"][1]["backbone"] == str(copy)
    (tier_cell,), (copy_cell,) = (r["cells"] for r in bb["rows"])
    assert tier_cell["metrics"] != copy_cell["metrics"] and tier_cell["top1"] == copy_cell["top1"]
    assert bb["rows"][1]["versus_first"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    assert "Δ vs tier (95%)" in (work / "backbone-adapter.md").read_text()

    for doc in (lr, sg, pe, bb):
        assert doc["winner"]["mean_top1"] == max(r["mean_top1"] for r in doc["rows"])
        md = (work / f"{doc['key']}.md").read_text()
        assert all(f"| {r['label']} |" in md for r in doc["rows"]) and "winner:" in md
        assert len(doc["metrics_read"]) == len(doc["rows"])
        for path in doc["metrics_read"]:  # what the table was made of: train800 -> val200, never test
            m = json.loads(Path(path).read_text())
            assert (m["train_split"], m["eval_split"]) == ("train800", "val200"), path
    assert all(json.loads(p.read_text())["eval_split"] == "val200" for p in work.rglob("metrics.json"))

    # a re-run continues: every step is found done
    capsys.readouterr()
    assert main(pear_args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 7
    # a metrics file evaluated on test is refused, naming it
    metrics = Path(pe["rows"][1]["cells"][0]["metrics"])
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "eval_split": "test"}))
    with pytest.raises(SystemExit, match=re.escape(f"{metrics}: {{'eval_split': 'test'}}")):
        main(pear_args)
