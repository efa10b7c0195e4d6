"""SLS: the last block's silhouette not positive (ours against the official loop), and declared options
that fail at DAG parse time naming their key (issue 29, items 4 and 5)."""

from __future__ import annotations

import pytest

from petlprune.methods.base import check_method_config
from petlprune.methods.sls import DEFAULTS, select_depth, walk_depth


def official_target(scores: list[float], alpha: float = 0.3) -> int | None:
    """RuiZiHan/SLS visualization.py, ``__main__`` and ``analyse_t_SNE``, as a reference: blocks from the
    last down, each checked against ``0.3 * best_score`` where ``best_score`` is 0 for the last block and
    its score afterwards; a block at or above the threshold overwrites the target file with its
    (1-based) index, the first one below stops the loop. None: the target file is never written."""
    best_score, target = 0.0, None
    n = len(scores)
    for i in range(n):
        layer_id = n - i
        score = scores[layer_id - 1]
        threshold = alpha * best_score
        if score >= threshold:
            target = layer_id
        stop = score < threshold
        if i == 0:
            best_score = score
        if stop:
            break
    return target


@pytest.mark.parametrize(
    ("scores", "official", "ours"),
    [
        ([0.5, 0.2, 0.1, 0.0], 1, 4),          # SC_N = 0: threshold 0, nothing negative: the walk reaches block 1
        ([0.5, -0.1, 0.2, 0.0], 3, 4),         # SC_N = 0: it stops at the first negative silhouette
        ([0.5, 0.4, -0.1], None, 3),           # SC_N < 0: the last block fails threshold 0, no target at all
        ([0.5, 0.6, 0.1, 0.7, 0.8, 0.9, 1.0], 4, 4),  # SC_N > 0: the two agree
    ],
)
def test_last_silhouette_not_positive(scores: list[float], official: int | None, ours: int) -> None:
    assert official_target(scores) == official
    assert select_depth(scores, 0.3) == ours
    decision = walk_depth(lambda i: scores[i], len(scores), 0.3)
    if scores[-1] <= 0:
        assert decision.depth == len(scores) and decision.stopped_at is None
        assert decision.evaluated == [len(scores) - 1] and f"all {len(scores)} blocks kept" in decision.note
    else:
        assert decision.note == ""


BAD = {
    "alpha not a number": ({"alpha": "high"}, r"methods\.inst\.alpha: .*type number"),
    "alpha above 1": ({"alpha": 1.5}, r"methods\.inst\.alpha: .*in \[0, 1\]"),
    "negative perplexity": ({"perplexity": -5}, r"methods\.inst\.perplexity: .*>= 1"),
    "space": ({"space": "umap"}, r"methods\.inst\.space: .*one of"),
    "full_curve": ({"full_curve": "yes"}, r"methods\.inst\.full_curve: .*type bool"),
    "typo": ({"alpah": 0.3}, r"methods\.inst\.alpah: .*unknown option"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_options_name_the_config_key(case: str) -> None:
    options, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        check_method_config("inst", "sls", options, ["a0.3"])


def test_declared_defaults() -> None:
    assert check_method_config("inst", "sls", {"perplexity": 10}, ["a0.3", "d4"]) == {**DEFAULTS, "perplexity": 10}
    assert DEFAULTS == {"alpha": 0.3, "perplexity": 30.0, "space": "tsne", "criterion": "silhouette", "full_curve": False}
