"""SGLP's GradNorm: the score of a candidate set of blocks, and the subset search that uses it.

The official code (itsnotacie/information-fusion-SGLP) scores a candidate in ``Reassembly.py``
``replace_layer_initialization``: ``model2`` is a randomly initialised network of full depth with a
random classifier; the candidate's pretrained units are loaded into it (``load_state_dict`` per unit);
``ZeroNas.get_score`` (``zero_nas/__init__.py``) puts it in TRAIN mode and, for each of ``num_batch``
training batches, calls ``grad_norm`` (``zero_nas/grad_norm.py``): ``zero_grad``, cross-entropy,
``backward``, ``G_b = sqrt(Σ_p ||∂CE/∂p||²)`` over ALL parameters; the score is the MEAN of the G_b,
and ``search_best`` keeps the candidate with the LARGEST score. ``zero_grad`` runs before every
batch, so gradients never accumulate; the official bug is that ``model2`` is never reset between
candidates, so the units loaded for earlier candidates stay loaded in later ones.

Contexts (:data:`CONTEXTS`) of :class:`GradNormScorer` and :func:`gradnorm`:
    official: the recipe above without the bug: ONE random initialisation of the whole network
        (timm's ViT init, run on a copy of the model under ``seed``: patch embedding, positional
        embedding, every block with its PETL modules, final norm and head), identical for every
        candidate; the network is reset to it before each candidate, then the blocks in ``keep``
        take their fine-tuned weights (PETL modules included). Full depth: the other blocks stay
        random.
    finetuned: the ablation (what this package did before): a copy of the fine-tuned model with its
        trained head, pruned to the blocks in ``keep`` (``models.surgery.keep_blocks``).
In both, every parameter takes a gradient, the network is in train mode, and the dropout RNG is
re-seeded with ``seed`` before each candidate's batches, so a candidate's G is a function of
(weights, batches, seed) alone and the order of candidates cannot change it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import contextmanager
from itertools import combinations, islice
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from petlprune.methods.sglp_vocab import CONTEXTS, PICKS
from petlprune.models.surgery import keep_blocks

__all__ = [
    "CONTEXTS",
    "PICKS",
    "GradNormScorer",
    "fixed_batches",
    "gradnorm",
    "random_init",
    "select_subset",
]

# CONTEXTS and PICKS (how a segment's candidates are ranked: the official rule is the largest G; on a
# TRAINED network G grows with the loss, so the finetuned ablation ranks by the smallest G or the
# lowest loss instead) are defined, torch-free, with SGLP's other options.

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run under ``torch.manual_seed(seed)`` without touching the caller's RNG state (CPU, and CUDA when used)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def random_init(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every weight re-drawn by timm's ViT initialisation under ``seed``.

    ``VisionTransformer.init_weights`` draws the positional embedding and class token, every
    ``nn.Linear`` (head included), resets the modules with ``reset_parameters`` (LayerNorm, the patch
    Conv2d) and calls each PETL module's own ``init_weights`` (a zero map, as at injection).
    Every parameter of the copy requires grad; ``model`` is left untouched.

    Args:
        model: a timm VisionTransformer (possibly with PETL modules).
        seed: seed of the initialisation.
    """
    init = getattr(model, "init_weights", None)
    if not callable(init) or getattr(model, "blocks", None) is None:
        raise ValueError(f"random_init: expected a timm VisionTransformer (with init_weights and blocks), got {type(model).__name__}")
    net = copy.deepcopy(model)
    with _seeded(seed, _device(net)), torch.no_grad():
        net.init_weights()
    for p in net.parameters():
        p.grad = None
        p.requires_grad_(True)
    return net


class GradNormScorer:
    """GradNorm (and loss) of candidate block sets of one fine-tuned model, in one context.

    Args:
        model: the fine-tuned model (left untouched).
        batches: the fixed (images, labels) batches; moved to the model's device once.
        context: ``official`` or ``finetuned`` (module docstring).
        seed: seed of the official context's random initialisation and of the dropout RNG.
    """

    def __init__(self, model: nn.Module, batches: Batches, *, context: str = "official", seed: int = 0) -> None:
        if context not in CONTEXTS:
            raise ValueError(f"GradNormScorer: context must be one of {CONTEXTS}, got {context!r}")
        if not batches:
            raise ValueError("GradNormScorer: no batch given")
        if getattr(model, "blocks", None) is None:
            raise ValueError(f"GradNormScorer: the model ({type(model).__name__}) has no `blocks`")
        device = _device(model)
        self.context, self.seed, self.device = context, int(seed), device
        self.num_blocks = len(model.blocks)
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        if context == "official":
            self._net = random_init(model, self.seed)  # the one working network, reset per candidate
            self._init_state = {k: v.detach().clone() for k, v in self._net.state_dict().items()}
            self._block_states = [{k: v.detach().clone() for k, v in b.state_dict().items()} for b in model.blocks]
        else:
            base = copy.deepcopy(model)
            for p in base.parameters():
                p.grad = None
                p.requires_grad_(True)
            self._base = base  # never run: every candidate is a fresh copy of it
        self.cache: dict[tuple[int, ...], dict[str, float]] = {}
        self.seconds: dict[tuple[int, ...], float] = {}  # wall time of each memoised evaluation

    def network(self, keep: Sequence[int]) -> nn.Module:
        """The candidate network for ``keep`` (ascending block indices), in train mode."""
        if self.context == "official":
            net = self._net
            net.load_state_dict(self._init_state)  # the reset the official code lacks
            for i in keep:
                net.blocks[i].load_state_dict(self._block_states[i])
        else:
            net = keep_blocks(copy.deepcopy(self._base), keep)
        return net.train()

    def evaluate(self, keep: Iterable[int]) -> dict[str, float]:
        """``{"gradnorm": G, "loss": mean CE}`` of the candidate ``keep``, computed afresh (never cached).

        ``G`` is the mean over the batches of ``sqrt(Σ_p ||∂CE_b/∂p||²)`` over every parameter of the
        candidate network (``CE_b`` the batch-mean cross-entropy of batch b); ``.grad`` is never
        written (``torch.autograd.grad``), one backward per batch.
        """
        keep = sorted({int(i) for i in keep})
        if any(not 0 <= i < self.num_blocks for i in keep):
            raise ValueError(f"GradNormScorer: block indices must lie in 0..{self.num_blocks - 1}, got {keep}")
        if not keep and self.context == "finetuned":
            raise ValueError("GradNormScorer: the finetuned context needs at least one kept block")
        net = self.network(keep)
        params = [p for p in net.parameters()]
        norms, losses = [], []
        with _seeded(self.seed, self.device), torch.enable_grad():
            for x, y in self.batches:
                loss = F.cross_entropy(net(x), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                square = sum(float(g.detach().double().square().sum()) for g in grads if g is not None)
                norms.append(math.sqrt(square))
                losses.append(float(loss.detach()))
        return {"gradnorm": sum(norms) / len(norms), "loss": sum(losses) / len(losses)}

    def __call__(self, keep: Iterable[int]) -> dict[str, float]:
        """:meth:`evaluate`, memoised on the sorted block tuple (values do not depend on call order)."""
        key = tuple(sorted({int(i) for i in keep}))
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.evaluate(key)
            self.seconds[key] = time.perf_counter() - start
        return self.cache[key]


def gradnorm(model: nn.Module, keep: Collection[int], batches: Batches, *, context: str = "official", seed: int = 0) -> float:
    """GradNorm G of ``model`` when only the blocks ``keep`` carry their fine-tuned weights.

    Args:
        model: the fine-tuned timm ViT (left untouched).
        keep: block indices carrying fine-tuned weights (``official``: the others are random;
            ``finetuned``: the others are removed).
        batches: (images, labels) batches.
        context: ``official`` or ``finetuned`` (module docstring).
        seed: seed of the random initialisation (official) and of the dropout RNG.

    Returns:
        The mean over batches of the per-batch gradient norm over all parameters.
    """
    return GradNormScorer(model, batches, context=context, seed=seed).evaluate(keep)["gradnorm"]


def select_subset(
    scorer: Callable[[Sequence[int]], float],
    segment: tuple[int, int],
    r: int,
    *,
    others: Sequence[int] = (),
    max_subsets: int = 32,
    maximize: bool = True,
) -> dict[str, Any]:
    """The ``r`` blocks of ``segment`` whose network has the best score (largest, or smallest).

    A candidate subset S is scored as ``scorer(sorted(others ∪ S))``. When ``C(n, r) <= max_subsets``
    every subset is scored (ties: the lexicographically first); otherwise greedy backward
    elimination: from the whole segment, repeatedly drop the block whose removal leaves the best
    score, until r remain (a memoising scorer shares that path between values of r).

    Args:
        scorer: kept block indices -> score (e.g. G or the loss from a :class:`GradNormScorer`).
        segment: half-open ``(start, end)`` block range.
        r: blocks to keep, ``0 <= r <= end - start``.
        others: blocks outside the segment present in every candidate network.
        max_subsets: exhaustive search limit.
        maximize: keep the largest score (True) or the smallest (False).

    Returns:
        ``{"kept": [...], "value": the winner's score or None, "search": "exhaustive" | "greedy" |
        "whole" | "none", "networks": the block lists scored, in order}``; nothing is scored when r
        is 0 or the length.
    """
    start, end = segment
    members = list(range(start, end))
    if not 0 <= r <= len(members):
        raise ValueError(f"select_subset: cannot keep {r} blocks of segment [{start}, {end})")
    if r == len(members):
        return {"kept": members, "value": None, "search": "whole", "networks": []}
    if r == 0:
        return {"kept": [], "value": None, "search": "none", "networks": []}
    fixed = [int(b) for b in others]
    overlap = set(fixed) & set(members)
    if overlap:
        raise ValueError(f"select_subset: context blocks {sorted(overlap)} lie inside segment [{start}, {end})")
    sign = 1.0 if maximize else -1.0
    networks: list[list[int]] = []

    def value_of(subset: Sequence[int]) -> float:
        networks.append(sorted([*fixed, *subset]))
        return scorer(networks[-1])

    if math.comb(len(members), r) <= max_subsets:
        best, best_value = None, None
        for subset in combinations(members, r):
            value = value_of(subset)
            if best_value is None or sign * value > sign * best_value:
                best, best_value = list(subset), value
        return {"kept": best, "value": best_value, "search": "exhaustive", "networks": networks}
    current, current_value = list(members), None
    while len(current) > r:
        best_drop, current_value = None, None
        for b in current:
            value = value_of([c for c in current if c != b])
            if current_value is None or sign * value > sign * current_value:
                best_drop, current_value = b, value
        current.remove(best_drop)
    return {"kept": current, "value": current_value, "search": "greedy", "networks": networks}


def fixed_batches(loader: Iterable[Any], count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
