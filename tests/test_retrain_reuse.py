"""An identical pruned model is re-trained once (stages/_retrain_reuse.py): the reuse gives what a
re-training gives, and the fingerprint tells apart every model whose re-training could differ."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from _helpers import prune_cli as _prune
from petlprune.methods import Plan
from petlprune.models.build import load_task_model
from petlprune.stages._retrain_reuse import fingerprint

CONTEXT = {"train": {"lr": 0.01}, "seed": 0, "threads": 1, "device": "cpu"}


def _write_plan(r, method: str, budget: str, kept: list[int]):
    path = r["run"] / "plan" / f"{method}-{budget}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    Plan(method, budget, len(kept), kept).save(path)
    return path


def test_a_second_identical_model_takes_the_first_ones_retraining(run_dir) -> None:  # noqa: F811
    r = run_dir
    pruned = r["run"] / "pruned"
    # two methods, one model: every block kept (SLS's a0.3 when it prunes nothing; the unpruned control)
    first = _prune(r, _write_plan(r, "last_k", "d4", [0, 1, 2, 3]), pruned / "last_k-d4")
    second = _prune(r, _write_plan(r, "sls", "a0.3", [0, 1, 2, 3]), pruned / "sls-a0.3")
    prov1, prov2 = first["provenance"], second["provenance"]
    assert prov1["retrain_reused_from"] is None and prov2["retrain_reused_from"] == "last_k-d4"
    assert prov2["retrain_fingerprint"] == prov1["retrain_fingerprint"]
    assert (second["method"], second["budget"]) == ("sls", "a0.3")
    # the premise: re-training the same model again gives bit-identical numbers
    again = _prune(r, r["run"] / "plan" / "sls-a0.3.json", pruned / "sls-again", "--no-reuse")
    assert again["provenance"]["retrain_reused_from"] is None and again["provenance"]["retrain_fingerprint"] is None
    for key in ("top1", "top1_before_retrain", "eval_loss", "eval_loss_before_retrain", "n_eval"):
        assert first[key] == second[key] == again[key], key
    assert [h["loss"] for h in second["history"]] == [h["loss"] for h in again["history"]]
    with np.load(pruned / "sls-a0.3" / "predictions.npz") as a, np.load(pruned / "sls-again" / "predictions.npz") as b:
        assert set(a.files) == set(b.files) and all(np.array_equal(a[f], b[f]) for f in a.files)
    reused, info = load_task_model(pruned / "sls-a0.3" / "model.pt", r["backbone"])
    retrained, _ = load_task_model(pruned / "sls-again" / "model.pt", r["backbone"])
    assert info["plan"]["method"] == "sls"  # saved with its own plan
    for (name, p), (_, q) in zip(reused.state_dict().items(), retrained.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    # another model is re-trained
    other = _prune(r, _write_plan(r, "last_k", "d2", [0, 1]), pruned / "last_k-d2")
    assert other["provenance"]["retrain_reused_from"] is None
    assert other["provenance"]["retrain_fingerprint"] != prov1["retrain_fingerprint"]


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("mask", torch.ones(4))
        self.scale = 1.0


@pytest.mark.parametrize("change", ["value", "requires_grad", "sharing", "buffer", "attribute", "context", "hook"])
def test_the_fingerprint_sees_every_difference_a_retraining_could_see(change: str) -> None:
    model = _Tiny()
    same = copy.deepcopy(model)
    assert fingerprint(model, CONTEXT) == fingerprint(same, CONTEXT)
    context = CONTEXT
    if change == "value":
        with torch.no_grad():
            same.b.weight[0, 0] += 1e-6
    elif change == "requires_grad":
        same.a.bias.requires_grad_(False)
    elif change == "sharing":  # b's weight trained as a's: equal values, another model
        with torch.no_grad():
            same.b.weight.copy_(same.a.weight)
            model.b.weight.copy_(model.a.weight)
        same.b.weight = same.a.weight
    elif change == "buffer":
        same.mask[1] = 0
    elif change == "attribute":
        same.scale = 0.5
    elif change == "context":
        context = {**CONTEXT, "seed": 1}
    elif change == "hook":
        same.a.register_forward_hook(lambda m, i, o: o * 2)
    assert fingerprint(model, CONTEXT) != fingerprint(same, context)

