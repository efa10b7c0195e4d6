"""Channel-SPA and fine-pruning: criteria against hand computations, the schedule, plan, apply, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from petlprune.measure import plan_cost, stored_params
from petlprune.methods import Budget, Plan, Scores, ScoringContext, get
from petlprune.methods.spa import channel_scores, density_of, prune_step, unit_scores
from petlprune.models.backbone import create_backbone, save_backbone
from petlprune.models.build import build_model, load_task_model, save_task_model
from petlprune.models.petl import inject_petl, mark_trainable
from petlprune.models.splora import channel_groups, get_masks, set_masks, splora_layers
from petlprune.models.surgery import slice_channels

ARCH = "vit_tiny_patch16_224"
TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3)  # head_dim 8, MLP hidden 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = inject_petl(create_backbone(ARCH, TINY, num_classes=4), "splora", rank=2)
    mark_trainable(m)
    with torch.no_grad():
        for layer in splora_layers(m).values():
            layer.adapter.C.normal_(0, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def loader():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(3)]


def _hand_activation_scores(model, loader, criterion):
    """Independent reference: retain_grad on each producer's output, backward, sum of batch means."""
    layers = {"mlp": model.blocks[0].mlp.fc1, "attn": model.blocks[0].attn.qkv}
    total = {k: 0.0 for k in layers}
    for x, y in loader:
        outs = {}

        def keep(mod, inputs, out, k, outs=outs):
            out.retain_grad()
            outs[k] = out

        hooks = [m.register_forward_hook(lambda mod, i, o, k=k: keep(mod, i, o, k)) for k, m in layers.items()]
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for h in hooks:
            h.remove()
        for k, a in outs.items():
            term = a.grad if criterion == "gradient" else a.grad * a
            total[k] = total[k] + term.detach().mean(dim=(0, 1))
    model.zero_grad()
    return {"mlp": total["mlp"].abs(), "attn": total["attn"].abs().reshape(3, -1).sum(0)}


@pytest.mark.parametrize("criterion", ["gradient", "taylor"])
def test_activation_criteria_match_hand_computation(model, loader, criterion):
    got = channel_scores(model, criterion, loader)
    ref = _hand_activation_scores(model, loader, criterion)
    assert torch.allclose(got["blocks.0.mlp"], ref["mlp"], rtol=1e-4, atol=1e-9)
    assert torch.allclose(got["blocks.0.attn"], ref["attn"], rtol=1e-4, atol=1e-9)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())  # no update, no .grad


def test_weight_criterion_and_normalisation(model):
    fc1, qkv = model.blocks[1].mlp.fc1, model.blocks[1].attn.qkv
    w1 = fc1.base.weight + fc1.adapter.C @ fc1.adapter.R
    wq = qkv.base.weight + qkv.adapter.C @ qkv.adapter.R
    got = channel_scores(model, "weight")
    assert torch.allclose(got["blocks.1.mlp"], w1.abs().sum(1), rtol=1e-5)
    assert torch.allclose(got["blocks.1.attn"], wq.abs().sum(1).reshape(3, 24).sum(0), rtol=1e-5)
    units = unit_scores(model, got, "weight")
    assert torch.isclose(units["blocks.1.mlp"].sum(), torch.tensor(1.0))  # L1-normalised per layer
    heads = units["blocks.1.attn"]
    ch = got["blocks.1.attn"] / got["blocks.1.attn"].sum()
    assert torch.allclose(heads, ch.reshape(3, 8).mean(1))  # a head = mean of its channels
    units = unit_scores(model, channel_scores(model, "gradient", [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))]),
                        "gradient")
    assert torch.isclose(units["blocks.0.mlp"].norm(), torch.tensor(1.0))  # L2-normalised per layer


def test_prune_step_is_global_lowest_first_and_keeps_a_unit(model):
    m = copy.deepcopy(model)
    groups = channel_groups(m)
    scores = {n: torch.ones(g["units"]) for n, g in groups.items()}
    scores["blocks.0.mlp"][:5] = 0.0  # the five cheapest
    scores["blocks.1.attn"] = torch.tensor([0.5, 0.5, 0.5])  # heads, 8 channels each, cheaper than the rest
    pruned = prune_step(m, scores, 5 + 16)
    masks = get_masks(m)
    assert pruned == 21 and masks["blocks.0.mlp"][:5].sum() == 0 and masks["blocks.0.mlp"][5:].all()
    assert masks["blocks.1.attn"].tolist() == [0.0, 0.0, 1.0]  # the last head is never pruned
    assert density_of(m)["channels"] == pytest.approx(1 - 21 / (2 * (96 + 24)))


@pytest.mark.parametrize("name", ["spa", "fine_pruning"])
def test_schedule_plan_apply(model, loader, name):
    method = get(name)
    options = {"criterion": "taylor", "densities": [0.5, 0.75], "step": 0.25,
               "recover": {"epochs": 1, "lr": 0.001, "weight_decay": 0.0, "warmup_epochs": 0, "batch_size": 6}}
    work = copy.deepcopy(model)
    before = {k: v.clone() for k, v in work.state_dict().items()}
    scores = method.score(ScoringContext(model=work, loader=loader, options=options))
    assert set(scores.arrays) == {"masks_p0.5", "masks_p0.75"} and len(scores.extra["history"]) == 2
    if name == "spa":  # recovery trained C, R, bias; never W
        after = work.state_dict()
        assert torch.equal(after["blocks.0.mlp.fc1.base.weight"], before["blocks.0.mlp.fc1.base.weight"])
        assert not torch.equal(after["blocks.0.mlp.fc1.adapter.C"], before["blocks.0.mlp.fc1.adapter.C"])
    plan = method.plan(scores, Budget.parse("p0.5"))
    assert plan.extra["density_channels"] == pytest.approx(0.5, abs=8 / 240)
    with pytest.raises(ValueError, match="p0.3"):
        method.plan(scores, Budget.parse("p0.3"))
    plan = Plan.from_dict(Plan(**plan.to_dict()).to_dict())
    fresh = method.apply(copy.deepcopy(model), plan)
    assert density_of(fresh)["channels"] == pytest.approx(plan.extra["density_channels"])
    assert plan_cost(plan) == 1 + -(-sum(g["units"] for g in channel_groups(fresh).values()) // 32)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = fresh.eval()(x)
        sliced = method.deploy(copy.deepcopy(fresh), plan)
        assert torch.allclose(sliced(x), ref, atol=1e-5)


def test_keep_recovered_starts_from_the_schedules_weights_at_the_density(model, loader):
    from petlprune.models.petl import task_state_dict

    options = {"densities": [0.75, 0.5], "step": 0.25, "keep_recovered": True,
               "recover": {"epochs": 1, "lr": 0.01, "weight_decay": 0.0, "warmup_epochs": 0, "batch_size": 6}}
    work = copy.deepcopy(model)
    scores = get("spa").score(ScoringContext(model=work, loader=loader, options=options))
    plan = Plan.from_dict(Plan(**get("spa").plan(scores, Budget.parse("p0.5")).to_dict()).to_dict())  # via JSON
    # p0.5 is the last step: the schedule's weights there are the ones it ends with (recovered once)
    fresh = task_state_dict(get("spa").apply(copy.deepcopy(model), plan))
    reached, tuned = task_state_dict(work), task_state_dict(model)
    assert fresh.keys() == reached.keys()
    assert all(torch.equal(fresh[k], reached[k]) for k in fresh)
    assert not torch.equal(fresh["blocks.0.mlp.fc1.adapter.C"], tuned["blocks.0.mlp.fc1.adapter.C"])
    # p0.75 is reached before any recovery: its weights are the fine-tuned ones
    first = task_state_dict(get("spa").apply(copy.deepcopy(model), get("spa").plan(scores, Budget.parse("p0.75"))))
    assert all(torch.equal(first[k], tuned[k]) for k in first)
    plain = get("spa").score(ScoringContext(model=copy.deepcopy(model), loader=loader,
                                            options={**options, "keep_recovered": False}))
    assert get("spa").plan(plain, Budget.parse("p0.5")).extra["recovered"] is None


def test_fine_pruning_checkpoint_stores_and_reloads_w(tmp_path, loader):
    torch.manual_seed(0)
    source = create_backbone(ARCH, TINY, num_classes=7)
    path = tmp_path / "tiny.pt"
    save_backbone(path, source, timm_model=ARCH, timm_kwargs=TINY, mean=[0.5] * 3, std=[0.5] * 3)
    model = build_model(path, petl="splora", petl_options={"rank": 2}, num_classes=4)
    method = get("fine_pruning")
    masks = {n: [1] * g["units"] for n, g in channel_groups(model).items()}
    masks["blocks.0.mlp"] = [1] * 40 + [0] * 56
    masks["blocks.1.attn"] = [0, 1, 0]
    plan = Plan("fine_pruning", "p0.5", 2, [0, 1], masks=masks)
    model = method.apply(model, plan)
    method.mark_trainable(model, "splora")
    assert model.blocks[0].mlp.fc1.base.weight.requires_grad
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    out = tmp_path / "model.pt"
    save_task_model(out, model, backbone=path, petl="splora", petl_options={"rank": 2}, num_classes=4, plan=plan)
    loaded, _ = load_task_model(out, path)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    stored = stored_params(plan, loaded)
    d = 24
    w_kept = (40 * d + d * 40) + (3 * d * d + d * d) + (3 * 8 * d + d * 8) + (96 * d + d * 96)
    assert stored["backbone"] == w_kept  # the trained W slices; norms and embeddings come from the shared backbone
    assert stored["petl"] == 40 + d + 3 * d + d + 3 * 8 + d + 96 + d  # biases of kept outputs; rank 0


def test_spa_refuses_other_petl_and_bad_options(loader):
    torch.manual_seed(0)
    adapter = inject_petl(create_backbone(ARCH, TINY, num_classes=4), "adapter")
    with pytest.raises(ValueError, match="splora"):
        get("spa").score(ScoringContext(model=adapter, loader=loader))
    with pytest.raises(ValueError, match="unknown option"):
        get("spa").score(ScoringContext(model=adapter, loader=loader, options={"critrion": "weight"}))
    with pytest.raises(ValueError, match="density"):
        get("spa").plan(Scores("spa", []), Budget.parse("d3"))


def test_sliced_flops_drop(model):
    from petlprune.measure import flops

    m = copy.deepcopy(model)
    masks = {n: [1] + [0] * (g["units"] - 1) for n, g in channel_groups(m).items()}
    set_masks(m, masks)
    full = flops(m, (3, 16, 16))
    assert flops(slice_channels(m), (3, 16, 16)) < 0.5 * full


def test_measure_stage_times_the_sliced_model_and_counts_masked_storage(tmp_path):
    from petlprune.cli import main
    from petlprune.io import read_json

    torch.manual_seed(0)
    backbone = tmp_path / "tiny.pt"
    save_backbone(backbone, create_backbone(ARCH, TINY, num_classes=7), timm_model=ARCH, timm_kwargs=TINY,
                  mean=[0.5] * 3, std=[0.5] * 3)
    model = build_model(backbone, petl="splora", petl_options={"rank": 2}, num_classes=4)
    dirs = {"finetune": tmp_path / "finetune", "pruned": tmp_path / "pruned"}
    save_task_model(dirs["finetune"] / "model.pt", model, backbone=backbone, petl="splora",
                    petl_options={"rank": 2}, num_classes=4)
    masks = {n: [1] + [0] * (g["units"] - 1) for n, g in channel_groups(model).items()}
    plan = Plan("spa", "p0.1", 2, [0, 1], masks=masks)
    model = get("spa").apply(model, plan)
    expected = stored_params(plan, model)
    save_task_model(dirs["pruned"] / "model.pt", model, backbone=backbone, petl="splora",
                    petl_options={"rank": 2}, num_classes=4, plan=plan)
    argv = ["measure", "--backbone", str(backbone), "--image-size", "16", "--batch-sizes", "1",
            "--warmup", "1", "--repeats", "2", str(dirs["finetune"]), str(dirs["pruned"])]
    assert main(argv) == 0
    full, pruned = (read_json(dirs[k] / "efficiency.json") for k in ("finetune", "pruned"))
    assert pruned["deployed"] and pruned["params_stored"] == expected["total"]
    assert pruned["stored_breakdown"]["petl"] == expected["petl"] < full["stored_breakdown"]["petl"]
    # deployed forms: the fine-tune fused (plain backbone size), the pruned one sliced
    bb = create_backbone(ARCH, TINY, num_classes=4)
    assert full["params_forward"] == sum(p.numel() for p in bb.parameters())
    assert pruned["params_forward"] < full["params_forward"]
    assert pruned["flops_per_image"] < 0.5 * full["flops_per_image"]
