"""SGLP's choices against the original (issue 29): ``tokens: all`` is the official flattening, ``boundaries:
official`` the official back-tracking, and every option is declared (a bad one fails at DAG parse time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import make_context
from petlprune.analysis.segment import fisher_segments, official_segments
from petlprune.methods import Budget, get
from petlprune.methods.base import check_method_config
from petlprune.methods.sglp import DEFAULTS


def hand_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) from the definition: HSIC of the centred Gram matrices."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    gx, gy = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((gx * gy).sum() / np.sqrt((gx * gx).sum() * (gy * gy).sum()))


def test_tokens_all_is_the_flattened_block_output() -> None:
    """The official code reshapes each block output to (batch, -1) before CKA. Here the block outputs come
    from running the blocks by hand (no forward_intermediates) and CKA from its definition (no cka_matrix)."""
    ctx = make_context(k=2, depths=[3])
    model = ctx.model
    images = torch.cat([x for x, _ in ctx.loader])  # the loader's 24 images, in order
    outputs = []
    with torch.no_grad():
        h = model.patch_embed(images)
        h = model._pos_embed(h)  # prepends the class token, adds positions: (n, T, d)
        for block in model.blocks:
            h = block(h)
            outputs.append(h.reshape(h.shape[0], -1).double().numpy())  # (n, T·d): reshape(batch, -1)
    expected = np.array([[hand_linear_cka(a, b) for b in outputs] for a in outputs])
    scores = get("sglp").score(ctx)
    assert ctx.options == {"k": 2, "depths": [3]} and DEFAULTS["tokens"] == "all"
    np.testing.assert_allclose(np.array(scores.extra["cka"]), expected, rtol=1e-9, atol=1e-12)
    cls = get("sglp").score(make_context(k=2, depths=[3], tokens="cls"))
    assert not np.allclose(cls.extra["cka"], expected)  # the ablation is another input


def test_boundaries_official_in_the_method() -> None:
    """``boundaries`` only changes how the cuts are recovered from the same column sums."""
    method = get("sglp")
    exact = method.score(make_context(k=3, depths=[3], tokens="cls"))
    official = method.score(make_context(k=3, depths=[3], tokens="cls", boundaries="official"))
    assert exact.values == official.values and exact.extra["boundaries"] == "exact"
    assert official.extra["boundaries"] == "official"
    assert [tuple(s) for s in exact.extra["segments"]] == fisher_segments(exact.values, 3)
    assert [tuple(s) for s in official.extra["segments"]] == official_segments(exact.values, 3)
    plan = method.plan(official, Budget.parse("d3"))
    assert plan.depth == 3 and plan.extra["segments"] == official.extra["segments"]


BAD = {
    "boundaries": ({"boundaries": "foo"}, r"methods\.inst\.boundaries: .*one of \['exact', 'official'\]"),
    "tokens": ({"tokens": "patch"}, r"methods\.inst\.tokens: .*one of"),
    "k": ({"k": "3"}, r"methods\.inst\.k: .*'auto' or an integer"),
    "depths": ({"depths": [2.5]}, r"methods\.inst\.depths: .*positive integers"),
    "typo": ({"bondaries": "exact"}, r"methods\.inst\.bondaries: .*unknown option"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_options_name_the_config_key(case: str) -> None:
    options, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        check_method_config("inst", "sglp", options, ["d6"])


def test_declared_defaults() -> None:
    opts = check_method_config("inst", "sglp", {"boundaries": "official", "depths": [5, 2, 5]}, ["matched"])
    assert opts == {**DEFAULTS, "boundaries": "official", "depths": [2, 5]}
    assert DEFAULTS["boundaries"] == "exact" and len(get("sglp").option_specs) == len(DEFAULTS) == 15
