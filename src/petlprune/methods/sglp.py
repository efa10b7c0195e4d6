"""SGLP: Similarity-Guided fast Layer Partition pruning (Li, Lu et al., arXiv 2410.14720).

1. Linear CKA between the outputs of every pair of blocks (``analysis.cka``; by default every token
   of a block output flattened, the official ``reshape(batch, -1)``; the CLS token as an ablation,
   :mod:`~petlprune.methods.sglp_tokens`).
2. Each block reduced to its CKA column sum; Fisher's exact optimal segmentation of that sequence
   into K contiguous segments (``analysis.segment``; K fixed or SGLP's "auto" rule; ``boundaries:
   official`` recovers the cuts with the official code's heuristic instead, an ablation).
3. A depth budget is shared out over the segments (``keep_rule``); within each segment the subset of
   the required size with the best GradNorm is kept (exhaustive below ``max_subsets`` candidates,
   greedy above; :mod:`~petlprune.methods.sglp_gradnorm`).
4. ``apply`` keeps those blocks (``models.surgery.keep_blocks``); re-training is the common stage's.

GradNorm context (``context``, see :mod:`~petlprune.methods.sglp_gradnorm`):
    official (default): as the official code, a randomly initialised full-depth network (one fixed
        initialisation from ``init_seed``, the same for every candidate, reset before each) in which
        only the candidate's blocks carry their fine-tuned weights; train mode; G = mean over the
        batches of the per-batch gradient norm over all parameters; the largest G wins.
    finetuned (ablation): the fine-tuned model with its trained head, pruned to the blocks of the
        other segments plus the candidate; ``pick`` ranks the candidates there (default the lowest
        loss, chosen on train800 -> val200, book/methods/sglp.md).

Where GradNorm runs. The framework's ``plan(scores, budget)`` sees only the scores, but GradNorm needs
the model and data. A segment's candidates are judged in a network that does not depend on the
choices of the other segments (official: those blocks are random; finetuned: they are all kept), so
a segment's best subset of size r depends only on (segment, r), never on the depth asked for.
``score`` therefore evaluates, for every depth in ``depths`` (default: all 1..N), the subsets each
segment needs under ``keep_rule``, and stores the winner of every (segment, r) in
``Scores.extra["selection"]``; ``plan`` is then a pure look-up (apportion the depth, take each
segment's stored winner) and needs no model. One score file serves the matched budget and the whole
depth sweep, and every G and loss is in the results tree.

Options (``ctx.options``; declared in :data:`OPTION_SPECS`, defaults in :data:`DEFAULTS`; checked by
``check_options`` when the workflow is parsed):
    tokens: ``all`` (default: every token of each block output flattened, as the official code's
        ``reshape(batch, -1)``; a forward pass over ``ctx.loader``, the same images as the features)
        or ``cls`` (the CLS token of each block output, from ``ctx.features``; the ablation).
    estimator: ``biased`` (official) or ``unbiased`` (Nguyen et al. 2021 minibatch CKA).
    cka_batch_size: None (all samples in one batch) or the CKA batch size (official: 500; CKA per
        batch, averaged). Bounds memory with ``tokens: all``.
    max_samples: ``tokens: all`` only: use the first ``max_samples`` loader samples (None: all).
    k: number of segments, an int or ``auto`` (:func:`~petlprune.analysis.segment.choose_k`).
    k_max, threshold: the ``auto`` rule's parameters (official 6 and 0.05); ``k_max`` also sets the
        length of the stored P(N, k) curve.
    boundaries: ``exact`` (default: the optimal cuts, :func:`~petlprune.analysis.segment.fisher_segments`)
        or ``official`` (Network_Partition.py's back-tracking, line 98,
        :func:`~petlprune.analysis.segment.official_segments`; it may find fewer than K segments).
        The official rule is a bug, so it runs as an ablation (book/methods/sglp.md).
    keep_rule: ``proportional`` or ``largest_first`` (:func:`keep_counts`).
    context: ``official`` or ``finetuned`` (above).
    pick: None (the context's rule, :data:`DEFAULT_PICK`) or one of ``largest_g``, ``smallest_g``,
        ``lowest_loss``.
    init_seed: seed of the official context's random initialisation and of the dropout RNG during
        GradNorm; None (default) = the run seed (``ctx.seed``).
    gradnorm_batches: number of fixed training batches (the first of the run-seeded loader; 2).
    max_subsets: enumerate all C(n, r) subsets when C(n, r) <= this, otherwise greedy elimination
        (default 32: a 9-block segment then costs about 50 GradNorm evaluations for every depth at
        once instead of 510).
    depths: the depths to prepare decisions for (None: 1..N).

``Plan.decision_seconds`` of a depth is what that decision costs on its own: CKA + segmentation +
the GradNorm evaluations its segment choices scored (an evaluation shared with another depth is
counted in full for each), not the time of preparing every depth in one score file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from petlprune.analysis.segment import choose_k, fisher_segments, official_segments, segmentation_losses
from petlprune.methods.base import (
    Budget,
    DeclaredOptions,
    LayerPruningMethod,
    Option,
    OptionError,
    Plan,
    Scores,
    ScoringContext,
    check_declared,
    register,
)
from petlprune.methods.sglp_vocab import CONTEXTS, PICKS, TOKENS  # re-exported; sglp_vocab says why

# The option vocabulary lives here, torch-free: the workflow checks every config's options through the
# registry when the Snakefile is parsed (every cluster job parses it too), and importing torch there
# cost about 2 s. The torch modules (sglp_gradnorm, sglp_tokens, analysis.cka) load on first use.
_LAZY = {
    "GradNormScorer": "petlprune.methods.sglp_gradnorm",
    "gradnorm": "petlprune.methods.sglp_gradnorm",
    "select_subset": "petlprune.methods.sglp_gradnorm",
    "token_cka": "petlprune.methods.sglp_tokens",
}


def __getattr__(name: str) -> Any:
    """``sglp.gradnorm`` and friends, imported on first use (they need torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BOUNDARIES",
    "CONTEXTS",
    "DEFAULTS",
    "DEFAULT_PICK",
    "KEEP_RULES",
    "OPTION_SPECS",
    "PICKS",
    "SGLP",
    "keep_counts",
]

KEEP_RULES = ("proportional", "largest_first")
BOUNDARIES = ("exact", "official")
# The rule each context ranks candidates by when ``pick`` is None. Official: search_best's largest G.
# Finetuned: on a trained network G grows with the loss (the largest G marks the most damaging subset);
# the lowest loss beat the smallest G on train800 -> val200 (book/methods/sglp.md).
DEFAULT_PICK = {"official": "largest_g", "finetuned": "lowest_loss"}


# ----------------------------------------------------------------------------------------- options
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


OPTION_SPECS: tuple[Option, ...] = (
    Option("tokens", "str", "all", choices=TOKENS,
           doc="all: every token of each block output flattened (the official reshape(batch, -1)); cls: the CLS token"),
    Option("estimator", "str", "biased", choices=("biased", "unbiased"), doc="CKA estimator (official: biased)"),
    Option("cka_batch_size", "int", None, minimum=1, nullable=True, doc="CKA per batch of this size, averaged (null: one batch)"),
    Option("max_samples", "int", None, minimum=1, nullable=True, doc="tokens all: the first max_samples loader samples"),
    Option("k", "int_or_auto", "auto", minimum=1, doc="number of segments: auto (the official rule) or an integer"),
    Option("k_max", "int", 6, minimum=1, doc="the auto rule's largest k (official 6)"),
    Option("threshold", "number", 0.05, doc="the auto rule's relative loss drop (official 0.05)"),
    Option("boundaries", "str", "exact", choices=BOUNDARIES,
           doc="exact: the optimal cuts; official: Network_Partition.py's back-tracking (an ablation)"),
    Option("keep_rule", "str", "proportional", choices=KEEP_RULES, doc="blocks kept per segment (keep_counts)"),
    Option("context", "str", "official", choices=CONTEXTS, doc="GradNorm network (sglp_gradnorm)"),
    Option("pick", "str", None, choices=PICKS, nullable=True, doc="candidate rule (null: the context's)"),
    Option("init_seed", "int", None, minimum=0, nullable=True, doc="seed of the random network (null: the run seed)"),
    Option("gradnorm_batches", "int", 2, minimum=1, doc="fixed training batches per GradNorm"),
    Option("max_subsets", "int", 32, minimum=1, doc="exhaustive search up to this many subsets, greedy above"),
    Option("depths", "numbers", None, minimum=1, nullable=True, doc="depths to prepare (null: 1..N)"),
)
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTION_SPECS}


def _options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` over :data:`DEFAULTS`, checked against :data:`OPTION_SPECS`; an OptionError names the key."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"method 'sglp': options must be a mapping, got {type(raw).__name__}")
    opts = check_declared("sglp", OPTION_SPECS, raw)
    depths = opts["depths"]
    if depths is not None:
        if not all(_is_int(d) for d in depths):
            raise OptionError(f"method 'sglp': option 'depths' must be null or a list of positive integers, got {depths!r}",
                              "depths")
        opts["depths"] = sorted({int(d) for d in depths})
    return opts


# ------------------------------------------------------------------------------- keep per segment
def _largest_remainder(seats: int, weights: Sequence[int]) -> list[int]:
    """Hamilton apportionment of ``seats`` in proportion to ``weights``, in exact arithmetic.

    Ties of the fractional part go to the larger weight, then to the later segment.
    """
    total = sum(weights)
    if seats == 0 or total == 0:
        return [0] * len(weights)
    quotas = [Fraction(seats * w, total) for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (quotas[i] - counts[i], weights[i], i), reverse=True)
    for i in order[: seats - sum(counts)]:
        counts[i] += 1
    return counts


def keep_counts(lengths: Sequence[int], depth: int, rule: str = "proportional") -> list[int]:
    """How many blocks each segment keeps when ``depth`` blocks are kept in all.

    Rules:
        proportional: when ``depth >= K`` every segment keeps one representative and the other
            ``depth - K`` kept blocks are shared in proportion to ``length - 1`` (what a segment can
            give beyond its representative), by largest remainder; when ``depth < K``, ``depth`` is
            shared in proportion to ``length`` (some segments then keep nothing). Never exceeds a
            segment's length.
        largest_first: remove blocks one at a time from the segment currently keeping the most
            (ties: the longer segment, then the later one), so short segments stay whole and long
            segments absorb the removal: SGLP's hand-set budgets in rule form.

    Args:
        lengths: segment lengths, in order.
        depth: total blocks to keep, ``1 <= depth <= sum(lengths)``.
        rule: ``proportional`` or ``largest_first``.
    """
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"keep_counts: segment lengths must be positive, got {lengths}")
    total, k = sum(lengths), len(lengths)
    if not _is_int(depth) or not 1 <= depth <= total:
        raise ValueError(f"keep_counts: cannot keep {depth!r} of {total} blocks")
    if rule == "proportional":
        if depth >= k:
            spare = _largest_remainder(depth - k, [n - 1 for n in lengths])
            return [1 + s for s in spare]
        return _largest_remainder(depth, lengths)
    if rule == "largest_first":
        counts = list(lengths)
        for _ in range(total - depth):
            s = max(range(k), key=lambda i: (counts[i], lengths[i], i))
            counts[s] -= 1
        return counts
    raise ValueError(f"keep_counts: unknown rule {rule!r} (known: {', '.join(KEEP_RULES)})")


# --------------------------------------------------------------------------------------- method
@register("sglp")
class SGLP(DeclaredOptions, LayerPruningMethod):
    """SGLP: CKA → Fisher segmentation → per-segment GradNorm subset selection (see module docstring).

    ``score`` measures everything (CKA matrix, P(N, k) curve, segments, GradNorm and loss of every
    candidate the requested depths need); ``plan`` is a pure look-up for a ``d{n}`` budget.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"features", "loader"})
    option_specs: ClassVar[tuple[Option, ...]] = OPTION_SPECS

    def check_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The options ``raw`` over :data:`DEFAULTS`, checked (an OptionError names the bad key)."""
        return _options(raw)

    def score(self, ctx: ScoringContext) -> Scores:
        from petlprune.analysis.cka import cka_matrix
        from petlprune.methods.sglp_gradnorm import GradNormScorer, fixed_batches, select_subset
        from petlprune.methods.sglp_tokens import cls_features, token_cka

        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        if ctx.model is None or getattr(ctx.model, "blocks", None) is None:
            raise ValueError("method 'sglp' needs the fine-tuned model (with `blocks`) in the scoring context")
        if ctx.loader is None:
            raise ValueError("method 'sglp' needs a training data loader in the scoring context (GradNorm)")
        num_blocks = len(ctx.model.blocks)

        if opts["tokens"] == "cls":
            cls = cls_features(ctx.features)
            if cls.shape[0] != num_blocks:
                raise ValueError(f"method 'sglp': features hold {cls.shape[0]} blocks, the model has {num_blocks}")
            cka = cka_matrix(cls, batch_size=opts["cka_batch_size"], estimator=opts["estimator"])
        else:
            cka = token_cka(ctx.model, ctx.loader, tokens="all", estimator=opts["estimator"],
                            batch_size=opts["cka_batch_size"], max_samples=opts["max_samples"], seed=ctx.seed)
        cka = cka.cpu()
        t_cka = time.perf_counter()

        values = cka.sum(0).tolist()  # column sums s_j = Σ_i CKA_ij
        k = choose_k(values, opts["k_max"], opts["threshold"]) if opts["k"] == "auto" else int(opts["k"])
        if k > num_blocks:
            raise ValueError(f"method 'sglp': option 'k' = {k} exceeds the {num_blocks} blocks")
        losses = segmentation_losses(values, min(max(opts["k_max"], k), num_blocks))
        segments = (fisher_segments if opts["boundaries"] == "exact" else official_segments)(values, k)
        t_seg = time.perf_counter()

        depths = opts["depths"] or list(range(1, num_blocks + 1))
        if depths[-1] > num_blocks:
            raise ValueError(f"method 'sglp': option 'depths' asks for {depths[-1]} blocks of {num_blocks}")
        lengths = [e - s for s, e in segments]
        needed: list[set[int]] = [set() for _ in segments]
        for depth in depths:
            for s, r in enumerate(keep_counts(lengths, depth, opts["keep_rule"])):
                needed[s].add(r)
        context = opts["context"]
        pick = opts["pick"] or DEFAULT_PICK[context]
        init_seed = ctx.seed if opts["init_seed"] is None else int(opts["init_seed"])
        batches = fixed_batches(ctx.loader, opts["gradnorm_batches"], ctx.seed)
        scorer = GradNormScorer(ctx.model, batches, context=context, seed=init_seed)
        field = "loss" if pick == "lowest_loss" else "gradnorm"

        def objective(keep: Sequence[int]) -> float:
            return scorer(keep)[field]

        selection = []
        for s, (a, b) in enumerate(segments):
            # official: the other blocks are random, only the candidate is loaded; finetuned: the
            # other segments stay whole, so every segment is judged inside the real network
            others = [i for i in range(num_blocks) if not a <= i < b] if context == "finetuned" else []
            choices = {}
            for r in sorted(needed[s]):
                choice = select_subset(objective, (a, b), r, others=others, max_subsets=opts["max_subsets"],
                                       maximize=pick == "largest_g")
                winner = scorer.cache.get(tuple(sorted([*others, *choice["kept"]])), {}) if choice["networks"] else {}
                choice.update(gradnorm=winner.get("gradnorm"), loss=winner.get("loss"))
                # what this choice costs on its own, shared evaluations counted in full
                choice["seconds"] = sum(scorer.seconds[tuple(net)] for net in choice["networks"])
                choices[str(r)] = choice
            selection.append({"segment": [a, b], "choices": choices})
        t_grad = time.perf_counter()

        extra = {
            "cka": cka.tolist(),
            "k": k,
            "k_auto": opts["k"] == "auto",
            "boundaries": opts["boundaries"],  # official: may find fewer than k segments
            "losses": losses,  # P(N, k), k = 1..len(losses)
            "segments": [[a, b] for a, b in segments],
            "depths": depths,
            "context": context,
            "pick": pick,
            "init_seed": init_seed,
            "selection": selection,
            "gradnorm": [{"kept": list(key), **value} for key, value in scorer.cache.items()],
            "gradnorm_samples": sum(int(y.shape[0]) for _, y in batches),
            "options": opts,
            "seconds_by_step": {"cka": t_cka - start, "segment": t_seg - t_cka, "gradnorm": t_grad - t_seg},
        }
        return Scores(self.name, values, extra, time.perf_counter() - start)

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        start = time.perf_counter()
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method 'sglp' does not take a {budget.kind} budget ({budget.text}); use d<n>")
        missing = [key for key in ("segments", "selection", "options", "k") if key not in scores.extra]
        if scores.method != self.name or missing:
            raise ValueError(f"method 'sglp': these scores are not SGLP scores (method {scores.method!r}, missing {missing})")
        depth, total = int(budget.value), len(scores.values)
        if not 1 <= depth <= total:
            raise ValueError(f"method 'sglp': cannot keep {depth} of {total} blocks ({budget.text})")
        rule = scores.extra["options"]["keep_rule"]
        segments = [tuple(seg) for seg in scores.extra["segments"]]
        counts = keep_counts([e - s for s, e in segments], depth, rule)
        kept: list[int] = []
        chosen = []
        for (a, b), r, entry in zip(segments, counts, scores.extra["selection"], strict=True):
            choice = entry["choices"].get(str(r))
            if choice is None:
                raise ValueError(
                    f"method 'sglp': budget {budget.text} needs {r} block(s) of segment [{a}, {b}), which was not "
                    f"scored (scored depths: {scores.extra.get('depths')}); re-run score with this depth in 'depths'"
                )
            kept.extend(choice["kept"])
            chosen.append({"segment": [a, b], **choice})
        kept.sort()
        steps = scores.extra.get("seconds_by_step", {})
        # the cost of this depth's decision alone, not of preparing every depth in one score file
        own_seconds = steps.get("cka", 0.0) + steps.get("segment", 0.0) + sum(c.get("seconds", 0.0) for c in chosen)
        seg_text = " ".join(f"[{a},{b})" for a, b in segments)
        how = "auto" if scores.extra.get("k_auto") else "fixed"
        notes = (
            f"segments {seg_text} (k={scores.extra['k']}, {how}); keep per segment {counts} ({rule}); "
            f"subsets by GradNorm, context '{scores.extra['options']['context']}', pick '{scores.extra.get('pick')}'"
        )
        extra = {"segments": [list(s) for s in segments], "keep_per_segment": counts, "keep_rule": rule, "choices": chosen}
        return Plan(self.name, budget.text, len(kept), kept, scores=list(scores.values),
                    decision_seconds=own_seconds + time.perf_counter() - start, notes=notes, extra=extra)
