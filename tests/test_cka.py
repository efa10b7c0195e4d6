"""Linear CKA (analysis/cka.py) against references written from the formulas, in numpy."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
import torch

from petlprune.analysis.cka import (
    batch_sizes,
    cka_matrix,
    feature_hsic,
    gram_matrices,
    hsic_matrix,
    linear_cka,
)


def ref_hsic_biased(x: np.ndarray, y: np.ndarray) -> float:
    """tr(K H L H) / (n - 1)² with the explicit centring matrix H = I - 11ᵀ/n."""
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2


def ref_hsic_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012): the U-statistic over ordered 4-tuples of distinct samples, by enumeration.

    HSIC = E[k_tu l_tu] + E[k_tu] E[l_vw] - 2 E[k_tu l_tv] over distinct t, u, v, w.
    """
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    total, count = 0.0, 0
    for t, u, v, w in permutations(range(n), 4):
        total += k[t, u] * l_[t, u] + k[t, u] * l_[v, w] - 2 * k[t, u] * l_[t, v]
        count += 1
    return total / count


def ref_cka(x: np.ndarray, y: np.ndarray, hsic=ref_hsic_biased) -> float:
    return hsic(x, y) / np.sqrt(hsic(x, x) * hsic(y, y))


def random_features(seed: int, n: int = 40, dims=(6, 9, 4, 12)) -> list[np.ndarray]:
    """Blocks sharing a latent signal (so CKA values are spread out, not all ~0)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 5))
    return [latent @ rng.normal(size=(5, d)) + rng.normal(size=(n, d)) * (i + 0.5) for i, d in enumerate(dims)]


@pytest.mark.parametrize("seed", range(5))
def test_linear_cka_equals_formula(seed: int) -> None:
    x, y, *_ = random_features(seed)
    assert linear_cka(x, y) == pytest.approx(ref_cka(x, y), rel=1e-10, abs=1e-12)


def test_unbiased_hsic_equals_u_statistic() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    x[:, 0] += 2.0  # an offset: the U-statistic of the raw Gram matrices, no centring
    grams = gram_matrices([x, y])
    hsic = hsic_matrix(grams, "unbiased").numpy()
    assert hsic[0, 1] == pytest.approx(ref_hsic_unbiased(x, y), rel=1e-9)
    assert hsic[0, 0] == pytest.approx(ref_hsic_unbiased(x, x), rel=1e-9)
    assert linear_cka(x, y, estimator="unbiased") == pytest.approx(
        ref_cka(x, y, ref_hsic_unbiased), rel=1e-9
    )


def test_biased_hsic_scale() -> None:
    x, y, *_ = random_features(1, n=15)
    assert hsic_matrix(gram_matrices([x, y]))[0, 1].item() == pytest.approx(ref_hsic_biased(x, y), rel=1e-10)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
def test_slabs_equal_whole_gram_matrices(estimator: str, chunk_rows: int) -> None:
    feats = random_features(8, n=20)  # widths differ: the per-block path
    stack = np.stack([f[:, :4] for f in feats])  # (L, n, 4): the batched path
    for f in (feats, stack):
        whole = hsic_matrix(gram_matrices(f), estimator)  # raw Gram matrices, centred inside (biased)
        np.testing.assert_allclose(feature_hsic(f, estimator, chunk_rows=chunk_rows).numpy(), whole.numpy(),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_invariances(estimator: str) -> None:
    x, y, *_ = random_features(3)
    base = linear_cka(x, y, estimator=estimator)
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(x.shape[1], x.shape[1])))
    assert linear_cka(x, x, estimator=estimator) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ q, y, estimator=estimator) == pytest.approx(base, rel=1e-9)
    assert linear_cka(3.7 * x, 0.02 * y, estimator=estimator) == pytest.approx(base, rel=1e-9)
    assert linear_cka(x + 5.0, y - 2.0, estimator=estimator) == pytest.approx(base, rel=1e-9)  # offsets


def test_cka_of_unrelated_vs_identical() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    assert linear_cka(x, rng.normal(size=(500, 4))) < 0.05
    assert linear_cka(x, x @ rng.normal(size=(4, 4))) > 0.3


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_cka_matrix_equals_pairwise_loop(estimator: str) -> None:
    feats = random_features(2)  # blocks of different widths: a sequence input
    mat = cka_matrix(feats, estimator=estimator)
    loop = np.array([[linear_cka(a, b, estimator=estimator) for b in feats] for a in feats])
    np.testing.assert_allclose(mat.numpy(), loop, rtol=1e-9, atol=1e-12)
    assert torch.equal(mat, mat.T)
    assert torch.all(torch.diagonal(mat) == 1.0)


def test_cka_matrix_equals_formula_and_accepts_stacks() -> None:
    rng = np.random.default_rng(4)
    stack = rng.normal(size=(5, 30, 2, 3)).astype(np.float32)  # (L, n, tokens, d): flattened per sample
    flat = stack.reshape(5, 30, 6).astype(np.float64)
    ref = np.array([[ref_cka(a, b) for b in flat] for a in flat])
    np.testing.assert_allclose(cka_matrix(stack).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(cka_matrix(torch.from_numpy(stack)).numpy(), ref, rtol=1e-6)
    assert cka_matrix(stack).dtype == torch.float64


def test_biased_minibatch_is_mean_of_batch_cka() -> None:
    feats = random_features(5, n=47)
    splits = [np.array_split(f, 4) for f in feats]  # ceil(47 / 12) = 4 near-equal batches: 12, 12, 12, 11
    ref = np.mean(
        [[[ref_cka(a[b], c[b]) for c in splits] for a in splits] for b in range(4)], axis=0
    )
    np.fill_diagonal(ref, 1.0)
    np.testing.assert_allclose(cka_matrix(feats, batch_size=12).numpy(), ref, rtol=1e-9)


def test_unbiased_minibatch_is_ratio_of_mean_hsic() -> None:
    feats = [f[:21] for f in random_features(6, dims=(3, 2))]
    parts = [np.array_split(f, 3) for f in feats]  # 7 + 7 + 7
    hsic = np.array(
        [[np.mean([ref_hsic_unbiased(a[b], c[b]) for b in range(3)]) for c in parts] for a in parts]
    )
    ref = hsic / np.sqrt(np.outer(np.diag(hsic), np.diag(hsic)))
    np.testing.assert_allclose(cka_matrix(feats, batch_size=7, estimator="unbiased").numpy(), ref, rtol=1e-8)


def test_batch_sizes() -> None:
    assert batch_sizes(10, None) == [10]
    assert batch_sizes(1000, 500) == [500, 500]
    assert batch_sizes(800, 500) == [400, 400]
    assert batch_sizes(47, 12) == [12, 12, 12, 11]
    assert sum(batch_sizes(1001, 100)) == 1001 and max(batch_sizes(1001, 100)) <= 100
    with pytest.raises(ValueError, match="batch_size"):
        batch_sizes(10, 0)


def test_errors_name_the_culprit() -> None:
    rng = np.random.default_rng(0)
    good = rng.normal(size=(20, 3))
    for constant in (np.ones((20, 3)), np.full((20, 3), 0.3)):
        with pytest.raises(ValueError, match=r"block\(s\) \[1\]"):
            cka_matrix([good, constant])
    small = rng.normal(size=(20, 3))  # a tiny spread on a large offset is still a representation
    assert linear_cka(good, 1000.0 + 1e-3 * small) == pytest.approx(linear_cka(good, small), rel=1e-6)
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        cka_matrix([good, good[:10]])
    with pytest.raises(ValueError, match="x has 20 samples, y has 10"):
        linear_cka(good, good[:10])
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(good[:3], good[:3], estimator="unbiased")
    with pytest.raises(ValueError, match="estimator"):
        cka_matrix([good, good], estimator="rbf")
    bad = good.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"features\[1\]: contains NaN"):
        cka_matrix([good, bad])
    with pytest.raises(ValueError, match=r"\(L, n, d\)"):
        cka_matrix(good)
