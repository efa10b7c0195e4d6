"""``petlprune measure`` times each architecture once: same-shaped models share one timing, keep own counts."""

from __future__ import annotations

import petlprune  # noqa: F401  (before timm: the torchvision compatibility step)

# isort: split
import torch

import petlprune.stages.measure as stage
from petlprune.cli import main
from petlprune.io import read_json
from petlprune.methods import Plan, get
from petlprune.models.build import build_model, save_task_model
from petlprune.stages.measure import architecture_key


def test_architecture_key_ignores_weights_not_shapes(task_dirs):  # noqa: F811
    backbone, _ = task_dirs
    a, b = (build_model(backbone, petl="adapter", num_classes=5) for _ in range(2))
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert architecture_key(a) == architecture_key(b)
    assert architecture_key(a) != architecture_key(build_model(backbone, petl="adapter", num_classes=6))
    assert architecture_key(a) != architecture_key(build_model(backbone, petl="lora", num_classes=5))
    kept = [get("last_k").apply(build_model(backbone, petl="adapter", num_classes=5), Plan("last_k", "d2", 2, k))
            for k in ([0, 1], [1, 2])]
    assert architecture_key(kept[0]) == architecture_key(kept[1]) != architecture_key(a)


def test_same_architecture_is_timed_once_with_own_counts(task_dirs, tmp_path, monkeypatch):  # noqa: F811
    backbone, dirs = task_dirs
    # a second seed's d2 model: other blocks kept, other weights, the same architecture
    other = tmp_path / "seed1" / "last_k-d2"
    plan = Plan("last_k", "d2", 2, [1, 2])
    model = get("last_k").apply(build_model(backbone, petl="adapter", num_classes=5), plan)
    save_task_model(other / "model.pt", model, backbone=backbone, petl="adapter", petl_options=None,
                    num_classes=5, plan=plan)
    timed_counts = []
    real = stage.interleaved_times
    monkeypatch.setattr(stage, "interleaved_times", lambda models, *a, **k: timed_counts.append(len(models))
                        or real(models, *a, **k))
    assert main(["measure", "--backbone", str(backbone), "--image-size", "16", "--batch-sizes", "2",
                 "--warmup", "1", "--repeats", "3", "--threads", "1",
                 str(dirs["finetune"]), str(dirs["pruned"]), str(other)]) == 0
    assert timed_counts == [2]  # finetune (3 blocks) and one d2 model, not three
    full, pruned, twin = (read_json(d / "efficiency.json") for d in (dirs["finetune"], dirs["pruned"], other))
    assert twin["timed_as"] == pruned["timed_as"] == str(dirs["pruned"]) and full["timed_as"] == str(dirs["finetune"])
    assert twin["throughput"]["2"]["times_s"] == pruned["throughput"]["2"]["times_s"]
    assert twin["architecture"] == pruned["architecture"] != full["architecture"]
    assert twin["flops_per_image"] == pruned["flops_per_image"] < full["flops_per_image"]
    # its own counts: what measuring it alone writes, timings aside
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.pt").write_bytes((other / "model.pt").read_bytes())
    assert main(["measure", "--backbone", str(backbone), "--image-size", "16", "--batch-sizes", "2",
                 "--warmup", "0", "--repeats", "1", "--threads", "1", str(alone)]) == 0
    solo = read_json(alone / "efficiency.json")
    for key in ("params_forward", "params_stored", "flops_per_image", "stored_breakdown", "architecture"):
        assert twin.get(key) == solo.get(key), key
