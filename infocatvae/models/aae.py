"""Adversarial autoencoder (Makhzani et al., 2015; paper section 9, Table 1 baseline)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from infocatvae import losses as L
from infocatvae.models.base import IMAGE_SHAPE, BaseModel, Encoding
from infocatvae.nets import Discriminator


class AAE(BaseModel):
    """Adversarial autoencoder with the MLP encoder and decoder of Table 2 and a deterministic code z.

    - ``K = 1``: the code z (``d`` dims) is matched to N(0, I) by a discriminator on codes
      (eqs. 11 and 12); the paper's Table 1 row "Adversarial autoencoder (K = 1)".
    - ``K > 1``: the unsupervised-clustering AAE: the encoder also outputs a softmax category y;
      one discriminator compares y with one-hot draws of a uniform categorical, another compares
      z with N(0, I); the decoder reads [y, z].

    Each training batch runs the three phases of the AAE with their own optimisers under manual
    optimisation (Lightning's GAN example): reconstruction (encoder + decoder, ``optimizer``),
    regularisation (the encoder fools the discriminators, eq. 11 second term; ``gen_optimizer``) and
    discrimination (eq. 12; ``disc_optimizer``). Lightning counts every optimiser step in
    ``global_step``, so one batch advances it by three: size AAE runs in epochs.
    """

    loss_functions = ("recon_loss", "generator_loss", "discriminator_loss")  # the three phases; losses calls them

    def __init__(
        self,
        net: Mapping,
        optimizer: Mapping,
        *,
        K: int,
        d: int,
        disc_hidden: int,
        disc_layers: int,
        disc_noise: float,
        likelihood: str,
        gen_optimizer: Mapping | None,
        disc_optimizer: Mapping | None,
        beta_marginal: float,
    ) -> None:
        # No defaults here: conf/model/aae.yaml holds them; an older checkpoint is completed from it (checkpoints.py).
        super().__init__(net, optimizer, K=K, decoder_in=d + (K if K > 1 else 0), likelihood=likelihood)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.d = d
        self.to_z = nn.Linear(self.encoder.out_dim, d)
        self.to_y = nn.Linear(self.encoder.out_dim, K) if K > 1 else None
        self.disc_z = Discriminator(d, disc_hidden, disc_layers, disc_noise)
        self.disc_y = Discriminator(K, disc_hidden, disc_layers, disc_noise) if K > 1 else None

    # ---- codes -----------------------------------------------------------------------------
    def _logits_codes(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The category logits (B, K) (None when K = 1) and the code z (B, d)."""
        h = self.encoder(x)
        return (self.to_y(h) if self.to_y is not None else None), self.to_z(h)

    @staticmethod
    def _probs(logits: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """The category probabilities y (B, K) of ``logits``; all ones (B, 1) when K = 1."""
        return logits.float().softmax(-1) if logits is not None else z.new_ones(len(z), 1)  # float32 as catvae's

    def _codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The category probabilities y (B, K) (all ones when K = 1) and the code z (B, d)."""
        logits, z = self._logits_codes(x)
        return self._probs(logits, z), z

    def _decoder_input(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([y, z], dim=-1) if self.K > 1 else z

    def encode(self, x: torch.Tensor) -> Encoding:
        """(y, z broadcast to (B, K, d), None): the code does not depend on c and has no variance."""
        y, z = self._codes(x)
        return Encoding(y, z.unsqueeze(1).expand(-1, self.K, -1), None)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._codes(x)[1]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded [y, z] (z alone when K = 1): what the decoder reads in training."""
        return self.decode(self._decoder_input(*self._codes(x))).view(-1, *IMAGE_SHAPE)

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        """Codes drawn from the prior, z ~ N(0, I) and, when K > 1, y = onehot(c); decoded."""
        z = torch.randn(len(c), self.d, device=self.device)
        y = F.one_hot(c, self.K).float() if self.K > 1 else z.new_ones(len(c), 1)
        return self.decode(self._decoder_input(y, z)).view(-1, *IMAGE_SHAPE)

    # ---- the three phases ------------------------------------------------------------------
    def _disc_pairs(self, y: torch.Tensor, z: torch.Tensor):
        """(discriminator, fake codes, prior draws) for each adversarial part of the code."""
        pairs = [(self.disc_z, z, torch.randn_like(z))]
        if self.disc_y is not None:
            prior_c = torch.randint(self.K, (len(y),), device=y.device)
            pairs.append((self.disc_y, y, F.one_hot(prior_c, self.K).to(y.dtype)))
        return pairs

    def recon_loss(self, x: torch.Tensor) -> torch.Tensor:
        y, z = self._codes(x)
        return L.reconstruction(self.decode_logits(self._decoder_input(y, z)), x.flatten(1), self.likelihood).mean()

    def generator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Regularisation phase: the encoder's codes should be taken for prior draws; with
        ``beta_marginal > 0`` (K > 1), plus ``beta_marginal`` times KL(batch mean of y ‖ uniform).
        Returns the phase's loss and that KL (``marginal``, None when K = 1), whatever its weight."""
        logits, z = self._logits_codes(x)
        y = self._probs(logits, z)
        total = 0.0
        for disc, fake, _ in self._disc_pairs(y, z):
            logit = disc(fake)
            total = total + F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        marginal = L.kl_marginal(logits) if logits is not None else None
        if marginal is not None and self.hparams.beta_marginal:
            total = total + self.hparams.beta_marginal * marginal
        return total, marginal

    def discriminator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrimination phase (eq. 12): prior draws are real, encoder codes are fake.
        Returns the loss and the discriminators' mean accuracy."""
        with torch.no_grad():
            y, z = self._codes(x)
        total, correct = 0.0, []
        for disc, fake, real in self._disc_pairs(y, z):
            lf, lr = disc(fake), disc(real)
            total = (
                total
                + F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
            )
            correct += [(lr > 0).float().mean(), (lf < 0).float().mean()]
        return total, torch.stack(correct).mean()

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon = self.recon_loss(x)
        gen, marginal = self.generator_loss(x)
        disc, acc = self.discriminator_loss(x)
        terms = {"loss": recon + gen, "recon": recon, "gen": gen, "disc": disc, "disc_acc": acc}
        return terms if marginal is None else {**terms, "marginal": marginal}

    # ---- Lightning -------------------------------------------------------------------------
    def autoencoder_parameters(self):
        return [
            *self.encoder.parameters(),
            *self.to_z.parameters(),
            *(self.to_y.parameters() if self.to_y is not None else []),
            *self.decoder.parameters(),
        ]

    def encoder_parameters(self):
        return [
            *self.encoder.parameters(),
            *self.to_z.parameters(),
            *(self.to_y.parameters() if self.to_y is not None else []),
        ]

    def discriminator_parameters(self):
        return [*self.disc_z.parameters(), *(self.disc_y.parameters() if self.disc_y is not None else [])]

    def configure_optimizers(self):
        """One optimiser per phase: ``optimizer`` (reconstruction), ``gen_optimizer`` (regularisation) and
        ``disc_optimizer`` (discrimination); a phase's entry left null takes ``optimizer``'s settings."""
        hp = self.hparams
        return (
            self.make_optimizer(self.autoencoder_parameters()),
            self.make_optimizer(self.encoder_parameters(), hp.gen_optimizer),
            self.make_optimizer(self.discriminator_parameters(), hp.disc_optimizer),
        )

    def _step(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_ae, opt_gen, opt_disc = self.optimizers()
        recon = self.recon_loss(x)
        self._step(opt_ae, recon)
        gen, marginal = self.generator_loss(x)
        self._step(opt_gen, gen)
        disc, acc = self.discriminator_loss(x)
        self._step(opt_disc, disc)
        terms = {
            "loss": recon.detach() + gen.detach(),
            "recon": recon.detach(),
            "gen": gen.detach(),
            "disc": disc.detach(),
            "disc_acc": acc,
        }
        if marginal is not None:
            terms["marginal"] = marginal.detach()
        self.log_terms("train", terms, len(x))
        return terms
