"""The Gaussian kernel density estimates of Table 1 (section 10) and of the Parzen protocol of
Goodfellow et al. 2014 and Makhzani et al. 2015: the exact, pruned log-density and the bandwidth
searches (k-fold cross-validation, held-out images), and the two protocols that use them
(``table1_protocol``, ``parzen_protocol``). The other scores of a model live in ``infocatvae.metrics``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# ---- Gaussian kernel density (Table 1) ---------------------------------------------------------
#
# Why torch and not scikit-learn: scikit-learn's KernelDensity (the estimator the paper names for
# Table 1) walks a KD/ball tree, which prunes almost nothing in 784 dimensions and, with its
# default tolerances, returns values off by hundreds of nats for samples far from every fitted
# point (scikit-learn issues #7492, #25799); on a 2-core machine it takes about 30 s to score 2,000
# samples against 10,000 images. Here the same log-density is exact in float64 and pruned with a
# bound that provably drops only kernels below e^-40 / N of the largest one (_PruneEmbedding,
# _lse_pruned): about 100 times faster than scikit-learn on 784-D images (experiments/results/bench.md).

DEFAULT_CHUNK = 1024
# Principal directions in the pruning embedding (which adds one residual norm to them).
PRUNE_DIMS = 96
# A kernel is dropped only when it is provably below exp(-PRUNE_NATS) · N⁻¹ times the largest one.
PRUNE_NATS = 40.0
# Above this share of candidate pairs a chunk is scored densely: one matrix product beats the sparse one.
DENSE_SHARE = 0.05


def _flat(a, device) -> torch.Tensor:
    t = torch.as_tensor(a)
    return t.reshape(len(t), -1).to(device=device, dtype=torch.float64)


class _PruneEmbedding:
    """A lower bound of every squared distance as one small matrix product.

    With an orthonormal basis V (D × k) of principal directions of the fitted points, a centre μ
    (their subsample's mean) and R the projection onto the rest of the space, for any x and y

        ||y − x||² = ||Vᵀ(y − x)||² + ||R(y − μ) − R(x − μ)||²
                   ≥ ||Vᵀ(y − x)||² + (||R(y − μ)|| − ||R(x − μ)||)²        (reverse triangle inequality)
                   = ||y − μ||² + ||x − μ||² − 2 e(y)·e(x),   e(x) = [Vᵀ(x − μ), ||R(x − μ)||],

    which is one product of [−2e(y), 1, ||y − μ||²] with [e(x), ||x − μ||², 1] over k + 3 columns
    instead of D. It runs in float32 when float32 products are IEEE ones
    (``torch.get_float32_matmul_precision() == "highest"``: no TF32, no bf16), else in float64;
    ``slack`` bounds its rounding error (Higham, Accuracy and Stability of Numerical Algorithms,
    eq. 3.5: |fl(a·b) − a·b| ≤ γ_n |a|·|b|, any summation order) and the float64 error of e, and a
    pair is dropped only when its bound exceeds the threshold by more than that.
    """

    def __init__(
        self, fit: torch.Tensor, fit_sq: torch.Tensor, dims: int = PRUNE_DIMS, sample: int = 1024, niter: int = 2
    ):
        n, d = fit.shape
        self.k = min(dims, d)
        # Principal directions of an evenly strided subsample by randomised subspace iteration in
        # float32 (Halko et al. 2011, alg. 4.4), written out because torch.svd_lowrank draws from the
        # global RNG and takes no generator; made orthonormal in float64 by a final QR. Any orthonormal
        # basis and any centre keep the bound a bound, good ones only make it tighter.
        sub = fit[:: max(1, n // sample)]
        self.mean = sub.mean(0)
        centred = (sub - self.mean).float()
        gen = torch.Generator(device=fit.device).manual_seed(0)
        q = torch.randn(d, self.k, generator=gen, device=fit.device)
        for _ in range(niter + 1):
            q = torch.linalg.qr(centred.T @ (centred @ q)).Q
        # Rows: the basis, then the centre, so one product gives both Vᵀx and μ·x.
        self.rows = torch.cat([torch.linalg.qr(q.double()).Q.T, self.mean[None, :]])
        self.shift = self.rows @ self.mean
        ieee32 = torch.get_float32_matmul_precision() == "highest"
        self.dtype = torch.float32 if ieee32 else torch.float64
        self.unit = 2.0**-24 if ieee32 else 2.0**-53
        e, sq = self._embed(fit, fit_sq)
        self.fit_side = torch.cat([e, sq[:, None], torch.ones_like(sq)[:, None]], 1).to(self.dtype)
        self.fit_norm = float(sq.max().clamp(min=0.0).sqrt())  # max ||x − μ||: the embedded vectors' largest norm

    def _embed(self, x: torch.Tensor, x_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e(x), ||x − μ||²) in float64, given ||x||²."""
        prod = (self.rows @ x.T).T  # [Vᵀx, μ·x]; this orientation is the faster product on MKL
        proj = prod[:, :-1] - self.shift[:-1]  # Vᵀ(x − μ)
        sq = x_sq - 2.0 * prod[:, -1] + self.shift[-1]  # ||x||² − 2μ·x + ||μ||²
        resid = (sq - proj.square().sum(1)).clamp_(min=0.0).sqrt_()
        return torch.cat([proj, resid[:, None]], 1), sq

    def lower_bound(self, y: torch.Tensor, y_sq: torch.Tensor, out: torch.Tensor) -> float:
        """Writes into ``out`` (len(y) × N) a lower bound of ||y_i − x_j||² up to the returned slack."""
        e, sq = self._embed(y, y_sq)
        query_side = torch.cat([e.mul_(-2.0), torch.ones_like(sq)[:, None], sq[:, None]], 1).to(self.dtype)
        # γ_{k+3} of the product plus the inputs' rounding to self.dtype, over (|y − μ| + |x − μ|)² ≥ the sum
        # of the products' magnitudes (|e(x)| = |x − μ|); 1e-6 of that covers e's float64 error (the residual
        # norm is the square root of a difference: ~1e-8 relative where it is near zero).
        scale = (float(sq.max().clamp(min=0.0).sqrt()) + self.fit_norm) ** 2
        torch.mm(query_side, self.fit_side.T, out=out)
        return (2.0 * (self.k + 6) * self.unit + 1e-6) * scale


def _lse_dense(
    y: torch.Tensor, y_sq: torch.Tensor, fit: torch.Tensor, fit_sq: torch.Tensor, coefs: list[float]
) -> torch.Tensor:
    """logsumexp_j(a·||y_i − x_j||²) over every fitted point, for each coefficient a < 0:
    (len(coefs), len(y)), from one float64 matrix product (||y||² + ||x||² − 2 y·x)."""
    d2 = torch.addmm(fit_sq[None, :], y, fit.T, alpha=-2.0).add_(y_sq[:, None]).clamp_(min=0.0)
    return torch.stack([torch.logsumexp(d2 * a, dim=1) for a in coefs])


def _lse_pruned(
    y: torch.Tensor,
    y_sq: torch.Tensor,
    fit: torch.Tensor,
    fit_sq: torch.Tensor,
    emb: _PruneEmbedding,
    coefs: list[float],
    bound: torch.Tensor,
    keep: torch.Tensor,
) -> torch.Tensor | None:
    """The same as ``_lse_dense``, to float64 rounding, over only the fitted points whose kernel can
    matter; None when too many can (the dense product is then faster).

    For each row, the exact distance to the point of smallest lower bound, d₀, is at least the
    smallest distance d_min. A point whose lower bound exceeds d₀ + 2h²·(PRUNE_NATS + log N) has a
    kernel below e^-PRUNE_NATS / N times the largest one, so all dropped points together change the
    log-density by less than e^-PRUNE_NATS ≈ 4e-18 nats. The exact distances of the kept pairs come
    from ``torch.sparse.sampled_addmm`` (one sparse-pattern product, CPU and CUDA).
    """
    slack = emb.lower_bound(y, y_sq, out=bound)
    d0 = (y - fit[bound.argmin(1)]).square_().sum(1)
    h_max_sq = -0.5 / max(coefs)  # the widest kernel keeps the most points
    margin = 2.0 * h_max_sq * (PRUNE_NATS + math.log(len(fit))) + slack
    # Rounded up, never down, when cast to the bound's dtype.
    threshold = ((d0 + margin) * (1.0 + 4.0 * emb.unit)).to(bound.dtype)
    torch.le(bound, threshold[:, None], out=keep)
    if int(torch.count_nonzero(keep)) > DENSE_SHARE * keep.numel():
        return None
    rows, cols = keep.nonzero().unbind(1)  # row-major: rows sorted, then columns
    crow = torch.searchsorted(rows, torch.arange(len(y) + 1, device=y.device), out_int32=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow, cols.int(), y_sq[rows] + fit_sq[cols], (len(y), len(fit)), check_invariants=False
        )
        d2 = torch.sparse.sampled_addmm(pattern, y, fit.T, alpha=-2.0).values().clamp_(min=0.0)
    # Per-row logsumexp over the kept pairs (CSR order): shift each row by its smallest distance.
    d2_min = torch.segment_reduce(d2, "min", offsets=crow)
    shifted = d2 - d2_min[rows]
    return torch.stack(
        [torch.segment_reduce(torch.exp(shifted * a), "sum", offsets=crow).log_() + a * d2_min for a in coefs]
    )


def _log_norm(n_fit: int, dim: int, h: torch.Tensor) -> torch.Tensor:
    # log N + (D/2) log(2π h²): the normaliser of a mixture of N isotropic Gaussians of std h.
    return math.log(n_fit) + 0.5 * dim * torch.log(2.0 * math.pi * h**2)


@torch.no_grad()
def kde_score_grid(
    fit_data, samples, bandwidths, chunk_size: int = DEFAULT_CHUNK, device: str | torch.device | None = None
) -> torch.Tensor:
    """Per-sample Gaussian-KDE log-densities of ``samples`` for every bandwidth: (len(bandwidths), M).

    ``log p_h(y) = logsumexp_i(−||y − x_i||² / (2h²)) − log N − (D/2) log(2π h²)`` in float64,
    exact to rounding (the pruning of ``_lse_pruned`` drops less than 1e-17 nats); the distances of
    each chunk of ``chunk_size`` samples are computed once and reused for every h. Both inputs are
    flattened to (N, D) and (M, D).
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    fit = _flat(fit_data, device)
    ys = _flat(samples, device)
    if fit.shape[1] != ys.shape[1]:
        raise ValueError(f"fit_data has {fit.shape[1]} features but samples have {ys.shape[1]}")
    fit_sq = torch.linalg.vector_norm(fit, dim=1).square_()
    ys_sq = torch.linalg.vector_norm(ys, dim=1).square_()
    for name, sq in (("fit_data", fit_sq), ("samples", ys_sq)):  # a NaN or inf anywhere makes its row's norm one
        if len(sq) == 0 or not bool(torch.isfinite(sq).all()):
            raise ValueError(f"{name} must be a non-empty array of finite numbers (got {len(sq)} rows, or NaN/inf)")
    h = torch.as_tensor(list(bandwidths), dtype=torch.float64, device=device).reshape(-1)
    if len(h) == 0 or bool((h <= 0).any()):
        raise ValueError(f"bandwidths must be a non-empty list of numbers > 0, got {list(bandwidths)}")
    coefs = (-0.5 / h**2).tolist()
    emb = _PruneEmbedding(fit, fit_sq)
    # Per chunk: a (rows × N) bound and mask, allocated once (fresh large buffers cost more in page
    # faults than the product that fills them). rows · N ≤ 2^25: ≤ 170 MB for them, ≤ 0.5 GB for a
    # chunk scored densely.
    rows = max(1, min(chunk_size, len(ys), (1 << 25) // len(fit)))
    bound = torch.empty(rows, len(fit), dtype=emb.dtype, device=device)
    keep = torch.empty(rows, len(fit), dtype=torch.bool, device=device)
    out = torch.empty(len(h), len(ys), dtype=torch.float64, device=device)
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(ys), rows):
            y, y_sq = ys[s : s + rows], ys_sq[s : s + rows]
            part = _lse_pruned(y, y_sq, fit, fit_sq, emb, coefs, bound[: len(y)], keep[: len(y)])
            if part is None:
                part = _lse_dense(y, y_sq, fit, fit_sq, coefs)
            out[:, s : s + len(y)] = part
    return out - _log_norm(len(fit), fit.shape[1], h)[:, None]


def kde_score_samples(
    fit_data, samples, bandwidth: float, chunk_size: int = DEFAULT_CHUNK, device: str | torch.device | None = None
) -> torch.Tensor:
    """Per-sample log-densities equal to scikit-learn's
    ``KernelDensity(kernel="gaussian", bandwidth=h).fit(fit_data).score_samples(samples)``
    (float64 tensor of shape (M,), on ``device``)."""
    return kde_score_grid(fit_data, samples, [bandwidth], chunk_size, device)[0]


def kfold_indices(n: int, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """``folds`` disjoint index sets covering range(n) after a seeded shuffle (sizes differ by at most 1)."""
    if not isinstance(folds, int) or folds < 2 or folds > n:
        raise ValueError(f"folds must be an integer in [2, {n}], got {folds!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(perm, folds))


@torch.no_grad()
def select_bandwidth(
    data,
    bandwidths,
    folds: int = 5,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
) -> tuple[float, dict[float, float]]:
    """Cross-validated grid search over ``bandwidths`` (Table 1: 5 folds over the training images).

    For each fold, a KDE is fitted on the other folds and scored on it; the score of h is the mean
    held-out log-density over all points (with equal folds, the same ranking as scikit-learn's
    GridSearchCV on KernelDensity.score); each fold scores every bandwidth from one pass over its
    distances. Returns the best h and {h: score}.
    """
    data = torch.as_tensor(data)
    data = data.reshape(len(data), -1)
    bandwidths = [float(b) for b in bandwidths]
    total = torch.zeros(len(bandwidths), dtype=torch.float64)
    for held in kfold_indices(len(data), folds, seed):
        mask = torch.ones(len(data), dtype=torch.bool)
        mask[held] = False
        total += kde_score_grid(data[mask], data[held], bandwidths, chunk_size, device).sum(1).cpu()
    scores = {h: float(s) / len(data) for h, s in zip(bandwidths, total)}
    return max(scores, key=scores.get), scores


@torch.no_grad()
def select_bandwidth_holdout(
    fit_data, valid, bandwidths, chunk_size: int = DEFAULT_CHUNK, device: str | torch.device | None = None
) -> tuple[float, dict[float, float]]:
    """The bandwidth maximising the mean log-density of ``valid`` under a KDE on ``fit_data``
    (the Parzen protocol of Goodfellow et al. 2014 and Makhzani et al. 2015, where ``valid`` is a
    validation set the model did not train on). Returns (best h, {h: score})."""
    bandwidths = [float(b) for b in bandwidths]
    means = kde_score_grid(fit_data, valid, bandwidths, chunk_size, device).mean(1).cpu()
    scores = {h: float(s) for h, s in zip(bandwidths, means)}
    return max(scores, key=scores.get), scores


# ---- the two protocols (``infocatvae.evaluate`` runs them) ---------------------------------------
def _at_edge(name: str, best: float, grid: list[float]) -> bool:
    at_edge = best in (min(grid), max(grid))
    if at_edge:
        log.warning("%s: the chosen bandwidth %.3g is at the edge of the grid %s; widen the grid", name, best, grid)
    return at_edge


def cv_bandwidth_cached(
    fit: torch.Tensor, grid: list[float], folds: int, seed: int, chunk_size: int, device, cache_dir, dataset: str
) -> tuple[float, dict[float, float], bool]:
    """``select_bandwidth``, kept in ``cache_dir`` (keyed by data set, size, folds, seed and grid; None: no
    cache): the search depends on the data only, not on the model, so every model evaluated on the same
    data reuses it. Returns (best h, {h: score}, whether it came from the cache)."""
    key = {"data": dataset, "fit_size": len(fit), "folds": folds, "seed": seed, "bandwidths": grid}
    path = None
    if cache_dir:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(cache_dir) / f"kde_cv_{dataset}_{digest}.json"
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return float(saved["best"]), {float(h): v for h, v in saved["scores"].items()}, True
        except (OSError, ValueError, KeyError):
            pass
    best, scores = select_bandwidth(fit, grid, folds=folds, seed=seed, chunk_size=chunk_size, device=device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "best": best, "scores": {str(h): v for h, v in scores.items()}}))
        os.replace(tmp, path)
    return best, scores, False


def _scored(name: str, ll_key: str, log_densities: torch.Tensor, best: float, grid: list[float]) -> dict[str, Any]:
    """The keys both protocols report: the mean log-density and its standard error, the chosen bandwidth,
    and whether it lies at the edge of its grid (logged as a warning)."""
    n = len(log_densities)
    return {
        f"{name}_{ll_key}": float(log_densities.mean()),
        f"{name}_{ll_key}_sem": float(log_densities.std() / math.sqrt(n)),
        f"{name}_bandwidth": best,
        f"{name}_bandwidth_at_edge": _at_edge(name, best, grid),
    }


@torch.no_grad()
def table1_protocol(
    train: torch.Tensor,
    samples: torch.Tensor,
    *,
    bandwidths,
    folds: int,
    fit_size: int | None,
    seed: int,
    chunk_size: int,
    cache_dir,
    dataset: str,
    device,
) -> dict[str, Any]:
    """``kde_ll`` (Table 1, the paper's protocol): a KDE on the flat training images ``train`` (all 60K,
    or a seeded draw of ``fit_size``), its bandwidth by ``folds``-fold cross-validation over them (the grid
    is ours: the paper does not give it), scored on the flat generated ``samples``."""
    t0 = time.perf_counter()
    fit = train
    if fit_size is not None:
        fit = fit[torch.randperm(len(fit), generator=torch.Generator().manual_seed(seed))[:fit_size]]
    grid = [float(b) for b in bandwidths]
    best, scores, cached = cv_bandwidth_cached(fit, grid, folds, seed, chunk_size, device, cache_dir, dataset)
    t1 = time.perf_counter()
    ll = kde_score_samples(fit, samples, best, chunk_size=chunk_size, device=device)
    return {
        **_scored("kde", "ll", ll, best, grid),
        "kde_cv_scores": {str(h): s for h, s in scores.items()},
        "kde_fit_size": len(fit),
        "kde_folds": folds,
        "kde_cv_seconds": t1 - t0,
        "kde_cv_cached": cached,
        "kde_score_seconds": time.perf_counter() - t1,
    }


@torch.no_grad()
def parzen_protocol(
    samples: torch.Tensor,
    valid: torch.Tensor,
    test: torch.Tensor,
    *,
    bandwidths,
    n_valid: int | None,
    seed: int,
    chunk_size: int,
    device,
) -> dict[str, Any]:
    """``parzen_test_ll`` (Goodfellow et al. 2014, Makhzani et al. 2015; not the paper's and not comparable
    with ``kde_ll``): a Gaussian Parzen window on the flat generated ``samples``, its bandwidth chosen on at
    most ``n_valid`` images of ``valid`` (a seeded draw), then the mean log-density of the flat ``test`` images."""
    t0 = time.perf_counter()
    valid = valid[torch.randperm(len(valid), generator=torch.Generator().manual_seed(seed))[:n_valid]]
    grid = [float(b) for b in bandwidths]
    best, scores = select_bandwidth_holdout(samples, valid, grid, chunk_size=chunk_size, device=device)
    ll = kde_score_samples(samples, test, best, chunk_size=chunk_size, device=device)
    return {
        **_scored("parzen", "test_ll", ll, best, grid),
        "parzen_valid_scores": {str(h): s for h, s in scores.items()},
        "parzen_n_valid": len(valid),
        "parzen_seconds": time.perf_counter() - t0,
    }
