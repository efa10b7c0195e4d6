"""Linear centred kernel alignment (CKA) between the representations of every pair of blocks.

``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with linear kernels ``K = X Xᵀ``,
``L = Y Yᵀ`` (Kornblith et al., "Similarity of Neural Network Representations Revisited", 2019).
Two HSIC estimators:

- ``"biased"``: ``HSIC(K, L) = tr(K H L H) / (n - 1)²`` with ``H = I - 11ᵀ/n`` (Gretton et al., 2005),
  the one SGLP's official code uses. With ``batch_size`` the samples are split into batches, CKA is
  computed per batch and the batch values are averaged (SGLP's official aggregation).
- ``"unbiased"``: the U-statistic of Song et al. (2012),
  ``HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))`` with ``K̃``, ``L̃``
  the Gram matrices with a zeroed diagonal. With ``batch_size`` the per-batch HSIC₁ values are
  averaged first and CKA is formed from the averages: the minibatch CKA of Nguyen, Raghu & Kornblith
  ("Do Wide and Deep Networks Learn the Same Things?", 2021), which does not depend on the batch size
  in expectation.

All pairs come from one batched computation: the ``L`` Gram matrices are stacked, centred (or
diagonal-zeroed), flattened and multiplied, ``(L, n²) @ (n², L)``; never a Python loop over pairs.
The centred Gram matrix ``H X Xᵀ H`` is formed as ``(HX)(HX)ᵀ`` (centre the features, then
multiply): the same matrix, at O(n·d) instead of O(n²) extra work. The unbiased estimator is
invariant to a common shift of the features, so it gets the centred features too (better numerics,
same value). :func:`feature_hsic` forms the stacked Gram matrices a slab of rows at a time (bounded
memory; the product is summed over slabs); :func:`gram_matrices` + :func:`hsic_matrix` are the same
computation on whole Gram matrices. Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "ESTIMATORS",
    "gram_matrices",
    "hsic_matrix",
    "feature_hsic",
    "normalize_hsic",
    "MinibatchCKA",
    "batch_sizes",
    "cka_matrix",
    "linear_cka",
]

ESTIMATORS = ("biased", "unbiased")

# A centred Gram matrix with ||HKH||_F below this fraction of ||X||_F² is rounding noise around
# constant features (float64 centring leaves ~1e-16 relative residue; float32 inputs carry ~1e-7).
_DEGENERATE_RTOL = 1e-20
# Bytes of Gram-matrix rows formed at once by feature_hsic (one buffer, reused across slabs).
_CHUNK_BYTES = 128 * 2**20


def _as_float64(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{what}: expected real numbers, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: contains NaN or inf")
    return t


def _flat_blocks(features: Any) -> list[torch.Tensor] | torch.Tensor:
    """float64 (L, n, D) tensor, or a list of L (n, D_l) tensors when the widths differ."""
    if isinstance(features, (torch.Tensor, np.ndarray)):
        stack = _as_float64(features, "features")
        if stack.dim() < 3:
            raise ValueError(f"features: expected (L, n, d) (blocks, samples, features), got {tuple(stack.shape)}")
        return stack.reshape(stack.shape[0], stack.shape[1], -1)  # (L, n, D)
    if not isinstance(features, Sequence) or len(features) == 0:
        raise ValueError("features: expected an (L, n, d) array or a non-empty sequence of (n, d) arrays")
    blocks = []
    for i, f in enumerate(features):
        x = _as_float64(f, f"features[{i}]")
        if x.dim() < 2:
            raise ValueError(f"features[{i}]: expected (n, d), got {tuple(x.shape)}")
        blocks.append(x.reshape(x.shape[0], -1))  # (n, D)
    sizes = [x.shape[0] for x in blocks]
    if len(set(sizes)) != 1:
        raise ValueError(f"features: blocks disagree on the number of samples: {sizes}")
    return blocks


def _grams(blocks: list[torch.Tensor] | torch.Tensor, centre: bool) -> torch.Tensor:
    if isinstance(blocks, torch.Tensor):
        x = blocks - blocks.mean(1, keepdim=True) if centre else blocks  # (L, n, D)
        return torch.bmm(x, x.transpose(1, 2))  # (L, n, n)
    grams = []
    for x in blocks:
        x = x - x.mean(0, keepdim=True) if centre else x
        grams.append(x @ x.T)
    return torch.stack(grams)  # (L, n, n)


def _degenerate_floor(blocks: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """(L,) HSIC(K, K) at or below which a block counts as constant: ``(rtol ||X||_F²)² / (n - 1)²``.

    ``||X||_F² >= ||X Xᵀ||_F`` bounds the raw Gram matrix, and HSIC(K, K) = ||HKH||_F² / (n - 1)².
    """
    if isinstance(blocks, torch.Tensor):
        sq, n = blocks.square().sum((1, 2)), blocks.shape[1]
    else:
        sq, n = torch.stack([x.square().sum() for x in blocks]), blocks[0].shape[0]
    return (_DEGENERATE_RTOL * sq).square() / max(n - 1, 1) ** 2


def gram_matrices(features: Any, *, centre: bool = False) -> torch.Tensor:
    """Linear-kernel Gram matrix ``X Xᵀ`` of every block, in float64.

    Args:
        features: an array/tensor (L, n, ...) or a sequence of L arrays (n, ...); each sample's
            features are flattened, so blocks may differ in width (the Gram matrices never do).
        centre: return the centred Gram matrices ``H X Xᵀ H``, formed as ``(HX)(HX)ᵀ``: the features
            are centred over the samples first (O(n·d) instead of O(n²), and no cancellation
            between the large entries of an uncentred Gram matrix).

    Returns:
        (L, n, n) float64 tensor, on the device of ``features`` when it is a tensor.
    """
    return _grams(_flat_blocks(features), centre)


def hsic_matrix(grams: torch.Tensor, estimator: str = "biased", *, centred: bool = False) -> torch.Tensor:
    """HSIC between every pair of the given Gram matrices, in one batched product.

    Args:
        grams: (L, n, n) symmetric Gram matrices of the same n samples.
        estimator: ``"biased"`` (``tr(KHLH)/(n-1)²``) or ``"unbiased"`` (Song et al. 2012; n >= 4).
        centred: the Gram matrices are already centred (``gram_matrices(..., centre=True)``); the biased
            estimator then skips its centring. The unbiased one needs no centring: it is invariant to
            a common shift of the features, so centred or raw Gram matrices give the same value.

    Returns:
        (L, L) float64 tensor, symmetric.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r}: expected one of {ESTIMATORS}")
    if grams.dim() != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(f"grams: expected (L, n, n), got {tuple(grams.shape)}")
    grams = grams.to(torch.float64)
    num, n = grams.shape[0], grams.shape[1]
    if estimator == "biased":
        if n < 2:
            raise ValueError(f"biased HSIC needs at least 2 samples, got {n}")
        if not centred:  # H K H without forming H: subtract row and column means, add the grand mean
            grams = grams - grams.mean(1, keepdim=True) - grams.mean(2, keepdim=True) + grams.mean((1, 2), keepdim=True)
        flat = grams.reshape(num, -1)  # (L, n²)
        hsic = (flat @ flat.T) / (n - 1) ** 2  # <HKH, HLH>_F = tr(KHLH)
    else:
        if n < 4:
            raise ValueError(f"unbiased HSIC needs at least 4 samples, got {n}")
        tilde = grams.clone()
        tilde.diagonal(dim1=1, dim2=2).zero_()  # K̃: (L, n, n)
        flat = tilde.reshape(num, -1)  # (L, n²)
        totals = flat.sum(1)  # 1ᵀK̃1: (L,)
        rows = tilde.sum(2)  # K̃1: (L, n); 1ᵀK̃L̃1 = (K̃1)ᵀ(L̃1) by symmetry
        hsic = (
            flat @ flat.T
            + torch.outer(totals, totals) / ((n - 1) * (n - 2))
            - (2.0 / (n - 2)) * (rows @ rows.T)
        ) / (n * (n - 3))
    return (hsic + hsic.T) / 2  # BLAS need not return an exactly symmetric product


def feature_hsic(features: Any, estimator: str = "biased", *, chunk_rows: int | None = None) -> torch.Tensor:
    """HSIC between every pair of blocks straight from their features, in bounded memory.

    The same numbers as ``hsic_matrix(gram_matrices(features, centre=True), estimator, centred=True)``,
    but the stacked centred Gram matrices are formed a slab of rows at a time into one reused buffer,
    ``(L, c, n)``, and each slab adds its ``(L, c·n) @ (c·n, L)`` product to the result: memory
    O(L·c·n) instead of O(L·n²), and no page faults from a fresh (L, n, n) allocation per batch.

    Args:
        features: (L, n, ...) array/tensor or a sequence of L arrays (n, ...).
        estimator: ``"biased"`` or ``"unbiased"``.
        chunk_rows: rows per slab (default: a slab of about 128 MiB: one slab for 12 blocks × 1,000 samples).

    Returns:
        (L, L) float64 tensor, symmetric.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r}: expected one of {ESTIMATORS}")
    return _feature_hsic(_flat_blocks(features), estimator, chunk_rows)


def _feature_hsic(blocks: list[torch.Tensor] | torch.Tensor, estimator: str, chunk_rows: int | None) -> torch.Tensor:
    num, n = len(blocks), blocks[0].shape[0]
    if n < (2 if estimator == "biased" else 4):
        raise ValueError(f"{estimator} HSIC needs at least {2 if estimator == 'biased' else 4} samples, got {n}")
    device = blocks[0].device
    x = [b - b.mean(0, keepdim=True) for b in blocks]  # H X: (n, D_l) each
    rows = chunk_rows or max(1, _CHUNK_BYTES // (8 * num * n))
    rows = min(rows, n)
    buffer = torch.empty(num * rows * n, dtype=torch.float64, device=device)
    acc = torch.zeros(num, num, dtype=torch.float64, device=device)
    totals = torch.zeros(num, dtype=torch.float64, device=device)  # 1ᵀK̃1 (unbiased)
    row_sums = torch.zeros(num, n, dtype=torch.float64, device=device)  # K̃1 (unbiased)
    for start in range(0, n, rows):
        size = min(rows, n - start)
        slab = buffer[: num * size * n].view(num, size, n)  # rows start..start+size of every Gram matrix
        for i, xi in enumerate(x):  # one GEMM per block (faster than bmm for float64 here), no pair loop
            torch.mm(xi[start : start + size], xi.T, out=slab[i])
        if estimator == "unbiased":
            slab.diagonal(offset=start, dim1=1, dim2=2).zero_()  # K̃: entries (r, start + r)
            row_sums[:, start : start + size] = slab.sum(2)
            totals += row_sums[:, start : start + size].sum(1)
        flat = slab.view(num, -1)  # (L, size·n)
        acc += flat @ flat.T
    if estimator == "biased":
        hsic = acc / (n - 1) ** 2
    else:
        hsic = (
            acc + torch.outer(totals, totals) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (row_sums @ row_sums.T)
        ) / (n * (n - 3))
    return (hsic + hsic.T) / 2


def normalize_hsic(hsic: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
    """CKA from an HSIC matrix: ``hsic_ij / sqrt(hsic_ii · hsic_jj)``, diagonal exactly 1.

    Args:
        hsic: (L, L) HSIC matrix.
        floor: (L,) rounding level of HSIC(K, K) per block, to tell constant features from a
            genuinely small spread; None checks ``HSIC(K, K) > 0`` only.

    Raises:
        ValueError: naming the blocks whose self-HSIC is not above ``floor`` (CKA is undefined there).
    """
    diag = torch.diagonal(hsic)
    bad = diag <= 0
    if floor is not None:
        bad |= diag <= floor
    if bad.any():
        blocks = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"CKA undefined for block(s) {blocks}: HSIC(K, K) is not positive beyond rounding (features "
            "constant over the samples, or the unbiased estimator on too small a batch)"
        )
    root = diag.sqrt()
    cka = hsic / torch.outer(root, root)
    cka.fill_diagonal_(1.0)
    return cka


def batch_sizes(n: int, batch_size: int | None) -> list[int]:
    """Sizes of the contiguous batches ``n`` samples are split into.

    ``ceil(n / batch_size)`` batches of near-equal size (none larger than ``batch_size``; the first
    ``n mod count`` are one larger), so no batch is a tiny remainder; None gives one batch.
    """
    if n < 1:
        raise ValueError(f"no samples to compute CKA on (n = {n})")
    if batch_size is None:
        return [n]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    count = math.ceil(n / batch_size)
    base, extra = divmod(n, count)
    return [base + 1] * extra + [base] * (count - extra)


class MinibatchCKA:
    """Accumulates the CKA matrix of L blocks over batches of samples (features never kept).

    ``biased``: the mean over batches of the per-batch CKA matrices (SGLP official).
    ``unbiased``: CKA of the mean per-batch HSIC₁ matrices (Nguyen et al. 2021).

    Args:
        estimator: ``"biased"`` or ``"unbiased"``.
    """

    def __init__(self, estimator: str = "biased") -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r}: expected one of {ESTIMATORS}")
        self.estimator = estimator
        self.batches = 0
        self.samples = 0
        self._sum: torch.Tensor | None = None  # sum of per-batch CKA (biased) or HSIC₁ (unbiased)
        self._floor: torch.Tensor | None = None  # sum of the per-batch degenerate floors

    def update(self, features: Any) -> None:
        """Add one batch: features (L, n, ...) or a sequence of L arrays (n, ...)."""
        blocks = _flat_blocks(features)
        num, n = len(blocks), blocks[0].shape[0]
        if self._sum is not None and num != self._sum.shape[0]:
            raise ValueError(f"batch {self.batches}: {num} blocks, earlier batches had {self._sum.shape[0]}")
        hsic = _feature_hsic(blocks, self.estimator, None)  # (L, L)
        floor = _degenerate_floor(blocks)  # (L,)
        if self.estimator == "biased":
            try:
                value = normalize_hsic(hsic, floor)
            except ValueError as err:
                raise ValueError(f"batch {self.batches}: {err}") from None
        else:
            value = hsic
        self._sum = value if self._sum is None else self._sum + value
        self._floor = floor if self._floor is None else self._floor + floor
        self.batches += 1
        self.samples += n

    def compute(self) -> torch.Tensor:
        """(L, L) float64 CKA matrix, symmetric, diagonal 1."""
        if self._sum is None or self._floor is None:
            raise ValueError("MinibatchCKA: no batch was added")
        if self.estimator == "biased":
            cka = self._sum / self.batches
            cka.fill_diagonal_(1.0)
            return cka
        return normalize_hsic(self._sum / self.batches, self._floor / self.batches)


def cka_matrix(features: Any, *, batch_size: int | None = None, estimator: str = "biased") -> torch.Tensor:
    """Linear CKA between every pair of blocks.

    Args:
        features: (L, n, ...) array/tensor, or a sequence of L arrays (n, ...): the representation
            of the same n samples at every block (flattened per sample).
        batch_size: None: one batch of all n samples. Otherwise the samples, in order, are split into
            ``ceil(n / batch_size)`` contiguous batches of near-equal size (see :func:`batch_sizes`)
            and aggregated per ``estimator`` (see :class:`MinibatchCKA`).
        estimator: ``"biased"`` (official SGLP) or ``"unbiased"`` (Nguyen et al. 2021 minibatch CKA).

    Returns:
        (L, L) float64 tensor, symmetric, diagonal exactly 1.
    """
    if isinstance(features, (torch.Tensor, np.ndarray)):
        if features.ndim < 3:
            raise ValueError(f"features: expected (L, n, d) (blocks, samples, features), got {tuple(features.shape)}")
        n = features.shape[1]
        take = lambda a, b: features[:, a:b]  # noqa: E731
    else:
        if not isinstance(features, Sequence) or len(features) == 0:
            raise ValueError("features: expected an (L, n, d) array or a non-empty sequence of (n, d) arrays")
        counts = {len(f) for f in features}
        if len(counts) != 1:
            raise ValueError(f"features: blocks disagree on the number of samples: {[len(f) for f in features]}")
        n = counts.pop()
        take = lambda a, b: [f[a:b] for f in features]  # noqa: E731
    acc = MinibatchCKA(estimator)
    start = 0
    for size in batch_sizes(n, batch_size):
        acc.update(take(start, start + size))
        start += size
    return acc.compute()


def linear_cka(x: Any, y: Any, *, estimator: str = "biased") -> float:
    """Linear CKA of two representations of the same n samples.

    Args:
        x: (n, d1) array/tensor (further dimensions are flattened per sample).
        y: (n, d2) array/tensor.
        estimator: ``"biased"`` or ``"unbiased"``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r}: expected one of {ESTIMATORS}")
    if len(x) != len(y):
        raise ValueError(f"linear_cka: x has {len(x)} samples, y has {len(y)}")
    blocks = _flat_blocks([x, y])
    hsic = _feature_hsic(blocks, estimator, None)  # (2, 2)
    return float(normalize_hsic(hsic, _degenerate_floor(blocks))[0, 1])
