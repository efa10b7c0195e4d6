"""The GPU check's CPU-side parts: it imports, refuses cleanly without CUDA, and its table, JSON and
book section work with fake figures (the real ones come from a lent GPU machine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

from petlprune.report.benchmarks import benchmarks_page  # noqa: E402

FAKE = {
    "gpu": "Fake GPU 80GB", "cuda": "12.8", "seconds": 300.0, "peak_mem_gb": 20.5,
    "throughput": [
        {"measurement": "train bf16, ViT-B/16 + adapter", "batch": 64, "images_per_s": 900.0, "latency_ms": 71.1,
         "peak_mem_gb": 20.5},
        {"measurement": "inference, ViT-B/16 unpruned", "batch": 256, "images_per_s": 3000.0, "latency_ms": 85.3,
         "peak_mem_gb": 4.0},
        {"ok": False, "error": "RuntimeError: boom", "seconds": 0.1, "step": "inference"},
    ],
    "pytest": {"ok": True, "seconds": 60.0, "summary": "20 passed in 60.0s", "passed": 20},
    "rehearsal": {"ok": True, "seconds": 120.0, "task": "eurosat", "images": 48, "jobs_done": 99, "jobs": 99},
}


def test_refuses_cleanly_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--results", str(tmp_path)])
    assert not (tmp_path / "benchmarks-suite").exists()


def test_report_table_and_per_job_seconds():
    text = gpu_check.format_report(FAKE)
    assert "Fake GPU 80GB" in text and "900.000" in text and "failed: inference: RuntimeError: boom" in text
    assert "pytest -m gpu: ok: 20 passed" in text and "99 of 99 jobs" in text
    rows = gpu_check.table_rows(FAKE)
    assert rows[0] == {k: FAKE["throughput"][0][k] for k in rows[0]}
    paper = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    got = gpu_check.per_job_seconds(1000.0)  # 1000 images/s: one epoch of train800val200 a second
    assert got == {"finetune": float(paper["finetune"]["epochs"]), "prune": float(paper["retrain"]["epochs"])}


def test_json_feeds_the_book_and_the_cost_command(tmp_path):
    from petlprune.stages.cost import rule_costs

    folder = tmp_path / "benchmarks-suite"
    folder.mkdir()
    machine = {"cpus": 16, "threads": 8, "load_before": 0.5, "load_after": 1.0, "finished": "now"}
    doc = {"benchmark": "gpu_check", "command": "python benchmarks/gpu_check.py", "machine": machine, **FAKE,
           "per_job_seconds": gpu_check.per_job_seconds(900.0)}
    (folder / "gpu_check.json").write_text(json.dumps(doc))
    page = benchmarks_page(tmp_path)
    section = page.split("## GPU check", 1)[1]
    assert "**Fake GPU 80GB**" in section and "900.0" in section and "3000.0" in section
    assert "`pytest -m gpu`: **passed**" in section and "99 of 99 jobs" in section
    assert "could not be read" not in page
    costs = {c.rule: c for c in rule_costs({"finetune": 10}, {"finetune": {"gpu": 1.0, "runtime": 240}},
                                           gpu_check=doc)}
    assert costs["finetune"].seconds == pytest.approx(100 * 1000 / 900.0) and "Fake GPU" in costs["finetune"].source


def test_page_says_plainly_when_no_gpu_ran_it(tmp_path):
    section = benchmarks_page(tmp_path).split("## GPU check", 1)[1]
    assert "no GPU has run it" in section and "python benchmarks/gpu_check.py" in section


def test_shell_entry_runs_the_script_with_a_time_limit():
    sh = (ROOT / "benchmarks/gpu_check.sh").read_text()
    assert "benchmarks/gpu_check.py" in sh and "timeout 480" in sh


def test_the_measured_models_are_vit_b16_with_the_papers_adapter():
    model = gpu_check._vit_b(depth=1, petl="adapter")
    assert model.embed_dim == 768 and model.blocks[0].attn.num_heads == 12 and model.patch_embed.patch_size == (16, 16)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "head" in trainable and "patch_embed" not in trainable and "pos_embed" not in trainable
    assert len(gpu_check._vit_b(depth=6).blocks) == 6
