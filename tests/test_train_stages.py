"""The pretrain and finetune stages end to end on a tiny model and tiny generated folders."""

from __future__ import annotations

import json

import pytest

from _helpers import ARCH, TRAIN
from _helpers import STAGE_TINY as TINY
from _helpers import finetune_cli as _finetune
from petlprune.cli import main
from petlprune.models.backbone import read_backbone
from petlprune.models.build import load_task_model


def test_pretrain_writes_backbone_and_metrics(backbone):
    meta = read_backbone(backbone)
    assert meta["timm_model"] == ARCH and meta["timm_kwargs"] == TINY
    assert not any(k.startswith("head.") for k in meta["state_dict"])
    metrics = json.loads(backbone.with_suffix(".json").read_text())
    assert metrics["weights"] == "pretrain" and metrics["n_test"] == 8 and 0 <= metrics["top1"] <= 1
    assert len(metrics["history"]) == 2 and metrics["provenance"]["seed"] == 0


def test_pretrain_random_control(tmp_path):
    out = tmp_path / "random.pt"
    main(["pretrain", "--out", str(out), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
          "--weights", "random", "--seed", "3", "--threads", "1"])
    assert read_backbone(out)["mean"] == [0.5, 0.5, 0.5]
    assert json.loads(out.with_suffix(".json").read_text())["top1"] is None


def _strip_timings(metrics):
    metrics = dict(metrics)
    metrics["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    metrics["provenance"] = {k: v for k, v in metrics["provenance"].items()
                             if k not in ("wall_seconds", "peak_memory_mb", "argv")}
    return metrics


def test_finetune_is_deterministic_and_reloads(task, backbone, tmp_path):
    _finetune(task, backbone, tmp_path / "a")
    _finetune(task, backbone, tmp_path / "b")
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert _strip_timings(a) == _strip_timings(b)
    assert a["task"] == "colours" and a["eval_split"] == "test" and a["train_split"] == "train800val200"
    assert a["n_eval"] == 20 and a["depth"] == 3 and a["method"] is None
    assert {"versions", "git_commit", "git_dirty", "device", "seed", "wall_seconds", "peak_memory_mb",
            "threads", "argv"} <= set(a["provenance"])
    model, info = load_task_model(tmp_path / "a" / "model.pt", backbone)
    assert info["petl"] == "adapter" and info["num_classes"] == 3
    from petlprune.data.vtab import VTABDataset, make_loader
    from petlprune.train import evaluate

    test = VTABDataset(task, "test", image_size=16, mean=info["mean"], std=info["std"])
    assert evaluate(model, make_loader(test, 8, shuffle=False, seed=0))["top1"] == pytest.approx(a["top1"])


def test_finetune_val_mode_never_touches_test(task, backbone, tmp_path):
    (task / "test.txt").rename(task / "test.hidden")  # any read of test would now fail
    try:
        _finetune(task, backbone, tmp_path / "v", "--val", petl="linear")
    finally:
        (task / "test.hidden").rename(task / "test.txt")
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert metrics["eval_split"] == "val200" and metrics["train_split"] == "train800" and metrics["n_eval"] == 8


def test_finetune_nan_writes_nothing(task, backbone, tmp_path):
    from petlprune.train import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        _finetune(task, backbone, tmp_path / "nan", options='{"scale": NaN}')
    assert not (tmp_path / "nan").exists()


def test_finetune_bad_train_config_names_key(task, backbone, tmp_path):
    with pytest.raises(ValueError, match=r"--train: unknown key\(s\) momentum"):
        main(["finetune", "--data", str(task), "--backbone", str(backbone), "--petl", "adapter",
              "--train", json.dumps({**TRAIN, "momentum": 0.9}), "--seed", "0", "--out", str(tmp_path / "x")])
