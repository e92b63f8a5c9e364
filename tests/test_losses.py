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
    means = MixturePrior(K, delta, lam, learn_means=False, learn_logvar=False, init="block").means
    assert means.shape == (K, K * delta)
    for c in range(K):
        for j in range(K * delta):
            assert means[c, j].item() == (lam if c * delta <= j < (c + 1) * delta else 0.0)
    # rows are mutually orthogonal (section 7)
    gram = means @ means.t()
    torch.testing.assert_close(gram, torch.eye(K) * lam**2 * delta)


def test_reconstruction_from_logits_equals_the_sigmoid_formulation():
    """The logits loss gives the values of the former formulation (sigmoid, then binary
    cross-entropy on probabilities) within float tolerance, and stays finite where a float32
    sigmoid rounds to exactly 0 or 1."""
    torch.manual_seed(0)
    x = torch.rand(3, 784)
    logits = torch.randn(3, 784) * 3
    p = torch.sigmoid(logits.double())
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1)  # float64 reference
    torch.testing.assert_close(losses.reconstruction(logits, x, "bernoulli").double(), bce, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(
        losses.reconstruction(logits, x, "bernoulli"),
        F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1),
        rtol=1e-4,
        atol=1e-2,
    )
    far = torch.full((1, 784), 40.0)  # sigmoid(40) == 1.0 in float32: log(1 - p) = -inf, clamped at -100 before
    value = losses.reconstruction(far, torch.zeros(1, 784), "bernoulli")
    assert torch.isfinite(value).all() and value.item() == pytest.approx(784 * 40.0, rel=1e-6)
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        losses.reconstruction(logits, x, "poisson")


def test_bernoulli_reconstruction_has_the_values_and_gradients_of_torchs_bce_with_logits():
    """The written-out Bernoulli loss (losses._BernoulliNLL) against torch's
    ``binary_cross_entropy_with_logits`` summed over the pixels: values and gradients for logits and
    targets, with the targets broadcast over the K decoder passes as the marginal reconstruction does,
    logits far in both tails included; and its gradient against finite differences in float64."""
    torch.manual_seed(0)
    logits = torch.randn(4, 10, 784) * 4
    logits[0, 0, :4] = torch.tensor([40.0, -40.0, 100.0, -100.0])  # e^-|l| below float32's 1 + 2^-24
    x = torch.rand(4, 1, 784)
    x[0, 0, :4] = torch.tensor([0.0, 1.0, 0.5, 0.25])

    def value_and_grads(fn):
        lg, xg = logits.clone().requires_grad_(), x.clone().requires_grad_()
        value = fn(lg, xg)
        (value * torch.linspace(0.5, 2.0, value.numel()).view_as(value)).sum().backward()
        return value, lg.grad, xg.grad

    ours = value_and_grads(lambda lg, xg: losses.reconstruction(lg, xg, "bernoulli"))
    ref = value_and_grads(
        lambda lg, xg: F.binary_cross_entropy_with_logits(lg, xg.expand_as(lg), reduction="none").sum(-1)
    )
    assert ours[0].shape == (4, 10) and ours[2].shape == x.shape
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-5, atol=1e-4)
    assert ours[0][0, 0] > 0 and torch.isfinite(ours[1]).all()

    small_l = (torch.randn(2, 3, 5, dtype=torch.float64) * 3).requires_grad_()
    small_x = torch.rand(2, 3, 5, dtype=torch.float64).requires_grad_()
    # the Function itself (reconstruction() computes in float32)
    assert torch.autograd.gradcheck(losses._BernoulliNLL.apply, (small_l, small_x))


def test_gaussian_reconstruction_is_the_sum_over_steps_of_each_steps_mean_squared_error():
    """Appendix C: "the sum of the mean squared error of each time step" (28 steps of 28 values)."""
    torch.manual_seed(0)
    x = torch.rand(2, 28, 28)
    logits = torch.randn(2, 784)
    pixels = torch.sigmoid(logits).view(2, 28, 28)
    expected = torch.stack([sum(F.mse_loss(pixels[b, t], x[b, t]) for t in range(28)) for b in range(2)])
    torch.testing.assert_close(losses.reconstruction(logits, x.flatten(1), "gaussian"), expected)
    # 28 times lighter than the sum of all 784 squared errors
    torch.testing.assert_close(
        losses.reconstruction(logits, x.flatten(1), "gaussian") * 28, ((pixels - x) ** 2).flatten(1).sum(-1)
    )


def test_heads_equal_a_linear_layer_on_h_and_onehot_c():
    """All K categories in one call equal K separate calls of Qµ on [h, onehot(c)] (Table 2)."""
    heads = CategoricalHeads(in_dim=16, K=5, d=4)
    h = torch.randn(8, 16)
    mu, logvar = heads.gaussian(h)
    for c in range(5):
        hc = torch.cat([h, F.one_hot(torch.full((8,), c), 5).float()], -1)
        torch.testing.assert_close(mu[:, c], heads.mu(hc))
        torch.testing.assert_close(logvar[:, c], heads.logvar(hc))


def test_kl_marginal_is_log_k_for_one_category_and_zero_for_a_balanced_batch():
    """KL(q̄(c) ‖ uniform), q̄ the batch mean of q(c|x): log K when every sample is (one-hot) in the
    same category, 0 when the one-hots cover the categories evenly, although every sample's own
    kl_cat is log K in both batches."""
    K = 5
    same = torch.full((8, K), -1e4)
    same[:, 2] = 1e4
    assert losses.kl_marginal(same).item() == pytest.approx(math.log(K), abs=1e-5)
    balanced = torch.full((2 * K, K), -1e4)
    balanced[torch.arange(2 * K), torch.arange(2 * K) % K] = 1e4
    assert losses.kl_marginal(balanced).abs().item() < 1e-6
    torch.testing.assert_close(losses.kl_cat(balanced), torch.full((2 * K,), math.log(K)))
    # uniform q(c|x) everywhere: 0 as well; a scalar, in float32 from bf16 logits
    value = losses.kl_marginal(torch.zeros(4, K, dtype=torch.bfloat16))
    assert value.dim() == 0 and value.dtype == torch.float32 and value.abs().item() < 1e-6


def test_kl_marginal_value_and_gradient_match_an_independent_formula():
    torch.manual_seed(0)
    B, K = 16, 7
    logits = (3 * torch.randn(B, K, dtype=torch.float64)).requires_grad_()
    value = losses.kl_marginal(logits)
    (grad,) = torch.autograd.grad(value, logits)
    # reference: float64 softmax, mean over the batch, KL to the uniform with torch's kl_div
    ref_logits = logits.detach().clone().requires_grad_()
    qbar = ref_logits.softmax(-1).mean(0)
    ref = F.kl_div(torch.full_like(qbar, -math.log(K)), qbar, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(value.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    # and the closed form: d/dlogits[b, j] = q[b, j] (log q̄_j − Σ_k q[b, k] log q̄_k) / B
    q = logits.detach().softmax(-1)
    log_qbar = q.mean(0).log()
    closed = q * (log_qbar - (q * log_qbar).sum(-1, keepdim=True)) / B
    torch.testing.assert_close(grad.double(), closed, rtol=1e-4, atol=1e-7)


def test_kl_marginal_gradient_is_finite_where_a_category_is_empty():
    logits = torch.full((4, 3), -1e4)
    logits[:, 0] = 1e4  # q̄ = (1, 0, 0) in float32: log 0 in a naive formula
    logits.requires_grad_()
    value = losses.kl_marginal(logits)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
