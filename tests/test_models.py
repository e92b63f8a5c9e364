"""The four models with both networks on a real MNIST batch: API, shapes, gradients, learning."""

from __future__ import annotations

import pytest
import torch

from infocatvae.data import load_split
from infocatvae.models import CatVAE, Encoding, FreePriorCatVAE, InfoCatVAE
from infocatvae.priors import block_means
from tests.helpers import MODELS, make_datamodule, make_model

# the four models, and the clustering AAE
VARIANTS = [*MODELS, "aae model.K=10"]


def build(overrides: str, tmp_path):
    return make_model(overrides, tmp_path)


@pytest.fixture(scope="module")
def images(data_dir):
    x, y = load_split(data_dir, "mnist", train=False)
    return x[:32], y[:32]


def batch(images, sequential: bool) -> torch.Tensor:
    return make_datamodule("data=seq_mnist" if sequential else "data=mnist").scale(images[0])


@pytest.mark.parametrize("model", VARIANTS)
@pytest.mark.parametrize("net,sequential", [("mlp", False), ("gru", True)])
def test_public_api_shapes(model, net, sequential, images, tmp_path):
    torch.manual_seed(0)
    m = build(f"model={model} net={net}", tmp_path)
    x = batch(images, sequential)
    assert x.shape == ((32, 28, 28) if sequential else (32, 1, 28, 28))
    enc = m.encode(x)
    assert isinstance(enc, Encoding)
    q_c, mu, logvar = enc.q_c, enc.mu, enc.logvar
    K, d = m.K, m.d
    assert q_c.shape == (32, K) and torch.allclose(q_c.sum(-1), torch.ones(32))
    assert mu.shape == (32, K, d)
    assert logvar is None or logvar.shape == (32, K, d)
    z = m.embed(x)
    assert z.shape == (32, d)
    assert m.reconstruct(x).shape == (32, 1, 28, 28)
    c = torch.arange(K).repeat(3)
    s = m.sample(c)
    assert s.shape == (3 * K, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    terms = m.losses(x)
    assert {"loss", "recon"} <= set(terms)
    aae = model.startswith("aae")
    if not aae:  # the CatVAE family's Gaussian-mixture prior
        assert {"kl_cat", "kl_cont"} <= set(terms)
        assert m.prior_means.shape == (K, d)
    # an ELBO needs a log-likelihood: the Bernoulli one (MLP), not appendix C's squared error (GRU); the AAE has none
    assert m.has_elbo is (not aae and net == "mlp")
    if m.has_elbo:
        assert m.elbo(x).shape == (32,)
    else:
        with pytest.raises(NotImplementedError, match="no ELBO"):
            m.elbo(x)
    if isinstance(m, InfoCatVAE):
        assert "info" in terms
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())


def test_gru_decoder_runs_28_steps_and_gradients_reach_encoder_gru(images, tmp_path):
    m = build("model=infocatvae net=gru data=seq_mnist", tmp_path)
    steps = []
    m.decoder.gru.register_forward_hook(lambda mod, inp, out: steps.append(out[0].shape[1]))
    m.losses(batch(images, True))["loss"].backward()
    assert steps and all(s == 28 for s in steps)
    assert m.encoder.gru.weight_ih_l0.grad.abs().sum() > 0
    assert m.encoder.gru.weight_hh_l0_reverse.grad.abs().sum() > 0


@pytest.mark.parametrize("trains_decoder", [True, False])
def test_info_gradient_reaches_the_encoder_and_the_decoder_unless_told_not_to(trains_decoder, tmp_path):
    """The info term trains the inference network in both readings of eqs. (6)-(7), the decoder only with
    ``info_trains_decoder`` (default); its value does not depend on the reading."""

    def info_logits(overrides: str):
        torch.manual_seed(0)  # the same weights and the same draws
        m = build(f"model=infocatvae {overrides}", tmp_path)
        return (m, *m.info_logits(16))

    m, c, logits = info_logits(f"model.info_trains_decoder={trains_decoder}")
    _, c_default, logits_default = info_logits("")
    assert torch.equal(c, c_default)
    torch.testing.assert_close(logits, logits_default)
    torch.nn.functional.cross_entropy(logits, c).backward()
    decoder_grad = m.decoder.net[0].weight.grad
    assert (decoder_grad is not None and decoder_grad.abs().sum() > 0) == trains_decoder
    assert m.encoder.net[1].weight.grad.abs().sum() > 0
    assert m.heads.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("info_loss", ["ce", "ce_on_probs"])
def test_info_term_is_the_configured_cross_entropy(info_loss, images, tmp_path, monkeypatch):
    """``ce``: −log q(c|x̃) from the logits (eq. 7); ``ce_on_probs``: the authors' cross_entropy applied
    to the probabilities q(c|x̃). Each added to the loss with weight beta_info."""
    m = build(f"model=infocatvae model.info_loss={info_loss} model.beta_info=3", tmp_path).eval()
    x = batch(images, False)
    c = torch.tensor([0, 1, 2, 3])
    logits = torch.tensor([[4.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]).repeat(4, 1)
    monkeypatch.setattr(m, "info_logits", lambda n: (c, logits))
    q = logits.softmax(-1)
    expected = -(q if info_loss == "ce" else q.softmax(-1)).log()[torch.arange(4), c].mean()
    torch.manual_seed(0)
    terms = m.losses(x)
    torch.testing.assert_close(terms["info"], expected)
    torch.manual_seed(0)
    base = CatVAE.losses(m, x)
    torch.testing.assert_close(terms["loss"], base["loss"] + 3 * expected)


def test_info_per_category_draws_each_category_equally(tmp_path):
    m = build("model=infocatvae model.info_per_category=10", tmp_path)
    c, logits = m.info_logits(128)
    assert logits.shape == (100, 10) and torch.bincount(c, minlength=10).tolist() == [10] * 10
    c, logits = build("model=infocatvae", tmp_path).info_logits(128)  # default: one per batch element
    assert logits.shape == (128, 10)


@pytest.mark.parametrize(
    "overrides,share", [("", 0.25), ("model.net.decoder.output_dropout=0", 0.0), ("net=gru data=seq_mnist", 0.0)]
)
def test_decoder_output_dropout(overrides, share, tmp_path):
    """Table 2's Dropout(0.25) on the MLP decoder's output (before the sigmoid) zeroes about a quarter
    of the logits in training and none in evaluation; the authors' code and Table 3 have none."""
    m = build(f"model=catvae {overrides}", tmp_path)
    z = torch.randn(64, 20)
    m.train()
    zeros = (m.decode_logits(z) == 0).float().mean().item()
    assert zeros == pytest.approx(share, abs=0.02)
    m.eval()
    assert (m.decode_logits(z) == 0).float().mean().item() == 0.0
    pixels = m.decode(z)
    assert pixels.min() >= 0 and pixels.max() <= 1
    torch.testing.assert_close(pixels, torch.sigmoid(m.decode_logits(z)))


def test_dropout_is_off_in_eval_mode(images, tmp_path):
    m = build("model=catvae", tmp_path)
    x = batch(images, False)
    m.train()
    assert not torch.equal(m.encode(x)[1], m.encode(x)[1])
    m.eval()
    torch.testing.assert_close(m.encode(x)[1], m.encode(x)[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        "model=catvae",
        "model=catvae model.recon=soft",
        "model=infocatvae",
        "model=catvae_free",
        "model=catvae net=gru data=seq_mnist",
    ],
)
def test_optimiser_steps_lower_the_loss_on_a_fixed_batch(overrides, images, tmp_path):
    torch.manual_seed(0)
    m = build(overrides + " model.optimizer.lr=1e-3", tmp_path)
    x = batch(images, "seq_mnist" in overrides)
    opt = m.configure_optimizers()

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same noise for before and after
        return m.losses(x)["loss"]

    m.eval()
    before = loss().item()
    m.train()
    for _ in range(10):
        opt.zero_grad()
        m.losses(x)["loss"].backward()
        opt.step()
    m.eval()
    assert loss().item() < before


def test_free_prior_means_move_while_fixed_prior_stays_at_eq_8(images, tmp_path):
    x = batch(images, False)
    for name, learned in (("catvae", False), ("catvae_free", True)):
        torch.manual_seed(0)
        m = build(f"model={name} model.optimizer.lr=1e-2", tmp_path)
        opt = m.configure_optimizers()
        for _ in range(5):
            opt.zero_grad()
            m.losses(x)["loss"].backward()
            opt.step()
        moved = not torch.equal(m.prior_means, block_means(10, 2, 2.0))
        assert moved is learned, name
        assert isinstance(m, FreePriorCatVAE) is learned


def test_free_prior_random_init_and_learned_logvar(tmp_path):
    m = build("model=catvae_free model.prior_init=random model.learn_prior_logvar=true", tmp_path)
    assert not torch.equal(m.prior_means, block_means(10, 2, 2.0))
    assert m.prior.logvar.requires_grad and m.prior.means.requires_grad


def test_aae_discriminator_learns_while_encoder_frozen(images, tmp_path):
    torch.manual_seed(0)
    m = build("model=aae model.K=10 model.optimizer.lr=1e-3", tmp_path)
    x = batch(images, False)
    _, _, opt_disc = m.configure_optimizers()
    enc_before = [p.clone() for p in m.encoder_parameters()]
    losses = []
    for _ in range(15):
        loss, _ = m.discriminator_loss(x)
        opt_disc.zero_grad()
        loss.backward()
        opt_disc.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(enc_before, m.encoder_parameters()))


def test_aae_three_phases_each_step_their_parameters(images, tmp_path):
    """One Lightning training step under manual optimisation moves the autoencoder, the encoder's
    regularisation and the discriminators."""
    import lightning as L

    torch.manual_seed(0)
    m = build("model=aae model.K=10", tmp_path)
    snap = {n: p.clone() for n, p in m.named_parameters()}
    x, y = batch(images, False), images[1]
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, train_dataloaders=torch.utils.data.DataLoader(list(zip(x, y)), batch_size=32))
    assert trainer.global_step == 3  # one batch: three optimiser steps
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, snap[n])}
    assert any(n.startswith("decoder") for n in changed)
    assert any(n.startswith("to_y") for n in changed)
    assert any(n.startswith("disc_z") for n in changed) and any(n.startswith("disc_y") for n in changed)


def test_aae_phase_optimisers_take_their_own_settings(tmp_path):
    """gen_optimizer and disc_optimizer configure the regularisation and discrimination phases; left null,
    a phase takes ``optimizer``'s settings; each phase has its own optimiser over its own parameters."""
    m = build("model=aae model.K=10 model.optimizer.lr=2e-4", tmp_path)
    opts = m.configure_optimizers()
    assert [o.param_groups[0]["lr"] for o in opts] == [2e-4, 2e-4, 2e-4]
    m = build(
        "model=aae model.K=10 model.optimizer.lr=2e-4 "
        "model.gen_optimizer={_target_:torch.optim.SGD,_partial_:true,lr:0.1,momentum:0.9} "
        "model.disc_optimizer={_target_:torch.optim.Adam,_partial_:true,lr:3e-3}",
        tmp_path,
    )
    ae, gen, disc = m.configure_optimizers()
    assert type(ae) is torch.optim.Adam and ae.param_groups[0]["lr"] == 2e-4
    assert type(gen) is torch.optim.SGD and gen.param_groups[0]["lr"] == 0.1 and gen.param_groups[0]["momentum"] == 0.9
    assert type(disc) is torch.optim.Adam and disc.param_groups[0]["lr"] == 3e-3
    ids = [{id(p) for g in o.param_groups for p in g["params"]} for o in (ae, gen, disc)]
    assert ids[1] < ids[0] and not ids[2] & ids[0]  # the encoder's parameters; the discriminators' alone


def test_aae_reconstruction_falls(images, tmp_path):
    torch.manual_seed(0)
    m = build("model=aae model.optimizer.lr=1e-3", tmp_path)
    x = batch(images, False)
    opt_ae, _, _ = m.configure_optimizers()
    m.eval()
    before = m.recon_loss(x).item()
    m.train()
    for _ in range(10):
        opt_ae.zero_grad()
        m.recon_loss(x).backward()
        opt_ae.step()
    m.eval()
    assert m.recon_loss(x).item() < before


# ---- balanced-category term and KL warm-up ---------------------------------------------------------


@pytest.mark.parametrize("model", ["catvae", "infocatvae", "catvae_free"])
def test_marginal_term_is_logged_always_and_weighted_by_beta_marginal(model, images, tmp_path):
    """``marginal`` = KL(batch mean of q(c|x) ‖ uniform) is in the terms of every CatVAE model; it enters
    the loss only with beta_marginal > 0 (0, the paper's objective, by default)."""
    from infocatvae import losses as L

    x = batch(images, False)
    for beta in (0.0, 2.5):
        torch.manual_seed(0)
        m = build(f"model={model} model.beta_marginal={beta}", tmp_path).eval()
        assert m.hparams.beta_marginal == beta
        torch.manual_seed(1)
        terms = m.losses(x)
        logits = m.heads.logits(m.encoder(x))
        torch.testing.assert_close(terms["marginal"], L.kl_marginal(logits))
        assert terms["marginal"].dim() == 0 and 0 <= terms["marginal"].item() <= torch.log(torch.tensor(10.0))
        expected = terms["recon"] + 10 * terms["kl_cat"] + 10 * terms["kl_cont"] + beta * terms["marginal"]
        if model == "infocatvae":
            expected = expected + 100 * terms["info"]
        torch.testing.assert_close(terms["loss"], expected)
        assert "kl_weight" not in terms  # no trainer, no warm-up: full weights, nothing to log
    # per_sample_terms stays per sample (test ELBOs): no batch-level term there
    assert set(m.per_sample_terms(x)) == {"recon", "kl_cat", "kl_cont"}


def test_marginal_gradient_reaches_the_classifier(images, tmp_path):
    m = build("model=catvae model.beta_marginal=1", tmp_path)
    m.losses(batch(images, False))["marginal"].backward()
    assert m.heads.classifier.weight.grad.abs().sum() > 0
    assert m.decoder.net[0].weight.grad is None  # q(c|x) only: the decoder is not involved


def test_aae_marginal_term_in_the_regularisation_phase(images, tmp_path):
    """The clustering AAE's ``marginal`` = KL(batch mean of its softmax y ‖ uniform), computed here from
    the probabilities directly; it enters the regularisation phase's loss only with beta_marginal > 0,
    and its gradient reaches the category head only."""
    x = batch(images, False)
    for beta in (0.0, 4.0):
        torch.manual_seed(0)
        m = build(f"model=aae model.K=10 model.beta_marginal={beta}", tmp_path).eval()
        torch.manual_seed(1)
        gen, marginal = m.generator_loss(x)
        y, _ = m._codes(x)
        qbar = y.mean(0)
        expected = (qbar * (qbar * 10).log()).sum()
        torch.testing.assert_close(marginal, expected)
        torch.manual_seed(1)
        m2 = build("model=aae model.K=10 model.beta_marginal=0", tmp_path)
        m2.load_state_dict(m.state_dict())  # the same weights, without the term
        torch.manual_seed(1)
        adversarial, _ = m2.eval().generator_loss(x)
        torch.testing.assert_close(gen, adversarial + beta * marginal)
        assert "marginal" in m.losses(x)
    m.zero_grad()
    m.generator_loss(x)[1].backward()
    assert m.to_y.weight.grad.abs().sum() > 0 and m.to_z.weight.grad is None
    # K = 1: no categories, no term
    assert build("model=aae model.K=1", tmp_path).eval().generator_loss(x)[1] is None


def test_aae_instance_noise_blurs_both_discriminators_inputs_in_training(images, tmp_path):
    """model.disc_noise reaches both discriminators: in training the regularisation and discrimination
    losses of the same weights and batch then vary with the noise draw; in eval they are those of
    disc_noise 0."""
    x = batch(images, False)
    torch.manual_seed(0)
    noisy = build("model=aae model.K=10 model.disc_noise=0.3 model.net.encoder.dropout=0", tmp_path)
    clean = build("model=aae model.K=10 model.disc_noise=0 model.net.encoder.dropout=0", tmp_path)
    clean.load_state_dict(noisy.state_dict())
    assert noisy.disc_y.noise == noisy.disc_z.noise == 0.3 and clean.disc_y.noise == 0
    noisy.eval(), clean.eval()
    torch.manual_seed(1)
    noisy_eval = noisy.discriminator_loss(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(noisy_eval, clean.discriminator_loss(x)[0])
    noisy.train(), clean.train()
    torch.manual_seed(1)
    a = clean.discriminator_loss(x)[0]
    torch.manual_seed(1)
    b = clean.discriminator_loss(x)[0]
    torch.testing.assert_close(a, b)  # without noise, training mode is deterministic here (prior draws seeded)
    torch.manual_seed(1)
    c = noisy.discriminator_loss(x)[0]
    assert not torch.allclose(a, c)
    torch.manual_seed(1)
    g1 = noisy.generator_loss(x)[0]
    torch.manual_seed(2)
    g2 = noisy.generator_loss(x)[0]
    assert not torch.allclose(g1, g2)


def test_kl_warmup_factor_follows_the_trainers_epoch_or_step(images, tmp_path):
    """min(1, epoch / W) or min(1, step / S) on training steps; 1 with no trainer, outside training
    (validation), and with no warm-up set. The factor multiplies beta_cat and beta_cont only."""
    from types import SimpleNamespace

    x = batch(images, False)
    m = build("model=infocatvae model.kl_warmup_epochs=4 model.beta_marginal=3", tmp_path).eval()
    assert m.kl_weight() == 1.0  # no trainer attached
    for epoch, w in [(0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (9, 1.0)]:
        m.trainer = SimpleNamespace(training=True, current_epoch=epoch, global_step=1000)
        assert m.kl_weight() == w
        torch.manual_seed(0)
        terms = m.losses(x)
        assert terms["kl_weight"].item() == w
        expected = (
            terms["recon"]
            + w * (10 * terms["kl_cat"] + 10 * terms["kl_cont"])
            + 3 * terms["marginal"]
            + 100 * terms["info"]
        )
        torch.testing.assert_close(terms["loss"], expected)
    m.trainer = SimpleNamespace(training=False, current_epoch=0, global_step=0)  # validating
    assert m.kl_weight() == 1.0 and "kl_weight" not in m.losses(x)

    m = build("model=catvae model.kl_warmup_steps=10", tmp_path).eval()
    for step, w in [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (11, 1.0)]:
        m.trainer = SimpleNamespace(training=True, current_epoch=7, global_step=step)
        assert m.kl_weight() == w
        torch.manual_seed(0)
        terms = m.losses(x)
        torch.testing.assert_close(terms["loss"], terms["recon"] + w * (10 * terms["kl_cat"] + 10 * terms["kl_cont"]))

    m = build("model=catvae", tmp_path)  # no warm-up: full weights in training, no kl_weight term
    m.trainer = SimpleNamespace(training=True, current_epoch=0, global_step=0)
    assert m.kl_weight() == 1.0 and "kl_weight" not in m.losses(x)


def test_kl_warmup_in_a_real_trainer_logs_kl_weight_and_validates_with_full_weights(images, tmp_path):
    """Two epochs of two steps with kl_warmup_epochs=2: factor 0 then 0.5 on training steps, logged as
    train/kl_weight; validation (and so val/loss and the best checkpoint) uses the full objective."""
    import lightning as L

    torch.manual_seed(0)
    m = build("model=catvae model.kl_warmup_epochs=2", tmp_path)
    x, y = batch(images, False), images[1]
    seen: dict[str, list] = {"train": [], "val": []}

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["train"].append((trainer.current_epoch, outputs["kl_weight"].item()))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"].append(pl_module.kl_weight())

    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_val_batches=1,
        log_every_n_steps=1,
        callbacks=[Record()],
    )
    trainer.fit(m, train_dataloaders=loader, val_dataloaders=loader)
    assert seen["train"] == [(0, 0.0), (0, 0.0), (1, 0.5), (1, 0.5)]
    assert seen["val"] and set(seen["val"]) == {1.0}
    metrics = trainer.callback_metrics
    assert metrics["train/kl_weight_epoch"].item() == 0.5 and "val/kl_weight" not in metrics
    assert "train/marginal_epoch" in metrics and "val/marginal" in metrics
    assert m.kl_weight() == 1.0  # after fit: the trainer is still attached but not training


def test_reparameterisation_draws_the_same_numbers_whatever_the_codes_layout():
    """z = µ + ε σ with ε drawn row-major: a transposed µ (as eager or compiled code may lay it out) gets the
    same ε for the same seed as a row-major one, the ε of ``torch.randn`` of its shape."""
    mu = torch.randn(8, 4, 5).transpose(1, 2)  # [8, 5, 4] with strides (20, 1, 5)
    logvar = torch.randn(8, 5, 4)
    torch.manual_seed(0)
    z_strided = CatVAE.reparameterise(mu, logvar)
    torch.manual_seed(0)
    z_row_major = CatVAE.reparameterise(mu.contiguous(), logvar)
    torch.testing.assert_close(z_strided, z_row_major, rtol=0, atol=0)
    torch.manual_seed(0)
    eps = torch.randn(8, 5, 4)
    torch.testing.assert_close(z_row_major, mu + eps * (0.5 * logvar).exp(), rtol=0, atol=0)


@pytest.mark.parametrize("model", ["infocatvae", "aae model.K=10"])
def test_validation_and_test_terms_are_the_image_weighted_means_logged_once_per_epoch(model, images, tmp_path):
    """``val/<term>`` and ``test/<term>`` are each term's mean over the epoch's images (batches of 16, 16 and 8,
    so weighted by batch size), the same as the model's own terms computed batch by batch under the same
    seed; ``self.log`` is called once per key and epoch, not once per batch (0.25 ms or more a call)."""
    import lightning as L

    x, y = batch(images, False)[:40], images[1][:40]
    torch.manual_seed(0)
    m = build(f"model={model}", tmp_path)
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    torch.manual_seed(3)
    with torch.no_grad():
        m.eval()
        per_batch = [(m.losses(xb), len(xb)) for xb, _ in loader]
    expected = {k: sum(t[k] * n for t, n in per_batch) / len(x) for k in per_batch[0][0]}
    calls = []
    log = m.log
    m.log = lambda name, *a, **kw: (calls.append(name), log(name, *a, **kw))[1]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        calls.clear()
        torch.manual_seed(3)
        out = run(m, dataloaders=loader, verbose=False)[0]
        for k, v in expected.items():
            torch.testing.assert_close(torch.tensor(out[f"{stage}/{k}"]), v.float(), rtol=1e-5, atol=1e-5)
        logged = [c for c in calls if c.startswith(f"{stage}/")]
        keys = [*expected, "cluster_acc", "nmi", "ari", "usage_perplexity"]
        assert sorted(logged) == sorted(f"{stage}/{k}" for k in keys)


def test_authors_code_gru_decoder_trains_in_a_model(images, tmp_path):
    m = build("model=infocatvae net=gru data=seq_mnist model.net.decoder.style=authors_code", tmp_path)
    assert m.decoder.style == "authors_code"
    m.losses(batch(images, True))["loss"].backward()
    # the gradient reaches the recurrent weights through the fed-back rows, and the encoder through z
    assert m.decoder.gru.weight_ih_l0.grad.abs().sum() > 0
    assert m.encoder.gru.weight_ih_l0.grad.abs().sum() > 0
    assert m.sample(torch.arange(m.K)).shape == (m.K, 1, 28, 28)
