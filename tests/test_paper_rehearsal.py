"""The paper tier at its real shape on the CPU: every stage and every method instance of paper.yaml through
the real DAG, on ViT-B/16 (width 768, 12 heads x 64, patch 16, 224 px, 197 tokens) cut to 4 blocks, random
weights, a fake VTAB-1k tree in the NOAH layout (one RGB task, one grayscale), ending with a built book.

The config is derived from paper.yaml by ``benchmarks/rehearsal.py`` (what it cuts: cost, never shape).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from rehearsal import GRAYSCALE, _within, make_fake_vtab, prepare, rehearsal_config  # noqa: E402

PAPER = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())


def test_rehearsal_config_keeps_paper_shapes_and_every_method(tmp_path):
    vtab = make_fake_vtab(tmp_path / "vtab", {"eurosat": 10, "smallnorb_ele": 9}, n=12)
    cfg = rehearsal_config(vtab, tmp_path / "r")
    assert cfg["backbone"]["timm_model"] == "vit_base_patch16_224" and cfg["backbone"]["timm_kwargs"] == {"depth": 4}
    assert cfg["backbone"]["weights"] == "random" and cfg["data"]["image_size"] == PAPER["data"]["image_size"] == 224
    assert cfg["petl"] == PAPER["petl"]
    assert set(cfg["methods"]) == set(PAPER["methods"]) and set(cfg["budgets"]) == set(PAPER["budgets"])
    full_depth = {m for m, bs in PAPER["budgets"].items() if bs[0] == "d12"}
    assert full_depth >= {"last_k", "splora_unpruned"}  # the unpruned controls keep every block ...
    assert all(cfg["budgets"][m] == ["d4"] for m in full_depth)  # ... of the 4-block rehearsal backbone
    assert all(cfg["budgets"][m] == [_within(PAPER["budgets"][m][0], 4)] for m in set(PAPER["budgets"]) - full_depth)
    assert _within("d6", 4) == "d4" and _within("d3", 4) == "d3" and _within("s8", 4) == "s3" and _within("s2", 4) == "s2"
    assert cfg["data"]["num_classes"] == {t: PAPER["data"]["num_classes"][t] for t in ("eurosat", "smallnorb_ele")}
    from PIL import Image

    assert "smallnorb_ele" in GRAYSCALE
    assert Image.open(vtab / "smallnorb_ele/images/0000.jpg").mode == "L"
    assert Image.open(vtab / "eurosat/images/0000.jpg").mode == "RGB"
    with pytest.raises(ValueError, match="not paper.yaml tasks"):
        rehearsal_config(vtab, tmp_path / "r", tasks=["mnist"])


@pytest.mark.slow  # 209 jobs: about 8 min on 2 idle cores (485 s; 784 s without the warm worker)
def test_paper_rehearsal_runs_every_stage_and_method_and_builds_the_book(tmp_path):
    cfg_path = prepare(tmp_path, depth=4)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(cfg_path), "--cores", "2"],
                         capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - t0
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    assert (tmp_path / "book/_build/html/index.html").is_file()
    cfg = yaml.safe_load(cfg_path.read_text())
    results = Path(cfg["results"])
    # every method instance of paper.yaml left a re-trained, measured model on every task
    for instance in PAPER["methods"]:
        petl = PAPER["methods"][instance].get("petl")
        key = f"{instance}.0" if "draws" in PAPER["methods"][instance] else instance
        for task in cfg["data"]["tasks"]:
            for p in [petl] if petl else PAPER["petl"]["methods"]:
                out = results / "runs" / task / p / "seed0" / "pruned" / f"{key}-{cfg['budgets'][instance][0]}"
                metrics = json.loads((out / "metrics.json").read_text())
                assert 0.0 <= metrics["top1"] <= 1.0, out
                assert json.loads((out / "efficiency.json").read_text())["flops_per_image"] > 0
    # the CPU time of the jobs (benchmark files, or for a job of the warm worker the figures at the end of
    # its log; the machine is shared, so wall time is not the measure)
    from stage_costs import read_benchmark_files, stage_table

    _, total = stage_table(read_benchmark_files(results / "benchmarks"))
    cpu = total["cpu_s"]
    # Its cost is reported, not asserted (speed belongs in benchmarks: `python benchmarks/rehearsal.py`).
    print(f"rehearsal: {wall:.0f} s wall, {cpu:.0f} s CPU in benchmarked jobs")
