"""Clustering scores of argmax q(c|x) against the true labels (ours: the paper reports no clustering
scores). The kernel density estimates of Table 1 and of the Parzen protocol live in ``infocatvae.kde``."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def cluster_acc(true: np.ndarray, pred: np.ndarray, K: int | None = None) -> tuple[float, str]:
    """Accuracy of predicted clusters after mapping each cluster to a label.

    Hungarian one-to-one matching (scipy's ``linear_sum_assignment``) whenever the number of
    clusters ``K`` is at most the number of labels (K < labels included: then some labels get no
    cluster); many-to-one by majority vote only when K exceeds it. ``K`` defaults to the largest
    predicted index + 1. Returns the accuracy and the mapping used (``"hungarian"`` or ``"majority"``).
    """
    true, pred = np.asarray(true), np.asarray(pred)
    n_labels = len(np.unique(true))
    K = int(pred.max()) + 1 if K is None else K
    table = contingency_matrix(pred, true)  # rows: clusters present, columns: labels present
    if K > n_labels:
        return float(table.max(axis=1).sum() / len(true)), "majority"
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(true)), "hungarian"


def clustering_scores(true: np.ndarray, pred: np.ndarray, K: int | None = None) -> dict[str, float | str]:
    """``cluster_acc`` (with ``cluster_acc_mapping``), ``nmi`` (arithmetic mean) and ``ari``."""
    acc, mapping = cluster_acc(true, pred, K)
    return {
        "cluster_acc": acc,
        "cluster_acc_mapping": mapping,
        "nmi": float(normalized_mutual_info_score(true, pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(true, pred)),
    }
