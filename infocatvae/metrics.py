"""The scores of a model other than densities: the clustering of argmax q(c|x) against the true labels
(ours: the paper reports no clustering scores), the information cross-entropy of section 10, and the
test reconstruction and ELBO. The kernel density estimates of Table 1 and of the Parzen protocol live in
``infocatvae.kde``; the independent reader of the samples in ``infocatvae.reader``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators (the CPU's, and ``device``'s on CUDA) seeded with ``seed`` inside, restored after: a
    draw that depends on nothing drawn before it, and changes nothing drawn after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


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


def category_usage(pred: np.ndarray, K: int) -> np.ndarray:
    """The share of inputs put in each of the ``K`` categories (K,), zeros for the categories none is put in."""
    return np.bincount(np.asarray(pred), minlength=K) / len(pred)


def usage_perplexity(usage: np.ndarray) -> float:
    """exp of the entropy of the categories' shares: how many equally used categories they are worth
    (K when all are used alike, 1 when one takes every input; the codebook perplexity of VQ-VAEs): below K,
    some categories are left (nearly) unused."""
    used = usage[usage > 0]
    return float(np.exp(-(used * np.log(used)).sum()))


def clustering_scores(true: np.ndarray, pred: np.ndarray, K: int | None = None) -> dict[str, Any]:
    """``cluster_acc`` (with ``cluster_acc_mapping``), ``nmi`` (arithmetic mean), ``ari``, the K categories'
    shares ``category_usage`` (a list) and their ``usage_perplexity``; K defaults to the largest predicted
    index + 1."""
    acc, mapping = cluster_acc(true, pred, K)
    K = int(np.max(pred)) + 1 if K is None else K
    usage = category_usage(pred, K)
    return {
        "cluster_acc": acc,
        "cluster_acc_mapping": mapping,
        "nmi": float(normalized_mutual_info_score(true, pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(true, pred)),
        "category_usage": usage.tolist(),
        "usage_perplexity": usage_perplexity(usage),
    }


# ---- scores of a trained model (``infocatvae.evaluate`` runs them) ---------------------------------
def batches(n: int, size: int):
    """Slices of ``range(n)`` of at most ``size`` items."""
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


@torch.no_grad()
def generate(model, n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples: c ~ uniform over the K categories, z ~ p(z|c), decoded (section 4, last paragraph).
    Returns categories (n,) and flat pixel values (n, 784) on the model's device."""
    c = torch.randint(model.K, (n,), generator=generator).to(model.device)
    out = [model.sample(c[s]).flatten(1) for s in batches(n, batch_size)]
    return c, torch.cat(out)


@torch.no_grad()
def info_metrics(model, n: int, batch_size: int, view, generator: torch.Generator) -> dict[str, float]:
    """Section 10 (the paper's, with n = 10K there): ``n`` categories drawn uniformly, decoded, classified
    by q(c|x̃); ``view`` puts the flat samples in the model's input view (``MNISTDataModule.as_view``).

    ``info_ce``: the cross-entropy −mean log q(c|x̃) (the Monte Carlo estimate of −term (7));
    ``info_ce_on_probs``: F.cross_entropy applied to the probabilities q(c|x̃) as if they were
    logits, as the authors' public code computes its classifier loss (it lies in
    [log(e + K − 1) − 1, log(e + K − 1)], [1.46, 2.46] for K = 10); ``info_acc``: share classified
    as their own category. The paper reports a cross-entropy (2.03 for CatVAE, 1.62 for InfoCatVAE)
    that lies in ``info_ce_on_probs``'s range, so it may be that variant; ``info_acc`` is ours.
    """
    c, x_gen = generate(model, n, batch_size, generator)
    q = torch.cat([model.encode(view(x_gen[s])).q_c for s in batches(n, batch_size)])
    log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()
    return {
        "info_ce": float(F.nll_loss(log_q, c)),
        "info_ce_on_probs": float(F.cross_entropy(q, c)),
        "info_acc": float((q.argmax(-1) == c).float().mean()),
    }


@torch.no_grad()
def test_metrics(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """``test_recon`` (the model's reconstruction term, batch means averaged), ``test_elbo`` (eq. 14,
    where the model ``has_elbo``) and, when K > 1, the clustering scores of argmax q(c|x)
    (``clustering_scores``, each category's share of the inputs among them). None of these are reported in
    the paper: they are ours."""
    recon, elbo, pred = 0.0, 0.0, []
    for s in batches(len(x), batch_size):
        xb = x[s]
        recon += float(model.losses(xb)["recon"]) * len(xb)
        if model.has_elbo:
            elbo += float(model.elbo(xb).sum())
        if model.K > 1:
            pred.append(model.cluster(xb).cpu())
    out: dict[str, Any] = {"test_recon": recon / len(x)}
    if model.has_elbo:
        out["test_elbo"] = elbo / len(x)
    if model.K > 1:
        out.update(clustering_scores(y.cpu().numpy(), torch.cat(pred).numpy(), K=model.K))
    return out
