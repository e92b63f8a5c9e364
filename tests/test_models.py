"""The four models with both networks on a real MNIST batch: API, shapes, gradients, learning."""

from __future__ import annotations

import hydra.utils
import pytest
import torch

from infocatvae.data import MNISTDataModule, load_split
from infocatvae.models import AAE, CatVAE, FreePriorCatVAE, InfoCatVAE
from infocatvae.priors import block_means
from tests.conftest import DATA_DIR, make_cfg

MODELS = ["catvae", "infocatvae", "catvae_free", "aae", "aae model.K=10"]


def build(overrides: str, tmp_path):
    cfg = make_cfg(overrides.split(), tmp_path)
    return hydra.utils.instantiate(cfg.model, _recursive_=False, _convert_="all")


@pytest.fixture(scope="module")
def images():
    x, y = load_split(DATA_DIR, "mnist", train=False)
    return x[:32], y[:32]


def batch(images, sequential: bool) -> torch.Tensor:
    dm = MNISTDataModule(data_dir=DATA_DIR, sequential=sequential)
    return dm.scale(images[0])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("net,sequential", [("mlp", False), ("gru", True)])
def test_public_api_shapes(model, net, sequential, images, tmp_path):
    torch.manual_seed(0)
    m = build(f"model={model} net={net}", tmp_path)
    x = batch(images, sequential)
    assert x.shape == ((32, 28, 28) if sequential else (32, 1, 28, 28))
    q_c, mu, logvar = m.encode(x)
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
    if not isinstance(m, AAE):
        assert {"kl_cat", "kl_cont"} <= set(terms)
        assert m.prior_means.shape == (K, d)
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


def test_info_gradient_reaches_decoder_and_encoder(tmp_path):
    m = build("model=infocatvae", tmp_path)
    c, logits = m.info_logits(16)
    torch.nn.functional.cross_entropy(logits, c).backward()
    assert m.decoder.net[0].weight.grad.abs().sum() > 0
    assert m.encoder.net[1].weight.grad.abs().sum() > 0
    assert m.heads.classifier.weight.grad.abs().sum() > 0


def test_dropout_is_off_in_eval_mode(images, tmp_path):
    m = build("model=catvae", tmp_path)
    x = batch(images, False)
    m.train()
    assert not torch.equal(m.encode(x)[1], m.encode(x)[1])
    m.eval()
    torch.testing.assert_close(m.encode(x)[1], m.encode(x)[1], rtol=0, atol=0)


@pytest.mark.parametrize("overrides", ["model=catvae", "model=catvae model.recon=soft", "model=infocatvae",
                                       "model=catvae_free", "model=catvae net=gru data=seq_mnist"])
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
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, train_dataloaders=torch.utils.data.DataLoader(list(zip(x, y)), batch_size=32))
    assert trainer.global_step == 3  # one batch: three optimiser steps
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, snap[n])}
    assert any(n.startswith("decoder") for n in changed)
    assert any(n.startswith("to_y") for n in changed)
    assert any(n.startswith("disc_z") for n in changed) and any(n.startswith("disc_y") for n in changed)


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


@pytest.mark.parametrize("override,message", [
    ("model.K=0", "model.K must be an integer >= 1"),
    ("model.delta=0", "model.delta must be an integer >= 1"),
    ("model.lam=-1", "model.lam must be a number >= 0"),
    ("model.beta_cat=-1", "model.beta_cat must be a number >= 0"),
    ("model.beta_cont=-0.5", "model.beta_cont must be a number >= 0"),
    ("model.beta_info=-3", "model.beta_info must be a number >= 0"),
    ("model.optimizer.lr=0", "model.optimizer.lr must be a number > 0"),
    ("model.recon=hard", "model.recon must be one of \\['marginal', 'soft'\\]"),
    ("model.lam=abc", "model.lam must be a number >= 0"),
])
def test_invalid_hyperparameters_name_the_field(override, message, tmp_path):
    with pytest.raises(Exception, match=message):  # Hydra wraps it in an InstantiationException
        build(f"model=infocatvae {override}", tmp_path)


def test_model_classes():
    assert issubclass(InfoCatVAE, CatVAE) and issubclass(FreePriorCatVAE, CatVAE)
