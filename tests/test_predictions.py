"""Every evaluation writes per-image predictions next to its metrics (paired comparisons need them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _helpers import finetune_cli as _finetune
from petlprune.cli import main
from petlprune.train import evaluate, save_predictions


def test_evaluate_returns_predictions_in_loader_order():
    x = torch.eye(4).repeat(3, 1)  # 12 one-hot rows; an identity "model" predicts the hot index
    y = torch.tensor([0, 1, 2, 3] * 2 + [1, 1, 1, 1])
    ev = evaluate(nn.Identity(), DataLoader(TensorDataset(x, y), batch_size=5))
    assert ev["pred"].tolist() == [0, 1, 2, 3] * 3 and ev["labels"].tolist() == y.tolist()
    assert ev["top1"] == pytest.approx(9 / 12) == float(np.mean(ev["pred"] == ev["labels"]))


def test_save_predictions_rejects_other_images(tmp_path):
    a = {"labels": np.array([0, 1]), "pred": np.array([0, 0])}
    b = {"labels": np.array([1, 1]), "pred": np.array([0, 0])}
    with pytest.raises(ValueError, match="'before_retrain' saw other images"):
        save_predictions(tmp_path / "p.npz", "test", pred=a, before_retrain=b)
    save_predictions(tmp_path / "p.npz", "test", pred=a, before_retrain=a)
    with np.load(tmp_path / "p.npz") as npz:
        assert set(npz.files) == {"labels", "pred", "pred_before_retrain", "split"} and str(npz["split"]) == "test"


def test_finetune_and_prune_write_predictions_matching_metrics(task, backbone, tmp_path):  # noqa: F811
    _finetune(task, backbone, tmp_path / "ft")
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    with np.load(tmp_path / "ft" / "predictions.npz") as npz:
        labels, pred, split = npz["labels"], npz["pred"], str(npz["split"])
    assert split == "test" and labels.dtype == np.int64 and len(labels) == metrics["n_eval"] == 20
    assert np.mean(labels == pred) == pytest.approx(metrics["top1"])
    plan = {"method": "last_k", "budget": "d2", "depth": 2, "kept_blocks": [0, 1], "decision_seconds": 0.0}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    main(["prune", "--data", str(task), "--backbone", str(backbone), "--model", str(tmp_path / "ft" / "model.pt"),
          "--plan", str(tmp_path / "plan.json"), "--train", json.dumps({"epochs": 1, "lr": 0.003,
          "weight_decay": 0.0, "warmup_epochs": 0, "batch_size": 16}), "--seed", "1", "--threads", "1",
          "--out", str(tmp_path / "pr"), "--device", "cpu"])
    pruned = json.loads((tmp_path / "pr" / "metrics.json").read_text())
    with np.load(tmp_path / "pr" / "predictions.npz") as npz:
        assert np.array_equal(npz["labels"], labels)  # same images, same order: pairable
        assert np.mean(npz["pred"] == labels) == pytest.approx(pruned["top1"])
        assert np.mean(npz["pred_before_retrain"] == labels) == pytest.approx(pruned["top1_before_retrain"])
