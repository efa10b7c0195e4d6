"""SGLP's GradNorm in the official context (methods/sglp_gradnorm.py), against the recipe written out.

The recipe (itsnotacie/information-fusion-SGLP: Reassembly.py replace_layer_initialization,
zero_nas/__init__.py get_score, zero_nas/grad_norm.py): a randomly initialised full-depth network with
a random head, only the candidate's blocks loaded with their trained weights, train mode, per batch
zero_grad + CE + backward + sqrt(Σ ||grad||²) over all parameters, the mean over batches, the largest
G kept. Ours draws that random network once from a seed and resets to it for every candidate.
"""

from __future__ import annotations

import copy
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import SGLP_DEPTH as DEPTH
from _helpers import make_context, reference_finetuned, two_batches
from _helpers import sglp_tiny_vit as tiny_vit
from petlprune.methods import Budget, get
from petlprune.methods.sglp import DEFAULTS, GradNormScorer, gradnorm, keep_counts
from petlprune.methods.sglp_gradnorm import random_init


def official_reference(model: nn.Module, keep: list[int], batches, seed: int) -> float:
    """The recipe, written independently: random init of a copy from the seed, the candidate blocks'
    entries of the fine-tuned state dict copied over (PETL modules included), train mode, every weight
    unfrozen, .backward() per batch after zero_grad, the norm of the .grad fields, averaged."""
    net = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            net.init_weights()  # timm's ViT init: embeddings, every block, norm, head (a random head)
    state = net.state_dict()
    trained = model.state_dict()
    prefixes = tuple(f"blocks.{i}." for i in keep)
    state.update({k: v for k, v in trained.items() if k.startswith(prefixes)})
    net.load_state_dict(state)
    net.requires_grad_(True).train()
    norms = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the dropout stream of this candidate
        for x, y in batches:
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            square = torch.stack([p.grad.double().pow(2).sum() for p in net.parameters() if p.grad is not None]).sum()
            norms.append(square.sqrt().item())
    return float(np.mean(norms))


@pytest.mark.parametrize("keep", [[0, 1, 2, 3, 4, 5], [1, 3, 4], [5], []])
def test_official_gradnorm_equals_recipe(keep: list[int]) -> None:
    model, batches = tiny_vit(), two_batches()
    expected = official_reference(model, keep, batches, seed=7)
    assert gradnorm(model, set(keep), batches, context="official", seed=7) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_official_order_does_not_matter() -> None:
    """Two candidates, scored in either order on one scorer (or alone), give identical G."""
    model, batches = tiny_vit(), two_batches()
    a, b = [0, 2], [1, 5]
    ab = GradNormScorer(model, batches, seed=3)
    first = (ab.evaluate(a)["gradnorm"], ab.evaluate(b)["gradnorm"])
    ba = GradNormScorer(model, batches, seed=3)
    second_b, second_a = ba.evaluate(b)["gradnorm"], ba.evaluate(a)["gradnorm"]
    assert first == (second_a, second_b)
    assert first == (gradnorm(model, a, batches, seed=3), gradnorm(model, b, batches, seed=3))
    assert first[0] != first[1]
    # the official code's network without the reset: b scored after a still holds a's blocks
    leaky = official_reference(model, sorted({*a, *b}), batches, seed=3)
    assert leaky != pytest.approx(first[1], rel=1e-6)


def test_official_ignores_trained_head_and_blocks_outside_keep() -> None:
    """Only the candidate's blocks come from the fine-tuned model: its head and its other blocks do not count."""
    model, batches = tiny_vit(), two_batches()
    g = gradnorm(model, [1, 4], batches, seed=0)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in changed.named_parameters():
            if name.startswith(("head.", "blocks.0.", "blocks.2.", "blocks.3.", "blocks.5.", "patch_embed.", "norm.")):
                p.add_(1.0)
    assert gradnorm(changed, [1, 4], batches, seed=0) == g
    with torch.no_grad():
        changed.blocks[4].mlp.adapter.up.weight.add_(1.0)  # a kept block's PETL module does count
    assert gradnorm(changed, [1, 4], batches, seed=0) != g
    assert gradnorm(model, [1, 4], batches, seed=1) != g  # another initialisation, another G


def test_random_init_redraws_every_weight() -> None:
    model = tiny_vit()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.37)  # no initial value is this
    net = random_init(model, seed=0)
    same = [n for (n, p), q in zip(model.named_parameters(), net.parameters(), strict=True) if torch.equal(p, q)]
    assert same == []
    assert all(p.requires_grad for p in net.parameters())
    again = random_init(model, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters(), strict=True))


@pytest.mark.parametrize(("pick", "field", "better"), [("smallest_g", 0, min), ("lowest_loss", 1, min), ("largest_g", 0, max)])
def test_finetuned_ablation_rule(pick: str, field: int, better) -> None:
    """context: finetuned keeps, per segment, the subset the rule prefers among all subsets of its size,
    each scored inside the fine-tuned network holding the other segments whole."""
    method = get("sglp")
    ctx = make_context(k=2, depths=[3], context="finetuned", pick=pick)
    scores = method.score(ctx)
    assert scores.extra["pick"] == pick and scores.extra["context"] == "finetuned"
    plan = method.plan(scores, Budget.parse("d3"))
    batches = [(x, y) for x, y in list(ctx.loader)[:2]]
    segments = [tuple(s) for s in scores.extra["segments"]]
    for (a, b), r in zip(segments, keep_counts([e - s for s, e in segments], 3), strict=True):
        if 0 < r < b - a:
            others = [i for i in range(DEPTH) if not a <= i < b]
            best = better(combinations(range(a, b), r),
                          key=lambda c: reference_finetuned(ctx.model, sorted([*others, *c]), batches, seed=0)[field])
            assert [i for i in plan.kept_blocks if a <= i < b] == list(best)


def test_finetuned_default_pick_is_lowest_loss() -> None:
    assert get("sglp").check_options({"context": "finetuned"})["pick"] is None
    scores = get("sglp").score(make_context(k=2, depths=[3], context="finetuned"))
    assert scores.extra["pick"] == "lowest_loss"


def test_check_options() -> None:
    opts = get("sglp").check_options({"context": "official", "init_seed": 4, "depths": [5, 2, 5]})
    assert opts["gradnorm_batches"] == 2 and opts["init_seed"] == 4 and opts["depths"] == [2, 5]
    assert get("sglp").check_options({}) == DEFAULTS
    for raw, key in (({"contxt": "official"}, "contxt"), ({"context": "alone"}, "context"),
                     ({"pick": "max"}, "pick"), ({"init_seed": "0"}, "init_seed"),
                     ({"gradnorm_batches": True}, "gradnorm_batches"), ({"k": "3"}, "k")):
        with pytest.raises(ValueError, match=key):
            get("sglp").check_options(raw)
