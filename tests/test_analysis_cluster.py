"""Cluster indices: sklearn wrappers checked against a direct implementation and for direction."""

from __future__ import annotations

import numpy as np
import pytest

from petlprune.analysis.cluster import (
    HIGHER_IS_BETTER,
    calinski_harabasz,
    cluster_scores,
    davies_bouldin,
    silhouette,
)


def _silhouette_by_definition(x, labels):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)  # (n, n)
    s = []
    for i in range(len(x)):
        same = (labels == labels[i]) & (np.arange(len(x)) != i)
        a = d[i, same].mean()
        b = min(d[i, labels == c].mean() for c in np.unique(labels) if c != labels[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def _blobs(spread, seed=0, n=30):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    return centres[labels] + spread * rng.normal(size=(n, 2)), labels


def test_silhouette_matches_definition():
    x, labels = _blobs(1.0)
    assert silhouette(x, labels) == pytest.approx(_silhouette_by_definition(x, labels), rel=1e-12)


def test_directions_on_tight_vs_loose_clusters():
    tight, loose = cluster_scores(*_blobs(0.2)), cluster_scores(*_blobs(2.0))
    for name, higher in HIGHER_IS_BETTER.items():
        assert (tight[name] > loose[name]) == higher, name
    assert tight["silhouette"] > 0.8 and davies_bouldin(*_blobs(0.2)) < 0.3
    assert calinski_harabasz(*_blobs(0.2)) > 100


def test_bad_input_is_named():
    x, labels = _blobs(1.0)
    with pytest.raises(ValueError, match="30 points but 29 labels"):
        silhouette(x, labels[:-1])
    with pytest.raises(ValueError, match="got 1 classes"):
        silhouette(x, np.zeros(30))
    with pytest.raises(ValueError, match="NaN"):
        silhouette(np.where(np.arange(60).reshape(30, 2) == 5, np.nan, x), labels)
