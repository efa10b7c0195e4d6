"""DepGraph baseline: uniform width pruning of the frozen backbone at SLS's parameter count.

SLS compares its depth pruning with DepGraph (Fang et al., CVPR 2023; the ``torch-pruning`` library)
width pruning at the same parameter count. Here:

* What is pruned: each block's MLP hidden channels (``fc1`` rows + ``fc2`` columns: the dependency
  group torch-pruning's ``DependencyGraph`` builds for ``fc1``) and each attention head's dimensions
  (the same dims of q, k and v + the matching ``proj`` columns; every head keeps the same number).
  The residual width is NOT pruned: the adapters read and write the residual stream, so keeping it
  leaves every adapter, the norms, the embeddings and the head untouched (torch-pruning's
  ``ignored_layers`` role), and a pruned task still runs its fine-tuned adapters unchanged.
* Criterion: first-order Taylor importance (Molchanov et al. 2019) as torch-pruning's
  ``GroupTaylorImportance`` computes it, ``Σ |w · ∂L/∂w|`` per channel, averaged over the coupled
  layers, the gradient summed over ``batches`` training batches (model in eval mode, no update). MLP
  groups come from torch-pruning; the head-dim groups are built here because the dependency graph's
  index mapping through the fused attention op does not keep q, k, v dims of one head together.
* Budget: a depth ``d`` (``matched`` = SLS's depth, resolved by the plan stage) means "the forward
  parameters of keeping the first d of the L blocks"; ``plan`` searches the uniform ratio (one ratio
  for MLP channels and head dims of every block) whose pruned model is closest to that count, and the
  Plan records the achieved count and exactly which channel indices each layer keeps, so ``apply``
  rebuilds the structure from the Plan alone by slicing (no tracing at load time).
* Attention temperature: SDPA scales by 1/sqrt(head_dim); after removing head dims the kept q rows
  are multiplied by sqrt(kept / head_dim), so each head still computes q·k / sqrt(original head_dim)
  over its kept dims (a pure slice would silently sharpen every softmax).

Spec: ``book/methods/specs/baselines.md`` (depgraph). Storage: the pruned backbone is a deterministic function of
the shared frozen backbone and the Plan, so a task stores its adapters + head + which channels each
layer keeps, costed as one bit per prunable channel (``Plan.masks``, as SPA's); ``efficiency.json``
also gives ``params_stored_as_model``, the pruned model stored whole (``reshapes_backbone``).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, ClassVar

import numpy as np

from petlprune.methods.base import Budget, DeclaredOptions, Option, Plan, Scores, ScoringContext, register

__all__ = ["DepGraph", "block_units", "pruned_params", "keep_counts", "keep_masks", "slice_model"]



def _base(module: Any) -> Any:
    """The backbone module under a PETL ``Parallel`` wrapper (or the module itself)."""
    from petlprune.models.petl import Parallel

    return module.base if isinstance(module, Parallel) else module


def block_units(block: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(attention, qkv, proj, fc1, fc2) of a timm ``Block``; PETLs that wrap these linears are refused.

    Args:
        block: a timm ViT block, possibly with ``mlp`` / ``attn`` wrapped by PETL ``Parallel``.
    """
    from torch import nn

    attn, mlp = _base(block.attn), _base(block.mlp)
    layers = (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)
    if not all(type(m) is nn.Linear for m in layers):
        raise TypeError("depgraph: qkv/proj/fc1/fc2 must be plain nn.Linear (a PETL wrapping them, e.g. LoRA, "
                        "cannot keep its weights under width pruning)")
    if not isinstance(attn.q_norm, nn.Identity):
        raise TypeError("depgraph: attention with qk-norm is not supported (the q scale fold assumes none)")
    return (attn, *layers)


def keep_counts(ratio: float, head_dim: int, hidden: int) -> tuple[int, int]:
    """(head dims kept per head, MLP channels kept) at pruning ratio ``ratio``; at least one each."""
    return max(1, round((1 - ratio) * head_dim)), max(1, round((1 - ratio) * hidden))


def pruned_params(dims: dict[str, Any], keep_hd: int, keep_mlp: int) -> int:
    """Forward parameters of the model with every block pruned to (keep_hd, keep_mlp).

    Args:
        dims: ``Scores.extra`` of depgraph: ``params_total``, ``depth``, ``embed_dim``, ``num_heads``,
            ``head_dim``, ``mlp_hidden``, ``qkv_bias``, ``fc1_bias``.
        keep_hd: head dims kept per head.
        keep_mlp: MLP hidden channels kept.
    """
    d, h = dims["embed_dim"], dims["num_heads"]
    gone_hd, gone_mlp = dims["head_dim"] - keep_hd, dims["mlp_hidden"] - keep_mlp
    per_block = (
        3 * h * gone_hd * (d + int(dims["qkv_bias"]))  # qkv rows (+ bias)
        + h * gone_hd * d  # proj columns
        + gone_mlp * (d + int(dims["fc1_bias"]))  # fc1 rows (+ bias)
        + gone_mlp * d  # fc2 columns
    )
    return int(dims["params_total"] - dims["depth"] * per_block)


def _top(values: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values (ties: the lower index), ascending."""
    order = np.lexsort((np.arange(len(values)), -values))  # by -value, then index
    return sorted(int(i) for i in order[:k])


@register("depgraph")
class DepGraph(DeclaredOptions):
    """Width pruning of the frozen backbone (see the module docstring).

    Option ``batches`` (default 4): training batches the Taylor gradient is summed over.
    """

    name: ClassVar[str] = "depgraph"
    budget_kinds: ClassVar[tuple[str, ...]] = ("depth",)
    needs: ClassVar[frozenset[str]] = frozenset({"loader"})
    reshapes_backbone: ClassVar[bool] = True  # measure also reports the pruned model stored whole
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("batches", "int", 4, minimum=1, doc="training batches the Taylor gradient is summed over"),
    )

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        batches = self.check_options(ctx.options)["batches"]
        if ctx.loader is None:
            raise ValueError("method 'depgraph' needs a data loader in the scoring context")
        import torch.nn.functional as F
        import torch_pruning as tp

        model = ctx.model
        device = next(model.parameters()).device
        units = [block_units(b) for b in model.blocks]
        flags = [p.requires_grad for p in model.parameters()]
        was_training = model.training
        model.eval()
        # torch-pruning traces autograd: every weight must require grad (the backbone is frozen).
        model.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        n_batches = n_samples = 0
        try:
            example = None
            for x, y in ctx.loader:
                if n_batches == batches:
                    break
                x, y = x.to(device), y.to(device)
                example = x[:1] if example is None else example
                F.cross_entropy(model(x), y).backward()  # .grad sums the batch-mean gradients
                n_batches, n_samples = n_batches + 1, n_samples + len(y)
            if example is None:
                raise ValueError("method 'depgraph': the loader yielded no batch")
            with warnings.catch_warnings():  # cls_token / pos_embed: never pruned here (residual width kept)
                warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
                graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            imp = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
            mlp, attn_imp = [], []
            for attn, qkv, proj, fc1, _fc2 in units:
                group = graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=list(range(fc1.out_features)))
                mlp.append(imp(group).detach().double().cpu().numpy())  # (hidden,)
                attn_imp.append(_head_dim_taylor(attn, qkv, proj))  # (H, hd)
        finally:
            model.zero_grad(set_to_none=True)
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
            model.train(was_training)
        mlp_a, attn_a = np.stack(mlp), np.stack(attn_imp)
        attn0, qkv0, _, fc10, _ = units[0]
        from petlprune.measure import count_params

        total = count_params(model)["forward"]
        per_block = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
        extra = {
            "batches": n_batches, "samples": n_samples, "params_total": total, "params_per_block": per_block,
            "depth": len(model.blocks), "embed_dim": int(qkv0.in_features), "num_heads": int(attn0.num_heads),
            "head_dim": int(attn0.head_dim), "mlp_hidden": int(fc10.out_features),
            "qkv_bias": qkv0.bias is not None, "fc1_bias": fc10.bias is not None,
            "importance": "torch-pruning GroupTaylorImportance (sum_w |w*dL/dw|, mean over coupled layers)",
        }
        values = [float(m.sum() + a.sum()) for m, a in zip(mlp_a, attn_a, strict=True)]
        arrays = {"mlp_importance": mlp_a, "attn_importance": attn_a}
        return Scores(self.name, values, extra, time.perf_counter() - start, arrays)

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method 'depgraph' does not take a {budget.kind} budget ({budget.text})")
        dims, depth = scores.extra, int(budget.value)
        L = dims["depth"]
        if not 1 <= depth <= L:
            raise ValueError(f"method 'depgraph': cannot match {depth} of {L} blocks ({budget.text})")
        target = dims["params_total"] - sum(dims["params_per_block"][depth:])
        best = None
        for ratio in np.round(np.arange(0, 1, 0.001), 3):  # the count is monotone; ties -> the smaller ratio
            kh, km = keep_counts(float(ratio), dims["head_dim"], dims["mlp_hidden"])
            err = abs(pruned_params(dims, kh, km) - target)
            if best is None or err < best[0]:
                best = (err, float(ratio), kh, km)
        _, ratio, kh, km = best
        mlp, attn = scores.arrays["mlp_importance"], scores.arrays["attn_importance"]
        keep = {
            "mlp": [_top(mlp[i], km) for i in range(L)],
            "attn": [[_top(attn[i, h], kh) for h in range(attn.shape[1])] for i in range(L)],
        }
        achieved = pruned_params(dims, kh, km)
        notes = (f"uniform ratio {ratio:.3f}: {kh}/{dims['head_dim']} dims per head, {km}/{dims['mlp_hidden']} "
                 f"MLP channels; forward params {achieved:,} vs target {target:,} (= keeping {depth} of {L} "
                 f"blocks, {100 * (achieved - target) / target:+.2f}%); residual width, adapters and head kept")
        extra = {"ratio": ratio, "target_params": int(target), "params": achieved, "matched_depth": depth,
                 "keep_head_dims": kh, "keep_mlp": km, "keep": keep}
        return Plan(self.name, budget.text, L, list(range(L)), masks=keep_masks(keep, dims), scores=list(scores.values),
                    decision_seconds=scores.seconds, notes=notes, extra=extra)

    def apply(self, model: Any, plan: Plan) -> Any:
        return slice_model(model, plan.extra["keep"])


def keep_masks(keep: dict[str, list], dims: dict[str, Any]) -> dict[str, list[int]]:
    """What a task must store to rebuild its slice: one bit per prunable channel of every block.

    ``blocks.{i}.mlp``: the MLP hidden channels; ``blocks.{i}.attn``: the head dims, head-major
    (``measure.plan_cost`` packs the bits into 32-bit words).

    Args:
        keep: the Plan's kept indices (``{"mlp": [...], "attn": [[...] per head]}`` per block).
        dims: ``Scores.extra`` of depgraph (``mlp_hidden``, ``num_heads``, ``head_dim``).
    """
    hidden, heads, hd = int(dims["mlp_hidden"]), int(dims["num_heads"]), int(dims["head_dim"])
    masks: dict[str, list[int]] = {}
    for i, (mlp, attn) in enumerate(zip(keep["mlp"], keep["attn"], strict=True)):
        masks[f"blocks.{i}.mlp"] = [int(c in set(mlp)) for c in range(hidden)]
        masks[f"blocks.{i}.attn"] = [int(j in set(attn[h])) for h in range(heads) for j in range(hd)]
    return masks


def _head_dim_taylor(attn: Any, qkv: Any, proj: Any) -> np.ndarray:
    """(H, hd) Taylor importance of each head dim: ``Σ|w·∂L/∂w|`` of its q, k, v rows and proj column,
    averaged over those four coupled slices (``GroupTaylorImportance``'s ``mean`` reduction)."""
    H, hd = attn.num_heads, attn.head_dim
    wq = (qkv.weight * qkv.weight.grad).abs().sum(1).reshape(3, H, hd)  # (3, H, hd): q, k, v rows
    wp = (proj.weight * proj.weight.grad).abs().sum(0).reshape(H, hd)  # proj columns
    return ((wq.sum(0) + wp) / 4).detach().double().cpu().numpy()


def slice_model(model: Any, keep: dict[str, list]) -> Any:
    """Keep the listed MLP channels and head dims of every block, in place (weights are sliced copies).

    Args:
        model: a timm ViT (PETL wrappers allowed around ``attn`` / ``mlp``).
        keep: ``{"mlp": [[channel, ...] per block], "attn": [[[dim, ...] per head] per block]}``,
            every head of a block keeping the same number of dims.
    """
    import torch

    if len(keep["mlp"]) != len(model.blocks) or len(keep["attn"]) != len(model.blocks):
        raise ValueError(f"depgraph plan has {len(keep['mlp'])} blocks, the model {len(model.blocks)}")
    with torch.no_grad():
        for block, mlp_idx, head_idx in zip(model.blocks, keep["mlp"], keep["attn"], strict=True):
            attn, qkv, proj, fc1, fc2 = block_units(block)
            H, hd = attn.num_heads, attn.head_dim
            k = len(head_idx[0])
            if len(head_idx) != H or any(len(ix) != k for ix in head_idx):
                raise ValueError(f"depgraph plan: expected {H} heads keeping equal dim counts, got {head_idx}")
            dims = torch.tensor([h * hd + j for h in range(H) for j in head_idx[h]])  # (H*k,) into attn_dim
            rows = torch.cat([part * H * hd + dims for part in range(3)])  # q, k, v rows of qkv
            new_qkv = _linear(qkv, rows=rows)
            # Fold SDPA's 1/sqrt(k) back to 1/sqrt(hd): scale the q rows by sqrt(k / hd).
            new_qkv.weight[: H * k] *= math.sqrt(k / hd)
            if new_qkv.bias is not None:
                new_qkv.bias[: H * k] *= math.sqrt(k / hd)
            attn.qkv, attn.proj = new_qkv, _linear(proj, cols=dims)
            attn.head_dim, attn.attn_dim, attn.scale = k, H * k, k**-0.5
            mlp = _base(block.mlp)
            idx = torch.tensor(mlp_idx)
            mlp.fc1, mlp.fc2 = _linear(fc1, rows=idx), _linear(fc2, cols=idx)
    return model


def _linear(layer: Any, rows: Any = None, cols: Any = None) -> Any:
    """A new ``nn.Linear`` holding the given rows (outputs) / columns (inputs) of ``layer``."""
    from torch import nn

    w = layer.weight
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    out.weight.copy_(w)
    if layer.bias is not None:
        out.bias.copy_(layer.bias if rows is None else layer.bias[rows])
    out.requires_grad_(layer.weight.requires_grad)
    return out
