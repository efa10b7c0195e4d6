"""Channel-SPA (SPLoRA) and the fine-pruning baseline: channel masks by an iterative criterion schedule.

Spec: ``book/methods/specs/spa.md`` (Hedegaard et al., "Structured Pruning Adapters", arXiv 2211.10155). Units are
the dependency groups of ``models.splora``: MLP hidden channels and attention heads (a head counts as
its ``head_dim`` channels). Density = kept channels / prunable channels (MLP hidden + attention inner).

Criteria, per output channel f of a group's producer (fc1; qkv, a head channel summing its q, k and v
rows), over one pass of training data, no updates:
    weight    ``||W_task[f]||_1``, normalised by the layer's L1 sum;
    gradient  ``|sum_batches mean dL/da_f|`` (a = the producer's output), L2-normalised per layer;
    taylor    ``|sum_batches mean a_f dL/da_f|``, L2-normalised per layer.
Normalisation runs over the layer's KEPT channels, so a shrinking layer's survivors gain weight; a
head's score is the mean of its channels'.

Schedule (inside ``score``: it needs the loader): repeat {score; prune ``step`` (5%) of the original
channels globally, lowest normalised score first, never a layer's last unit; recover (``fit`` for
``recover`` epochs, masks enforced in the forward pass)} until the lowest target density. The masks at
every target density go to the Scores' npz sidecar, so ``plan`` is a look-up. The recovery epochs are
part of the decision cost (``Scores.seconds`` -> ``Plan.decision_seconds``); the recovered weights are
dropped: the prune stage re-trains the fine-tuned model under the final masks with the common recipe.
``keep_recovered: true`` (a control arm) keeps them instead: the task weights the schedule holds when
it reaches each density (after the recoveries of the earlier steps) go into the Plan
(``extra["recovered"]``), ``apply`` loads them, and re-training starts from there.

``fine_pruning``: the same masks, criteria and schedule from the same SPLoRA fine-tuned model, but
C R is fused into W and W itself is trained (a whole pruned backbone per task).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, ClassVar

import numpy as np

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

__all__ = ["CRITERIA", "SPA_DEFAULTS", "SPA", "FinePruning", "channel_scores", "unit_scores", "prune_step",
           "density_of"]

CRITERIA = ("weight", "gradient", "taylor")
SPA_DEFAULTS: dict[str, Any] = {
    "criterion": "weight",
    "densities": [0.5, 0.3, 0.1],  # masks stored for each; plan looks them up
    "step": 0.05,  # fraction of the ORIGINAL channels pruned per step
    "batches": None,  # scoring batches per step (None: one pass of the loader)
    # a fresh AdamW at the fine-tuning lr (0.01) with no warm-up wrecks the fine-tuned model (train
    # loss back to chance on digits); 1e-3 keeps it (measured: 1.10 -> 1.15 after one epoch)
    "recover": {"epochs": 1, "lr": 0.001, "weight_decay": 0.0001, "warmup_epochs": 0, "batch_size": 64},
    "recover_batches": None,  # loader batches per recovery epoch (None: all)
    # learning rate of the common re-training for this method (None: the shared recipe's). Only
    # fine_pruning sets it: it trains W itself, and the PETL recipe's lr 0.01 wrecks backbone weights,
    # as it does for full fine-tuning. The tiers use full fine-tuning's lr (3e-4, chosen on
    # train800 -> val200, never on test); epochs and data stay shared.
    "retrain_lr": None,
}


_RECOVERED = "recovered_p"  # npz key prefix of the task weights at a density (keep_recovered)


def _density_key(d: float) -> str:
    return f"masks_p{float(d):g}"


def channel_scores(model: Any, criterion: str, loader: Any = None, batches: int | None = None,
                   device: Any = "cpu") -> dict[str, Any]:
    """Raw per-channel scores of every group: ``{group: (units * width,) tensor}``, eval mode, no update.

    Args:
        model: a SPLoRA model (masks set).
        criterion: one of :data:`CRITERIA`.
        loader: (x, y) batches (gradient and taylor).
        batches: how many batches (None: all).
        device: where to run.
    """
    import torch
    import torch.nn.functional as F

    from petlprune.models.splora import channel_groups

    groups = channel_groups(model)

    def per_channel(name: str, rows: torch.Tensor) -> torch.Tensor:
        # rows: (out,) per producer row; heads: the q, k and v rows of a channel add up
        return rows.reshape(3, -1).sum(0) if groups[name]["kind"] == "heads" else rows

    if criterion == "weight":
        with torch.no_grad():
            return {n: per_channel(n, g["producer"].weight().abs().sum(1)).cpu() for n, g in groups.items()}
    if criterion not in CRITERIA:
        raise ValueError(f"spa: unknown criterion {criterion!r} (known: {', '.join(CRITERIA)})")
    if loader is None:
        raise ValueError(f"spa: criterion {criterion!r} needs a data loader")
    sums = {n: torch.zeros(g["producer"].out_features, dtype=torch.float64) for n, g in groups.items()}

    def hook(name: str):
        def fwd(module, inputs, out):
            a = out.detach()

            def bwd(grad):  # grad, a: (B, T, out); mean over images and tokens, summed over batches
                term = grad if criterion == "gradient" else grad * a
                sums[name] += term.flatten(0, -2).mean(0).double().cpu()

            out.register_hook(bwd)
        return fwd

    handles = [g["producer"].register_forward_hook(hook(n)) for n, g in groups.items()]
    was_training = model.training
    model.eval()
    try:
        for x, y in itertools.islice(loader, batches):
            x = x.to(device).requires_grad_(True)  # grads w.r.t. the input reach every block, no .grad on weights
            loss = F.cross_entropy(model(x), y.to(device))
            torch.autograd.grad(loss, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: per_channel(n, s.abs().float()) for n, s in sums.items()}


def unit_scores(model: Any, raw: dict[str, Any], criterion: str) -> dict[str, Any]:
    """Per-layer normalised unit scores ``{group: (units,)}``; pruned units get +inf (never chosen).

    Normalisation over the layer's kept channels: L1 sum for ``weight``, L2 norm otherwise; a unit's
    score is the mean of its channels' normalised scores.
    """
    import torch

    from petlprune.models.splora import channel_groups, get_masks

    groups, masks = channel_groups(model), get_masks(model)
    out = {}
    for name, s in raw.items():
        g, keep = groups[name], masks[name].bool().to(s.device)  # scores and masks on one device
        kept = s.reshape(g["units"], g["width"])[keep].flatten()
        norm = kept.abs().sum() if criterion == "weight" else kept.norm()
        u = (s / norm.clamp_min(1e-30)).reshape(g["units"], g["width"]).mean(1)
        out[name] = torch.where(keep, u, torch.full_like(u, float("inf")))
    return out


def prune_step(model: Any, scores: dict[str, Any], channels: int) -> int:
    """Prune units, lowest score first across all layers, until ``channels`` more channels are pruned.

    Never prunes a layer's last unit. Ties break by group order, then unit index. Returns the number of
    channels pruned (a head overshoots by up to ``head_dim - 1``).
    """
    from petlprune.models.splora import channel_groups, get_masks, set_masks

    groups, masks = channel_groups(model), get_masks(model)
    kept = {n: int(m.sum().item()) for n, m in masks.items()}
    order = sorted(((float(v), gi, u, n) for gi, (n, s) in enumerate(scores.items())
                    for u, v in enumerate(s.tolist()) if masks[n][u] > 0))
    pruned = 0
    for _, _, u, n in order:
        if pruned >= channels:
            break
        if kept[n] <= 1:
            continue
        masks[n][u] = 0.0
        kept[n] -= 1
        pruned += groups[n]["width"]
    set_masks(model, masks)
    return pruned


def density_of(model: Any) -> dict[str, float]:
    """Kept fraction of the prunable channels and of the adapted layers' weights."""
    from petlprune.models.splora import channel_groups, get_masks, splora_layers

    groups, masks = channel_groups(model), get_masks(model)
    total = sum(g["units"] * g["width"] for g in groups.values())
    kept = sum(int(masks[n].sum().item()) * g["width"] for n, g in groups.items())
    layers = splora_layers(model).values()
    w_total = sum(m.out_features * m.in_features for m in layers)
    w_kept = sum(int(m.mask_out.sum().item()) * int(m.mask_in.sum().item()) for m in layers)
    return {"channels": kept / total, "weights": w_kept / w_total}


class _Batches:
    """The first ``n`` batches of a loader, with a length (``fit`` reads ``len``)."""

    def __init__(self, loader: Any, n: int | None) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return len(self.loader) if self.n is None else min(self.n, len(self.loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))


SPA_OPTIONS: tuple[Option, ...] = (
    Option("criterion", "str", SPA_DEFAULTS["criterion"], choices=CRITERIA),
    Option("densities", "numbers", SPA_DEFAULTS["densities"], minimum=0.0, maximum=1.0),
    Option("step", "number", SPA_DEFAULTS["step"]),
    Option("batches", "int", SPA_DEFAULTS["batches"], minimum=1, nullable=True),
    Option("recover", "mapping", SPA_DEFAULTS["recover"], doc="TrainConfig of each recovery"),
    Option("recover_batches", "int", SPA_DEFAULTS["recover_batches"], minimum=1, nullable=True),
    Option("retrain_lr", "number", SPA_DEFAULTS["retrain_lr"], minimum=0.0, nullable=True),
    # the control arm: re-train from the weights the schedule reached at each density (recovered over
    # the earlier steps), instead of from the fine-tuned model under the final masks
    Option("keep_recovered", "bool", False),
)


def _options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = check_declared(name, SPA_OPTIONS, options)
    if not 0 < float(opts["step"]) < 1:
        raise OptionError(f"method {name!r}: step must be in (0, 1), got {opts['step']!r}", "step")
    dens = [float(d) for d in opts["densities"]]
    if not all(0 < d < 1 for d in dens):
        raise OptionError(f"method {name!r}: densities must be in (0, 1), got {opts['densities']!r}", "densities")
    steps = [(1 - d) / float(opts["step"]) for d in dens]
    off = [d for d, s in zip(dens, steps, strict=True) if abs(s - round(s)) > 1e-6]
    if off:  # the schedule would stop at the nearest step and file its masks under the wrong density
        raise OptionError(f"method {name!r}: densities {off} are not reached by steps of {opts['step']} "
                          "(1 - density must be a multiple of step)", "densities")
    opts["densities"] = sorted(set(dens), reverse=True)
    return opts


@register("spa")
class SPA:
    """Channel-SPA: SPLoRA fine-tuned model, masks on W, C, R and bias; W frozen."""

    budget_kinds: ClassVar[tuple[str, ...]] = ("density",)
    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    trains_backbone: ClassVar[bool] = False
    reshapes_backbone: ClassVar[bool] = True  # deployed sliced: measure also reports it stored whole

    def check_options(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The options ``score`` runs with (declared in :data:`SPA_OPTIONS`), checked."""
        return _options(self.name, raw)

    def check_budget(self, budget: Budget, opts: dict[str, Any]) -> None:
        """A density budget must be one the schedule records (``densities``)."""
        if not any(abs(float(budget.value) - d) < 1e-9 for d in opts["densities"]):
            raise ValueError(f"method {self.name!r}: no masks for {budget.text}: add {budget.value:g} to the "
                             f"instance's 'densities' (has {[f'{d:g}' for d in opts['densities']]})")

    def _prepare(self, model: Any) -> Any:
        """Make the model the one the schedule prunes (fine-pruning fuses C R into W here)."""
        return model

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = _options(self.name, ctx.options)
        if getattr(ctx.model, "petl_method", None) != "splora":
            raise ValueError(f"method {self.name!r} prunes a SPLoRA model (config: petl: splora), "
                             f"got {getattr(ctx.model, 'petl_method', None)!r}")
        if ctx.loader is None:
            raise ValueError(f"method {self.name!r} needs a data loader (recovery training)")
        from petlprune.models.petl import mark_trainable
        from petlprune.models.splora import channel_groups, get_masks
        from petlprune.train import TrainConfig, fit

        model = self._prepare(ctx.model)
        mark_trainable(model)
        recover = TrainConfig.from_dict(opts["recover"], source=f"method {self.name} option 'recover'")
        groups = channel_groups(model)
        total = sum(g["units"] * g["width"] for g in groups.values())
        step = float(opts["step"])
        targets = {d: round((1 - d) / step) for d in opts["densities"]}  # density -> step count
        arrays, reached, history, first = {}, {}, [], None
        for k in range(1, max(targets.values()) + 1):
            t0 = time.perf_counter()
            raw = channel_scores(model, opts["criterion"], ctx.loader, opts["batches"], ctx.device)
            scores = unit_scores(model, raw, opts["criterion"])
            if first is None:
                first = [float(v) for s in scores.values() for v in s.tolist()]
            already = total - round(density_of(model)["channels"] * total)
            pruned = prune_step(model, scores, round(k * step * total) - already)
            dens = density_of(model)
            entry = {"step": k, "pruned_channels": pruned, **{f"density_{n}": v for n, v in dens.items()}}
            for d, kd in targets.items():
                if kd == k:
                    masks = get_masks(model)
                    arrays[_density_key(d)] = np.concatenate([masks[n].cpu().numpy() for n in groups]).astype(np.uint8)
                    if opts["keep_recovered"]:
                        from petlprune.models.petl import task_state_dict

                        arrays.update({f"{_RECOVERED}{d:g}:{n}": t.detach().cpu().numpy() for n, t in task_state_dict(model).items()})
                    reached[f"{d:g}"] = dens
            if k < max(targets.values()):  # the last step's recovery would be thrown away
                hist = fit(model, _Batches(ctx.loader, opts["recover_batches"]), recover, device=ctx.device,
                           seed=ctx.seed + k, log=None)
                entry["recover_loss"] = hist[-1]["loss"]
            entry["seconds"] = time.perf_counter() - t0
            history.append(entry)
            print(f"{self.name}: step {k}: {dens['channels']:.1%} of channels, {dens['weights']:.1%} of weights kept"
                  + (f", recovery loss {entry['recover_loss']:.4f}" if "recover_loss" in entry else "")
                  + f" ({entry['seconds']:.1f}s)", flush=True)
        model.eval()
        extra = {
            "criterion": opts["criterion"], "step": step, "densities": reached, "history": history,
            "groups": [[n, g["units"], g["width"]] for n, g in groups.items()], "depth": len(model.blocks),
            "total_channels": total, "recover": recover.to_dict(), "recover_batches": opts["recover_batches"],
            "retrain_lr": opts["retrain_lr"], "keep_recovered": opts["keep_recovered"],
            "units": "values: per-unit normalised scores of the first step, groups in order",
        }
        return Scores(self.name, first or [], extra, time.perf_counter() - start, arrays)

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method {self.name!r} takes a density budget (p0.3), not {budget.text}")
        key = _density_key(budget.value)
        if key not in scores.arrays:
            have = sorted(k.removeprefix("masks_") for k in scores.arrays)
            raise ValueError(f"method {self.name!r}: no masks for {budget.text} in the scores (have {have}; "
                             "add the density to the method's 'densities' option)")
        bits = scores.arrays[key].astype(int).tolist()
        masks, i = {}, 0
        for name, units, _ in scores.extra["groups"]:
            masks[name] = bits[i:i + units]
            i += units
        depth = int(scores.extra["depth"])
        prefix = f"{_RECOVERED}{float(budget.value):g}:"
        recovered = {k.removeprefix(prefix): v.tolist() for k, v in scores.arrays.items() if k.startswith(prefix)}
        dens = scores.extra["densities"][f"{float(budget.value):g}"]
        notes = (f"{scores.extra['criterion']} criterion, {len(scores.extra['history'])} steps of "
                 f"{scores.extra['step']:g}; kept {dens['channels']:.1%} of channels, {dens['weights']:.1%} of weights")
        return Plan(self.name, budget.text, depth, list(range(depth)), masks=masks, scores=list(scores.values),
                    decision_seconds=scores.seconds, notes=notes,
                    extra={"criterion": scores.extra["criterion"], "density_channels": dens["channels"],
                           "density_weights": dens["weights"], "stores_backbone": self.trains_backbone,
                           "retrain_lr": scores.extra.get("retrain_lr"), "recovered": recovered or None})

    def apply(self, model: Any, plan: Plan) -> Any:
        from petlprune.models.splora import set_masks

        if plan.masks is None:
            raise ValueError(f"plan {plan.method} {plan.budget}: no masks")
        model = set_masks(self._prepare(model), plan.masks)
        recovered = (plan.extra or {}).get("recovered")
        if recovered:  # keep_recovered: start from the schedule's weights at this density
            import torch

            from petlprune.models.petl import load_task_state_dict, mark_trainable

            # the task tensors the schedule trained and stored (fine-pruning: W too)
            getattr(self, "mark_trainable", lambda m, petl: mark_trainable(m, petl))(model, "splora")
            load_task_state_dict(model, {k: torch.tensor(v) for k, v in recovered.items()},
                                 source=f"plan {plan.method} {plan.budget} recovered weights")
        return model

    def retrain_config(self, cfg: Any, plan: Plan) -> Any:
        """The shared re-training recipe, with this instance's ``retrain_lr`` if it set one."""
        lr = (plan.extra or {}).get("retrain_lr")
        return cfg if lr is None else dataclasses.replace(cfg, lr=float(lr))

    def deploy(self, model: Any, plan: Plan) -> Any:
        """The deployed model: W + C R fused, kept channels sliced into a smaller dense timm model."""
        from petlprune.models.surgery import slice_channels

        return slice_channels(model)


@register("fine_pruning")
class FinePruning(SPA):
    """Fine-pruning: SPA's masks and schedule, C R fused into W and W trained (stores a pruned backbone)."""

    trains_backbone: ClassVar[bool] = True

    def _prepare(self, model: Any) -> Any:
        from petlprune.models.splora import splora_layers

        for layer in splora_layers(model).values():
            if not layer.train_base:
                layer.fuse_()
                layer.train_base = True  # W is now a task weight: trained, stored and reloaded
        return model

    def mark_trainable(self, model: Any, petl: str) -> Any:
        """Re-training trains W (under the masks), the bias and the head."""
        from petlprune.models.petl import mark_trainable

        return mark_trainable(self._prepare(model), petl)
