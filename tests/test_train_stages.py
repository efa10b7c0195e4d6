"""The pretrain and finetune stages end to end on a tiny model and tiny generated folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from petlprune.cli import main
from petlprune.data.writer import write_split_folder
from petlprune.models.backbone import read_backbone
from petlprune.models.build import load_task_model

ARCH = "vit_tiny_patch16_224"
TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 3, "num_heads": 2}
TRAIN = {"epochs": 2, "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 1, "batch_size": 16}


def _images(n, classes, seed):
    """Class-coloured noise: learnable, cheap."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.integers(0, 256, size=(classes, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, (n, 16, 16, 3)), 0, 255)
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    images, labels = _images(60, 3, seed=0)
    out = tmp_path_factory.mktemp("data") / "colours"
    write_split_folder(out, images, labels,
                       {"train800": np.arange(0, 32), "val200": np.arange(32, 40),
                        "train800val200": np.arange(0, 40), "test": np.arange(40, 60)},
                       ["r", "g", "b"], {"seed": 0, "kind": "embedded", "description": "test colours"})
    return out


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    images, labels = _images(48, 4, seed=1)
    root = tmp_path_factory.mktemp("source")
    write_split_folder(root / "fractal", images, labels, {"train": np.arange(0, 40), "test": np.arange(40, 48)},
                       ["a", "b", "c", "d"], {"seed": 1, "kind": "source", "description": "test source"})
    out = root / "backbone" / "tiny.pt"
    main(["pretrain", "--out", str(out), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
          "--weights", "pretrain", "--data", str(root / "fractal"), "--train", json.dumps(TRAIN),
          "--seed", "0", "--threads", "1", "--device", "cpu"])
    return out


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


def _finetune(task, backbone, out, *extra, petl="adapter", options="{}"):
    return main(["finetune", "--data", str(task), "--backbone", str(backbone), "--petl", petl,
                 "--petl-options", options, "--train", json.dumps(TRAIN), "--seed", "1", "--threads", "1",
                 "--out", str(out), "--device", "cpu", *extra])


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
