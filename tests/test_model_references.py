"""The models' computations against independent references on real MNIST: explicit loops over the K categories,
one decoder call per category, ``F.binary_cross_entropy_with_logits`` and ``torch.distributions``, in float32 with
the models in eval mode (no dropout) and the random draws reproduced from the same seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Normal, kl_divergence

from infocatvae.data import load_split
from tests.helpers import make_model

N_IMAGES = 32
SEED = 1234


@pytest.fixture(scope="module")
def x(data_dir) -> torch.Tensor:
    """32 real MNIST test images, (32, 1, 28, 28) float32 in [0, 1]."""
    images, _ = load_split(data_dir, "mnist", train=False)
    return images[:N_IMAGES].float().div(255.0).reshape(-1, 1, 28, 28)


def catvae(overrides: str = "") -> torch.nn.Module:
    """A CatVAE from the config (K = 10, delta = 2, lam = 2), eval mode, its classifier sharpened (weights x 20)
    so that q(c|x) is far from uniform and a wrong weighting of the K categories shows in the values."""
    torch.manual_seed(0)
    m = make_model(f"model=catvae {overrides}").eval()
    with torch.no_grad():
        m.heads.classifier.weight.mul_(20.0)
    return m


def hand_prior_means(K: int, delta: int, lam: float) -> torch.Tensor:
    """Eq. (8), written out: prior_means[c, j] = lam on the block c*delta <= j < (c+1)*delta, else 0."""
    prior_means = torch.zeros(K, K * delta)
    for c in range(K):
        for j in range(c * delta, (c + 1) * delta):
            prior_means[c, j] = lam
    return prior_means


def reference_posterior(m, x: torch.Tensor):
    """q(c|x) and, by one head call per category on [h, onehot(c)] (Table 2), mu and logvar of q(z|x, c): [B, K, d]."""
    h = m.encoder(x)
    q_c = torch.softmax(h @ m.heads.classifier.weight.t() + m.heads.classifier.bias, dim=-1)
    mus, logvars = [], []
    for c in range(m.K):
        onehot = torch.zeros(len(x), m.K)
        onehot[:, c] = 1.0
        hc = torch.cat([h, onehot], dim=-1)
        mus.append(hc @ m.heads.mu.weight.t() + m.heads.mu.bias)
        logvars.append(hc @ m.heads.logvar.weight.t() + m.heads.logvar.bias)
    return h, q_c, torch.stack(mus, 1), torch.stack(logvars, 1)


def bce_sum(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) of the Bernoulli decoder: torch's BCE with logits, summed over the 784 pixels."""
    return F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(-1)


def reference_marginal_recon(m, x: torch.Tensor, q_c, mu, logvar) -> torch.Tensor:
    """sum_c q(c|x) * BCE(x, decoder(z_c)), z_c = mu_c + eps_c * std_c, eps drawn as the model draws it (one
    [B, K, d] standard normal, row-major, after seeding); K separate decoder calls."""
    torch.manual_seed(SEED)
    eps = torch.randn(len(x), m.K, m.d)
    rec = torch.zeros(len(x))
    for c in range(m.K):
        z_c = mu[:, c] + eps[:, c] * torch.exp(0.5 * logvar[:, c])
        rec = rec + q_c[:, c] * bce_sum(m.decoder(z_c), x)
    return rec


def test_marginal_reconstruction_matches_k_decoder_calls(x):
    """Reference: K separate decoder calls on z_c ~ q(z|x,c), each F.binary_cross_entropy_with_logits summed over
    pixels, weighted by softmax q(c|x) and summed over c."""
    m = catvae()
    with torch.no_grad():
        _, q_c, mu, logvar = reference_posterior(m, x)
        assert q_c.max(-1).values.mean() > 0.25  # the sharpened classifier: far from uniform (1/K = 0.1)
        ref = reference_marginal_recon(m, x, q_c, mu, logvar)
        torch.manual_seed(SEED)
        got = m.per_sample_terms(x)["recon"]
    assert got.shape == (N_IMAGES,) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)


def test_soft_reconstruction_matches_heads_fed_with_q_c(x):
    """Reference (the authors' code): one z ~ N(mu_s, exp(logvar_s)) from the heads fed [h, q(c|x)], written as
    W_h h + W_c q + b and equal, by linearity, to sum_c q(c|x) mu(x, c); one decoder call, BCE summed."""
    m = catvae("model.recon=soft")
    with torch.no_grad():
        h, q_c, mu, logvar = reference_posterior(m, x)
        in_dim = h.shape[-1]
        W, b = m.heads.mu.weight, m.heads.mu.bias
        mu_s = h @ W[:, :in_dim].t() + q_c @ W[:, in_dim:].t() + b
        W, b = m.heads.logvar.weight, m.heads.logvar.bias
        logvar_s = h @ W[:, :in_dim].t() + q_c @ W[:, in_dim:].t() + b
        # a convex combination of one-hots through a linear layer: the q(c|x)-mixture of the K category heads
        torch.testing.assert_close(mu_s, (q_c.unsqueeze(-1) * mu).sum(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logvar_s, (q_c.unsqueeze(-1) * logvar).sum(1), rtol=1e-5, atol=1e-5)
        torch.manual_seed(SEED)
        z = mu_s + torch.randn(len(x), m.d) * torch.exp(0.5 * logvar_s)
        ref = bce_sum(m.decoder(z), x)
        torch.manual_seed(SEED)
        got = m.per_sample_terms(x)["recon"]
        torch.manual_seed(SEED)
        marginal = m.per_sample_terms(x, recon="marginal")["recon"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
    assert (got - marginal).abs().max() > 1.0  # the two reconstructions are different estimators


@pytest.mark.parametrize("recon", ["marginal", "soft"])
def test_elbo_matches_torch_distributions(x, recon):
    """Reference (eq. 14, unit weights, exact expectation over c, one z_c per category): -(sum_c q(c|x) BCE +
    KL(Categorical(q) || Categorical(1/K)) + sum_c q(c|x) KL(Normal(mu_c, std_c) || Normal(prior_means[c], 1)));
    whatever ``recon`` the model trains with, the ELBO uses the marginal reconstruction."""
    m = catvae(f"model.recon={recon}")
    with torch.no_grad():
        _, q_c, mu, logvar = reference_posterior(m, x)
        rec = reference_marginal_recon(m, x, q_c, mu, logvar)
        uniform = torch.full((m.K,), 1.0 / m.K)
        kl_cat = kl_divergence(Categorical(probs=q_c), Categorical(probs=uniform))
        prior_means = hand_prior_means(m.K, 2, 2.0)
        torch.testing.assert_close(m.prior_means, prior_means, rtol=0, atol=0)
        kl_cont = torch.zeros(len(x))
        for c in range(m.K):
            q_z = Normal(mu[:, c], torch.exp(0.5 * logvar[:, c]))
            p_z = Normal(prior_means[c].expand_as(mu[:, c]), torch.ones_like(mu[:, c]))
            kl_cont = kl_cont + q_c[:, c] * kl_divergence(q_z, p_z).sum(-1)
        ref = -(rec + kl_cat + kl_cont)
        torch.manual_seed(SEED)
        got = m.elbo(x)
        torch.manual_seed(SEED)
        terms = m.per_sample_terms(x, recon="marginal")
        torch.manual_seed(SEED)
        losses = m.losses(x)
    assert kl_cat.mean() > 0.3 and kl_cont.mean() > 1.0  # both KL terms weigh in the value
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms["kl_cat"], kl_cat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["kl_cont"], kl_cont, rtol=1e-5, atol=1e-4)
    if recon == "marginal":  # the training loss: batch means, beta_cat = beta_cont = 10
        expected = rec.mean() + 10.0 * kl_cat.mean() + 10.0 * kl_cont.mean()
        torch.testing.assert_close(losses["loss"], expected, rtol=1e-5, atol=1e-3)


def test_embed_is_the_mean_of_the_most_likely_category(x):
    """Reference: per image, argmax_c q(c|x) by hand and the head mu on [h, onehot(that c)], one image at a time."""
    m = catvae()
    with torch.no_grad():
        h, q_c, _, _ = reference_posterior(m, x)
        ref = []
        for i in range(len(x)):
            c_star = max(range(m.K), key=lambda c: q_c[i, c].item())
            onehot = torch.zeros(m.K)
            onehot[c_star] = 1.0
            ref.append(m.heads.mu(torch.cat([h[i], onehot])))
        ref = torch.stack(ref)
        got = m.embed(x)
    assert len(set(q_c.argmax(-1).tolist())) > 1  # several categories chosen: a wrong pick shows
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def aae(K: int, x: torch.Tensor):
    """An AAE (K = 1, or the clustering AAE), eval mode, its discriminators first trained a few steps with a
    hand-written loss on this batch, so that they tell prior draws from codes and a label swap shows."""
    torch.manual_seed(0)
    m = make_model(f"model=aae model.K={K}").eval()
    with torch.no_grad():
        h = m.encoder(x)
        z = h @ m.to_z.weight.t() + m.to_z.bias
        y = torch.softmax(h @ m.to_y.weight.t() + m.to_y.bias, -1) if K > 1 else None
    discs = [(m.disc_z, z, lambda: torch.randn_like(z))]
    if K > 1:
        discs.append((m.disc_y, y, lambda: F.one_hot(torch.randint(K, (len(y),)), K).float()))
    opt = torch.optim.Adam([p for disc, _, _ in discs for p in disc.parameters()], lr=1e-3)
    for _ in range(30):
        loss = sum(-F.logsigmoid(d(draw())).mean() - F.logsigmoid(-d(fake)).mean() for d, fake, draw in discs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


@pytest.mark.parametrize("K", [1, 10])
def test_aae_adversarial_losses_and_accuracy(x, K):
    """Reference (Makhzani et al.): the discriminator labels prior draws (N(0, I) for z; one-hot uniform draws for
    y) real, -log sigmoid(D(real)) - log(1 - sigmoid(D(code))); the generator wants codes taken for real,
    -log sigmoid(D(code)); disc_acc = mean of (D(real) > 0) and (D(code) < 0) over the discriminators."""
    m = aae(K, x)
    with torch.no_grad():
        h = m.encoder(x)
        z = h @ m.to_z.weight.t() + m.to_z.bias
        codes = [(m.disc_z, z)]
        if K > 1:
            codes.append((m.disc_y, torch.softmax(h @ m.to_y.weight.t() + m.to_y.bias, -1)))
        # the prior draws, in the model's order after seeding: z's normal draws, then y's categories
        torch.manual_seed(SEED)
        reals = [torch.randn(len(x), m.d)]
        if K > 1:
            reals.append(F.one_hot(torch.randint(K, (len(x),)), K).float())
        gen_ref = sum(-torch.log(torch.sigmoid(d(code))).mean() for d, code in codes)
        disc_ref, hits = 0.0, []
        for (d, code), real in zip(codes, reals):
            p_real, p_code = torch.sigmoid(d(real)), torch.sigmoid(d(code))
            disc_ref = disc_ref - torch.log(p_real).mean() - torch.log(1 - p_code).mean()
            hits += [(p_real > 0.5).float().mean(), (p_code < 0.5).float().mean()]
        acc_ref = sum(hits) / len(hits)
        torch.manual_seed(SEED)
        gen, marginal = m.generator_loss(x)
        torch.manual_seed(SEED)
        disc, acc = m.discriminator_loss(x)
    assert (marginal is None) == (K == 1)
    assert acc_ref > 0.75  # the discriminators tell the two apart: swapped labels would score below 0.25
    torch.testing.assert_close(gen, gen_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(disc, disc_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc, acc_ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("per_category", [None, 3])
def test_info_images_are_decoded_from_their_own_category(per_category):
    """Reference: the categories c the prior is asked for (recorded by wrapping prior.sample) are the targets
    returned, and, recomputed from the same seed, z = prior_means[c] + N(0, I) by hand, x~ = sigmoid(decoder(z)),
    the classifier's logits on x~ are those returned."""
    torch.manual_seed(0)
    n = "null" if per_category is None else per_category
    m = make_model(f"model=infocatvae model.info_per_category={n}").eval()
    asked = []
    sample = m.prior.sample

    def recording_sample(c):
        asked.append(c.clone())
        return sample(c)

    m.prior.sample = recording_sample
    with torch.no_grad():
        torch.manual_seed(SEED)
        c, logits = m.info_logits(N_IMAGES)
        torch.manual_seed(SEED)
        if per_category is None:
            c_ref = torch.randint(m.K, (N_IMAGES,))
        else:
            c_ref = torch.tensor([k for _ in range(per_category) for k in range(m.K)])
        prior_means = hand_prior_means(m.K, 2, 2.0)
        z = torch.stack([prior_means[int(k)] for k in c_ref]) + torch.randn(len(c_ref), m.d)
        x_gen = torch.sigmoid(m.decoder(z))
        ref = m.encoder(x_gen) @ m.heads.classifier.weight.t() + m.heads.classifier.bias
    assert len(asked) == 1 and torch.equal(asked[0], c)  # the target of each x~ is the category it was drawn for
    assert torch.equal(c, c_ref) and len(set(c.tolist())) > 1
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
