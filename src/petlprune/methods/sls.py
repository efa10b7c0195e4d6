"""SLS: Straightforward Layer-wise pruning (Han & Tang, ECCV 2024, arXiv 2407.14330).

Each block is scored by how well its CLS features already separate the task's classes: the
silhouette coefficient (true labels, Euclidean) of their 2-D t-SNE embedding, min-max normalised per
axis. With ``SC_N`` the score of the last block and ``T = alpha * SC_N``, the kept depth is the
smallest ``L`` with ``SC_j >= T`` for every block ``j`` in ``[L, N]`` (1-based): walking down from
block N-1, the walk stops at the first block below T and keeps everything above it plus that block's
successor. Only the scores down to the stopping point are needed, so ``score`` embeds blocks from the
last one downward and stops there (``full_curve: true`` embeds all, for the report). The pruned model
is the prefix: patch embedding, blocks 1..L with their PETL modules, the original final norm and the
trained head (``LayerPruningMethod.apply``).

Options (``ctx.options``; declared in :data:`OPTION_SPECS`, checked by ``check_options`` when the
workflow is parsed, so a bad value stops ``snakemake -n`` with its config key):
    alpha: threshold factor used for the early stop (default 0.3, the paper's); a plan with another
        ``a{alpha}`` budget re-runs the walk on the stored curve and fails clearly if that walk
        needs a block that was not embedded.
    perplexity: t-SNE perplexity (30, sklearn's default used by the official code; at least 1).
    space: ``tsne`` (the method) or ``raw`` (ablation: the criterion on the raw CLS features).
    criterion: ``silhouette`` (the method), ``calinski_harabasz`` or ``davies_bouldin`` (ablations;
        the authors tried and dropped them). Davies–Bouldin is lower-is-better and unbounded, so the
        rule runs on 1 / DB: a block is good enough when ``DB_i <= DB_N / alpha``.
    full_curve: embed every block instead of stopping early.

The t-SNE seed is the run's seed (the official code always uses 0; seed 0 reproduces that), so the
seed-to-seed spread of a result includes t-SNE's own randomness.

Budgets: ``a{alpha}`` (SLS decides the depth) and ``d{n}`` (keep the first n blocks, e.g. the
matched depth). Both keep a prefix, so the Plan is a single integer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from petlprune.analysis.cluster import CRITERIA, HIGHER_IS_BETTER
from petlprune.analysis.tsne import tsne_embed, tsne_settings
from petlprune.methods.base import (
    Budget,
    DeclaredOptions,
    LayerPruningMethod,
    Option,
    Plan,
    Scores,
    ScoringContext,
    register,
)

__all__ = ["DEFAULTS", "OPTION_SPECS", "DepthDecision", "walk_depth", "select_depth", "SLS"]

SPACES = ("tsne", "raw")
OPTION_SPECS: tuple[Option, ...] = (
    Option("alpha", "number", 0.3, minimum=0.0, maximum=1.0,
           doc="threshold factor of the early stop (the paper's 0.3); above 1 the rule is undefined"),
    Option("perplexity", "number", 30.0, minimum=1.0, doc="t-SNE perplexity (sklearn's default, as the official code)"),
    Option("space", "str", "tsne", choices=SPACES, doc="tsne (the method) or raw (ablation: the raw CLS features)"),
    Option("criterion", "str", "silhouette", choices=tuple(CRITERIA),
           doc="silhouette (the method), calinski_harabasz or davies_bouldin (ablations)"),
    Option("full_curve", "bool", False, doc="embed every block instead of stopping early (for the report)"),
)
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTION_SPECS}


@dataclass
class DepthDecision:
    """The outcome of SLS's walk over the per-block scores.

    Args:
        depth: number of blocks kept (the prefix 0..depth-1).
        threshold: ``alpha * SC_N``.
        stopped_at: 0-based block whose score fell below the threshold, or None (no block did, or
            SC_N <= 0).
        evaluated: 0-based blocks whose score the walk read, in the order it read them.
        note: the edge case taken, if any.
    """

    depth: int
    threshold: float
    stopped_at: int | None
    evaluated: list[int] = field(default_factory=list)
    note: str = ""


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        # alpha > 1 would put the last block itself below the threshold: the rule is undefined.
        raise ValueError(f"SLS: alpha must be in [0, 1], got {alpha}")
    return alpha


def walk_depth(score_of: Callable[[int], float], num_blocks: int, alpha: float) -> DepthDecision:
    """SLS's rule (book/methods/specs/sls.md, algorithm step 4), reading scores lazily from the last block down.

    Args:
        score_of: 0-based block index -> score (higher = classes better separated); called at most
            once per block, only for the blocks the decision needs.
        num_blocks: N.
        alpha: threshold factor in [0, 1].

    Returns:
        The decision. If SC_N <= 0 every block is kept (the threshold would not mean anything); see
        :func:`select_depth` for what the official code does there.
    """
    alpha = _check_alpha(alpha)
    if num_blocks < 1:
        raise ValueError("SLS: no blocks to score")
    evaluated = [num_blocks - 1]
    last = float(score_of(num_blocks - 1))
    if math.isnan(last):
        raise ValueError(f"SLS: the score of the last block ({num_blocks - 1}) is NaN")
    threshold = alpha * last
    if last <= 0:
        note = f"SC_N = {last:.4g} <= 0: the threshold is meaningless, all {num_blocks} blocks kept"
        return DepthDecision(num_blocks, threshold, None, evaluated, note)
    for i in range(num_blocks - 2, -1, -1):
        evaluated.append(i)
        value = float(score_of(i))
        if math.isnan(value):
            raise ValueError(f"SLS: the score of block {i} is NaN")
        if value < threshold:
            # 1-based: stop at block i+1, keep blocks 1..i+2.
            return DepthDecision(i + 2, threshold, i, evaluated)
    return DepthDecision(1, threshold, None, evaluated, "no block fell below the threshold: one block kept")


def select_depth(scores: Sequence[float], alpha: float) -> int:
    """Number of blocks SLS keeps for the per-block ``scores`` (higher is better) and ``alpha``.

    When the last block's score SC_N is not positive the rule has no meaningful threshold, and ours
    keeps every block (the Plan's note says so). The official code (RuiZiHan/SLS ``visualization.py``,
    ``analyse_t_SNE`` and its ``__main__`` loop) differs there, a degenerate input rather than a choice
    (book/methods/sls.md):

    * SC_N = 0: its threshold is 0.3 * 0 = 0, so the walk goes on while SC_j >= 0 and writes the last
      such block as the target: depth 1 when no silhouette is negative, else the block above the first
      negative one.
    * SC_N < 0: the last block is already below the threshold 0 (the first block is checked against
      ``best_score = 0`` before ``best_score`` is set), so the walk stops at once and the target file
      is never written: no depth at all.
    """
    return walk_depth(lambda i: scores[i], len(scores), alpha).depth


def _features(ctx: ScoringContext) -> tuple[np.ndarray, np.ndarray]:
    """(L, n, d) CLS features and (n,) labels from the context (features.npz mapping or arrays)."""
    feats, labels = ctx.features, ctx.labels
    if isinstance(feats, Mapping):
        if "cls" not in feats:
            raise ValueError(f"method 'sls': features lack key 'cls' (have {sorted(feats)})")
        labels = feats.get("labels") if labels is None else labels
        feats = feats["cls"]
    if feats is None or labels is None:
        raise ValueError("method 'sls' needs the block features (features.npz: cls and labels) in the scoring context")
    feats, labels = np.asarray(feats), np.asarray(labels).reshape(-1)
    if feats.ndim != 3 or feats.shape[1] != labels.shape[0]:
        raise ValueError(f"method 'sls': features must be (L, n, d) with n labels; got {feats.shape}, {labels.shape}")
    return feats, labels


def _rule_value(criterion: str, value: float) -> float:
    """The criterion as a higher-is-better score for the threshold rule (1 / DB for Davies–Bouldin)."""
    if HIGHER_IS_BETTER[criterion]:
        return value
    return 1.0 / max(value, 1e-12)  # DB = 0 only for classes collapsed to points; keep the value finite (JSON)


@register("sls")
class SLS(DeclaredOptions, LayerPruningMethod):
    """SLS layer pruning: keep the shallowest prefix whose blocks all separate the classes well enough."""

    budget_kinds: ClassVar[tuple[str, ...]] = ("alpha", "depth")
    needs: ClassVar[frozenset[str]] = frozenset({"features"})
    option_specs: ClassVar[tuple[Option, ...]] = OPTION_SPECS

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        feats, labels = _features(ctx)
        num_blocks = feats.shape[0]
        criterion, space = opts["criterion"], opts["space"]
        measured: dict[int, dict[str, float]] = {}  # block -> every criterion in ``space``
        embeddings: dict[int, np.ndarray] = {}

        def score_of(i: int) -> float:
            if i not in measured:
                x = feats[i]
                if space == "tsne":
                    x = embeddings[i] = tsne_embed(x, perplexity=float(opts["perplexity"]), seed=ctx.seed,
                                                   n_jobs=max(1, int(ctx.threads)))
                measured[i] = {name: fn(x, labels) for name, fn in CRITERIA.items()}
            return _rule_value(criterion, measured[i][criterion])

        decision = walk_depth(score_of, num_blocks, opts["alpha"])
        if opts["full_curve"]:
            for i in range(num_blocks):
                score_of(i)
        blocks = sorted(measured)

        def curve(name: str) -> list[float | None]:
            return [measured[i][name] if i in measured else None for i in range(num_blocks)]

        values = [score_of(i) if i in measured else None for i in range(num_blocks)]
        extra: dict[str, Any] = {
            "criterion": criterion,
            "rule_on": "1/davies_bouldin" if criterion == "davies_bouldin" else criterion,
            "space": space,
            "perplexity": float(opts["perplexity"]) if space == "tsne" else None,
            "full_curve": opts["full_curve"],
            "decision": {
                "alpha": float(opts["alpha"]),
                "threshold": decision.threshold,
                "depth": decision.depth,
                "stopped_at": decision.stopped_at,
                "note": decision.note,
                "scored_blocks": blocks,
                "early_stop": len(blocks) < num_blocks,
            },
            "n_samples": int(labels.shape[0]),
            "seed": ctx.seed,
        }
        if space == "tsne":
            extra["tsne"] = {"library": "openTSNE", **tsne_settings(labels.shape[0])}
        # Per-block curves of every criterion in the same space (the ablation, drawn next to the main
        # curve), except the one that ``values`` already holds.
        extra.update({name: curve(name) for name in CRITERIA if not (name == criterion and HIGHER_IS_BETTER[name])})
        arrays: dict[str, np.ndarray] = {}
        if embeddings:
            order = sorted(embeddings)
            arrays = {
                "embeddings": np.stack([embeddings[i] for i in order]).astype(np.float32),  # (E, n, 2)
                "embedded_blocks": np.asarray(order, dtype=np.int64),
                "labels": labels.astype(np.int64),
            }
        return Scores(self.name, values, extra, time.perf_counter() - start, arrays)

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        start = time.perf_counter()
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method 'sls' takes a{{alpha}} or d{{n}} budgets, not {budget.kind} ({budget.text})")
        values = scores.values
        num_blocks = len(values)
        extra: dict[str, Any] = {}
        notes = ""
        if budget.kind == "alpha":

            def stored(i: int) -> float:
                if values[i] is None:
                    raise ValueError(
                        f"method 'sls': budget {budget.text} needs the score of block {i}, which was not computed "
                        f"(early stop at alpha={scores.extra.get('decision', {}).get('alpha')}); "
                        "score with option full_curve: true"
                    )
                return float(values[i])

            decision = walk_depth(stored, num_blocks, float(budget.value))
            depth, notes = decision.depth, decision.note
            extra = {"alpha": float(budget.value), "threshold": decision.threshold, "stopped_at": decision.stopped_at}
        else:
            depth = int(budget.value)
            if not 1 <= depth <= num_blocks:
                raise ValueError(f"method 'sls': cannot keep {depth} of {num_blocks} blocks ({budget.text})")
        return Plan(self.name, budget.text, depth, list(range(depth)), scores=list(values),
                    decision_seconds=scores.seconds + time.perf_counter() - start, notes=notes, extra=extra)
