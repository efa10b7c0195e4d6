"""SGLP: Similarity-Guided fast Layer Partition pruning (Li, Lu et al., arXiv 2410.14720).

1. Linear CKA between the outputs of every pair of blocks (``analysis.cka``; CLS token by default,
   all tokens flattened as an ablation).
2. Each block reduced to its CKA column sum; Fisher's exact optimal segmentation of that sequence
   into K contiguous segments (``analysis.segment``; K fixed or SGLP's "auto" rule).
3. A depth budget is shared out over the segments (``keep_rule``); within each segment the subset of
   the required size whose network has the largest GradNorm ``G = sqrt(Σ_p ||∂CE/∂p||²)`` on two
   fixed training batches is kept (exhaustive below ``max_subsets`` candidates, greedy above).
4. ``apply`` keeps those blocks (``models.surgery.keep_blocks``); re-training is the common stage's.

Where GradNorm runs. The framework's ``plan(scores, budget)`` sees only the scores, but GradNorm needs
the model and data. The segment choices are independent of one another (each candidate is scored in
a network whose OTHER segments are fixed, see ``context``), so a segment's best subset of size r
depends only on (segment, r), never on the depth asked for. ``score`` therefore evaluates, for every
depth in ``depths`` (default: all 1..N), the subsets each segment needs under ``keep_rule``, and
stores the winner of every (segment, r) in ``Scores.extra["selection"]``; ``plan`` is then a pure
look-up (apportion the depth, take each segment's stored winner) and needs no model. One score file
serves the matched budget and the whole depth sweep, and every GradNorm value is in the results tree.

GradNorm, without the official code's bug (it builds one randomly initialised full network, loads
each candidate's pretrained units into it and never resets it, so gradients accumulate and later
candidates inherit earlier ones' state): every candidate network is a fresh deep copy of the SAME
fine-tuned model (gradients cleared), pruned with ``keep_blocks``, in eval mode (no dropout or drop-path, so G is a deterministic function of the
weights and the batches), and sees the SAME two batches, drawn once. Gradients come from
``torch.autograd.grad`` of ``CE(batch 1) + CE(batch 2)`` (batch-mean cross-entropies, the gradient the
official loop accumulates over its two batches); nothing is stored in ``.grad``.

Options (``ctx.options``; defaults in :data:`DEFAULTS`):
    tokens: ``cls`` (the CLS token of each block output, from ``ctx.features``) or ``all`` (every
        token of each block output flattened; a forward pass over ``ctx.loader``).
    estimator: ``biased`` (official) or ``unbiased`` (Nguyen et al. 2021 minibatch CKA).
    cka_batch_size: None (all samples in one batch) or the CKA batch size (official: 500; CKA per
        batch, averaged). Bounds memory with ``tokens: all``.
    max_samples: ``tokens: all`` only: use the first ``max_samples`` loader samples (None: all).
    k: number of segments, an int or ``auto`` (:func:`~petlprune.analysis.segment.choose_k`).
    k_max, threshold: the ``auto`` rule's parameters (official 6 and 0.05); ``k_max`` also sets the
        length of the stored P(N, k) curve.
    keep_rule: ``proportional`` or ``largest_first`` (:func:`keep_counts`).
    context: what a candidate's network holds besides the candidate blocks: ``others`` (every block
        of the other segments, with their fine-tuned weights, default: each segment is judged inside
        the real network, and the choices of different segments stay independent and
        order-free) or ``alone`` (nothing else: the literal "network that keeps just those
        units"). The official code's other units are random weights, which we do not reproduce.
    grad_params: ``trainable`` (parameters with ``requires_grad``: PETL modules + head, the weights
        re-training will move) or ``all`` (every weight of the candidate network).
    gradnorm_batches: number of fixed training batches (official: 2).
    max_subsets: enumerate all C(n, r) subsets when C(n, r) <= this, otherwise greedy elimination
        (default 32: a 9-block segment then costs about 50 GradNorm evaluations for every depth at
        once instead of 510; one evaluation of the embedded 12-block ViT on 2×64 images is ~0.5 s
        on one CPU core).
    depths: the depths to prepare decisions for (None: 1..N).

``Plan.decision_seconds`` of a depth is what that decision costs on its own: CKA + segmentation +
the GradNorm evaluations its segment choices scored (an evaluation shared with another depth is
counted in full for each), not the time of preparing every depth in one score file.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from itertools import combinations, islice
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from petlprune.analysis.cka import MinibatchCKA, batch_sizes, cka_matrix
from petlprune.analysis.segment import choose_k, fisher_segments, segmentation_losses
from petlprune.methods.base import Budget, LayerPruningMethod, Plan, Scores, ScoringContext, register
from petlprune.models.surgery import keep_blocks

__all__ = [
    "DEFAULTS",
    "KEEP_RULES",
    "SGLP",
    "GradNormScorer",
    "gradnorm",
    "keep_counts",
    "select_subset",
    "token_cka",
]

KEEP_RULES = ("proportional", "largest_first")
DEFAULTS: dict[str, Any] = {
    "tokens": "cls",
    "estimator": "biased",
    "cka_batch_size": None,
    "max_samples": None,
    "k": "auto",
    "k_max": 6,
    "threshold": 0.05,
    "keep_rule": "proportional",
    "context": "others",
    "grad_params": "trainable",
    "gradnorm_batches": 2,
    "max_subsets": 32,
    "depths": None,
}
_CHOICES = {
    "tokens": ("cls", "all"),
    "estimator": ("biased", "unbiased"),
    "keep_rule": KEEP_RULES,
    "context": ("others", "alone"),
    "grad_params": ("trainable", "all"),
}

# ----------------------------------------------------------------------------------------- options
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` over :data:`DEFAULTS`, validated; errors name the option."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"method 'sglp': unknown option(s) {unknown} (allowed: {', '.join(sorted(DEFAULTS))})")
    opts = {**DEFAULTS, **raw}
    for key, allowed in _CHOICES.items():
        if opts[key] not in allowed:
            raise ValueError(f"method 'sglp': option {key!r} must be one of {allowed}, got {opts[key]!r}")
    for key in ("k_max", "gradnorm_batches", "max_subsets"):
        if not _is_int(opts[key]) or opts[key] < 1:
            raise ValueError(f"method 'sglp': option {key!r} must be a positive integer, got {opts[key]!r}")
    for key in ("cka_batch_size", "max_samples"):
        if opts[key] is not None and (not _is_int(opts[key]) or opts[key] < 1):
            raise ValueError(f"method 'sglp': option {key!r} must be a positive integer or null, got {opts[key]!r}")
    if opts["k"] != "auto" and (not _is_int(opts["k"]) or opts["k"] < 1):
        raise ValueError(f"method 'sglp': option 'k' must be 'auto' or a positive integer, got {opts['k']!r}")
    if isinstance(opts["threshold"], bool) or not isinstance(opts["threshold"], (int, float)):
        raise ValueError(f"method 'sglp': option 'threshold' must be a number, got {opts['threshold']!r}")
    depths = opts["depths"]
    if depths is not None:
        if not isinstance(depths, Sequence) or not depths or not all(_is_int(d) and d >= 1 for d in depths):
            raise ValueError(f"method 'sglp': option 'depths' must be null or a list of positive integers, got {depths!r}")
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


# ----------------------------------------------------------------------------------------- GradNorm
def gradnorm(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``G = sqrt(Σ_p ||∂L/∂p||²)`` over the parameters with ``requires_grad``, ``L = Σ_b CE_b``.

    ``CE_b`` is the batch-mean cross-entropy of batch b. Uses ``torch.autograd.grad``: ``.grad`` is
    never written, so nothing can accumulate across calls. Run in whatever mode the model is in.

    Args:
        model: maps images to logits.
        batches: (images, labels) pairs, already on the model's device.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("gradnorm: the network has no parameter with requires_grad (nothing to differentiate)")
    if not batches:
        raise ValueError("gradnorm: no batch given")
    with torch.enable_grad():
        loss = sum(F.cross_entropy(model(x), y) for x, y in batches)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    total = torch.zeros((), dtype=torch.float64)
    for g in grads:
        if g is not None:  # a parameter the network does not use has gradient 0
            total = total + g.detach().double().square().sum().cpu()
    return float(total.sqrt())


class GradNormScorer:
    """GradNorm of sub-networks of one model, every one from the same state and the same batches.

    The model is deep-copied once (gradients cleared, eval mode; with ``grad_params="all"`` every
    weight of the copy requires grad) and that copy is never run. Each evaluation deep-copies it again,
    keeps the candidate's blocks and measures :func:`gradnorm` on the stored batches, so neither the
    order of candidates nor repeated evaluation can change a value.

    Args:
        model: the fine-tuned model (left untouched).
        batches: the fixed (images, labels) batches; moved to the model's device once.
        grad_params: ``trainable`` or ``all``.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        grad_params: str = "trainable",
    ) -> None:
        if grad_params not in _CHOICES["grad_params"]:
            raise ValueError(f"grad_params must be one of {_CHOICES['grad_params']}, got {grad_params!r}")
        base = copy.deepcopy(model)
        base.eval()
        for p in base.parameters():
            p.grad = None
            if grad_params == "all":
                p.requires_grad_(True)
        param = next(base.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self._base = base
        self.num_blocks = len(base.blocks)
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        self.grad_params = grad_params
        self.cache: dict[tuple[int, ...], float] = {}
        self.seconds: dict[tuple[int, ...], float] = {}  # wall time of each memoised evaluation

    def evaluate(self, kept: Sequence[int]) -> float:
        """G of the network keeping blocks ``kept`` (ascending), computed afresh (never cached)."""
        kept = [int(i) for i in kept]
        if not kept or kept != sorted(set(kept)) or not 0 <= kept[0] <= kept[-1] < self.num_blocks:
            raise ValueError(f"GradNormScorer: kept blocks must be ascending indices in 0..{self.num_blocks - 1}, got {kept}")
        net = keep_blocks(copy.deepcopy(self._base), kept)
        return gradnorm(net, self.batches)

    def __call__(self, kept: Sequence[int]) -> float:
        """G of the network keeping ``kept``, memoised (values do not depend on call order)."""
        key = tuple(int(i) for i in kept)
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.evaluate(key)
            self.seconds[key] = time.perf_counter() - start
        return self.cache[key]


def select_subset(
    scorer: Callable[[Sequence[int]], float],
    segment: tuple[int, int],
    r: int,
    *,
    others: Sequence[int] = (),
    max_subsets: int = 32,
) -> dict[str, Any]:
    """The ``r`` blocks of ``segment`` whose network has the largest GradNorm.

    A candidate subset S is scored as ``scorer(sorted(others ∪ S))``. When ``C(n, r) <= max_subsets``
    every subset is scored (ties: the lexicographically first); otherwise greedy backward
    elimination: from the whole segment, repeatedly drop the block whose removal leaves the largest
    G, until r remain (the scorer's memo shares that path between values of r).

    Args:
        scorer: kept block indices -> G (e.g. a :class:`GradNormScorer`).
        segment: half-open ``(start, end)`` block range.
        r: blocks to keep, ``0 <= r <= end - start``.
        others: blocks outside the segment present in every candidate network.
        max_subsets: exhaustive search limit.

    Returns:
        ``{"kept": [...], "gradnorm": G or None, "search": "exhaustive" | "greedy" | "whole" | "none",
        "networks": the block lists scored, in order}``; nothing is scored when r is 0 or the length.
    """
    start, end = segment
    members = list(range(start, end))
    if not 0 <= r <= len(members):
        raise ValueError(f"select_subset: cannot keep {r} blocks of segment [{start}, {end})")
    if r == len(members):
        return {"kept": members, "gradnorm": None, "search": "whole", "networks": []}
    if r == 0:
        return {"kept": [], "gradnorm": None, "search": "none", "networks": []}
    fixed = [int(b) for b in others]
    overlap = set(fixed) & set(members)
    if overlap:
        raise ValueError(f"select_subset: context blocks {sorted(overlap)} lie inside segment [{start}, {end})")

    networks: list[list[int]] = []

    def g_of(subset: Sequence[int]) -> float:
        networks.append(sorted([*fixed, *subset]))
        return scorer(networks[-1])

    if math.comb(len(members), r) <= max_subsets:
        best, best_g = None, -math.inf
        for subset in combinations(members, r):
            g = g_of(subset)
            if g > best_g:
                best, best_g = list(subset), g
        return {"kept": best, "gradnorm": best_g, "search": "exhaustive", "networks": networks}
    current, g_current = list(members), math.nan
    while len(current) > r:
        best_drop, g_current = None, -math.inf
        for b in current:
            g = g_of([c for c in current if c != b])
            if g > g_current:
                best_drop, g_current = b, g
        current.remove(best_drop)
    return {"kept": current, "gradnorm": g_current, "search": "greedy", "networks": networks}


# -------------------------------------------------------------------------------------- features
def _fixed_batches(loader: Iterable[Any], count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` (images, labels) batches, drawn once under a seeded RNG (a shuffling loader
    without its own generator then still gives the same batches for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batches = []
        for i, batch in enumerate(islice(loader, count)):
            if not isinstance(batch, Sequence) or len(batch) < 2:
                raise ValueError(f"loader batch {i}: expected (images, labels), got {type(batch).__name__}")
            batches.append((batch[0], batch[1]))
    if not batches:
        raise ValueError("method 'sglp': the loader yielded no batch for GradNorm")
    return batches


@torch.no_grad()
def token_cka(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    tokens: str = "all",
    estimator: str = "biased",
    batch_size: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """CKA matrix of the block outputs of ``model`` on the loader's images, streamed in CKA batches.

    Block outputs come from timm's ``forward_intermediates`` (eval mode, no final norm); ``all``
    flattens every token (prefix + patch) per sample, ``cls`` takes the class token. Features of at
    most one CKA batch are held at a time.

    Args:
        model: a timm VisionTransformer.
        loader: yields (images, labels); ``len(loader.dataset)`` must be known when ``batch_size`` is set.
        tokens: ``all`` or ``cls``.
        estimator: see :func:`petlprune.analysis.cka.cka_matrix`.
        batch_size: CKA batch size (None: all samples in one batch).
        max_samples: use only the first ``max_samples`` samples.
        seed: seeds the RNG while iterating (shuffling loaders).
    """
    if tokens not in _CHOICES["tokens"]:
        raise ValueError(f"token_cka: tokens must be one of {_CHOICES['tokens']}, got {tokens!r}")
    dataset = getattr(loader, "dataset", None)
    if batch_size is not None and dataset is None:
        raise ValueError("token_cka: cka_batch_size needs a loader with a sized `dataset`")
    n = len(dataset) if dataset is not None else None
    if n is not None and max_samples is not None:
        n = min(n, max_samples)
    sizes = batch_sizes(n, batch_size) if batch_size is not None else None  # CKA batches still to fill
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    acc = MinibatchCKA(estimator)
    buffer: list[list[torch.Tensor]] = []  # per loader batch: per block (B, D)
    buffered = seen = 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, batch in enumerate(loader):
                if not isinstance(batch, Sequence) or len(batch) < 1:
                    raise ValueError(f"loader batch {i}: expected (images, labels), got {type(batch).__name__}")
                images = batch[0]
                if max_samples is not None:
                    images = images[: max_samples - seen]
                if images.shape[0] == 0:
                    break
                outs = model.forward_intermediates(
                    images.to(device), norm=False, output_fmt="NLC", intermediates_only=True,
                    return_prefix_tokens=True,
                )  # per block: (patch (B, N, C), prefix (B, P, C))
                # kept on the model's device in its dtype; MinibatchCKA works in float64 on that device
                if tokens == "cls":
                    per_block = [prefix[:, 0] for _, prefix in outs]  # (B, C)
                else:
                    per_block = [torch.cat([prefix, patch], 1).flatten(1) for patch, prefix in outs]  # (B, T·C)
                buffer.append(per_block)
                buffered += images.shape[0]
                seen += images.shape[0]
                while sizes and buffered >= sizes[0]:
                    size = sizes.pop(0)
                    merged = [torch.cat(parts) for parts in zip(*buffer, strict=True)]  # per block (buffered, D)
                    acc.update([m[:size] for m in merged])
                    rest = [m[size:] for m in merged]
                    buffered -= size
                    buffer = [rest] if buffered else []
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        model.train(was_training)
    if batch_size is None:
        if not buffer:
            raise ValueError("token_cka: the loader yielded no image")
        acc.update([torch.cat(parts) for parts in zip(*buffer, strict=True)])
    elif sizes:
        raise ValueError(
            f"token_cka: the loader yielded {seen} samples, fewer than the {n} expected from len(loader.dataset) "
            "and max_samples (a drop_last loader?)"
        )
    return acc.compute()


def _cls_features(features: Any) -> np.ndarray:
    """(L, n, d) CLS features from an array or a features.npz mapping with ``cls``."""
    if features is None:
        raise ValueError("method 'sglp' (tokens: cls) needs the block features (features.npz) in the scoring context")
    if isinstance(features, Mapping):
        if "cls" not in features:
            raise ValueError(f"method 'sglp': features lack key 'cls' (have {sorted(features)})")
        features = features["cls"]
    cls = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    if cls.ndim != 3:
        raise ValueError(f"method 'sglp': features 'cls' must be (L, n, d), got shape {cls.shape}")
    return cls


# --------------------------------------------------------------------------------------- method
@register("sglp")
class SGLP(LayerPruningMethod):
    """SGLP: CKA → Fisher segmentation → per-segment GradNorm subset selection (see module docstring).

    ``score`` measures everything (CKA matrix, P(N, k) curve, segments, GradNorm of every candidate
    the requested depths need); ``plan`` is a pure look-up for a ``d{n}`` budget.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"features", "loader"})

    def score(self, ctx: ScoringContext) -> Scores:
        start = time.perf_counter()
        opts = _options(ctx.options)
        if ctx.model is None or getattr(ctx.model, "blocks", None) is None:
            raise ValueError("method 'sglp' needs the fine-tuned model (with `blocks`) in the scoring context")
        if ctx.loader is None:
            raise ValueError("method 'sglp' needs a training data loader in the scoring context (GradNorm)")
        num_blocks = len(ctx.model.blocks)

        if opts["tokens"] == "cls":
            cls = _cls_features(ctx.features)
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
        segments = fisher_segments(values, k)
        t_seg = time.perf_counter()

        depths = opts["depths"] or list(range(1, num_blocks + 1))
        if depths[-1] > num_blocks:
            raise ValueError(f"method 'sglp': option 'depths' asks for {depths[-1]} blocks of {num_blocks}")
        lengths = [e - s for s, e in segments]
        needed: list[set[int]] = [set() for _ in segments]
        for depth in depths:
            for s, r in enumerate(keep_counts(lengths, depth, opts["keep_rule"])):
                needed[s].add(r)
        batches = _fixed_batches(ctx.loader, opts["gradnorm_batches"], ctx.seed)
        scorer = GradNormScorer(ctx.model, batches, grad_params=opts["grad_params"])
        selection = []
        for s, (a, b) in enumerate(segments):
            others = [i for i in range(num_blocks) if not a <= i < b] if opts["context"] == "others" else []
            choices = {}
            for r in sorted(needed[s]):
                choice = select_subset(scorer, (a, b), r, others=others, max_subsets=opts["max_subsets"])
                # what this choice costs on its own, shared evaluations counted in full
                choice["seconds"] = sum(scorer.seconds[tuple(net)] for net in choice["networks"])
                choices[str(r)] = choice
            selection.append({"segment": [a, b], "choices": choices})
        t_grad = time.perf_counter()

        extra = {
            "cka": cka.tolist(),
            "k": k,
            "k_auto": opts["k"] == "auto",
            "losses": losses,  # P(N, k), k = 1..len(losses)
            "segments": [[a, b] for a, b in segments],
            "depths": depths,
            "selection": selection,
            "gradnorm": [{"kept": list(key), "gradnorm": g} for key, g in scorer.cache.items()],
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
            f"subsets by GradNorm, context '{scores.extra['options']['context']}'"
        )
        extra = {"segments": [list(s) for s in segments], "keep_per_segment": counts, "keep_rule": rule, "choices": chosen}
        return Plan(self.name, budget.text, len(kept), kept, scores=list(scores.values),
                    decision_seconds=own_seconds + time.perf_counter() - start, notes=notes, extra=extra)
