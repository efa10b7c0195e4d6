"""``petlprune cost``: its per-rule job counts are the dry run's; seconds per job from benchmark files,
then the GPU check's JSON, then the runtime asked (stated as an assumption)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from petlprune.cli import main
from petlprune.stages.cost import parse_dry_run, rule_costs

ROOT = Path(__file__).resolve().parents[1]

DRY = """Building DAG of jobs...
rule finetune:
    output: r/a/model.pt
    resources: tmpdir=/tmp, runtime=240, gpu=1, mem_mb=32000, mem=32 GB
rule finetune:
    output: r/b/model.pt
    resources: tmpdir=/tmp, runtime=240, gpu=1, mem_mb=32000, mem=32 GB
rule prune:
    output: r/a/p/model.pt
    resources: tmpdir=/tmp, runtime=120, gpu=2
localrule plan:
    output: r/a/plan.json
    resources: tmpdir=/tmp, runtime=30
Job stats:
job         count
--------  -------
finetune        2
prune           1
plan            1
total           4

Reasons:
"""


def test_parse_and_the_order_of_sources(tmp_path):
    counts, res = parse_dry_run(DRY)
    assert counts == {"finetune": 2, "prune": 1, "plan": 1}
    assert res["finetune"]["gpu"] == 1 and res["prune"]["gpu"] == 2 and res["plan"]["local"] == 1.0
    bench = tmp_path / "benchmarks" / "finetune"
    bench.mkdir(parents=True)
    for i, s in enumerate((100.0, 300.0, 200.0)):
        (bench / f"{i}.tsv").write_text(f"s\th:m:s\tmax_rss\n{s}\t0:01:40\t1.0\n")
    costs = {c.rule: c for c in rule_costs(counts, res, tmp_path / "benchmarks", {"per_job_seconds": {"prune": 50.0,
                                                                                                      "finetune": 9}})}
    assert costs["finetune"].seconds == 200.0 and "measured" in costs["finetune"].source  # benchmarks first
    assert costs["prune"].seconds == 50.0 and "GPU check" in costs["prune"].source
    assert costs["prune"].gpu_hours == pytest.approx(1 * 2 * 50 / 3600)
    assert costs["plan"].seconds is None  # a local rule: its runtime is no job's cost
    nothing = {c.rule: c for c in rule_costs(counts, res)}
    assert nothing["prune"].seconds == 120 * 60 and nothing["prune"].source.startswith("assumed")


def _dry_run_counts(configfile: Path) -> dict[str, int]:
    """The dry run's own table (``--quiet rules``), read independently of the cost code."""
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(ROOT),
                           "--configfile", str(configfile), "-n", "--quiet", "rules", "--cores", "1"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = (done.stdout + done.stderr).split("Job stats:")[-1].splitlines()
    rows = [line.split() for line in table[3:]]
    out = {}
    for row in rows:
        if len(row) != 2 or not row[1].isdigit():
            break
        out[row[0]] = int(row[1])
    out.pop("total")
    return out


def _cost_counts(configfile: Path, tmp_path: Path, capsys) -> dict[str, int]:
    out = tmp_path / "cost.json"
    assert main(["cost", "--configfile", str(configfile), "--snakefile", str(ROOT / "Snakefile"),
                 "--gpus", "1", "8", "--benchmarks", str(tmp_path / "none"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    for r in got["rules"]:  # the printed table says the same
        assert any(line.split()[:2] == [r["rule"], str(r["jobs"])] for line in printed.splitlines())
    assert "wall time on 8 GPU(s)" in printed
    return {r["rule"]: r["jobs"] for r in got["rules"]}


def test_cost_counts_equal_the_dry_run_on_smoke(tmp_path, capsys):
    cfg = ROOT / "workflow/config/smoke.yaml"
    assert _cost_counts(cfg, tmp_path, capsys) == _dry_run_counts(cfg)


@pytest.mark.slow
def test_cost_counts_equal_the_dry_run_on_paper(tmp_path, capsys):
    """paper.yaml itself, its data folder absent (cost stubs it); the reference dry run reads a fake tree."""
    from _helpers import make_fake_vtab, paper_config_for

    cfg = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    vtab = make_fake_vtab(tmp_path / "vtab-1k", cfg["data"]["num_classes"])
    reference = _dry_run_counts(paper_config_for(vtab, tmp_path))
    assert _cost_counts(ROOT / "workflow/config/paper.yaml", tmp_path, capsys) == reference
    assert reference["prune"] > 1000  # the paper tier, not a stub of it


# ------------------------------------------------------------------------------------------------
# The FLOPs model (petlprune/costmodel.py): known answers and the arithmetic of one job.

from petlprune import costmodel  # noqa: E402
from petlprune.costmodel import FixedCost, Rates, Study  # noqa: E402


def test_vit_b16_forward_flops_are_timms_published_figure():
    """timm lists ViT-B/16 at 224 px as 17.6 GMACs; a training image (frozen backbone, adapter trained)
    costs the forward plus the activations' backward: about twice, never three times (no weight grads)."""
    fwd = costmodel.flops_per_image("vit_base_patch16_224", {}, 224, train=False)
    assert fwd / 2 == pytest.approx(17.6e9, rel=0.01)
    train = costmodel.flops_per_image("vit_base_patch16_224", {}, 224, "adapter", {"bottleneck": 8}, train=True)
    assert 1.9 < train / fwd < 2.2
    half = costmodel.flops_per_image("vit_base_patch16_224", {}, 224, "adapter", {"bottleneck": 8}, depth=6)
    assert 0.45 < half / train < 0.55  # six of twelve blocks (plus the patch embedding and head)


def test_flops_cache_is_read_back(tmp_path):
    cache = tmp_path / "flops.json"
    args = ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 2, "num_heads": 3}, 32)
    first = costmodel.flops_per_image(*args, train=False, cache=cache)
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(json.dumps({key: 123.0}))  # a cached figure is used as it is, not recounted
    assert costmodel.flops_per_image(*args, train=False, cache=cache) == 123.0 != first


def _study(tmp_path) -> Study:
    cfg = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())
    return Study(cfg, tmp_path / "flops.json")


def test_one_finetune_job_is_fixed_cost_plus_flops_over_the_rate(tmp_path):
    study = _study(tmp_path)
    rates, fixed = Rates("x", 1e9, 4e9, "test"), FixedCost(startup_s=5.0, read_bytes_per_s=1e6)
    n_train, n_test = study.images("digits")
    cfg = study.cfg
    assert (n_train, n_test) == (cfg["data"]["sizes"]["train800"] + cfg["data"]["sizes"]["val200"],
                                 cfg["data"]["sizes"]["test"])
    job = study.job("finetune", {"task": "digits", "petl": "adapter", "seed": "0"}, 3, rates, fixed)
    bb = cfg["backbone"]
    train_f = costmodel.flops_per_image(bb["timm_model"], bb["timm_kwargs"], 32, "adapter", {"bottleneck": 8, "scale": 1.0},
                                        None, 10, True)
    eval_f = costmodel.flops_per_image(bb["timm_model"], bb["timm_kwargs"], 32, "adapter", {"bottleneck": 8, "scale": 1.0},
                                       None, 10, False)
    flops = cfg["finetune"]["epochs"] * n_train * train_f + n_test * eval_f
    assert job.flops == pytest.approx(flops)
    data_bytes = (n_train + n_test) * 3 * 32 * 32
    assert job.data_bytes == data_bytes
    backbone = 4 * costmodel._param_count(bb["timm_model"], json.dumps(bb["timm_kwargs"]))
    want = 5.0 + (data_bytes + backbone) / 1e6 + cfg["finetune"]["epochs"] * n_train * train_f / 1e9 + n_test * eval_f / 4e9
    assert job.seconds == pytest.approx(want)
    # a fixed depth re-trains fewer blocks; a rule without a FLOPs model gives None
    d6 = study.job("prune", {"task": "digits", "petl": "adapter", "seed": "0", "method": "sglp", "budget": "d6"}, 3,
                   rates, fixed)
    d12 = study.job("prune", {"task": "digits", "petl": "adapter", "seed": "0", "method": "last_k", "budget": "d12"}, 3,
                    rates, fixed)
    assert d6.flops < 0.6 * d12.flops
    assert study.job("data", {"task": "digits"}, 1, rates, fixed) is None


def test_rates_file_gpu_table_and_gpu_check(tmp_path):
    f = tmp_path / "roofline.json"
    f.write_text(json.dumps({"device": "cpu", "train_flops_per_s": 2e10, "eval_flops_per_s": 5e10,
                             "gemm_peak_flops_per_s": {"fp32": 1e11, "bf16": 5e10}}))
    got = costmodel.read_rates_file(f)
    assert (got.train_flops_per_s, got.eval_flops_per_s) == (2e10, 5e10)
    f.write_text(json.dumps({"device": "cpu", "train_flops_per_s": 2e10}))
    with pytest.raises(ValueError, match="eval_flops_per_s"):
        costmodel.read_rates_file(f)
    assert costmodel.rates_for("h100", 0.5).train_flops_per_s == 989e12 * 0.5
    doc = {"gpu": "H100", "throughput": [{"measurement": "train bf16, ViT-B/16 + adapter", "batch": 64,
                                          "images_per_s": 1000.0}]}
    per_image = costmodel.flops_per_image("vit_base_patch16_224", {}, 224, "adapter", {"bottleneck": 8})
    assert costmodel.rates_from_gpu_check(doc).train_flops_per_s == pytest.approx(1000.0 * per_image)


def test_cost_prints_the_estimate_beside_the_bound_on_smoke(tmp_path, capsys):
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"device": "cpu", "train_flops_per_s": 1e10, "eval_flops_per_s": 1e10}))
    out = tmp_path / "cost.json"
    assert main(["cost", "--configfile", str(ROOT / "workflow/config/smoke.yaml"), "--snakefile", str(ROOT / "Snakefile"),
                 "--gpu", "cpu", "--rates", str(rates), "--benchmarks", str(tmp_path / "none"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FLOPs-based estimate" in printed and "measured: " + str(rates) in printed
    model = {r["rule"]: r for r in json.loads(out.read_text())["flops_model"]["rules"]}
    counts = _dry_run_counts(ROOT / "workflow/config/smoke.yaml")
    assert model["finetune"]["jobs"] == counts["finetune"] and model["prune"]["jobs"] == counts["prune"]
    assert "data" not in model and model["prune"]["seconds"] > 0


def test_the_gpu_checks_rates_replace_the_assumption_for_its_gpu_kind(tmp_path):
    import argparse

    from petlprune.stages.cost import _rates

    doc = {"gpu": "NVIDIA H100 80GB HBM3", "throughput": [{"measurement": "train bf16, ViT-B/16 + adapter",
                                                           "batch": 64, "images_per_s": 2000.0}]}
    args = argparse.Namespace(rates=None, gpu="h100", mfu=0.35, snakefile=tmp_path / "Snakefile")
    assert _rates(args, doc).source.startswith("measured")
    args.gpu = "a100"  # measured on another kind: the assumption, not the H100's figures
    assert _rates(args, doc).source.startswith("assumed") and _rates(args, None).source.startswith("assumed")
    found = tmp_path / "results/benchmarks-suite/gpu_check.json"
    found.parent.mkdir(parents=True)
    found.write_text(json.dumps(doc))  # where gpu_check.sh writes: found without --gpu-check
    args.gpu = "h100"
    assert _rates(args, None).source.startswith("measured")
