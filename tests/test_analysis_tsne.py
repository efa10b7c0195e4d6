"""tsne_embed: each axis normalised to [0, 1], deterministic for a seed, separates separable data."""

from __future__ import annotations

import numpy as np
import pytest

from petlprune.analysis.cluster import silhouette
from petlprune.analysis.tsne import minmax_normalise, tsne_embed


def _data(n=60, d=10, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return sep * np.eye(d)[labels] + rng.normal(size=(n, d)), labels


def test_normalised_and_deterministic():
    x, labels = _data()
    y = tsne_embed(x, perplexity=10, seed=0)
    assert y.shape == (60, 2)
    np.testing.assert_allclose(y.min(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.max(axis=0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(y, tsne_embed(x, perplexity=10, seed=0))
    assert not np.array_equal(y, tsne_embed(x, perplexity=10, seed=1))
    # well-separated classes stay separated in the map; pure noise does not
    assert silhouette(y, labels) > 0.5
    noise = np.random.default_rng(3).normal(size=(60, 10))
    assert silhouette(tsne_embed(noise, perplexity=10, seed=0), labels) < 0.2


def test_minmax_constant_axis_and_bad_input():
    y = minmax_normalise(np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    with pytest.raises(ValueError, match="perplexity 30.0 must be in"):
        tsne_embed(np.zeros((20, 3)), perplexity=30.0)
    with pytest.raises(ValueError, match=r"must be \(n, d\)"):
        tsne_embed(np.zeros(20))
