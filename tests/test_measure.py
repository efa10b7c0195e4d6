"""petlprune.measure: parameter counts, stored parameters, FLOPs, throughput, efficiency.json."""

from __future__ import annotations

import json
import math

import petlprune  # noqa: F401  (before timm: the torchvision compatibility step)

# isort: split
import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from petlprune.measure import (
    count_params,
    flops,
    input_shape_of,
    measure_model,
    peak_memory_mb,
    plan_cost,
    reset_peak_memory,
    stored_params,
    throughput,
)
from petlprune.methods.base import Plan
from petlprune.models.petl import inject_petl, mark_trainable
from petlprune.models.surgery import keep_blocks as keep

# Tiny ViT: 16x16 input, patch 8 -> T = 1 + 4 tokens, d = 12, MLP 48, 2 heads, 3 blocks, 5 classes.
T, D, HID, DEPTH, CLASSES = 5, 12, 48, 3, 5
BLOCK_PARAMS = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * HID + HID) + (HID * D + D)  # 1884
HEAD_PARAMS = D * CLASSES + CLASSES  # 65
STEM_PARAMS = (3 * 8 * 8 * D + D) + D + T * D  # patch conv, cls token, pos embed: 2388
BACKBONE_PARAMS = STEM_PARAMS + DEPTH * BLOCK_PARAMS + 2 * D  # + final norm: 8064
ADAPTER_PARAMS = (D * 8 + 8) + (8 * D + D)  # bottleneck 8: 212
# FLOPs per image, 2 per MAC: patch conv, then per block qkv, q@k^T, attn@v, proj, fc1, fc2; CLS head.
STEM_FLOPS = 2 * (3 * 8 * 8) * D * 4
BLOCK_FLOPS = 2 * T * D * 3 * D + 2 * (2 * T * T * D) + 2 * T * D * D + 2 * (2 * T * D * HID)  # 18480
HEAD_FLOPS = 2 * D * CLASSES


def tiny_vit(petl: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                              embed_dim=D, depth=DEPTH, num_heads=2, num_classes=CLASSES)
    if petl is not None:
        inject_petl(model, petl)
        mark_trainable(model)
    return model.eval()


# ---------------------------------------------------------------------------------------- count_params


def test_count_params_by_hand():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert count_params(model) == {"forward": (4 * 3 + 3) + (3 * 2 + 2), "trainable": 3 * 2 + 2}


def test_count_params_shared_module_counted_once():
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared))["forward"] == 20


def test_count_params_tiny_vit_by_hand():
    assert count_params(tiny_vit()) == {"forward": BACKBONE_PARAMS + HEAD_PARAMS,
                                        "trainable": BACKBONE_PARAMS + HEAD_PARAMS}
    model = tiny_vit("adapter")
    model.blocks[2].mlp.adapter = model.blocks[0].mlp.adapter  # Pear-style sharing: one object
    assert count_params(model) == {"forward": BACKBONE_PARAMS + 2 * ADAPTER_PARAMS + HEAD_PARAMS,
                                   "trainable": 2 * ADAPTER_PARAMS + HEAD_PARAMS}


# ---------------------------------------------------------------------------------------- stored_params


def test_stored_unpruned_adapter_and_linear():
    assert stored_params(None, tiny_vit("adapter")) == {
        "petl": DEPTH * ADAPTER_PARAMS, "head": HEAD_PARAMS, "plan": 0, "backbone": 0,
        "total": DEPTH * ADAPTER_PARAMS + HEAD_PARAMS}
    assert stored_params(None, tiny_vit("linear"))["total"] == HEAD_PARAMS


def test_stored_prefix_plan_is_one_integer():
    plan = Plan("sls", "a0.3", 2, [0, 1])
    got = stored_params(plan, keep(tiny_vit("adapter"), plan.kept_blocks))
    assert got == {"petl": 2 * ADAPTER_PARAMS, "head": HEAD_PARAMS, "plan": 1, "backbone": 0,
                   "total": 2 * ADAPTER_PARAMS + HEAD_PARAMS + 1}


def test_stored_arbitrary_kept_set_costs_one_integer_per_block():
    plan = {"method": "block_influence", "kept_blocks": [0, 2], "sharing": None, "masks": None}
    got = stored_params(plan, keep(tiny_vit("adapter"), [0, 2]))
    assert got["plan"] == 2 and got["total"] == 2 * ADAPTER_PARAMS + HEAD_PARAMS + 2


def test_stored_sharing_map_counts_shared_adapter_once_and_p_integers():
    model = tiny_vit("adapter")
    model.blocks[2].mlp.adapter = model.blocks[0].mlp.adapter
    plan = Plan("pear", "r0.33", DEPTH, [0, 1, 2], sharing={"2": 0})
    got = stored_params(plan, model)
    # kept blocks 0..2 are a prefix (1 integer) + one integer per adapter position (3)
    assert got == {"petl": 2 * ADAPTER_PARAMS, "head": HEAD_PARAMS, "plan": 1 + DEPTH, "backbone": 0,
                   "total": 2 * ADAPTER_PARAMS + HEAD_PARAMS + 1 + DEPTH}


def test_stored_full_finetune_stores_the_backbone_width_pruning_only_its_bits():
    full = stored_params(None, tiny_vit("full"))
    assert full == {"petl": 0, "head": HEAD_PARAMS, "plan": 0, "backbone": BACKBONE_PARAMS,
                    "total": BACKBONE_PARAMS + HEAD_PARAMS}
    # DepGraph's slice of the frozen backbone is re-derived from the shared backbone and its kept
    # channels: the task stores adapters + head + one bit per channel, never the pruned backbone.
    masks = {f"blocks.{i}.mlp.fc1": [1] * 40 + [0] * 8 for i in range(DEPTH)}  # 144 bits -> 5 words
    plan = Plan("depgraph", "d3", DEPTH, [0, 1, 2], masks=masks)
    got = stored_params(plan, tiny_vit("adapter"))
    assert got == {"petl": DEPTH * ADAPTER_PARAMS, "head": HEAD_PARAMS, "plan": 1 + 5,
                   "backbone": 0, "total": DEPTH * ADAPTER_PARAMS + HEAD_PARAMS + 6}
    assert stored_params(plan, tiny_vit("adapter"), stores_backbone=True)["backbone"] == BACKBONE_PARAMS


# ---------------------------------------------------------------------------------------- plan_cost


def test_plan_cost_masks_are_bits_in_32_bit_words(tmp_path):
    assert plan_cost(None) == 0
    inline = {"a": torch.ones(33, dtype=torch.bool), "b": [[1, 0], [0, 1]]}  # 37 bits -> 2 words
    assert plan_cost({"kept_blocks": [0, 1], "masks": inline}) == 1 + 2
    torch.save({"a": torch.ones(64)}, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps({"a": [1] * 65}))
    assert plan_cost({"kept_blocks": [], "masks": str(tmp_path / "m.pt")}) == 1 + 2
    assert plan_cost({"kept_blocks": [3], "masks": "m.json"}, base_dir=tmp_path) == 1 + math.ceil(65 / 32)
    # a sharing map is one integer per adapter position (P = 12), or at least as many as it names
    assert plan_cost({"kept_blocks": [0, 1], "sharing": {"4": 2, "7": 2}}, positions=12) == 1 + 12
    assert plan_cost({"kept_blocks": [0, 1], "sharing": {"4": 2, "7": 2}}) == 1 + 8


def test_plan_cost_bad_input_names_the_culprit(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        plan_cost({"kept_blocks": [0], "masks": str(tmp_path / "nowhere.pt")})
    with pytest.raises(ValueError, match=r"masks\['fc1'\].*0/1"):
        plan_cost({"method": "spa", "kept_blocks": [0], "masks": {"fc1": [0.5, 1]}})


# ---------------------------------------------------------------------------------------- flops


def test_flops_linear_is_2ab_per_image():
    a, b, n = 7, 5, 4
    assert flops(nn.Linear(a, b), (n, a)) == 2 * a * b


def test_flops_tiny_vit_by_hand_and_same_with_unfused_attention():
    model = tiny_vit()
    expected = STEM_FLOPS + DEPTH * BLOCK_FLOPS + HEAD_FLOPS
    assert flops(model, (3, 16, 16)) == expected
    assert flops(model, (2, 3, 16, 16)) == expected
    for block in model.blocks:
        block.attn.fused_attn = False  # explicit matmuls instead of the fused CPU kernel
    assert flops(model, (3, 16, 16)) == expected


def test_flops_of_layer_pruned_vit_drop_by_the_removed_blocks():
    model = tiny_vit("adapter")
    before = flops(model, (3, 16, 16))
    # Reference: one block alone, counted by plain FlopCounterMode with attention as explicit matmuls
    # (torch has no formula for the fused CPU kernel; measure.flops supplies one).
    model.blocks[1].attn.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.blocks[1](torch.zeros(1, T, D))
    block = counter.get_total_flops()
    assert block == BLOCK_FLOPS + 2 * T * D * 8 * 2  # + the adapter's down and up projections
    after = flops(keep(model, [0, 2]), (3, 16, 16))
    assert before - after == block


def test_flops_rejects_bad_shape():
    with pytest.raises(ValueError, match="input_shape"):
        flops(nn.Linear(3, 3), (3,))


# ---------------------------------------------------------------------------------------- time, memory


def test_throughput_returns_positive_numbers_and_restores_the_model():
    model = tiny_vit().train()
    got = throughput(model, 3, warmup=1, repeats=3)
    assert set(got) == {"images_per_s", "latency_ms", "latency_ms_iqr"}
    assert got["images_per_s"] > 0 and got["latency_ms"] > 0 and got["latency_ms_iqr"] >= 0
    assert model.training
    with pytest.raises(ValueError, match="repeats"):
        throughput(model, 1, repeats=0)


def test_input_shape_and_peak_memory():
    assert input_shape_of(tiny_vit()) == (3, 16, 16)
    assert input_shape_of(tiny_vit(), 32) == (3, 32, 32)
    reset_peak_memory()
    assert peak_memory_mb() > 0


@pytest.mark.gpu
def test_throughput_on_cuda_with_events():
    got = throughput(tiny_vit(), 4, warmup=2, repeats=5, device="cuda")
    assert got["images_per_s"] > 0 and got["latency_ms"] > 0


# ---------------------------------------------------------------------------------------- measure_model


def test_measure_model_writes_the_contract_format():
    plan = Plan("sls", "a0.3", 2, [0, 1])
    model = keep(tiny_vit("adapter"), plan.kept_blocks)
    got = measure_model(model, image_size=16, batch_sizes=(1, 2), plan=plan.to_dict(), warmup=1, repeats=2)
    json.dumps(got, allow_nan=False)
    assert {"params_forward", "params_trainable", "params_stored", "stored_breakdown", "flops_per_image",
            "throughput", "threads", "device", "peak_memory_mb"} <= set(got)
    assert got["params_forward"] == BACKBONE_PARAMS - BLOCK_PARAMS + 2 * ADAPTER_PARAMS + HEAD_PARAMS
    assert got["params_trainable"] == 2 * ADAPTER_PARAMS + HEAD_PARAMS
    assert got["params_stored"] == 2 * ADAPTER_PARAMS + HEAD_PARAMS + 1
    assert got["stored_breakdown"] == {"petl": 2 * ADAPTER_PARAMS, "head": HEAD_PARAMS, "plan": 1, "backbone": 0}
    assert set(got["throughput"]) == {"1", "2"}
    assert got["threads"] == torch.get_num_threads() and got["device"] == "cpu"


# ------------------------------------------------- one storage convention, recomputed per method
# For each method: score -> plan -> apply -> save a task checkpoint -> `petlprune measure`; then the
# stored count is recomputed here from the checkpoint's own tensors and the Plan's bits alone.

_KW = {"img_size": 16, "patch_size": 8, "embed_dim": 12, "depth": 3, "num_heads": 2}
_METHODS = {  # method -> (PETL, PETL options, method options, budget)
    "last_k": ("adapter", {}, {}, "d2"),
    "random": ("adapter", {}, {"draw": 0}, "d2"),
    "depgraph": ("adapter", {}, {"batches": 1}, "d2"),
    "pear": ("adapter", {}, {"batches": 1}, "r0.5"),
    "adapter_drop": ("adapter", {}, {"batches": 1}, "r0.5"),
    "spa": ("splora", {"rank": 2}, {"densities": [0.5], "step": 0.25, "batches": 1, "recover_batches": 1,
                                    "recover": {"epochs": 1, "lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0,
                                                "batch_size": 8}}, "p0.5"),
    "fine_pruning": ("splora", {"rank": 2}, {"densities": [0.5], "step": 0.25, "batches": 1, "recover_batches": 1,
                                             "recover": {"epochs": 1, "lr": 1e-3, "weight_decay": 0.0,
                                                         "warmup_epochs": 0, "batch_size": 8}}, "p0.5"),
}


def _splora_kept(plan: dict, state: dict) -> dict[str, tuple[int, int]]:
    """{SPLoRA layer: (kept output rows, kept input columns)} from the Plan's unit masks and tensor shapes."""
    kept = {}
    for group, bits in (plan.get("masks") or {}).items():
        units = sum(int(b) for b in bits)
        if group.endswith(".mlp"):
            fc1, fc2 = f"{group}.fc1", f"{group}.fc2"
            kept[fc1] = (units, state[f"{fc1}.adapter.R"].shape[1])
            kept[fc2] = (state[f"{fc2}.adapter.C"].shape[0], units)
        else:  # heads: every channel of a kept head, q, k and v rows of qkv
            qkv, proj = f"{group}.qkv", f"{group}.proj"
            head_dim = state[f"{qkv}.adapter.C"].shape[0] // (3 * len(bits))
            kept[qkv] = (3 * head_dim * units, state[f"{qkv}.adapter.R"].shape[1])
            kept[proj] = (state[f"{proj}.adapter.C"].shape[0], head_dim * units)
    return kept


def _recomputed_stored(ckpt: dict) -> int:
    plan, state = ckpt["plan"], ckpt["state_dict"]
    layers = _splora_kept(plan, state) if ckpt["petl"] == "splora" else {}
    total = 0
    for name, t in state.items():
        layer, _, leaf = name.rpartition(".")
        layer = layer.removesuffix(".adapter").removesuffix(".base")
        if layer in layers and (leaf in ("C", "R") or name.endswith(("adapter.bias", "base.weight"))):
            n_out, n_in = layers[layer]
            if leaf == "C":  # (out, r)
                total += n_out * t.shape[1]
            elif leaf == "R":  # (r, in)
                total += t.shape[0] * n_in
            else:  # the adapter's bias: kept outputs; fine-pruning's trained W: kept rows x columns
                total += n_out if leaf == "bias" else n_out * n_in
        else:
            total += t.numel()
    kept = plan["kept_blocks"]
    total += 1 if kept == list(range(len(kept))) else len(kept)  # a prefix is its depth
    if plan.get("sharing"):
        total += len(plan["scores"])  # one serving position per adapter position
    bits = sum(len(b) for b in (plan.get("masks") or {}).values())
    return total + math.ceil(bits / 32)


@pytest.fixture(scope="module")
def stored_runs(tmp_path_factory):
    from petlprune.cli import main
    from petlprune.io import load_checkpoint, read_json
    from petlprune.methods import Budget, ScoringContext, get
    from petlprune.models.backbone import create_backbone, save_backbone
    from petlprune.models.build import build_model, load_task_model, save_task_model

    tmp = tmp_path_factory.mktemp("stored")
    torch.manual_seed(0)
    backbone = tmp / "backbone.pt"
    save_backbone(backbone, create_backbone("vit_tiny_patch16_224", _KW, num_classes=1),
                  timm_model="vit_tiny_patch16_224", timm_kwargs=_KW, mean=[0.5] * 3, std=[0.5] * 3)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 16, 16), torch.arange(16) % CLASSES)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    runs = {}
    for method, (petl, petl_opts, opts, budget) in _METHODS.items():
        model = build_model(backbone, petl=petl, petl_options=petl_opts, num_classes=CLASSES)
        m = get(method)
        scores = m.score(ScoringContext(model=model, loader=loader, options=opts, seed=0))
        plan = m.plan(scores, Budget.parse(budget))
        model = m.apply(build_model(backbone, petl=petl, petl_options=petl_opts, num_classes=CLASSES), plan)
        out = tmp / method
        save_task_model(out / "model.pt", model, backbone=backbone, petl=petl, petl_options=petl_opts,
                        num_classes=CLASSES, plan=plan)
        assert main(["measure", "--backbone", str(backbone), "--image-size", "16", "--batch-sizes", "1",
                     "--warmup", "0", "--repeats", "1", str(out)]) == 0
        loaded, info = load_task_model(out / "model.pt", backbone)
        deploy = getattr(m, "deploy", None)
        as_model = deploy(loaded, plan) if deploy else loaded
        runs[method] = (load_checkpoint(out / "model.pt"), read_json(out / "efficiency.json"),
                        sum(p.numel() for p in as_model.parameters()))
    return runs


@pytest.mark.parametrize("method", list(_METHODS))
def test_stored_params_recomputed_from_the_checkpoint_and_plan_bits(stored_runs, method):
    ckpt, eff, forward = stored_runs[method]
    assert eff["params_stored"] == _recomputed_stored(ckpt)
    assert eff["stored_breakdown"]["backbone"] == (
        sum(n * i for n, i in _splora_kept(ckpt["plan"], ckpt["state_dict"]).values()) if method == "fine_pruning" else 0
    )  # a frozen backbone is never charged; fine-pruning's trained W slices are
    if method in ("depgraph", "spa", "fine_pruning"):  # they change the backbone's shapes
        assert eff["params_stored_as_model"] == forward > eff["params_stored"]
    else:
        assert eff["params_stored_as_model"] is None
