"""Layer-pruning baselines: last_k, random, block_influence, angular, taylor_layer.

Each one scores the blocks (higher = more important = kept) and, except ``angular``, keeps the
``depth`` highest-scoring blocks (``LayerPruningMethod.plan``). Budgets are depths (``d{n}``; the
stage resolves ``matched`` to the depth SLS chose). The criteria themselves live in
``petlprune.analysis.importance`` so that Pear and SGLP share them. Specs: ``book/methods/specs/baselines.md``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

# torch and the criteria are imported inside score(): `petlprune plan` loads this module only to
# plan, and a planning job should not pay for importing torch (the DAG runs hundreds of them).
from petlprune.methods.base import (
    RECOVERY_OPTION,
    REMOVAL_OPTIONS,
    Budget,
    DeclaredOptions,
    LayerPruningMethod,
    Option,
    Plan,
    Scores,
    ScoringContext,
    register,
    removal_extra,
)

__all__ = ["LastK", "RandomBlocks", "BlockInfluence", "Angular", "TaylorLayer"]


def _num_blocks(method: str, ctx: ScoringContext) -> int:
    if ctx.model is None and ctx.num_blocks is not None:
        return ctx.num_blocks
    blocks = getattr(ctx.model, "blocks", None)
    if blocks is None:
        raise ValueError(f"method {method!r}: the scoring context has no model with `blocks`")
    return len(blocks)


@register("last_k")
class LastK(DeclaredOptions, LayerPruningMethod):
    """Truncation: keep the first ``depth`` blocks, drop the rest (score = -index).

    Options (book/methods/recovery.md, book/methods/toast.md): ``recover_last`` n (recovery
    ``adapters+last{n}``: the last n kept blocks' weights re-trained and stored per task), ``bridge``
    (``identity`` | ``linear``: TOAST's least-squares map over the removed tail) and ``bridge_samples``.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    needs_model: ClassVar[bool] = False  # the scores depend on the depth only
    option_specs: ClassVar[tuple[Option, ...]] = (*REMOVAL_OPTIONS, RECOVERY_OPTION)

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        values = [float(-i) for i in range(_num_blocks(self.name, ctx))]
        extra = {k: v for k, v in removal_extra(opts).items() if v != self.check_options({})[k]}
        return Scores(self.name, values, extra, time.perf_counter() - start)

    def check_budget(self, budget: Budget, options: Mapping[str, Any]) -> None:
        """Recovery of n blocks needs at least n kept (checked before any job)."""
        n = options.get("recover_last", 0)
        if budget.kind == "depth" and n > int(budget.value):
            raise ValueError(f"method 'last_k': recover_last {n} exceeds the depth kept by {budget.text}")


@register("random")
class RandomBlocks(DeclaredOptions, LayerPruningMethod):
    """Keep ``depth`` blocks drawn uniformly at random.

    Option ``draw`` (int >= 0, default 0): the draw is a function of (run seed, draw) only, so every
    draw is reproducible and different draws are independent streams (numpy ``SeedSequence``).
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    needs_model: ClassVar[bool] = False  # the draw depends on (seed, draw, depth) only
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("draw", "int", 0, minimum=0, doc="index of the draw (the workflow sets it per draw)"),
    )

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        draw = self.check_options(ctx.options)["draw"]
        if ctx.seed < 0:
            raise ValueError(f"method 'random': seed must be >= 0, got {ctx.seed}")
        rng = np.random.default_rng([ctx.seed, draw])
        values = rng.random(_num_blocks(self.name, ctx)).tolist()  # i.i.d. → top-k is a uniform subset
        return Scores(self.name, values, {"seed": ctx.seed, "draw": draw}, time.perf_counter() - start)


@register("block_influence")
class BlockInfluence(DeclaredOptions, LayerPruningMethod):
    """ShortGPT (Men et al., 2024): drop the blocks of lowest ``BI = 1 - mean cos(h_in, h_out)``.

    Option ``batches`` (int or None = the whole loader): how many loader batches to average over.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("batches", "int", None, minimum=1, nullable=True, doc="loader batches (null: all)"),
    )

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        batches = self.check_options(ctx.options)["batches"]
        if ctx.loader is None:
            raise ValueError("method 'block_influence' needs a data loader in the scoring context")
        from petlprune.analysis.importance import block_influence

        values = block_influence(ctx.model, ctx.loader, batches).tolist()
        extra = {"batches": batches, "tokens": "all"}
        return Scores(self.name, values, extra, time.perf_counter() - start)


def _residual_stream(features: Any) -> torch.Tensor:  # noqa: F821 - torch imported lazily
    """(L + 1, n, d) stream from features.npz: ``embed`` (input of block 0), then ``cls`` of each block."""
    if not isinstance(features, Mapping):
        raise ValueError(
            "method 'angular' needs features.npz as a mapping with 'cls' (L, n, d) and 'embed' (n, d) "
            f"(the input of the first block); got {type(features).__name__}"
        )
    missing = [key for key in ("cls", "embed") if key not in features]
    if missing:
        raise ValueError(f"method 'angular': features lack key(s) {missing} (features.npz must hold cls and embed)")
    import torch

    cls = torch.as_tensor(np.asarray(features["cls"]))
    embed = torch.as_tensor(np.asarray(features["embed"]))
    if cls.dim() != 3 or embed.shape != cls.shape[1:]:
        raise ValueError(
            f"method 'angular': features 'cls' must be (L, n, d) and 'embed' (n, d); "
            f"got {tuple(cls.shape)} and {tuple(embed.shape)}"
        )
    return torch.cat([embed[None], cls])  # (L + 1, n, d)


@register("angular")
class Angular(DeclaredOptions, LayerPruningMethod):
    """PruneMe / Gromov et al. (2024): drop the contiguous span of blocks that changes the stream least.

    For ``n`` blocks to drop, the span ``[l, l + n)`` minimising the mean angular distance
    ``arccos(cos(h_l, h_{l+n})) / π`` of the CLS token (``h_0`` = input of the first block) is removed.
    The score stores the distances of every span length in ``extra["span_distances"]`` (keys = n);
    ``values`` (one per block) are the single-block distances, shown in reports.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"features"})

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        self.check_options(ctx.options)
        states = _residual_stream(ctx.features)
        from petlprune.analysis.importance import all_span_distances

        spans = {str(n): dist for n, dist in all_span_distances(states).items()}
        extra = {"token": "cls", "span_distances": spans}
        return Scores(self.name, spans["1"], extra, time.perf_counter() - start)

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method 'angular' does not take a {budget.kind} budget ({budget.text})")
        total, depth = len(scores.values), int(budget.value)
        if not 1 <= depth <= total:
            raise ValueError(f"method 'angular': cannot keep {depth} of {total} blocks ({budget.text})")
        n = total - depth
        if n == 0:
            return Plan(self.name, budget.text, total, list(range(total)), scores=list(scores.values),
                        decision_seconds=scores.seconds, extra={"dropped_span": None},
                        notes="budget equals the model's depth: nothing dropped")
        try:
            dist = scores.extra["span_distances"][str(n)]
        except KeyError:
            raise ValueError(f"method 'angular': scores lack span_distances for span length {n}") from None
        first = min(range(len(dist)), key=lambda j: (dist[j], j))  # ties → the shallower span
        kept = [i for i in range(total) if not first <= i < first + n]
        extra = {"dropped_span": [first, first + n], "span_distances": dist}
        notes = f"dropped blocks [{first}, {first + n}): mean angular distance {dist[first]:.4f}"
        return Plan(self.name, budget.text, len(kept), kept, scores=list(scores.values),
                    decision_seconds=scores.seconds, notes=notes, extra=extra)


@register("taylor_layer")
class TaylorLayer(DeclaredOptions, LayerPruningMethod):
    """Drop the blocks of lowest first-order Taylor importance ``|Σ θ·∂L/∂θ|``.

    Options: ``scope`` ``adapter`` (θ = the block's PETL parameters, default) or ``block`` (every
    parameter of the block, adapters included); ``batches`` (default 8) training batches to
    accumulate the gradient over, model in eval mode, no update.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("batches", "int", 8, minimum=1, doc="training batches the gradient is accumulated over"),
        Option("scope", "str", "adapter", choices=("adapter", "block"), doc="whose parameters are θ"),
    )

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        batches = opts["batches"]
        if ctx.loader is None:
            raise ValueError("method 'taylor_layer' needs a data loader in the scoring context")
        groups = self._groups(ctx, opts["scope"])
        from petlprune.analysis.importance import taylor_importance

        result = taylor_importance(ctx.model, groups, ctx.loader, batches)
        values = [result.values[i] for i in range(len(groups))]
        extra = {"scope": opts["scope"], "batches": result.batches, "samples": result.samples,
                 "params": [sum(p.numel() for p in groups[i]) for i in range(len(groups))]}
        return Scores(self.name, values, extra, time.perf_counter() - start)

    def _groups(self, ctx: ScoringContext, scope: str) -> dict[int, list[Any]]:
        depth = _num_blocks(self.name, ctx)
        if scope == "block":
            return {i: list(ctx.model.blocks[i].parameters()) for i in range(depth)}
        if scope != "adapter":
            raise ValueError(f"method 'taylor_layer': option 'scope' must be 'adapter' or 'block', got {scope!r}")
        from petlprune.models.petl import petl_modules

        modules = petl_modules(ctx.model)
        groups = {i: [p for m in modules.get(i, []) for p in m.parameters()] for i in range(depth)}
        bare = [i for i, params in groups.items() if not params]
        if bare:
            raise ValueError(
                f"method 'taylor_layer': blocks {bare} have no PETL parameters to score "
                "(a head-only or full fine-tune has no adapters: use scope 'block')"
            )
        return groups
