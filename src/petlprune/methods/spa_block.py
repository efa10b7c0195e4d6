"""Block-SPA (``spa_block`` on PETL ``splopa``): block-magnitude pruning on a cubic density schedule.

``score`` runs the whole schedule on a copy of the fine-tuned SPLoPA model: from density 1 down to
the lowest requested density in ``steps`` cubic steps (Zhu & Gupta 2017, as SPA's block pruning),
``d_t = d_f + (1 - d_f)(1 - t/T)^3``, with every requested density inserted into the sequence. At
each step every adapted layer keeps its ``round(d · cells)`` blocks of largest mean ``|W + ΔW|``
among those still kept (masks are nested; at least one block per layer), then the kept position
weights, prototypes and head recover for ``recovery_epochs`` with the study's trainer
(``petlprune.train.fit``). The mask of each requested density is stored in the Scores sidecar
(``masks_p{d}``: all layers' flat 0/1 grids concatenated, layer order and grids in ``extra``);
``plan`` looks the budget ``p{d}`` up, and ``apply`` shrinks each layer to its kept blocks. The prune
stage then re-trains from the fine-tuned weights under the Plan's masks (the recovered weights of
the schedule are not kept: a Plan is the decision only).

Per-layer uniform density (not a global threshold): layers of one shape share prototypes but their
weight scales differ, and a global cut would empty whole layers. Movement pruning is not done.
Spec: ``book/methods/specs/spa.md`` (Block-SPA).
"""

from __future__ import annotations

import copy
import time
from typing import Any, ClassVar

import numpy as np

from petlprune.methods.base import (
    Budget,
    DeclaredOptions,
    Option,
    OptionError,
    Plan,
    Scores,
    ScoringContext,
    check_declared,
    register,
)

__all__ = ["SpaBlock", "cubic_schedule"]

# Recovery at 1e-3: a fresh AdamW at the fine-tuning lr (1e-2) with no warm-up sends a fine-tuned model
# back to chance (measured for SPA's SPLoRA); each step also draws its own data order (seed + step).
_OPTIONS: tuple[Option, ...] = (
    Option("densities", "numbers", [0.5], minimum=0.0, maximum=1.0, doc="kept fractions to record"),
    Option("steps", "int", 4, minimum=1, doc="cubic steps to the lowest density"),
    Option("recovery_epochs", "int", 1, minimum=0, doc="recovery epochs after each step"),
    Option("lr", "number", 0.001, minimum=0.0, doc="recovery learning rate"),
    Option("weight_decay", "number", 1e-4, minimum=0.0),
)


def cubic_schedule(final: float, steps: int, also: list[float] = ()) -> list[float]:
    """Densities from high to low: the cubic schedule's ``steps`` values plus ``also``, rounded to 1e-4."""
    if not 0 < final <= 1 or steps < 1:
        raise ValueError(f"cubic_schedule: need 0 < final <= 1 and steps >= 1, got {final}, {steps}")
    values = {round(final + (1 - final) * (1 - t / steps) ** 3, 4) for t in range(1, steps + 1)}
    return sorted(values | {round(float(d), 4) for d in also}, reverse=True)


def _key(density: float) -> str:
    return f"masks_p{density:g}"


@register("spa_block")
class SpaBlock(DeclaredOptions):
    """See the module docstring. Options: ``densities`` (kept fractions to record, default [0.5]),
    ``steps`` (cubic steps to the lowest, 4), ``recovery_epochs`` (1), ``lr`` (0.01), ``weight_decay``."""

    name: ClassVar[str] = "spa_block"
    budget_kinds: ClassVar[tuple[str, ...]] = ("density",)
    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    option_specs: ClassVar[tuple[Option, ...]] = _OPTIONS

    def check_options(self, raw: Any) -> dict[str, Any]:
        """Declared options, checked; every density in (0, 1]."""
        opts = check_declared(self.name, self.option_specs, raw)
        if not all(0 < float(d) <= 1 for d in opts["densities"]):
            raise OptionError(f"method 'spa_block': densities must be in (0, 1], got {opts['densities']}", "densities")
        return opts

    def check_budget(self, budget: Budget, opts: dict[str, Any]) -> None:
        """A density budget must be one the schedule records (``densities``)."""
        if round(float(budget.value), 4) not in {round(float(d), 4) for d in opts["densities"]}:
            raise ValueError(f"method 'spa_block': no masks for {budget.text}: add {budget.value:g} to the "
                             f"instance's 'densities' (has {opts['densities']})")

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        densities = [float(d) for d in opts["densities"]]
        if ctx.loader is None:
            raise ValueError("method 'spa_block' needs a data loader in the scoring context")
        if getattr(ctx.model, "petl_method", None) != "splopa":
            raise ValueError("method 'spa_block' prunes a splopa model (config: petl: splopa)")
        import torch

        from petlprune.models.petl import mark_trainable
        from petlprune.models.splopa import block_layers, keep_cells
        from petlprune.train import TrainConfig, fit

        model = copy.deepcopy(ctx.model)  # the schedule trains: never touch the caller's model
        mark_trainable(model, "splopa")
        layers = block_layers(model)
        schedule = cubic_schedule(min(densities), int(opts["steps"]), densities)
        cfg = TrainConfig(epochs=int(opts["recovery_epochs"]), lr=float(opts["lr"]),
                          weight_decay=float(opts["weight_decay"]), warmup_epochs=0,
                          batch_size=getattr(ctx.loader, "batch_size", None) or 64)
        arrays, history = {}, []
        for step, density in enumerate(schedule):
            with torch.no_grad():
                for layer in layers.values():
                    cells = layer.positions.cells
                    mag = layer.block_magnitude().flatten()[cells].double().cpu().numpy()
                    k = max(1, round(density * layer.positions.grid[0] * layer.positions.grid[1]))
                    order = np.lexsort((cells.cpu().numpy(), -mag))  # largest first, ties: lower cell
                    keep_cells(layer, cells[torch.as_tensor(order[:k])])
            if density in {round(d, 4) for d in densities}:
                arrays[_key(density)] = np.concatenate([_mask(layer) for layer in layers.values()])
            if step < len(schedule) - 1 and cfg.epochs > 0:
                hist = fit(model, ctx.loader, cfg, device=ctx.device, seed=ctx.seed + step, log=None)
                history.append({"density": density, "loss": hist[-1]["loss"], "train_top1": hist[-1]["train_top1"]})
        last = arrays[_key(round(min(densities), 4))]
        per_block = self._per_block(layers, last, len(model.blocks))
        extra = {"schedule": schedule, "densities": sorted({round(d, 4) for d in densities}, reverse=True),
                 "layers": [[n, list(m.positions.grid)] for n, m in layers.items()], "recovery": history,
                 "options": opts, "values": f"fraction of blocks kept per ViT block at p{min(densities):g}"}
        return Scores(self.name, per_block, extra, time.perf_counter() - start, arrays)

    @staticmethod
    def _per_block(layers: dict[str, Any], mask: np.ndarray, depth: int) -> list[float]:
        kept, total, offset = [0] * depth, [0] * depth, 0
        for name, layer in layers.items():
            n = layer.positions.grid[0] * layer.positions.grid[1]
            i = int(name.split(".")[1])  # blocks.{i}.attn.qkv
            kept[i] += int(mask[offset:offset + n].sum())
            total[i] += n
            offset += n
        return [k / t if t else 1.0 for k, t in zip(kept, total, strict=True)]

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method 'spa_block' does not take a {budget.kind} budget ({budget.text})")
        key = _key(round(float(budget.value), 4))
        if key not in scores.arrays:
            have = ", ".join(f"p{d:g}" for d in scores.extra["densities"])
            raise ValueError(f"method 'spa_block': density {budget.text} was not scored (scored: {have}; "
                             "add it to the method's `densities` option)")
        flat, masks, offset = scores.arrays[key], {}, 0
        for name, (go, gi) in scores.extra["layers"]:
            masks[name] = [int(v) for v in flat[offset:offset + go * gi]]
            offset += go * gi
        kept = int(flat.sum())
        depth = len(scores.values)
        notes = f"{kept}/{flat.size} blocks kept ({kept / flat.size:.3f}); per-layer block-magnitude masks"
        return Plan(self.name, budget.text, depth, list(range(depth)), masks=masks, scores=list(scores.values),
                    decision_seconds=scores.seconds, notes=notes, extra={"blocks_kept": kept, "blocks": int(flat.size)})

    def apply(self, model: Any, plan: Plan) -> Any:
        from petlprune.models.splopa import block_layers, keep_cells

        layers = block_layers(model)
        if set(layers) != set(plan.masks):
            raise ValueError("spa_block plan: its layers do not match the model's splopa layers")
        for name, mask in plan.masks.items():
            keep_cells(layers[name], [i for i, v in enumerate(mask) if v])
        return model


def _mask(layer: Any) -> np.ndarray:
    go, gi = layer.positions.grid
    m = np.zeros(go * gi, dtype=np.uint8)
    m[layer.positions.cells.cpu().numpy()] = 1
    return m
