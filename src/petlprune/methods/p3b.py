"""P3B's block benefit (Glandorf & Rosenhahn, ICCV-W 2025) as a layer-selection criterion.

Per block a linear probe on the CLS token, shared between the block's input and its output (as P3B's
``FeaturemapAnalyseHead.cls_heads``: one head per feature map, applied to ``x_inter[i]`` and
``x_inter[i+1]``), trained with cross-entropy on the run's training features; the block's benefit is
``CE(probe(h_in)) − CE(probe(h_out))`` (P3B's ``imp_block_cls = cls_losses_in − cls_losses_out``,
``loss/prune_loss.py``). The blocks of largest benefit are kept. P3B itself turns the benefit into
per-block keep ratios for width pruning; see book/methods/p3b.md for why that mode is not here.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from petlprune.methods.base import (
    REMOVAL_OPTIONS,
    DeclaredOptions,
    LayerPruningMethod,
    Option,
    Scores,
    ScoringContext,
    register,
    removal_extra,
)

__all__ = ["BlockBenefit", "block_benefit"]


def block_benefit(states: Any, labels: Any, *, steps: int = 200, lr: float = 0.01, seed: int = 0) -> list[float]:
    """Benefit of each block from its CLS stream.

    Args:
        states: (L + 1, n, d) CLS token at the input of block 0, then after each block.
        labels: (n,) integer class labels.
        steps: full-batch Adam steps of each probe.
        lr: the probes' learning rate.
        seed: the probes' initialisation (one generator per block: ``seed``, block index).

    Returns:
        L benefits (higher = the block makes the classes more linearly separable = kept).
    """
    import torch
    import torch.nn.functional as F

    states = torch.as_tensor(states, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    classes = int(y.max()) + 1
    out = []
    for i in range(states.shape[0] - 1):
        h_in, h_out = states[i], states[i + 1]  # (n, d) each
        g = torch.Generator().manual_seed(seed * 1000 + i)
        d = h_in.shape[1]
        w = (torch.randn(classes, d, generator=g) / d**0.5).requires_grad_(True)
        b = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=lr)
        x, t = torch.cat([h_in, h_out]), torch.cat([y, y])  # (2n, d): the probe sees both sides
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(x @ w.T + b, t).backward()
            opt.step()
        with torch.no_grad():
            out.append(float(F.cross_entropy(h_in @ w.T + b, y) - F.cross_entropy(h_out @ w.T + b, y)))
    return out


@register("p3b")
class BlockBenefit(DeclaredOptions, LayerPruningMethod):
    """Keep the ``depth`` blocks of largest block benefit (book/methods/p3b.md).

    Reads ``features.npz`` (the run's training split: ``cls`` (L, n, d), ``embed`` (n, d), ``labels``).
    Also takes the layer-removal options (``bridge``, ``bridge_samples``).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"features"})
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("steps", "int", 200, minimum=1, doc="full-batch Adam steps per probe"),
        Option("lr", "number", 0.01, minimum=0, doc="probe learning rate"),
        *REMOVAL_OPTIONS,
    )

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = self.check_options(ctx.options)
        from petlprune.methods.baselines import _residual_stream

        states = _residual_stream(ctx.features)  # (L + 1, n, d)
        labels = ctx.labels if ctx.labels is not None else ctx.features.get("labels")
        if labels is None:
            raise ValueError("method 'p3b': features.npz has no 'labels' (the probes are supervised)")
        values = block_benefit(states, labels, steps=opts["steps"], lr=opts["lr"], seed=ctx.seed)
        defaults = self.check_options({})
        extra = {"token": "cls", "steps": opts["steps"], "lr": opts["lr"],
                 **{k: v for k, v in removal_extra(opts).items() if v != defaults[k]}}
        return Scores(self.name, values, extra, time.perf_counter() - start)
