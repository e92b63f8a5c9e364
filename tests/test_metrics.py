"""The kernel density estimates of Table 1 against scikit-learn, the bandwidth search, and the
clustering accuracy mappings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

from infocatvae import kde, metrics
from infocatvae.data import load_split


@pytest.fixture(scope="module")
def mnist_slice(data_dir):
    x, _ = load_split(data_dir, "mnist", train=True)
    return x[:600].reshape(600, -1).double() / 255.0


def brute_force_kde(fit: np.ndarray, samples: np.ndarray, h: float) -> np.ndarray:
    d2 = ((samples[:, None, :] - fit[None]) ** 2).sum(-1)
    return logsumexp(-d2 / (2 * h * h), axis=1) - np.log(len(fit)) - fit.shape[1] / 2 * np.log(2 * np.pi * h * h)


@pytest.mark.parametrize("bandwidth", [0.1, 0.3, 1.0, 3.0])
def test_kde_matches_sklearn_on_gaussian_data(bandwidth):
    rng = np.random.default_rng(1)
    fit, samples = rng.normal(size=(300, 2)), rng.normal(size=(50, 2)) * 1.5
    ref = KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(fit).score_samples(samples)
    ours = kde.kde_score_samples(fit, samples, bandwidth, chunk_size=16)
    assert ours.dtype == torch.float64 and ours.shape == (50,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("bandwidth", [0.05, 0.3, 1.0])
def test_kde_exact_where_every_kernel_underflows(bandwidth):
    """7-D points far from every fit point: at small h every exp(−d²/2h²) underflows in float64.
    scikit-learn's tree then returns values off by up to hundreds of nats (0.05: ~800, 0.3: ~45);
    the shifted logsumexp here stays equal to a brute-force float64 logsumexp."""
    rng = np.random.default_rng(1)
    fit, samples = rng.normal(size=(300, 7)), rng.normal(size=(50, 7)) * 1.5
    ours = kde.kde_score_samples(fit, samples, bandwidth, chunk_size=16).numpy()
    np.testing.assert_allclose(ours, brute_force_kde(fit, samples, bandwidth), rtol=1e-6)


@pytest.mark.parametrize("bandwidth", [0.1, 0.2, 0.3])
def test_kde_matches_sklearn_on_mnist_pixels(mnist_slice, bandwidth):
    """784-dimensional pixels in [0, 1], the Table 1 setting. scikit-learn is the reference for
    samples near the fit points (noisy copies, where its tree is exact); a brute-force float64
    logsumexp for held-out images, where scikit-learn's tree is not (see the test above)."""
    fit = mnist_slice[:500]
    near = (fit[:40] + 0.01 * torch.randn(40, 784, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ref = KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(fit.numpy()).score_samples(near.numpy())
    ours = kde.kde_score_samples(fit.float(), near.float(), bandwidth, chunk_size=7).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    held_out = mnist_slice[500:540]
    ours = kde.kde_score_grid(fit, held_out, [bandwidth, 2 * bandwidth], chunk_size=16)
    np.testing.assert_allclose(ours[0].numpy(), brute_force_kde(fit.numpy(), held_out.numpy(), bandwidth), rtol=1e-6)
    np.testing.assert_allclose(
        ours[1].numpy(), brute_force_kde(fit.numpy(), held_out.numpy(), 2 * bandwidth), rtol=1e-6
    )


def test_kde_rejects_bad_input():
    with pytest.raises(ValueError, match="features"):
        kde.kde_score_samples(torch.zeros(5, 3), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="bandwidths"):
        kde.kde_score_samples(torch.zeros(5, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="samples must be .* finite"):
        kde.kde_score_samples(torch.zeros(5, 3), torch.tensor([[0.0, float("nan"), 1.0]]), 0.1)
    with pytest.raises(ValueError, match="fit_data must be .* finite"):
        kde.kde_score_samples(torch.full((5, 3), float("inf")), torch.zeros(2, 3), 0.1)


def test_kde_pruning_is_exact_and_prunes(mnist_slice, monkeypatch):
    """Table 1's regime (held-out MNIST images, h ≤ 0.3): the pruned path drops most pairs and still
    equals a brute-force float64 logsumexp for every bandwidth of one call; a bandwidth so wide that
    every pair counts goes through the dense product, equally exact."""
    fit, held_out = mnist_slice[:500], mnist_slice[500:560]
    kept, dense_calls = [], []
    sampled = torch.sparse.sampled_addmm
    monkeypatch.setattr(
        torch.sparse, "sampled_addmm", lambda p, *a, **k: kept.append(p.values().numel()) or sampled(p, *a, **k)
    )
    dense = kde._lse_dense
    monkeypatch.setattr(kde, "_lse_dense", lambda *a: dense_calls.append(1) or dense(*a))
    grid = [0.1, 0.2, 0.3]
    ours = kde.kde_score_grid(fit, held_out, grid, chunk_size=16)
    for row, h in zip(ours, grid):
        np.testing.assert_allclose(row.numpy(), brute_force_kde(fit.numpy(), held_out.numpy(), h), rtol=1e-9)
    assert not dense_calls and sum(kept) < 0.05 * len(fit) * len(held_out)
    wide = kde.kde_score_samples(fit, held_out, 3.0, chunk_size=16)
    np.testing.assert_allclose(wide.numpy(), brute_force_kde(fit.numpy(), held_out.numpy(), 3.0), rtol=1e-9)
    assert dense_calls


@pytest.mark.parametrize("matmul_precision, dtype", [("highest", torch.float32), ("high", torch.float64)])
def test_prune_bound_is_a_lower_bound(mnist_slice, matmul_precision, dtype):
    """The bound minus its slack never exceeds a squared distance, on MNIST pixels and on points of a
    10-D subspace of R^30 far from the origin (large norms: float32 rounding at its worst), where a
    16-D basis spans the data and the bound must be exact up to its slack. Where float32 products
    may be TF32/bf16, the bound is computed in float64."""
    rng = np.random.default_rng(0)
    subspace = torch.as_tensor(rng.normal(size=(400, 10)) @ rng.normal(size=(10, 30)) + 50.0)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        for data, tight in ((mnist_slice[:400], False), (subspace, True)):
            fit, ys = data[:300], data[300:]
            emb = kde._PruneEmbedding(fit, fit.square().sum(1), dims=16)
            assert emb.dtype == dtype
            bound = torch.empty(len(ys), len(fit), dtype=dtype)
            slack = emb.lower_bound(ys, ys.square().sum(1), out=bound)
            gap = torch.cdist(ys, fit).square() - (bound.double() - slack)
            assert float(gap.min()) >= 0.0
            if tight:
                assert float(gap.max()) <= 2 * slack
            else:
                assert float(bound.double().mean()) > 0.5 * float((gap + bound.double() - slack).mean())
    finally:
        torch.set_float32_matmul_precision(previous)


def test_kde_leaves_the_global_rng_alone(mnist_slice):
    state = torch.get_rng_state()
    kde.kde_score_samples(mnist_slice[:200], mnist_slice[200:220], 0.2)
    assert torch.equal(torch.get_rng_state(), state)


def mixture(n_per: int, seed: int = 0) -> np.ndarray:
    """Three well-separated 2-D Gaussians of unit variance."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    return np.concatenate([c + rng.normal(size=(n_per, 2)) for c in centres])


def test_select_bandwidth_recovers_known_bandwidth():
    """On a mixture of unit Gaussians with 400 points each, the likelihood-optimal bandwidth is near
    Scott's rule for one component, 400^(-1/6) ≈ 0.37; far smaller or larger values must lose."""
    data = mixture(400)
    grid = [0.03, 0.1, 0.37, 1.5, 5.0]
    best, scores = kde.select_bandwidth(data, grid, folds=5, seed=0)
    assert best == 0.37
    assert scores[0.37] > scores[0.1] > scores[0.03] and scores[0.37] > scores[1.5] > scores[5.0]


def test_select_bandwidth_agrees_with_sklearn_gridsearch():
    """Same folds, same scores as GridSearchCV(KernelDensity) (its score is a fold's total log-likelihood)."""
    data = mixture(100, seed=3)
    grid = [0.5, 0.8, 1.6, 3.2]
    folds = kde.kfold_indices(len(data), 5, seed=0)
    cv = [(np.setdiff1d(np.arange(len(data)), f.numpy()), f.numpy()) for f in folds]
    search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": grid}, cv=cv).fit(data)
    best, scores = kde.select_bandwidth(data, grid, folds=5, seed=0)
    assert best == search.best_params_["bandwidth"]
    ref = search.cv_results_["mean_test_score"] * 5 / len(data)  # equal folds: mean of totals → per point
    np.testing.assert_allclose([scores[h] for h in grid], ref, rtol=1e-6)


def test_holdout_bandwidth_prefers_the_generating_scale():
    rng = np.random.default_rng(0)
    fit, valid = rng.normal(size=(2000, 1)), rng.normal(size=(2000, 1))
    best, scores = kde.select_bandwidth_holdout(fit, valid, [0.01, 0.3, 10.0])
    assert best == 0.3 and len(scores) == 3


def test_kfold_indices_partition():
    folds = kde.kfold_indices(23, 5, seed=1)
    assert sorted(torch.cat(folds).tolist()) == list(range(23))
    assert {len(f) for f in folds} <= {4, 5}
    with pytest.raises(ValueError):
        kde.kfold_indices(3, 5)


def plain_kde(fit: torch.Tensor, samples: torch.Tensor, h: float) -> torch.Tensor:
    """Per-sample Gaussian-KDE log-densities, one sample at a time in float64: the log-mean-exp of the kernels
    minus the normaliser (D/2) log(2π h²)."""
    fit, samples = fit.double(), samples.double()
    d2 = torch.stack([(fit - y).square().sum(1) for y in samples])
    return torch.logsumexp(-d2 / (2 * h * h), 1) - np.log(len(fit)) - fit.shape[1] / 2 * np.log(2 * np.pi * h * h)


def test_table1_protocol_scores_the_samples_under_a_kde_of_the_training_images(data_dir):
    """``kde_ll``: the mean log-density of the generated samples (here: real test images) under a Gaussian KDE
    fitted on the training images, at the bandwidth of best cross-validated log-density over them; the CV
    scores, the choice and the standard error against the plain KDE above."""
    train = load_split(data_dir, "mnist", train=True)[0][:450].reshape(450, -1).double() / 255
    samples = load_split(data_dir, "mnist", train=False)[0][:40].reshape(40, -1).double() / 255
    grid, folds = [0.1, 0.2, 0.4], 3
    out = kde.table1_protocol(
        train,
        samples,
        bandwidths=grid,
        folds=folds,
        fit_size=None,
        seed=0,
        chunk_size=16,
        cache_dir=None,
        dataset="mnist",
        device="cpu",
    )
    # k-fold CV over the training images: each fold scored under a KDE of the others, the mean over all images
    cv = {}
    for h in grid:
        held_ll = []
        for held in kde.kfold_indices(len(train), folds, seed=0):
            rest = torch.ones(len(train), dtype=torch.bool)
            rest[held] = False
            held_ll.append(plain_kde(train[rest], train[held], h))
        cv[h] = float(torch.cat(held_ll).mean())
    assert out["kde_cv_scores"].keys() == {str(h) for h in grid}
    for h in grid:
        assert out["kde_cv_scores"][str(h)] == pytest.approx(cv[h], rel=1e-9), h
    best = max(cv, key=cv.get)
    assert out["kde_bandwidth"] == best and not out["kde_bandwidth_at_edge"]  # premise: a choice inside the grid
    ref = plain_kde(train, samples, best)
    assert out["kde_ll"] == pytest.approx(float(ref.mean()), rel=1e-9)
    assert out["kde_ll_sem"] == pytest.approx(float(ref.std() / np.sqrt(len(ref))), rel=1e-9)
    # the other bandwidths would give other values: the comparison above tells them apart
    assert all(abs(float(plain_kde(train, samples, h).mean()) - out["kde_ll"]) > 1 for h in grid if h != best)
    assert (out["kde_fit_size"], out["kde_folds"], out["kde_cv_cached"]) == (len(train), folds, False)


def test_kde_bandwidth_search_is_cached_by_its_settings(mnist_slice, tmp_path, monkeypatch):
    """``cv_bandwidth_cached`` keeps the search in its cache folder: the same settings read it back (no search), a
    change of any setting it is keyed by (folds, seed, grid, data set, fit size) searches again."""
    searched = []
    select = kde.select_bandwidth
    monkeypatch.setattr(kde, "select_bandwidth", lambda *a, **k: searched.append(1) or select(*a, **k))
    fit, grid = mnist_slice[:240], [0.1, 0.2, 0.4]
    settings = {"grid": grid, "folds": 3, "seed": 0, "dataset": "mnist"}
    cache = tmp_path / "cache"

    def search(fit=fit, **changed):
        return kde.cv_bandwidth_cached(fit, chunk_size=64, device="cpu", cache_dir=cache, **{**settings, **changed})

    best, scores, cached = search()
    assert not cached and len(searched) == 1 and len(list(cache.iterdir())) == 1
    assert (best, scores) == select(fit, grid, folds=3, seed=0, chunk_size=64)
    assert search() == (best, scores, True) and len(searched) == 1  # read back, not searched
    for changed in ({"folds": 4}, {"seed": 1}, {"grid": [0.1, 0.2]}, {"dataset": "fashion_mnist"}, {"fit": fit[:200]}):
        n = len(searched)
        other = search(**changed)
        assert not other[2] and len(searched) == n + 1, changed  # a miss: searched for these settings
        assert search(**changed) == (*other[:2], True), changed  # and kept beside the first
    assert search(folds=4)[:2] == select(fit, grid, folds=4, seed=0, chunk_size=64)
    assert search() == (best, scores, True)


# ---- clustering -----------------------------------------------------------------------------


def test_cluster_acc_is_one_for_a_permuted_perfect_labelling():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 1000)
    perm = rng.permutation(10)
    acc, mapping = metrics.cluster_acc(true, perm[true], K=10)
    assert acc == 1.0 and mapping == "hungarian"
    scores = metrics.clustering_scores(true, perm[true], K=10)
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)


def test_category_usage_and_its_perplexity():
    """Shares per category (unused ones 0) and exp(entropy), against scipy's entropy; K for equal use, 1 for one
    category, and a category never predicted counts for nothing."""
    from scipy.stats import entropy

    pred = np.array([0] * 50 + [1] * 30 + [3] * 20)  # category 2 of 4 unused
    usage = metrics.category_usage(pred, K=4)
    np.testing.assert_allclose(usage, [0.5, 0.3, 0.0, 0.2])
    assert metrics.usage_perplexity(usage) == pytest.approx(np.exp(entropy([0.5, 0.3, 0.2])))
    assert metrics.usage_perplexity(metrics.category_usage(np.arange(1000) % 10, K=10)) == pytest.approx(10.0)
    assert metrics.usage_perplexity(metrics.category_usage(np.full(7, 3), K=10)) == pytest.approx(1.0)
    # in the clustering scores: K counts unused categories too (the largest index + 1 by default)
    true = np.array([0] * 50 + [1] * 50)
    scores = metrics.clustering_scores(true, pred, K=4)
    assert scores["usage_perplexity"] == pytest.approx(np.exp(entropy(usage[usage > 0])))


def test_cluster_acc_of_a_constructed_confusion():
    # labels 0,1,2 with 10 points each; cluster 2 holds all of label 0, cluster 0 holds 7 of
    # label 1 and 4 of label 2, cluster 1 the rest (3 of label 1, 6 of label 2).
    true = np.array([0] * 10 + [1] * 10 + [2] * 10)
    pred = np.array([2] * 10 + [0] * 7 + [1] * 3 + [0] * 4 + [1] * 6)
    # best one-to-one: 2→0 (10), 0→1 (7), 1→2 (6) = 23/30; greedy per-cluster majority would also give 23
    acc, mapping = metrics.cluster_acc(true, pred, K=3)
    assert acc == pytest.approx(23 / 30) and mapping == "hungarian"
    # a confusion where one-to-one differs from majority: both clusters prefer label 0
    true2 = np.array([0] * 6 + [1] * 4 + [0] * 5 + [1] * 1)
    pred2 = np.array([0] * 6 + [0] * 4 + [1] * 5 + [1] * 1)
    assert metrics.cluster_acc(true2, pred2, K=2)[0] == pytest.approx(max(6 + 1, 4 + 5) / 16)


def test_hungarian_also_when_K_is_below_the_number_of_labels():
    """K < number of labels maps one-to-one too (not only K equal to it): with 2 clusters and 3 labels,
    where both clusters' majority is label 0, the Hungarian mapping (0→1, 1→0: 4 + 5) gives 9/16, not
    the majority vote's 11/16."""
    true = np.array([0] * 6 + [1] * 4 + [0] * 5 + [2] * 1)
    pred = np.array([0] * 10 + [1] * 6)
    acc, mapping = metrics.cluster_acc(true, pred, K=2)
    assert mapping == "hungarian" and acc == pytest.approx(9 / 16)


def test_many_to_one_when_K_exceeds_labels():
    true = np.array([0] * 10 + [1] * 10)
    pred = np.array([0] * 5 + [1] * 5 + [2] * 8 + [3] * 2 + [])  # clusters 0,1 → 0; 2 → 1; 3 → 1
    acc, mapping = metrics.cluster_acc(true, pred, K=4)
    assert mapping == "majority" and acc == 1.0
    pred_noisy = pred.copy()
    pred_noisy[[0, 10]] = [2, 0]  # one label-0 point into cluster 2, one label-1 point into cluster 0
    acc, _ = metrics.cluster_acc(true, pred_noisy, K=4)
    # cluster 0: {0×4, 1×1} → 4; cluster 1: 5; cluster 2: {0×1, 1×7} → 7; cluster 3: 2
    assert acc == pytest.approx(18 / 20)
    assert metrics.clustering_scores(true, pred_noisy, K=4)["cluster_acc_mapping"] == "majority"
