"""The features → score → plan → prune stages end to end on a tiny backbone and a tiny generated task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import COMMON, TRAIN
from _helpers import plan_cli as _plan
from _helpers import prune_cli as _prune
from _helpers import score_cli as _score
from petlprune.cli import main
from petlprune.methods import Plan, Scores
from petlprune.models.build import load_task_model


@pytest.fixture(scope="module")
def sls_run(run_dir):
    r = run_dir
    main(["features", "--model", str(r["model"]), "--backbone", str(r["backbone"]), "--data", str(r["task"]),
          "--split", "train800val200", "--out", str(r["run"] / "features.npz"), *COMMON])
    _score(r, "sls", '{"perplexity": 10}')
    plan = _plan(r, "sls", "a0.3")
    metrics = _prune(r, plan, r["run"] / "pruned" / "sls-a0.3")
    return r, Plan.load(plan), metrics


def test_features_and_scores_files(sls_run):
    r, plan, _ = sls_run
    with np.load(r["run"] / "features.npz") as npz:
        assert npz["cls"].shape == (4, 45, 32) and npz["embed"].shape == (45, 32)
        np.testing.assert_array_equal(npz["labels"], np.arange(45) % 3)
    data = json.loads((r["run"] / "score" / "sls.json").read_text())
    assert set(data) == {"method", "scores", "extra", "seconds", "arrays"} and len(data["scores"]) == 4
    scores = Scores.load(r["run"] / "score" / "sls.json")
    assert scores.arrays["embeddings"].shape[1:] == (45, 2)
    assert 0 < scores.extra["features_seconds"] < scores.seconds <= plan.decision_seconds  # the pass is charged
    assert plan.method == "sls" and plan.depth == scores.extra["decision"]["depth"] and plan.is_prefix


def test_prune_metrics_and_reload(sls_run):
    r, plan, metrics = sls_run
    out = r["run"] / "pruned" / "sls-a0.3"
    assert metrics["method"] == "sls" and metrics["budget"] == "a0.3" and metrics["depth"] == plan.depth
    assert metrics["eval_split"] == "test" and metrics["train_split"] == "train800val200" and metrics["n_eval"] == 30
    assert 0 <= metrics["top1_before_retrain"] <= 1 and 0 <= metrics["top1"] <= 1 and len(metrics["history"]) == 2
    assert {"versions", "git_commit", "git_dirty", "device", "seed", "wall_seconds", "peak_memory_mb",
            "threads", "argv"} <= set(metrics["provenance"])
    model, info = load_task_model(out / "model.pt", r["backbone"])
    assert len(model.blocks) == plan.depth and info["plan"]["kept_blocks"] == plan.kept_blocks
    from petlprune.data.vtab import VTABDataset, make_loader
    from petlprune.train import evaluate

    test = VTABDataset(r["task"], "test", image_size=32, mean=info["mean"], std=info["std"])
    assert evaluate(model, make_loader(test, 8, shuffle=False, seed=0))["top1"] == pytest.approx(metrics["top1"])


def test_matched_budget_and_keep_all_plan(sls_run):
    r, sls_plan, _ = sls_run
    _score(r, "last_k", features=r["run"] / "absent.npz")  # needs no features: the file is never read
    matched = Plan.load(_plan(r, "last_k", "matched", "--matched-plan", str(r["run"] / "plan" / "sls-a0.3.json")))
    assert matched.budget == "matched" and matched.kept_blocks == list(range(sls_plan.depth))
    with pytest.raises(SystemExit, match="needs --matched-plan"):
        _plan(r, "last_k", "matched")
    with pytest.raises(SystemExit, match="holds scores of 'last_k', not 'sls'"):
        main(["plan", "--method", "sls", "--scores", str(r["run"] / "score" / "last_k.json"), "--budget", "d2",
              "--out", str(r["run"] / "plan" / "x.json")])
    # a plan that keeps every block: accuracy right after "pruning" is the fine-tuned accuracy
    finetuned = json.loads((r["run"] / "finetune" / "metrics.json").read_text())
    metrics = _prune(r, _plan(r, "last_k", "d4"), r["run"] / "pruned" / "last_k-d4")
    assert metrics["top1_before_retrain"] == pytest.approx(finetuned["top1"])


def test_prune_is_deterministic(sls_run, tmp_path):
    r, _, metrics = sls_run
    again = _prune(r, r["run"] / "plan" / "sls-a0.3.json", tmp_path / "again")
    strip = ("seconds",)
    assert again["top1"] == metrics["top1"] and again["top1_before_retrain"] == metrics["top1_before_retrain"]
    assert [{k: v for k, v in h.items() if k not in strip} for h in again["history"]] == \
        [{k: v for k, v in h.items() if k not in strip} for h in metrics["history"]]


def test_val_mode_refuses_a_model_that_has_seen_val200(run_dir, tmp_path):
    """A choice made on val200 must come from a model fine-tuned on train800 only (finetune --val)."""
    r = run_dir
    assert load_task_model(r["model"], r["backbone"])[1]["train_split"] == "train800val200"
    _score(r, "last_k", features=r["run"] / "absent.npz")
    plan = _plan(r, "last_k", "d2")
    with pytest.raises(SystemExit, match="has seen val200"):
        _prune(r, plan, tmp_path / "pruned", "--val")
    with pytest.raises(SystemExit, match="has seen val200"):
        main(["score", "--method", "taylor_layer", "--model", str(r["model"]), "--backbone", str(r["backbone"]),
              "--data", str(r["task"]), "--features", str(tmp_path / "none.npz"), "--seed", "0",
              "--out", str(tmp_path / "s.json"), "--val", *COMMON])
    assert not (tmp_path / "pruned").exists() and not (tmp_path / "s.json").exists()

    # fine-tuned with --val: the checkpoint says train800, and val mode runs without ever reading test
    val_model = tmp_path / "ft" / "model.pt"
    (r["task"] / "test.txt").rename(r["task"] / "test.hidden")  # any read of test would now fail
    try:
        main(["finetune", "--data", str(r["task"]), "--backbone", str(r["backbone"]), "--petl", "adapter",
              "--train", json.dumps(TRAIN), "--seed", "0", "--out", str(val_model.parent), "--val", *COMMON])
        assert load_task_model(val_model, r["backbone"])[1]["train_split"] == "train800"
        main(["prune", "--model", str(val_model), "--backbone", str(r["backbone"]), "--plan", str(plan),
              "--data", str(r["task"]), "--train", json.dumps(TRAIN), "--seed", "0", "--out", str(tmp_path / "pv"),
              "--val", *COMMON])
    finally:
        (r["task"] / "test.hidden").rename(r["task"] / "test.txt")
    metrics = json.loads((tmp_path / "pv" / "metrics.json").read_text())
    assert metrics["eval_split"] == "val200" and metrics["train_split"] == "train800" and metrics["n_eval"] == 9


def test_a_validation_score_refuses_features_that_saw_val200(run_dir, tmp_path):
    r = run_dir
    model = tmp_path / "finetune" / "model.pt"
    main(["finetune", "--data", str(r["task"]), "--backbone", str(r["backbone"]), "--petl", "adapter",
          "--train", json.dumps(TRAIN), "--seed", "0", "--out", str(model.parent), "--val", *COMMON])
    for split in ("train800", "train800val200"):
        main(["features", "--model", str(model), "--backbone", str(r["backbone"]), "--data", str(r["task"]),
              "--split", split, "--out", str(tmp_path / f"{split}.npz"), *COMMON])

    def score(split):
        return main(["score", "--method", "angular", "--model", str(model), "--backbone", str(r["backbone"]),
                     "--data", str(r["task"]), "--features", str(tmp_path / f"{split}.npz"), "--options", "{}",
                     "--seed", "0", "--out", str(tmp_path / f"angular-{split}.json"), "--val", *COMMON])

    assert score("train800") == 0 and (tmp_path / "angular-train800.json").is_file()
    with pytest.raises(SystemExit, match="ran over train800val200, which holds val200"):
        score("train800val200")
