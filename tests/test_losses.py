"""The maths of the objectives: eq. (5) terms, eq. (8) prior, the marginal reconstruction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infocatvae import losses
from infocatvae.nets import CategoricalHeads
from infocatvae.priors import MixturePrior, block_means


def test_kl_cat_is_log_k_minus_entropy():
    logits = torch.randn(64, 7)
    q = logits.softmax(-1)
    entropy = -(q * q.log()).sum(-1)
    torch.testing.assert_close(losses.kl_cat(logits), math.log(7) - entropy)
    # and it is the KL to the uniform distribution, computed independently
    uniform = torch.full_like(q, 1 / 7)
    torch.testing.assert_close(losses.kl_cat(logits), F.kl_div(uniform.log(), q, reduction="none").sum(-1))


def test_kl_cat_is_zero_at_uniform_and_log_k_at_one_hot():
    assert losses.kl_cat(torch.zeros(3, 10)).abs().max() < 1e-6
    assert losses.kl_cat(torch.tensor([[1e4, 0.0, 0.0, 0.0]])).item() == pytest.approx(math.log(4), abs=1e-4)


def test_kl_cont_agrees_with_monte_carlo():
    torch.manual_seed(0)
    B, K, d = 4, 3, 6
    q_c = torch.randn(B, K).softmax(-1)
    mu, logvar = torch.randn(B, K, d), 0.5 * torch.randn(B, K, d)
    prior = block_means(K, 2, 2.0)
    closed = losses.kl_cont(q_c, mu, logvar, prior)
    n = 200_000
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(n, B, K, d)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(prior, torch.ones_like(prior)).log_prob(z).sum(-1)
    mc = (q_c * (log_q - log_p).mean(0)).sum(-1)
    torch.testing.assert_close(closed, mc, rtol=0.02, atol=0.02)


def test_gaussian_kl_with_learned_prior_variance_matches_torch():
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    pm, plv = torch.randn(5, 4), torch.randn(5, 4)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(pm, (0.5 * plv).exp())
    ).sum(-1)
    torch.testing.assert_close(losses.gaussian_kl(mu, logvar, pm, plv), ref)


@pytest.mark.parametrize("K,delta,lam", [(10, 2, 2.0), (3, 4, 0.5), (1, 1, 7.0)])
def test_prior_means_follow_eq_8(K, delta, lam):
    means = MixturePrior(K, delta, lam).means
    assert means.shape == (K, K * delta)
    for c in range(K):
        for j in range(K * delta):
            assert means[c, j].item() == (lam if c * delta <= j < (c + 1) * delta else 0.0)
    # rows are mutually orthogonal (section 7)
    gram = means @ means.t()
    torch.testing.assert_close(gram, torch.eye(K) * lam**2 * delta)


def test_reconstruction_bernoulli_and_gaussian_sum_over_pixels():
    x = torch.rand(3, 784)
    x_hat = torch.rand(3, 784).clamp(0.01, 0.99)
    bce = -(x * x_hat.log() + (1 - x) * (1 - x_hat).log()).sum(-1)
    torch.testing.assert_close(losses.reconstruction(x_hat, x, "bernoulli"), bce)
    torch.testing.assert_close(losses.reconstruction(x_hat, x, "gaussian"), ((x_hat - x) ** 2).sum(-1))
    with pytest.raises(ValueError, match="model.likelihood must be one of"):
        losses.reconstruction(x_hat, x, "poisson")


def test_heads_equal_a_linear_layer_on_h_and_onehot_c():
    """All K categories in one call equal K separate calls of Qµ on [h, onehot(c)] (Table 2)."""
    heads = CategoricalHeads(in_dim=16, K=5, d=4)
    h = torch.randn(8, 16)
    mu, logvar = heads.gaussian(h)
    for c in range(5):
        hc = torch.cat([h, F.one_hot(torch.full((8,), c), 5).float()], -1)
        torch.testing.assert_close(mu[:, c], heads.mu(hc))
        torch.testing.assert_close(logvar[:, c], heads.logvar(hc))
