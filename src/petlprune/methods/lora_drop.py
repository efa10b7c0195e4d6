"""LoRA-drop (Zhou et al., COLING 2025): Pear's prune-and-share for LoRA, scored by the LoRA's output.

book/methods/lora_drop.md. On the LoRA PETL (``petl: lora``; every position is a ``LowRank`` ΔW):

1. ``score``: each position's importance ``g_p = Σ_x ‖ΔW_p x‖²`` over sampled training data (the
   paper's output norm of the LoRA on its input), normalised to sum 1.
2. ``plan`` (budget ``r{rho}``, as Pear): the lowest-importance LoRAs until a fraction rho of the LoRA
   parameters is gone (``pear.positions_to_prune``). ``share: shared`` (the paper): those positions share
   ONE LoRA (one per LoRA kind, e.g. ``attn.qkv``: shapes differ across kinds); to store exactly as many parameters as dropping them (LoRA-drop-1 compares at equal storage),
   the least important kept LoRA joins them, and the most important of the group holds the shared module,
   initialised to the group's importance-weighted average (Pear's kc-init weights) and re-trained with the
   rest. ``share: none``: the pruned LoRAs are dropped (the position runs its frozen W alone).
3. ``apply``: Pear's (``surgery.share_adapters``: one module object, every position's gradient adds up).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from petlprune.methods.base import Budget, Option, Plan, Scores, ScoringContext, check_declared, register
from petlprune.methods.pear import Pear, kc_init_weights, positions_to_prune

__all__ = ["LoRADrop", "lora_output_norms", "shared_groups"]


def lora_output_norms(model: Any, loader: Any, batches: int) -> list[float]:
    """``Σ ‖ΔW_p x‖²`` of every adapter position over ``batches`` loader batches, normalised to sum 1."""
    import torch

    from petlprune.analysis.importance import forward_hooked
    from petlprune.models.surgery import adapter_positions

    positions = adapter_positions(model)
    sums = torch.zeros(len(positions), dtype=torch.float64)

    def make_hook(p: int):
        def hook(module, args, output):  # output: ΔW x, (B, T, d_out)
            sums[p] += output.detach().double().pow(2).sum().cpu()
        return hook

    forward_hooked(model, loader, batches, [w.adapter.register_forward_hook(make_hook(p)) for p, w in enumerate(positions)])
    total = float(sums.sum())
    return (sums / total).tolist() if total > 0 else [1.0 / len(positions)] * len(positions)


def shared_groups(importance: list[float], pruned: list[int], kinds: list[str]) -> list[list[int]]:
    """LoRA-drop's sharing at Pear's storage: per LoRA kind (``attn.qkv``, ``mlp.fc1``: one shape), the
    group of positions that share one LoRA, its serving position (most important, ties → shallower) first.

    The least important kept position of the kind joins its pruned ones, so the shared module replaces it in
    the stored count (equal storage with dropping at the same rho); a kind with no kept position left
    shares one LoRA all the same, and ``_balance`` then moves further LoRAs into the groups until the
    plan stores at most what dropping stores.
    """
    groups = []
    for kind in dict.fromkeys(kinds):
        members = [p for p in range(len(importance)) if kinds[p] == kind]
        cut = [p for p in members if p in set(pruned)]
        kept = [p for p in members if p not in set(pruned)]
        if not cut:
            continue
        if kept:  # (a kind pruned whole shares one LoRA: one more than dropping it, said in the notes)
            cut.append(min(kept, key=lambda q: (importance[q], -q)))  # Pear's order: least important, deeper
        server = min(cut, key=lambda q: (-importance[q], q))
        groups.append([server, *sorted(p for p in cut if p != server)])
    return groups


def _stored(groups: list[list[int]], sizes: list[int]) -> int:
    grouped = {p for g in groups for p in g}
    return sum(sizes[p] for p in range(len(sizes)) if p not in grouped) + sum(sizes[g[0]] for g in groups)


def _balance(groups: list[list[int]], importance: list[float], sizes: list[int], kinds: list[str],
             budget_params: int) -> None:
    """While the shared plan stores more than dropping would (``budget_params``: a kind pruned whole
    still stores its shared LoRA), move the least important own LoRA of a grouped kind into its group."""
    by_kind = {kinds[g[0]]: g for g in groups}
    while _stored(groups, sizes) > budget_params:
        grouped = {p for g in groups for p in g}
        own = [p for p in range(len(sizes)) if p not in grouped and kinds[p] in by_kind]
        if len(own) <= 1:  # keep at least one LoRA of its own
            return
        p = min(own, key=lambda q: (importance[q], -q))
        by_kind[kinds[p]].append(p)


@register("lora_drop")
class LoRADrop(Pear):
    """Score LoRAs by output norm; keep the top ones; the rest share one LoRA (or are dropped)."""

    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("batches", "int", 8, minimum=1, doc="training batches the output norm is summed over"),
        Option("share", "str", "shared", choices=("shared", "none"),
               doc="shared: one LoRA for the pruned positions (LoRA-drop); none: drop them"),
    )

    def check_options(self, given: Any) -> dict[str, Any]:
        return check_declared(self.name, self.option_specs, given, self.fixed)

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        if ctx.loader is None:
            raise ValueError("method 'lora_drop' needs a data loader in the scoring context")
        if getattr(ctx.model, "petl_method", None) != "lora":
            raise ValueError(f"method 'lora_drop' prunes the LoRA PETL (petl: lora), got "
                             f"{getattr(ctx.model, 'petl_method', None)!r}")
        from petlprune.methods.pear import _position_names
        from petlprune.models.surgery import adapter_positions

        positions = adapter_positions(ctx.model)
        values = lora_output_norms(ctx.model, ctx.loader, opts["batches"])
        extra = {"options": opts, "num_blocks": len(ctx.model.blocks), "positions": _position_names(ctx.model),
                 "params": [sum(t.numel() for t in w.adapter.parameters()) for w in positions],
                 "batches": opts["batches"]}
        return Scores(self.name, values, extra, time.perf_counter() - start)

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method {self.name!r} takes a ratio budget r{{rho}} (e.g. r0.5), not {budget.text!r}")
        opts = self.check_options(scores.extra["options"])
        importance = [float(v) for v in scores.values]
        sizes = [int(n) for n in scores.extra["params"]]
        rho = float(budget.value)
        pruned = positions_to_prune(importance, sizes, rho)
        depth = int(scores.extra["num_blocks"])
        extra: dict[str, Any] = {"share": opts["share"], "kc": "none", "rho": rho,
                                 "positions": scores.extra.get("positions")}
        sharing, masks = {}, None
        if opts["share"] == "shared":
            names = scores.extra.get("positions") or [""] * len(importance)
            kinds = [n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in names]
            groups = shared_groups(importance, pruned, kinds)
            _balance(groups, importance, sizes, kinds, budget_params=sum(sizes) - sum(sizes[p] for p in pruned))
            sharing = {p: g[0] for g in groups for p in g[1:]}
            extra["kc"] = "init"  # each shared LoRA starts as its group's importance-weighted average
            extra["kc_init_weights"] = {str(q): {str(m): w for m, w in ws.items()}
                                        for q, ws in kc_init_weights(importance, sharing).items()}
            extra["shared_groups"] = groups
            extra["pruned_positions"] = sorted(sharing)
        else:
            extra["pruned_positions"] = pruned
            masks = {"adapters": [0 if p in set(pruned) else 1 for p in range(len(importance))]}
        extra["kept_positions"] = [p for p in range(len(importance)) if p not in set(extra["pruned_positions"])]
        extra["removed_fraction"] = sum(sizes[p] for p in extra["pruned_positions"]) / sum(sizes)
        notes = (f"{len(extra['pruned_positions'])} of {len(importance)} LoRAs "
                 + ("served by one shared LoRA" if sharing else "dropped") + "; every block kept")
        return Plan(self.name, budget.text, depth, list(range(depth)),
                    sharing={str(p): int(q) for p, q in sharing.items()} or None, masks=masks,
                    scores=importance, decision_seconds=scores.seconds, notes=notes, extra=extra)

    def retrain_loss(self, plan: Plan, teacher: Any) -> Any:
        return None
