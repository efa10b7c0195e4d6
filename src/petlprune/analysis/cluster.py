"""How well given class labels separate a point cloud: silhouette, Calinski–Harabasz, Davies–Bouldin.

Thin wrappers over ``sklearn.metrics`` that check their input and name the culprit. SLS scores each
block with the silhouette of its 2-D t-SNE embedding under the TRUE labels; the other two indices
were tried and dropped by the SLS authors and are kept here for the ablation. Their directions
differ: silhouette ([-1, 1]) and Calinski–Harabasz ([0, inf)) are higher-is-better, Davies–Bouldin
([0, inf)) is lower-is-better (see :data:`HIGHER_IS_BETTER`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# sklearn.metrics is imported inside the functions: SLS's plan step imports this module for the
# criterion names only and should start in well under a second.

__all__ = [
    "CRITERIA",
    "HIGHER_IS_BETTER",
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "cluster_scores",
]


def _check(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"cluster scores: x must be (n, d), got shape {x.shape}")
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"cluster scores: {x.shape[0]} points but {labels.shape[0]} labels")
    n_classes = np.unique(labels).size
    if not 2 <= n_classes <= x.shape[0] - 1:
        raise ValueError(
            f"cluster scores: need 2 <= number of classes <= n - 1, got {n_classes} classes for {x.shape[0]} points"
        )
    if not np.isfinite(x).all():
        raise ValueError("cluster scores: x holds NaN or inf")
    return x, labels


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Euclidean) of ``x`` (n, d) clustered by ``labels`` (n,)."""
    from sklearn import metrics

    return float(metrics.silhouette_score(*_check(x, labels), metric="euclidean"))


def calinski_harabasz(x: np.ndarray, labels: np.ndarray) -> float:
    """Calinski–Harabasz index: between- over within-class dispersion (higher is better)."""
    from sklearn import metrics

    return float(metrics.calinski_harabasz_score(*_check(x, labels)))


def davies_bouldin(x: np.ndarray, labels: np.ndarray) -> float:
    """Davies–Bouldin index: mean worst-case class similarity (LOWER is better, 0 is best)."""
    from sklearn import metrics

    return float(metrics.davies_bouldin_score(*_check(x, labels)))


CRITERIA: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "silhouette": silhouette,
    "calinski_harabasz": calinski_harabasz,
    "davies_bouldin": davies_bouldin,
}
HIGHER_IS_BETTER: dict[str, bool] = {"silhouette": True, "calinski_harabasz": True, "davies_bouldin": False}


def cluster_scores(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All three indices of ``x`` (n, d) under ``labels`` (n,), keyed as in :data:`CRITERIA`."""
    x, labels = _check(x, labels)
    return {name: fn(x, labels) for name, fn in CRITERIA.items()}
