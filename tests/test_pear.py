"""Pear and adapter_drop: importance, pruning by ratio, sharing rules, weight tying, knowledge checkpoint,
stored parameters, and the prune stage end to end with the distillation teacher."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from petlprune.cli import main
from petlprune.data.writer import write_split_folder
from petlprune.measure import plan_cost, stored_params
from petlprune.methods import Budget, Plan, Scores, ScoringContext, get
from petlprune.methods.pear import (
    distillation_loss,
    kc_init_weights,
    positions_to_prune,
    sharing_map,
)
from petlprune.models.build import build_model, load_task_model, save_task_model
from petlprune.models.petl import task_state_dict
from petlprune.models.surgery import adapter_positions

ARCH = "vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
SPEC = {"timm_model": ARCH, "timm_kwargs": TINY}
CLASSES = 3


def tiny_model(petl: str = "adapter", seed: int = 0) -> torch.nn.Module:
    """A random tiny ViT with adapters whose weights are all non-zero (as after fine-tuning)."""
    torch.manual_seed(seed)
    model = build_model(None, petl=petl, num_classes=CLASSES, spec=SPEC)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for w in adapter_positions(model):
            for p in w.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()  # eval: no dropout, so two forward passes are comparable


def batches(n: int = 3, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=gen), torch.randint(0, CLASSES, (size,), generator=gen))
            for _ in range(n)]


def pear_plan(model, method: str = "pear", budget: str = "r0.5", **options) -> Plan:
    m = get(method)
    scores = m.score(ScoringContext(model=model, loader=batches(), options={"batches": 2, **options}))
    return m.plan(scores, Budget.parse(budget))


def adapter_params(model) -> int:
    return sum(p.numel() for p in adapter_positions(model)[0].adapter.parameters())


# ------------------------------------------------------------------------------------ plan rules


def test_positions_to_prune_removes_ratio_of_params_least_important_first():
    imp = [5.0, 1.0, 3.0, 0.5, 4.0, 2.0]
    assert positions_to_prune(imp, [10] * 6, 0.5) == [1, 3, 5]
    # 0.75 of 60 = 45: after 1, 3, 5, 2 only 40 are gone, so 4 goes too (at least rho is removed)
    assert positions_to_prune(imp, [10] * 6, 0.75) == [1, 2, 3, 4, 5]
    assert positions_to_prune(imp, [10] * 6, 0.0) == []
    # ties: the deeper goes first; the last adapter is never pruned
    assert positions_to_prune([1.0, 1.0, 1.0], [1, 1, 1], 0.3) == [2]
    assert positions_to_prune([1.0, 2.0], [1, 1], 0.99) == [0]
    with pytest.raises(ValueError, match="rho"):
        positions_to_prune(imp, [10] * 6, 1.0)


def test_sharing_rules():
    imp = [1.0, 9.0, 0.0, 0.1, 3.0, 0.2]
    pruned = [2, 3, 5]  # kept: 0, 1, 4
    assert sharing_map(imp, pruned, "most_important") == {2: 1, 3: 1, 5: 1}
    # nearest: 2 -> 1 (distance 1; 4 is 2 away), 3 -> 4 (1 away; 1 is 2 away), 5 -> 4
    assert sharing_map(imp, pruned, "nearest") == {2: 1, 3: 4, 5: 4}
    # a tie in distance goes to the shallower kept adapter
    assert sharing_map([1.0, 0.0, 1.0], [1], "nearest") == {1: 0}
    assert sharing_map(imp, pruned, "none") == {}


def test_kc_init_weights_are_normalised_importances():
    w = kc_init_weights([3.0, 1.0, 0.0, 0.0], {1: 0, 3: 2})
    assert w == {0: {0: 0.75, 1: 0.25}, 2: {2: 0.5, 3: 0.5}}  # all-zero importances: uniform


def test_plan_keeps_every_block_and_records_choices():
    model = tiny_model()
    plan = pear_plan(model, share="nearest", kc="init")
    assert plan.depth == 4 and plan.kept_blocks == [0, 1, 2, 3]
    assert len(plan.sharing) == 2 and plan.extra["removed_fraction"] == 0.5
    assert set(map(int, plan.sharing)) == set(plan.extra["pruned_positions"])
    assert plan.extra["kc"] == "init" and set(plan.extra["kc_init_weights"]) == {str(q) for q in plan.sharing.values()}
    # a JSON round trip gives the same plan (the plan stage writes it, the prune stage reads it)
    assert Plan.from_dict(json.loads(str(plan))) == plan
    with pytest.raises(ValueError, match="ratio budget"):
        get("pear").plan(Scores("pear", plan.scores, {}), Budget.parse("d2"))


def test_option_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="share"):
        pear_plan(model, share="random")
    with pytest.raises(ValueError, match="init"):
        pear_plan(model, share="none", kc="init")
    with pytest.raises(ValueError, match="unknown option"):
        pear_plan(model, method="adapter_drop", share="nearest")


# ------------------------------------------------------------------------ acceptance: importance


@pytest.mark.parametrize("variant", [{}, {"elementwise": True}, {"normalize": True}])
def test_importance_ranks_a_zeroed_adapter_last(variant):
    model = tiny_model()
    with torch.no_grad():
        for p in adapter_positions(model)[2].adapter.parameters():
            p.zero_()
    m = get("pear")
    scores = m.score(ScoringContext(model=model, loader=batches(), options={"batches": 3, **variant}))
    values = scores.values
    assert len(values) == 4 and scores.extra["positions"] == [f"blocks.{i}.mlp" for i in range(4)]
    assert values[2] == 0.0 and min(v for i, v in enumerate(values) if i != 2) > 0.0
    # and so it is the first one pruned
    assert m.plan(scores, Budget.parse("r0.25")).extra["pruned_positions"] == [2]


def test_importance_matches_an_independent_taylor_estimate():
    """|Σ θ·∂L/∂θ| of one adapter, computed here with .backward() on the mean loss of all samples."""
    model = tiny_model()
    data = batches(2)
    scores = get("pear").score(ScoringContext(model=model, loader=data, options={"batches": 2}))
    ref = copy.deepcopy(model)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    F.cross_entropy(ref(x), y).backward()
    for i, w in enumerate(adapter_positions(ref)):
        want = abs(sum(float((p.detach() * p.grad).sum()) for p in w.adapter.parameters()))
        assert scores.values[i] == pytest.approx(want, rel=1e-4)


# ---------------------------------------------------------------------- acceptance: weight tying


def test_shared_adapter_is_one_object_with_the_sum_of_position_gradients():
    model = tiny_model()
    x, y = batches(1)[0]
    plan = pear_plan(model, share="most_important", kc="none")
    pruned = [int(p) for p in plan.sharing]
    server = plan.sharing[str(pruned[0])]
    assert all(q == server for q in plan.sharing.values())

    # the reference: untied, each pruned position holds its own COPY of the server's weights
    ref = copy.deepcopy(model)
    ref_pos = adapter_positions(ref)
    for p in pruned:
        ref_pos[p].adapter.load_state_dict(ref_pos[server].adapter.state_dict())
    F.cross_entropy(ref(x), y).backward()

    shared = get("pear").apply(model, plan)
    pos = adapter_positions(shared)
    assert all(pos[p].adapter is pos[server].adapter for p in pruned)
    assert len({id(w.adapter) for w in pos}) == len(pos) - len(pruned)
    torch.testing.assert_close(shared(x), ref(x))  # tying changes nothing but the storage
    F.cross_entropy(shared(x), y).backward()
    for name, param in pos[server].adapter.named_parameters():
        want = sum(dict(ref_pos[p].adapter.named_parameters())[name].grad for p in [server, *pruned])
        torch.testing.assert_close(param.grad, want)


def test_kc_init_averages_weights_and_reloads_from_the_plan(tmp_path):
    model = tiny_model()
    before = [{k: v.clone() for k, v in w.adapter.state_dict().items()} for w in adapter_positions(model)]
    plan = pear_plan(model, share="nearest", kc="init")
    pruned_model = get("pear").apply(model, plan)
    pos = adapter_positions(pruned_model)
    for q, members in plan.extra["kc_init_weights"].items():
        for name, value in pos[int(q)].adapter.state_dict().items():
            want = sum(w * before[int(m)][name] for m, w in members.items())
            torch.testing.assert_close(value, want)
    with torch.no_grad():  # "re-training" moves the weights away from the average
        for p in pruned_model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    x = batches(1)[0][0]
    path = tmp_path / "model.pt"
    save_task_model(path, pruned_model, backbone=None, petl="adapter", petl_options=None, num_classes=CLASSES,
                    plan=plan)
    torch.manual_seed(0)  # the same random backbone
    reloaded, info = load_task_model(path, None, spec=SPEC)
    torch.testing.assert_close(reloaded(x), pruned_model(x))
    rpos = adapter_positions(reloaded)
    assert all(rpos[int(p)].adapter is rpos[q].adapter for p, q in plan.sharing.items())


def test_kc_scale_only_rescales_each_serving_adapter_by_its_kc_init_weight():
    """The damping control: the same plan as kc-init, but every serving adapter is only multiplied by
    the weight kc-init gives that adapter itself; nothing of the adapters it replaces enters it."""
    model, ref = tiny_model(), tiny_model()
    before = [{k: v.clone() for k, v in w.adapter.state_dict().items()} for w in adapter_positions(model)]
    scale_plan = pear_plan(model, share="nearest", kc="scale")
    init_plan = pear_plan(ref, share="nearest", kc="init")
    assert scale_plan.sharing == init_plan.sharing  # the same importance, the same decision
    assert scale_plan.extra["kc_init_weights"] == init_plan.extra["kc_init_weights"]
    pos = adapter_positions(get("pear").apply(model, scale_plan))
    serving = {int(q): ws for q, ws in scale_plan.extra["kc_init_weights"].items()}
    assert serving and all(0 < ws[str(q)] < 1 for q, ws in serving.items())
    for p in range(len(pos)):
        q = int(scale_plan.sharing.get(str(p), p))  # the adapter now running at position p
        factor = serving[q][str(q)] if q in serving else 1.0  # a kept adapter that serves nobody: untouched
        for name, value in pos[p].adapter.state_dict().items():
            torch.testing.assert_close(value, factor * before[q][name], rtol=0, atol=0)
    # and it is not kc-init: the served adapters' weights are not averaged in
    init_pos = adapter_positions(get("pear").apply(ref, init_plan))
    q = next(iter(serving))
    assert any(not torch.allclose(v, init_pos[q].adapter.state_dict()[k]) for k, v in pos[q].adapter.state_dict().items())


def test_adapter_drop_removes_adapters():
    model = tiny_model()
    plan = pear_plan(model, method="adapter_drop")
    assert plan.sharing is None and plan.extra["share"] == "none"
    dropped = get("adapter_drop").apply(model, plan)
    pos = adapter_positions(dropped)
    assert [i for i, w in enumerate(pos) if w.adapter is None] == plan.extra["pruned_positions"]


# --------------------------------------------------------------------- acceptance: stored params


@pytest.mark.parametrize("method", ["pear", "adapter_drop"])
def test_stored_params_shrink_by_exactly_the_pruned_adapters(method):
    model = tiny_model()
    full = stored_params(None, model)
    per_adapter = 32 * 8 + 8 + 8 * 32 + 32  # down (d x b) + bias, up (b x d) + bias
    assert adapter_params(model) == per_adapter and full["petl"] == 4 * per_adapter and full["plan"] == 0
    plan = pear_plan(model, method=method)
    pruned_model = get(method).apply(model, plan)
    got = stored_params(plan, pruned_model)
    n_pruned = len(plan.extra["pruned_positions"])
    # the map: one integer per adapter position (pear) or one packed bit per position (adapter_drop),
    # plus the depth (every block kept: a prefix)
    map_cost = 1 + (4 if method == "pear" else math.ceil(4 / 32))
    assert plan_cost(plan, positions=4) == map_cost
    assert got["petl"] == full["petl"] - n_pruned * per_adapter
    assert got["head"] == full["head"]
    assert got["total"] == full["total"] - n_pruned * per_adapter + map_cost
    # and the saved task weights hold exactly that many parameters
    assert sum(t.numel() for t in task_state_dict(pruned_model).values()) == got["petl"] + got["head"]


def test_convpass_two_positions_per_block():
    model = tiny_model("convpass")
    plan = pear_plan(model, share="nearest")
    assert plan.extra["positions"][:2] == ["blocks.0.attn", "blocks.0.mlp"] and len(plan.scores) == 8
    shared = get("pear").apply(model, plan)
    assert len({id(w.adapter) for w in adapter_positions(shared)}) == 4


# ------------------------------------------------------------------- acceptance: distillation


def test_distillation_loss_matches_reference():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 0])
    T, lam = 2.0, 0.3
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    want = (1 - lam) * F.cross_entropy(s, y) + lam * T * T * kl
    torch.testing.assert_close(distillation_loss(s, t, y, T, lam), want)


def test_retrain_loss_only_for_distill_and_refuses_a_trainable_teacher():
    model = tiny_model()
    calls = []
    assert get("pear").retrain_loss(pear_plan(model, kc="none"), lambda: calls.append(1)) is None
    assert not calls  # the teacher is not even loaded
    with pytest.raises(ValueError, match="frozen"):
        get("pear").retrain_loss(pear_plan(model, kc="distill"), lambda: tiny_model())


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """A tiny task, random tiny backbone, fine-tuned adapters: the CLI as the workflow calls it."""
    root = tmp_path_factory.mktemp("pear")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    colours = rng.integers(0, 256, size=(3, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 50, (60, 32, 32, 3)), 0, 255).astype(np.uint8)
    task = root / "data" / "colours"
    write_split_folder(task, images, labels,
                       {"train800": np.arange(30), "val200": np.arange(30, 36),
                        "train800val200": np.arange(36), "test": np.arange(36, 60)},
                       ["r", "g", "b"], {"seed": 0, "kind": "embedded", "description": "test colours"})
    backbone = root / "backbone" / "tiny.pt"
    main(["pretrain", "--out", str(backbone), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
          "--weights", "random", "--seed", "0", "--threads", "1"])
    run = root / "run"
    train = {"epochs": 1, "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 0, "batch_size": 12}
    main(["finetune", "--data", str(task), "--backbone", str(backbone), "--petl", "adapter",
          "--train", json.dumps(train), "--seed", "0", "--out", str(run / "finetune"), "--threads", "1"])
    return {"task": task, "backbone": backbone, "run": run, "train": train}


@pytest.mark.slow
def test_prune_stage_distills_from_a_frozen_teacher_that_is_not_stored(stage_run, monkeypatch):
    r = stage_run
    model_pt = r["run"] / "finetune" / "model.pt"
    scores, plan_path, out = r["run"] / "score.json", r["run"] / "plan.json", r["run"] / "pruned"
    main(["score", "--method", "pear", "--model", str(model_pt), "--backbone", str(r["backbone"]),
          "--data", str(r["task"]), "--features", str(r["run"] / "none.npz"),
          "--options", json.dumps({"share": "nearest", "kc": "distill", "batches": 2}),
          "--seed", "0", "--out", str(scores), "--threads", "1"])
    main(["plan", "--method", "pear", "--scores", str(scores), "--budget", "r0.5", "--out", str(plan_path)])

    from petlprune.methods.pear import Pear

    seen = {}
    original = Pear.retrain_loss

    def spy(self, plan, teacher):
        def watched():
            seen["teacher"] = teacher()
            return seen["teacher"]

        loss = original(self, plan, watched)

        def counted(logits, y, x):
            seen["calls"] = seen.get("calls", 0) + 1
            return loss(logits, y, x)

        return counted

    monkeypatch.setattr(Pear, "retrain_loss", spy)
    main(["prune", "--model", str(model_pt), "--backbone", str(r["backbone"]), "--plan", str(plan_path),
          "--data", str(r["task"]), "--train", json.dumps(r["train"]), "--seed", "0", "--out", str(out),
          "--threads", "1"])
    teacher = seen["teacher"]
    assert seen["calls"] == 3  # every re-training step used the distillation loss
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["depth"] == 4 and metrics["method"] == "pear"
    # the stored checkpoint: exactly the pruned task's weights, nothing of the teacher
    ckpt = torch.load(out / "model.pt", weights_only=True)
    pruned, _ = load_task_model(out / "model.pt", r["backbone"])
    assert set(ckpt["state_dict"]) == set(task_state_dict(pruned))
    stored = stored_params(Plan.from_dict(ckpt["plan"]), pruned)
    assert sum(t.numel() for t in ckpt["state_dict"].values()) == stored["petl"] + stored["head"]
    assert stored["petl"] == 2 * adapter_params(pruned)  # 2 of 4 adapters kept, each stored once


# ------------------------------------------------------------------------------------ report


def test_ablation_table_and_selection_known_answer():
    import pandas as pd

    from petlprune.report.pear_section import ablation_table, select_variant

    rows = [  # two tasks, two seeds of one variant on task a
        ("a", 0, "nearest", "init", 0.5, 80.0), ("a", 1, "nearest", "init", 0.5, 82.0),
        ("b", 0, "nearest", "init", 0.5, 60.0),
        ("a", 0, "none", "none", 0.5, 70.0), ("b", 0, "none", "none", 0.5, 50.0),
    ]
    df = pd.DataFrame(rows, columns=["task", "seed", "share", "kc", "rho", "top1"]).assign(eval_split="val200")
    table = ablation_table(df)
    assert list(table["share"]) == ["nearest", "none"]
    first = table.iloc[0]
    assert first["a"] == "81.0 ± 1.4" and first["b"] == "60.0"
    assert first["mean over tasks"] == "70.5 ± 14.8"  # mean of 81 and 60, std of the two task means
    ranked = select_variant(df)
    assert list(ranked["kc"]) == ["init", "none"] and ranked["mean"].iloc[0] == pytest.approx(70.5)
    with pytest.raises(ValueError, match="val200"):
        select_variant(df.assign(eval_split="test"))


@pytest.mark.slow
def test_section_figures_from_a_results_tree(stage_run, tmp_path):
    """The Pear section draws importance, the sharing map and the ablation from a run directory."""
    from petlprune.report.load import RunDir
    from petlprune.report.sections import method_section

    r = stage_run
    run = tmp_path / "runs" / "colours" / "adapter" / "seed0"
    model_pt = r["run"] / "finetune" / "model.pt"
    (run / "pruned" / "pear_x-r0.5").mkdir(parents=True)
    main(["score", "--method", "pear", "--model", str(model_pt), "--backbone", str(r["backbone"]),
          "--data", str(r["task"]), "--features", str(run / "none.npz"), "--options", '{"batches": 1}',
          "--seed", "0", "--out", str(run / "score" / "pear_x.json"), "--threads", "1"])
    main(["plan", "--method", "pear", "--scores", str(run / "score" / "pear_x.json"), "--budget", "r0.5",
          "--out", str(run / "plan" / "pear_x-r0.5.json")])
    (run / "pruned" / "pear_x-r0.5" / "metrics.json").write_text(json.dumps(
        {"task": "colours", "petl": "adapter", "seed": 0, "top1": 0.5, "top1_before_retrain": 0.4, "depth": 4}))
    figures = method_section(RunDir(run, "colours", "adapter", 0), "pear_x")  # an instance of pear
    titles = [t for t, _ in figures]
    assert titles[0].startswith("Importance per adapter position") and "Sharing map over the blocks" in titles
    assert any(t.startswith("Every Pear variant") for t in titles)
