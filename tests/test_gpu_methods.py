"""Every registered method on a CUDA device: score -> plan -> prune -> measure through the CLI.

The `gpu` tests are parametrised over ``petlprune.methods.available()`` and read each method's
options and first budget from ``smoke.yaml`` (the tiny tier that runs every method); a non-gpu test
fails when a newly registered method has no case here. They are skipped cleanly without CUDA.

The SPA device regression (CUDA masks indexing CPU scores, ``.numpy()`` on CUDA, ``torch.isin`` across
devices) has its own test, on the CPU here and on CUDA where one exists: every tensor ``score``
returns or stores, and every mask ``get_masks`` returns, is on the CPU whatever the model's device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from petlprune.methods import METHOD_MODULES, Budget, Plan, ScoringContext, available, get
from petlprune.methods.spa import density_of

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())
ARCH = "vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 6, "num_heads": 2}
TRAIN = {"epochs": 1, "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 0, "batch_size": 16}


def _cases() -> dict[str, dict]:
    """Registered method -> {petl, options, budget}: smoke.yaml's instance of it (options as the DAG
    passes them: no `method`/`petl`/`draws` keys; a random draw index) and its first budget."""
    cases = {}
    for instance, opts in SMOKE["methods"].items():
        name = opts.get("method", instance)
        options = {k: v for k, v in opts.items() if k not in ("method", "petl", "draws")}
        if "draws" in opts:
            options["draw"] = 0
        cases.setdefault(name, {"petl": opts.get("petl", "adapter"), "options": options,
                                "budget": SMOKE["budgets"][instance][0]})
    return cases


CASES = _cases()
METHODS = sorted(set(available()) | set(METHOD_MODULES))


def test_every_registered_method_has_a_gpu_case():
    """A newly registered method must get a smoke.yaml instance, hence a CUDA pipeline test here."""
    missing = sorted(set(METHODS) - set(CASES))
    assert not missing, f"registered method(s) without a gpu test case (add them to smoke.yaml): {missing}"
    assert set(CASES) <= set(METHODS)


# ------------------------------------------------------------------------------------------------
# The SPA device regression (CPU here; CUDA where one exists)


def _tensors(obj, path="scores"):
    """Every torch tensor inside a nested structure, with where it was found."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", ["spa", "fine_pruning"])
def test_spa_scores_and_masks_stay_on_the_cpu(name, device):
    """On CUDA this crashed before the fix: CUDA masks indexed CPU scores in ``unit_scores``."""
    from petlprune.models.backbone import create_backbone
    from petlprune.models.petl import inject_petl
    from petlprune.models.splora import get_masks, set_masks

    torch.manual_seed(0)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 3}
    model = inject_petl(create_backbone(ARCH, kwargs, num_classes=4), "splora", rank=2).to(device)
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(2)]
    for criterion in ("weight", "taylor"):
        opts = {"criterion": criterion, "densities": [0.5], "step": 0.25, "batches": 1, "recover_batches": 1,
                "recover": {"epochs": 1, "lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0, "batch_size": 6}}
        m = inject_petl(create_backbone(ARCH, kwargs, num_classes=4), "splora", rank=2).to(device)
        ctx = ScoringContext(model=m, loader=loader, device=device, seed=0, options=opts)
        scores = get(name).score(ctx)
        found = list(_tensors({"values": scores.values, "extra": scores.extra}))
        assert all(t.device.type == "cpu" for _, t in found), [p for p, t in found if t.device.type != "cpu"]
        assert all(isinstance(a, np.ndarray) for a in scores.arrays.values())
        assert next(m.parameters()).device.type == device  # the model stayed where it was put
        plan = get(name).plan(scores, Budget.parse("p0.5"))
        pruned = get(name).apply(m, plan)
        assert density_of(pruned)["channels"] == pytest.approx(0.5, abs=0.1)
        masks = get_masks(pruned)
        assert all(v.device.type == "cpu" for v in masks.values())
        set_masks(pruned, {k: v.to(device) for k, v in masks.items()})  # masks on the model's device too
        assert get_masks(pruned).keys() == masks.keys()
    masks = get_masks(model)
    assert all(v.device.type == "cpu" for v in masks.values())


# ------------------------------------------------------------------------------------------------
# Every method on CUDA, through the CLI


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny VTAB-layout task, a random tiny backbone, fine-tuned adapter/splora/splopa models (CUDA)."""
    from _helpers import write_colour_task
    from petlprune.cli import main

    root = tmp_path_factory.mktemp("gpu")
    task = write_colour_task(root / "data" / "colours")
    backbone = root / "backbone" / "tiny.pt"
    main(["pretrain", "--out", str(backbone), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
          "--weights", "random", "--seed", "0", "--threads", "1"])
    runs = {}
    for petl in sorted({c["petl"] for c in CASES.values()}):
        run = root / "runs" / petl
        opts = SMOKE["petl"]["options"].get(petl, {})
        main(["finetune", "--data", str(task), "--backbone", str(backbone), "--petl", petl,
              "--petl-options", json.dumps(opts), "--train", json.dumps(TRAIN), "--seed", "0",
              "--out", str(run / "finetune"), "--device", "cuda"])
        main(["features", "--model", str(run / "finetune" / "model.pt"), "--backbone", str(backbone),
              "--data", str(task), "--split", "train800val200", "--out", str(run / "features.npz"), "--device", "cuda"])
        runs[petl] = run
    return {"task": task, "backbone": backbone, "runs": runs}


def _score_plan(study, petl, method, options, budget, matched=None):
    from petlprune.cli import main

    run = study["runs"][petl]
    model = run / "finetune" / "model.pt"
    scores = run / "score" / f"{method}.json"
    main(["score", "--method", method, "--model", str(model), "--backbone", str(study["backbone"]),
          "--data", str(study["task"]), "--features", str(run / "features.npz"), "--options", json.dumps(options),
          "--seed", "0", "--out", str(scores), "--device", "cuda", "--batch-size", "16"])
    plan = run / "plan" / f"{method}-{budget}.json"
    main(["plan", "--method", method, "--scores", str(scores), "--budget", budget, "--out", str(plan),
          *(["--matched-plan", str(matched)] if budget == "matched" else [])])
    return plan


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_method_runs_score_plan_prune_measure_on_cuda(study, method):
    from petlprune.cli import main

    case = CASES[method]
    matched = None
    if case["budget"] == "matched":
        sls = CASES["sls"]
        matched = _score_plan(study, case["petl"], "sls", sls["options"], sls["budget"])
    plan = _score_plan(study, case["petl"], method, case["options"], case["budget"], matched)
    run = study["runs"][case["petl"]]
    out = run / "pruned" / f"{method}-{case['budget']}"
    main(["prune", "--model", str(run / "finetune" / "model.pt"), "--backbone", str(study["backbone"]),
          "--plan", str(plan), "--data", str(study["task"]), "--train", json.dumps(TRAIN), "--seed", "0",
          "--out", str(out), "--device", "cuda"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["device"].startswith("cuda")
    assert 0.0 <= metrics["top1"] <= 1.0 and np.isfinite(metrics["eval_loss"])
    assert metrics["depth"] == Plan.load(plan).depth
    main(["measure", str(out), "--backbone", str(study["backbone"]), "--image-size", "32",
          "--batch-sizes", "1", "8", "--warmup", "1", "--repeats", "2", "--device", "cuda"])
    eff = json.loads((out / "efficiency.json").read_text())
    assert eff["flops_per_image"] > 0 and all(t["images_per_s"] > 0 for t in eff["throughput"].values())
