"""``petlprune measure`` times the models of one run interleaved and keeps every repeat's time."""

from __future__ import annotations

import numpy as np

import petlprune.measure as measure
from petlprune.cli import main
from petlprune.io import read_json
from petlprune.stages.measure import interleaved_times


def test_interleaved_times_alternate_models(monkeypatch):
    calls = []

    def fake_throughput(model, batch_size, *, input_shape, warmup, repeats, device):
        calls.append((model, batch_size, warmup))
        return {"latency_ms": {"a": 2.0, "b": 1.0}[model], "images_per_s": 0.0}

    monkeypatch.setattr(measure, "throughput", fake_throughput)
    monkeypatch.setattr(measure, "input_shape_of", lambda m, size: (3, size, size))
    out = interleaved_times(["a", "b"], [1, 4], image_size=8, warmup=2, repeats=3, device="cpu")
    assert out == [{"1": [0.002] * 3, "4": [0.002] * 3}, {"1": [0.001] * 3, "4": [0.001] * 3}]
    # per batch size: one warm-up call per model, then a, b, a, b, a, b
    assert [w for m, b, w in calls] == ([1, 1] + [0] * 6) * 2
    order = [m for m, b, w in calls]
    assert order == ["a", "b"] + ["a", "b"] * 3 + ["a", "b"] + ["a", "b"] * 3


def test_measure_stage_stores_per_repeat_times(task_dirs):  # noqa: F811
    backbone, dirs = task_dirs
    assert main(["measure", "--backbone", str(backbone), "--image-size", "16", "--batch-sizes", "1", "2",
                 "--warmup", "1", "--repeats", "5", "--threads", "1", str(dirs["finetune"]), str(dirs["pruned"])]) == 0
    for d in dirs.values():
        eff = read_json(d / "efficiency.json")
        assert eff["timing"] == "interleaved" and eff["repeats"] == 5 and eff["threads"] == 1
        for b, t in eff["throughput"].items():
            assert len(t["times_s"]) == 5
            assert t["latency_ms"] == np.median(t["times_s"]) * 1e3
            assert t["images_per_s"] == int(b) / np.median(t["times_s"])
