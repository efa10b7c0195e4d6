"""Attention-only drop (He et al., "What Matters in Transformers? Not All Attention Is Needed"; LLM-Drop).

Score each block's attention sub-layer by the cosine similarity of its input ``h`` and its output
``h + attn(norm1(h))`` (LLM-Drop's ``layer_drop.py`` with ``drop_norm``: the pre-norm input and input +
sub-layer output, per token, averaged over tokens and samples); remove the ``n`` most similar attention
sub-layers at once (one-shot ``layer_drop``), every MLP kept. Budget ``s{n}``: attention sub-layers
removed. book/methods/attn_drop.md.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from petlprune.methods.base import Budget, DeclaredOptions, Option, Plan, Scores, ScoringContext, register

__all__ = ["AttentionDrop", "attention_similarity"]


def attention_similarity(model: Any, loader: Any, batches: int | None = None) -> list[float]:
    """Mean per-token cos(h, h + attn(norm1(h))) of every block's attention sub-layer (eval mode)."""
    import torch

    from petlprune.analysis.importance import forward_hooked, token_cosine

    blocks = list(model.blocks)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    counts = torch.zeros(len(blocks), dtype=torch.float64)

    def make_hook(i: int):
        def hook(block, args, kwargs):
            h = args[0] if args else kwargs["x"]  # (B, T, d)
            out = h + block.ls1(block.attn(block.norm1(h)))
            cos = token_cosine(h, out)  # (B, T)
            sums[i] += cos.sum().cpu()
            counts[i] += cos.numel()
        return hook

    forward_hooked(model, loader, batches,
                   [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)])
    if counts.min() == 0:
        raise ValueError("attn_drop: the loader yielded no batch")
    return (sums / counts).tolist()


@register("attn_drop")
class AttentionDrop(DeclaredOptions):
    """Remove the ``n`` attention sub-layers most similar between input and output (budget ``s{n}``)."""

    budget_kinds: ClassVar[tuple[str, ...]] = ("sublayers",)
    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("batches", "int", 8, minimum=1, doc="training batches the similarity is averaged over"),
    )

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        batches = self.check_options(ctx.options)["batches"]
        if ctx.loader is None:
            raise ValueError("method 'attn_drop' needs a data loader in the scoring context")
        values = attention_similarity(ctx.model, ctx.loader, batches)
        return Scores(self.name, values, {"batches": batches, "tokens": "all"}, time.perf_counter() - start)

    def check_budget(self, budget: Budget, options: Any) -> None:
        if int(budget.value) != budget.value or budget.value < 1:
            raise ValueError(f"method 'attn_drop': budget {budget.text} must remove a whole number >= 1 "
                             "of attention sub-layers")

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method 'attn_drop' does not take a {budget.kind} budget ({budget.text})")
        self.check_budget(budget, {})
        total, n = len(scores.values), int(budget.value)
        if n > total:
            raise ValueError(f"method 'attn_drop': cannot remove {n} of {total} attention sub-layers ({budget.text})")
        order = sorted(range(total), key=lambda i: (-scores.values[i], i))  # most similar first; ties → shallower
        dropped = sorted(order[:n])
        notes = f"attention removed in blocks {dropped}; every MLP kept"
        return Plan(self.name, budget.text, total, list(range(total)), scores=list(scores.values),
                    decision_seconds=scores.seconds, notes=notes, extra={"dropped_attention": dropped})

    def apply(self, model: Any, plan: Plan) -> Any:
        from petlprune.models.surgery import drop_attention

        return drop_attention(model, plan.extra["dropped_attention"])
