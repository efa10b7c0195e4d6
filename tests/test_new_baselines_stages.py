"""Issue 25's arms through the real stages (score → plan → prune → reload → measure) on a tiny task."""

from __future__ import annotations

import json

import pytest

from _helpers import plan_cli as _plan
from _helpers import prune_cli as _prune
from _helpers import score_cli as _score
from petlprune.cli import main
from petlprune.methods import Plan
from petlprune.models.build import load_task_model


def _measure(r, out):
    main(["measure", str(out), "--backbone", str(r["backbone"]), "--image-size", "32", "--batch-sizes", "2",
          "--warmup", "0", "--repeats", "1", "--threads", "1"])
    return json.loads((out / "efficiency.json").read_text())


def _evaluate(r, out):
    from petlprune.data.vtab import VTABDataset, make_loader
    from petlprune.train import evaluate

    model, info = load_task_model(out / "model.pt", r["backbone"])
    test = VTABDataset(r["task"], "test", image_size=32, mean=info["mean"], std=info["std"])
    return model, evaluate(model, make_loader(test, 8, shuffle=False, seed=0))["top1"]


@pytest.mark.parametrize(("name", "options", "budget"), [
    ("last_k", {"recover_last": 1, "bridge": "linear", "bridge_samples": 20}, "d2"),
    ("attn_drop", {"batches": 1}, "s2"),
])
def test_new_arm_end_to_end(run_dir, name, options, budget) -> None:  # noqa: F811
    r = run_dir
    _score(r, name, json.dumps(options), features=r["run"] / "absent.npz")
    plan = Plan.load(_plan(r, name, budget))
    out = r["run"] / "pruned" / f"{name}-{budget}"
    metrics = _prune(r, r["run"] / "plan" / f"{name}-{budget}.json", out)
    model, top1 = _evaluate(r, out)
    assert top1 == pytest.approx(metrics["top1"])  # the stored model is the re-trained one
    eff = _measure(r, out)
    plain = r["run"] / "pruned" / "plain"
    _score(r, "last_k", features=r["run"] / "absent.npz")
    _prune(r, _plan(r, "last_k", "d2"), plain)
    base = _measure(r, plain)
    if name == "last_k":
        block = sum(p.numel() for n, p in model.blocks[1].named_parameters() if ".adapter." not in n and "bridge" not in n)
        # the recovered block and the bridge (d × d) are charged per task, and the bridge runs in the forward
        assert eff["params_stored"] - base["params_stored"] == block + 32 * 32
        assert eff["params_forward"] - base["params_forward"] == 32 * 32 and eff["flops_per_image"] > base["flops_per_image"]
        assert eff["params_trainable"] - base["params_trainable"] == block  # the bridge is not trained
        assert plan.extra == {"recover_last": 1, "bridge": "linear", "bridge_samples": 20}
    else:
        assert plan.extra["dropped_attention"] and len(model.blocks) == 4
        assert all(model.blocks[i].attn is None for i in plan.extra["dropped_attention"])
