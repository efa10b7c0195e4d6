"""``petlprune measure``: efficiency.json for several stored task models in one job."""

from __future__ import annotations

import petlprune  # noqa: F401  (before timm: the torchvision compatibility step)

# isort: split
import pytest

from petlprune.cli import main
from petlprune.io import read_json

ADAPTER, HEAD = (12 * 8 + 8) + (8 * 12 + 12), 12 * 5 + 5


def test_measure_stage_writes_efficiency_json_per_dir(task_dirs, capsys):
    backbone, dirs = task_dirs
    argv = ["measure", "--backbone", str(backbone), "--image-size", "16", "--batch-sizes", "1", "2",
            "--warmup", "1", "--repeats", "2", "--threads", "1", str(dirs["finetune"]), str(dirs["pruned"])]
    assert main(argv) == 0
    full, pruned = (read_json(dirs[k] / "efficiency.json") for k in ("finetune", "pruned"))
    assert full["stored_breakdown"] == {"petl": 3 * ADAPTER, "head": HEAD, "plan": 0, "backbone": 0}
    assert pruned["stored_breakdown"] == {"petl": 2 * ADAPTER, "head": HEAD, "plan": 1, "backbone": 0}
    assert pruned["flops_per_image"] < full["flops_per_image"]
    assert pruned["params_forward"] < full["params_forward"]
    for eff in (full, pruned):
        assert set(eff["throughput"]) == {"1", "2"} and eff["threads"] == 1
        assert all(t["images_per_s"] > 0 for t in eff["throughput"].values())
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and str(dirs["pruned"]) in lines[1]


def test_measure_stage_names_a_missing_model(tmp_path):
    with pytest.raises(SystemExit, match="nowhere/model.pt"):
        main(["measure", "--backbone", str(tmp_path / "b.pt"), "--image-size", "16", str(tmp_path / "nowhere")])
