"""Pear (Zhong & Zhou, 2024, arXiv 2409.19733): prune the unimportant adapters, share kept ones into
their positions; and ``adapter_drop``, the same pruning without sharing (``book/methods/specs/baselines.md``).

Spec: ``book/methods/specs/pear.md``. The paper's method section and code were not available: every open choice
is an option here, compared in ``full.yaml``'s ablation, and the book page says what is reconstructed.

1. ``score``: first-order Taylor importance ``I_p = |Σ_{θ ∈ a_p} θ·∂L/∂θ|`` of the adapter at each
   adapter position p (``analysis.importance.taylor_importance``; variants ``elementwise``, ``normalize``).
2. ``plan`` (budget ``r{rho}``): remove the lowest-importance adapters until at least a fraction rho of
   the adapter parameters is gone (ties → the deeper adapter goes first; at least one adapter stays).
   Each pruned position p is served by a kept adapter π(p): ``share`` = ``most_important`` (the kept
   adapter of highest importance) or ``nearest`` (closest position, ties → the shallower), or ``none``
   (the position runs its backbone module alone: ``adapter_drop``).
3. ``apply``: ``models.surgery.share_adapters`` (the SAME module object: weights tied, gradients of
   every served position add up, stored once) or ``drop_adapters``; every block stays (depth unchanged).
   Knowledge checkpoint ``kc``: ``init`` sets each serving adapter to the importance-weighted average of
   its own weights and those of the adapters it replaces (the weights are in the Plan, so ``apply`` is
   a function of the model and the Plan; on reloading a pruned checkpoint the stored weights overwrite
   the average); ``scale`` (a control for ``init``) only multiplies each serving adapter by the weight
   kc-init gives that adapter itself, so ``init`` = ``scale`` + the other adapters' weighted parameters:
   init vs scale separates merging unaligned adapters from plain damping; ``distill`` re-trains with ``(1 - λ)·CE + λ·T²·KL(teacher_T ‖ student_T)`` towards the
   unpruned fine-tuned model's logits (``retrain_loss``; the teacher is never stored); ``none``.

What a task stores: kept adapters + head + the sharing map (``measure.plan_cost``: P integers).
``adapter_drop`` stores a keep-mask over positions instead (``Plan.masks``: one bit per position).
Pear saves storage, not compute: every position still runs an adapter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from petlprune.methods.base import (
    Budget,
    Option,
    OptionError,
    Plan,
    Scores,
    ScoringContext,
    check_declared,
    register,
)

__all__ = [
    "SHARE_RULES",
    "KC_VARIANTS",
    "Pear",
    "AdapterDrop",
    "positions_to_prune",
    "sharing_map",
    "kc_init_weights",
    "distillation_loss",
]

SHARE_RULES = ("most_important", "nearest", "none")
KC_VARIANTS = ("init", "distill", "none", "scale")


def positions_to_prune(importance: Sequence[float], sizes: Sequence[int], rho: float) -> list[int]:
    """Lowest-importance positions whose parameters make up at least a fraction ``rho`` of all.

    Ties in importance: the deeper position is pruned first. At least one adapter is always kept.

    Args:
        importance: I_p per position.
        sizes: parameters of the adapter at each position.
        rho: fraction of adapter parameters to remove, in [0, 1).
    """
    if len(importance) != len(sizes) or not importance:
        raise ValueError(f"pear: {len(importance)} importances for {len(sizes)} adapter positions")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"pear: the pruned ratio rho must be in [0, 1), got {rho}")
    order = sorted(range(len(importance)), key=lambda p: (importance[p], -p))  # least important first
    total, removed, pruned = sum(sizes), 0, []
    for p in order[:-1]:  # the most important adapter always stays
        if removed >= rho * total:
            break
        pruned.append(p)
        removed += sizes[p]
    return sorted(pruned)


def sharing_map(importance: Sequence[float], pruned: Sequence[int], rule: str) -> dict[int, int]:
    """{pruned position: serving kept position} under a share rule (``none``: an empty map).

    Args:
        importance: I_p per position.
        pruned: the pruned positions.
        rule: ``most_important`` (ties → the shallower) or ``nearest`` (ties → the shallower).
    """
    if rule not in SHARE_RULES:
        raise ValueError(f"pear: share rule {rule!r} not in {SHARE_RULES}")
    kept = [p for p in range(len(importance)) if p not in set(pruned)]
    if rule == "none" or not pruned:
        return {}
    if not kept:
        raise ValueError("pear: every adapter pruned, none left to share")
    if rule == "most_important":
        best = min(kept, key=lambda q: (-importance[q], q))
        return {p: best for p in pruned}
    return {p: min(kept, key=lambda q: (abs(q - p), q)) for p in pruned}


def kc_init_weights(importance: Sequence[float], sharing: Mapping[int, int]) -> dict[int, dict[int, float]]:
    """kc-init: {serving position q: {position: weight}} over q and the positions it serves.

    Weights are the importances normalised to sum 1 (uniform when they are all zero).
    """
    served: dict[int, list[int]] = {}
    for p, q in sorted(sharing.items()):
        served.setdefault(q, []).append(p)
    out = {}
    for q, ps in sorted(served.items()):
        members = [q, *ps]
        total = sum(float(importance[m]) for m in members)
        out[q] = {m: (float(importance[m]) / total if total > 0 else 1.0 / len(members)) for m in members}
    return out


def distillation_loss(
    logits: Any, teacher_logits: Any, labels: Any, temperature: float, weight: float
) -> Any:
    """``(1 - weight)·CE(logits, labels) + weight·T²·KL(softmax(teacher/T) ‖ softmax(logits/T))``.

    The T² factor keeps the soft term's gradient scale independent of T (Hinton et al., 2015).
    """
    import torch.nn.functional as F

    kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * F.cross_entropy(logits, labels) + weight * temperature**2 * kl


def _position_names(model: Any) -> list[str]:
    """Module name of every adapter position (``blocks.3.mlp``), in forward order."""
    from petlprune.models.surgery import adapter_positions

    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    return [names[id(w)] for w in adapter_positions(model)]


@register("pear")
class Pear:
    """Pear: Taylor importance per adapter position, prune by parameter ratio, share, knowledge checkpoint.

    Options (``ScoringContext.options``; carried to ``plan`` in ``Scores.extra["options"]``):
        batches (8): training batches the Taylor gradient is accumulated over.
        elementwise (False): ``Σ|θ·∂L/∂θ|`` instead of ``|Σ θ·∂L/∂θ|``.
        normalize (False): divide by the adapter's parameter count.
        share ("nearest"): ``most_important`` | ``nearest`` | ``none``.
        kc ("init"): ``init`` | ``distill`` | ``none`` | ``scale`` (``init`` and ``scale`` need sharing).
        temperature (2.0), kd_weight (0.5): T and λ of kc-distill.
    """

    budget_kinds: ClassVar[tuple[str, ...]] = ("ratio",)
    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    # share/kc of the main comparison: the best mean val200 top-1 of the ablation (train800 -> val200,
    # never test; book/methods/pear.md). The rest are reconstruction choices, not tuned.
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("batches", "int", 8, minimum=1, doc="training batches the Taylor gradient is accumulated over"),
        Option("elementwise", "bool", False, doc="sum |θ·∂L/∂θ| instead of |Σ θ·∂L/∂θ|"),
        Option("normalize", "bool", False, doc="divide by the adapter's parameter count"),
        Option("share", "str", "nearest", choices=SHARE_RULES, doc="which kept adapter serves a pruned position"),
        Option("kc", "str", "init", choices=KC_VARIANTS, doc="knowledge checkpoint"),
        Option("temperature", "number", 2.0, minimum=1e-12, doc="T of kc-distill"),
        Option("kd_weight", "number", 0.5, minimum=0.0, maximum=1.0, doc="λ of kc-distill"),
    )
    defaults: ClassVar[dict[str, Any]] = {o.name: o.default for o in option_specs}
    fixed: ClassVar[dict[str, Any]] = {}  # options a registered variant pins (adapter_drop)

    def check_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` over the defaults, checked; an unknown or pinned key is an error."""
        opts = check_declared(self.name, self.option_specs, given, self.fixed)
        if opts["kc"] in ("init", "scale") and opts["share"] == "none":
            raise OptionError(f"method {self.name!r}: kc {opts['kc']!r} acts on a serving adapter; "
                              "share 'none' has none", "kc")
        return opts

    # ---------------------------------------------------------------------------------------- score
    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        if ctx.loader is None:
            raise ValueError(f"method {self.name!r} needs a data loader in the scoring context")
        from petlprune.analysis.importance import taylor_importance
        from petlprune.models.surgery import adapter_positions

        positions = adapter_positions(ctx.model)
        if not positions or any(w.adapter is None for w in positions):
            raise ValueError(f"method {self.name!r}: needs a PETL model with an adapter at every position")
        if len({id(w.adapter) for w in positions}) != len(positions):
            raise ValueError(f"method {self.name!r}: the model already shares adapters; score the fine-tuned model")
        groups = {p: list(w.adapter.parameters()) for p, w in enumerate(positions)}
        result = taylor_importance(ctx.model, groups, ctx.loader, opts["batches"],
                                   elementwise=opts["elementwise"], normalize=opts["normalize"])
        names = _position_names(ctx.model)
        extra = {
            "options": opts,
            "num_blocks": len(ctx.model.blocks),
            "positions": names,
            "blocks": [int(n.split(".")[1]) for n in names],
            "params": [sum(t.numel() for t in groups[p]) for p in range(len(positions))],
            "batches": result.batches,
            "samples": result.samples,
        }
        values = [result.values[p] for p in range(len(positions))]
        return Scores(self.name, values, extra, time.perf_counter() - start)

    # ----------------------------------------------------------------------------------------- plan
    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method {self.name!r} takes a ratio budget r{{rho}} (e.g. r0.5), not {budget.text!r}")
        extra = scores.extra
        missing = [k for k in ("options", "num_blocks", "params") if k not in extra]
        if missing:
            raise ValueError(f"method {self.name!r}: scores lack extra {missing} (scored by another method?)")
        opts = self.check_options({k: v for k, v in extra["options"].items() if k not in self.fixed})
        importance = [float(v) for v in scores.values]
        sizes = [int(n) for n in extra["params"]]
        rho = float(budget.value)
        pruned = positions_to_prune(importance, sizes, rho)
        share = sharing_map(importance, pruned, opts["share"])
        kept = [p for p in range(len(importance)) if p not in set(pruned)]
        removed = sum(sizes[p] for p in pruned) / sum(sizes)
        depth = int(extra["num_blocks"])
        plan_extra: dict[str, Any] = {
            "share": opts["share"], "kc": opts["kc"], "rho": rho, "removed_fraction": removed,
            "pruned_positions": pruned, "kept_positions": kept, "positions": extra.get("positions"),
            "temperature": float(opts["temperature"]), "kd_weight": float(opts["kd_weight"]),
        }
        if opts["kc"] in ("init", "scale"):  # scale: the same weights, only the serving adapter's own used
            plan_extra["kc_init_weights"] = {str(q): {str(m): w for m, w in ws.items()}
                                             for q, ws in kc_init_weights(importance, share).items()}
        masks = None
        if opts["share"] == "none":
            # which positions still hold an adapter: one bit per position (measure.plan_cost packs them)
            masks = {"adapters": [0 if p in set(pruned) else 1 for p in range(len(importance))]}
        notes = (f"pruned {len(pruned)} of {len(importance)} adapters ({100 * removed:.1f}% of adapter params), "
                 f"share {opts['share']}, kc {opts['kc']}; every block kept (Pear saves storage, not compute)")
        return Plan(self.name, budget.text, depth, list(range(depth)),
                    sharing={str(p): int(q) for p, q in share.items()} or None, masks=masks,
                    scores=importance, decision_seconds=scores.seconds, notes=notes, extra=plan_extra)

    # ---------------------------------------------------------------------------------------- apply
    def apply(self, model: Any, plan: Plan) -> Any:
        """Share (or drop) adapters as the Plan says, kc-init included; blocks untouched."""
        import torch

        from petlprune.models.surgery import adapter_positions, drop_adapters, share_adapters

        if len(model.blocks) != plan.depth:
            raise ValueError(f"{plan.method}: plan for {plan.depth} blocks, model has {len(model.blocks)}")
        positions = adapter_positions(model)
        if plan.scores is not None and len(plan.scores) != len(positions):
            raise ValueError(f"{plan.method}: plan for {len(plan.scores)} adapter positions, model has {len(positions)}")
        weights = plan.extra.get("kc_init_weights") or {}
        scale_only = plan.extra.get("kc") == "scale"
        with torch.no_grad():  # importance-weighted average into each serving adapter, before tying
            for q, members in weights.items():
                target = dict(positions[int(q)].adapter.named_parameters())
                if scale_only:  # the control: the serving adapter's own share of the average, nothing else
                    for param in target.values():
                        param.mul_(float(members[str(q)]))
                    continue
                sources = {int(m): dict(positions[int(m)].adapter.named_parameters()) for m in members}
                for name, param in target.items():
                    param.copy_(sum(w * sources[int(m)][name] for m, w in members.items()))
        if plan.sharing:
            share_adapters(model, plan.sharing)
        pruned = plan.extra.get("pruned_positions", [])
        if plan.extra.get("share") == "none" and pruned:
            drop_adapters(model, pruned)
        return model

    # -------------------------------------------------------------------------------- prune hooks
    def retrain_loss(self, plan: Plan, teacher: Any) -> Any:
        """kc-distill: KL towards the unpruned model's logits at temperature T, mixed with CE; else None."""
        if plan.extra.get("kc") != "distill":
            return None
        import torch

        frozen = teacher()  # the unpruned fine-tuned model, eval mode, no trainable parameter
        if any(p.requires_grad for p in frozen.parameters()):
            raise ValueError(f"{plan.method}: the distillation teacher must be frozen")
        temperature, weight = float(plan.extra["temperature"]), float(plan.extra["kd_weight"])

        def loss_fn(logits: Any, y: Any, x: Any) -> Any:
            with torch.no_grad():
                target = frozen(x)  # (B, classes)
            return distillation_loss(logits, target, y, temperature, weight)

        return loss_fn


@register("adapter_drop")
class AdapterDrop(Pear):
    """Pear's pruning without sharing and without knowledge checkpoint (``book/methods/specs/baselines.md``)."""

    fixed: ClassVar[dict[str, Any]] = {"share": "none", "kc": "none"}

