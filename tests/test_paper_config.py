"""The paper tier: paper.yaml, the VTAB-1k data rule (checksum manifest), the local and slurm profiles.

A fake VTAB-1k tree in the NOAH layout (a few JPEGs per task, every list file, a SHA256SUMS manifest)
stands in for the real benchmark, which cannot be downloaded here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from _helpers import VTAB_CLASSES, make_fake_vtab, paper_config_for
from petlprune.data.vtab import DatasetError, VTABDataset, check_manifest, read_manifest
from petlprune.methods import METHOD_MODULES

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
# VTAB-1k class counts (NOAH / VPT configs); a typo in paper.yaml must fail here.


@pytest.fixture(scope="module")
def fake_vtab(tmp_path_factory) -> Path:
    return make_fake_vtab(tmp_path_factory.mktemp("paper") / "vtab-1k", VTAB_CLASSES)


# ------------------------------------------------------------------------------------------------
# paper.yaml


def test_paper_yaml_is_valid_and_has_the_vtab_tasks_and_classes():
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(PAPER)
    assert PAPER["data"]["kind"] == "vtab" and PAPER["data"]["image_size"] == 224
    assert PAPER["data"]["tasks"] == list(VTAB_CLASSES)
    assert PAPER["data"]["num_classes"] == VTAB_CLASSES
    assert PAPER["backbone"]["timm_model"] == "vit_base_patch16_224.orig_in21k"
    assert set(PAPER["petl"]["methods"]) >= {"adapter", "convpass"} and len(PAPER["seeds"]) == 3
    for stage in ("finetune", "retrain"):
        assert PAPER[stage]["epochs"] == 100 and PAPER[stage]["batch_size"] == 64


def test_paper_yaml_runs_every_registered_method():
    """A method registered in METHOD_MODULES but missing here is missing from the paper's tables."""
    ran = {opts.get("method", name) for name, opts in PAPER["methods"].items()}
    assert sorted(set(METHOD_MODULES) - ran) == []
    assert set(PAPER["budgets"]) == set(PAPER["methods"]), "every instance has budgets"


def test_paper_yaml_gpu_rules_ask_for_one_gpu():
    res = PAPER["resources"]
    for rule in ("finetune", "features", "score", "prune", "measure"):
        assert res[rule]["gpu"] == 1 and res[rule]["runtime"] > 0 and res[rule]["mem_mb"] > 0
    assert "gpu" not in res["default"] and "gpu" not in res["data"]
    assert PAPER["measure"]["device"] == "cuda"


def expected_runs_and_prunes(cfg: dict) -> tuple[int, int]:
    """(fine-tunings, pruned models) of the whole study: an instance with its own `petl:` prunes that
    PETL only (which is then fine-tuned too); random draws multiply, like common.smk's pruned_keys."""
    petls = list(dict.fromkeys(cfg["petl"]["methods"] + [o["petl"] for o in cfg["methods"].values() if "petl" in o]))
    per_task_seed = sum(
        cfg["methods"][m].get("draws", 1) * len(bs)
        * (1 if "petl" in cfg["methods"][m] else len(cfg["petl"]["methods"]))
        for m, bs in cfg["budgets"].items()
    )
    n = len(cfg["data"]["tasks"]) * len(cfg["seeds"])
    return n * len(petls), n * per_task_seed


@pytest.mark.slow
def test_paper_dry_run_builds_the_full_dag_with_the_slurm_profile(fake_vtab, tmp_path):
    cfg_path = paper_config_for(fake_vtab, tmp_path)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(cfg_path),
         "--profile", "workflow/profiles/slurm", "--quiet", "rules"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    runs, prunes = expected_runs_and_prunes(PAPER)
    assert int(counts["data"]) == len(PAPER["data"]["tasks"])
    assert int(counts["finetune"]) == runs
    assert int(counts["prune"]) == prunes
    print(f"paper DAG: {counts['total']} jobs, dry run {seconds:.1f}s")


# ------------------------------------------------------------------------------------------------
# the data rule: manifest check


def _data_args(task_dir: Path, out: Path, manifest: Path | None, num_classes: int | None) -> argparse.Namespace:
    return argparse.Namespace(task=task_dir.name, out=str(out), seed=None, image_size=None, sizes=None,
                              vtab_root=str(task_dir), num_classes=num_classes,
                              manifest=str(manifest) if manifest else None)


def test_data_stage_checks_the_manifest(tmp_path):
    from petlprune.stages import data

    vtab = make_fake_vtab(tmp_path / "vtab-1k", {"dtd": 47, "kitti": 4})
    data.run(_data_args(vtab / "kitti", tmp_path / "out" / "kitti", vtab / "SHA256SUMS", 4))
    meta = yaml.safe_load((tmp_path / "out" / "kitti" / "meta.json").read_text())
    assert meta["kind"] == "vtab" and meta["num_classes"] == 4 and meta["manifest"]["files_checked"] == 4

    # One changed label in a list file: the data job stops and names the file.
    test_list = vtab / "kitti" / "test.txt"
    test_list.write_text(test_list.read_text().replace(" 1\n", " 0\n"))
    with pytest.raises(SystemExit, match=r"sha256 mismatch for kitti/test\.txt"):
        data.run(_data_args(vtab / "kitti", tmp_path / "out2", vtab / "SHA256SUMS", 4))
    assert not (tmp_path / "out2").exists()
    # The other task is untouched and still passes.
    assert check_manifest(vtab / "SHA256SUMS", vtab / "dtd") == 4


def test_data_stage_checks_the_class_count(tmp_path):
    from petlprune.stages import data

    vtab = make_fake_vtab(tmp_path / "vtab-1k", {"kitti": 4})
    with pytest.raises(SystemExit, match=r"label 3 outside \[0, 3\)"):
        data.run(_data_args(vtab / "kitti", tmp_path / "out", None, 3))


def test_manifest_errors(tmp_path):
    vtab = make_fake_vtab(tmp_path / "vtab-1k", {"kitti": 4})
    manifest = vtab / "SHA256SUMS"
    assert len(read_manifest(manifest)) == 4

    lines = manifest.read_text().splitlines()
    (vtab / "partial").write_text("\n".join(lines[:-1]) + "\n")  # test.txt not listed
    with pytest.raises(DatasetError, match=r"no checksum for kitti/test\.txt"):
        check_manifest(vtab / "partial", vtab / "kitti")

    (vtab / "bad").write_text("nothex  kitti/test.txt\n")
    with pytest.raises(DatasetError, match=r"bad:1: malformed line"):
        read_manifest(vtab / "bad")

    elsewhere = make_fake_vtab(tmp_path / "other", {"kitti": 4})
    with pytest.raises(DatasetError, match="not inside the manifest's folder"):
        check_manifest(manifest, elsewhere / "kitti")

    (vtab / "kitti" / "val200.txt").unlink()
    with pytest.raises(DatasetError, match=r"kitti/val200\.txt is listed but missing"):
        check_manifest(manifest, vtab / "kitti")
    with pytest.raises(DatasetError, match="checksum manifest not found"):
        read_manifest(vtab / "nope")


# ------------------------------------------------------------------------------------------------
# the real 224 px loading path and one training step of a ViT-B-shaped model


@pytest.mark.slow
def test_vtab_224_loading_and_one_vit_b_training_step(fake_vtab, tmp_path):
    import torch

    from petlprune.data.vtab import import_vtab_folder, make_loader
    from petlprune.models.backbone import create_backbone, data_config
    from petlprune.models.petl import inject_petl, mark_trainable
    from petlprune.train import TrainConfig, fit

    meta = import_vtab_folder(fake_vtab / "dtd", tmp_path / "dtd", name="dtd", num_classes=47,
                              manifest=fake_vtab / "SHA256SUMS")
    torch.manual_seed(0)
    model = create_backbone("vit_base_patch16_224", num_classes=meta["num_classes"], weights="random")
    assert sum(p.numel() for p in model.parameters()) > 85_000_000  # ViT-B/16 shape
    inject_petl(model, "adapter", bottleneck=8, scale=1.0)
    mark_trainable(model, "adapter")
    dc = data_config(model)
    ds = VTABDataset(tmp_path / "dtd", "train800val200", image_size=dc["image_size"], mean=dc["mean"],
                     std=dc["std"], num_classes=47, cache=True)
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and y == 0 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(epochs=1, lr=1e-3, weight_decay=1e-4, warmup_epochs=0, batch_size=4)
    history = fit(model, make_loader(ds, 4, shuffle=True, seed=0), cfg, device="cpu", log=None)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(model.get_parameter(n).requires_grad for n in changed)  # the backbone stayed frozen
    assert any(".adapter" in n or "adapter" in n for n in changed) and any(n.startswith("head") for n in changed)


# ------------------------------------------------------------------------------------------------
# profiles


SLEEPER = '''
rule all:
    input: expand("out/{kind}{i}.txt", kind=["gpu", "cpu"], i=[0, 1])
rule gpu:
    output: "out/gpu{i}.txt"
    resources: gpu=1
    shell: "python -c 'import time; t=time.time(); time.sleep(1.5); print(t, time.time())' > {output}"
rule cpu:
    output: "out/cpu{i}.txt"
    shell: "python -c 'import time; t=time.time(); time.sleep(1.5); print(t, time.time())' > {output}"
'''


@pytest.mark.slow
def test_local_profile_never_runs_two_gpu_jobs_at_once(tmp_path):
    (tmp_path / "Snakefile").write_text(SLEEPER)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(ROOT / "workflow/profiles/local"), "--cores", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    def span(name: str) -> tuple[float, float]:
        start, end = map(float, (tmp_path / "out" / name).read_text().split())
        return start, end

    (s0, e0), (s1, e1) = span("gpu0.txt"), span("gpu1.txt")
    assert e0 <= s1 or e1 <= s0, "two gpu=1 jobs overlapped under the local profile"
    # Control: with 2 cores and no GPU resource, the two CPU jobs may run together, and the
    # scheduler is not simply serial (otherwise the check above would prove nothing).
    (c0, d0), (c1, d1) = span("cpu0.txt"), span("cpu1.txt")
    assert max(c0, c1) < min(d0, d1), "the CPU jobs were serialised too: the check above is vacuous"


def test_slurm_profile_resources_are_what_the_plugin_reads():
    """The profile's keys and the rules' resource names, checked against the installed plugin."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.utils import set_gres_string

    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["jobs"] >= 1
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(PAPER["resources"]["finetune"]))
    assert set_gres_string(job).strip() == "--gpus=1"
    job = SimpleNamespace(resources=Resources(PAPER["resources"]["data"]))
    assert set_gres_string(job) == ""


def test_slurm_profile_packs_each_runs_gpu_jobs_into_groups(tmp_path):
    """The dry run with the profile (groups are inactive in local runs): features, scores, prunes and
    measure jobs never go alone; one packed `retrain` job holds the prunes of `group-components` runs."""
    cfg = yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "--profile",
                           "workflow/profiles/slurm", "--cores", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    alone = set(re.findall(r"^rule (\w+):$", text, flags=re.M))
    assert not alone & {"features", "score", "prune"} and not any(r.startswith("measure_") for r in alone)
    blocks = re.split(r"^\[[^\]]*\] Group job (\w+) \(jobs in lexicogr\. order\):$", text, flags=re.M)
    groups = list(zip(blocks[1::2], blocks[2::2], strict=True))
    packing = dict(g.split("=") for g in yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
                   ["group-components"])
    runs_of = {}
    for name, body in groups:
        body = body.split("\n[", 1)[0]  # up to the next top-level job
        members = set(re.findall(r"^\s+rule (\w+):$", body, flags=re.M))
        runs = set(re.findall(r"wildcards: task=(\w+), petl=(\w+), seed=(\d+)", body))
        assert members <= ({"features", "score"} if name == "score" else {"prune"} | {m for m in members
                                                                                     if m.startswith("measure_")})
        assert 1 <= len(runs) <= int(packing[name])
        runs_of.setdefault(name, []).append(runs)
    n_runs = len(set(re.findall(r"wildcards: task=(\w+), petl=(\w+), seed=(\d+)\n", text)))
    for name in ("score", "retrain"):
        assert sum(len(r) for r in runs_of[name]) >= 2 and max(len(r) for r in runs_of[name]) == int(packing[name])
    assert n_runs >= 2


# ------------------------------------------------------------------------------------------------
# paper-lite.yaml: the affordable paper tier (issue 28, book/cost.md)

LITE = yaml.safe_load((ROOT / "workflow/config/paper-lite.yaml").read_text())
VTAB_GROUPS = {
    "natural": ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}


def test_paper_lite_is_paper_on_six_tasks_with_every_claim_arm():
    import jsonschema

    from petlprune.report.claim_defs import CLAIMS

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(LITE)
    tasks = LITE["data"]["tasks"]
    assert len(tasks) == 6 and all(sum(t in g for t in tasks) == 2 for g in VTAB_GROUPS.values())
    assert LITE["data"]["num_classes"] == {t: VTAB_CLASSES[t] for t in tasks}
    for key in ("backbone", "petl", "finetune", "retrain", "seeds", "resources", "measure", "matched_alpha"):
        assert LITE[key] == PAPER[key], f"paper-lite's {key} differs from paper.yaml's"
    ran = {opts.get("method", name) for name, opts in LITE["methods"].items()}
    assert sorted(set(METHOD_MODULES) - ran) == [], "every registered method"
    missing = [f"{c.id}: {p.a.label} / {p.b.label}" for c in CLAIMS for p in c.parts
               if not (p.a.in_tier(LITE) and p.b.in_tier(LITE))]
    assert missing == [], f"claim arms paper-lite does not run: {missing}"
    depth = {"random", "block_influence", "angular", "taylor_layer", "sglp"}
    assert all({"matched", "d6"} <= set(LITE["budgets"][m]) for m in depth)
    assert "d12" in LITE["budgets"]["last_k"] and "d12" in LITE["budgets"]["splora_unpruned"]  # the controls


@pytest.mark.slow
def test_paper_lite_dry_run_on_the_fake_vtab_tree(fake_vtab, tmp_path):
    cfg = dict(LITE, results=str(tmp_path / "results-lite"))
    cfg["data"] = {**LITE["data"], "root": str(fake_vtab), "manifest": str(fake_vtab / "SHA256SUMS")}
    path = tmp_path / "paper-lite.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path),
                           "--profile", "workflow/profiles/slurm", "--quiet", "rules"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    runs, prunes = expected_runs_and_prunes(LITE)
    assert int(counts["data"]) == 6 and int(counts["finetune"]) == runs and int(counts["prune"]) == prunes
    print(f"paper-lite DAG: {counts['total']} jobs, dry run {seconds:.1f}s")
