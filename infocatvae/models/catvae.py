"""CatVAE (sections 4, 6 and 7) and the free-prior CatVAE of section 11."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from infocatvae import losses as L
from infocatvae.models.base import IMAGE_SHAPE, BaseModel, Encoding
from infocatvae.nets import CategoricalHeads
from infocatvae.priors import MixturePrior

RECON_MODES = ("marginal", "soft")


class CatVAE(BaseModel):
    """CatVAE: p(c) uniform, p(z|c) = N(µ_c, I) with the block means of eq. (8), inference
    network q(c|x) q(z|x, c).

    Loss, as batch means (eqs. 3 and 5, Proposition 1)::

        loss = recon + w · beta_cat * kl_cat + w · beta_cont * kl_cont + beta_marginal * marginal

    - ``kl_cat`` = KL(q(c|x) ‖ p(c)) = log K − H(q(c|x));
    - ``kl_cont`` = Σ_c q(c|x) · KL(q(z|x,c) ‖ N(µ_c, I)), in closed form;
    - ``marginal`` = KL(q̄(c) ‖ p(c)) = log K − H(q̄), q̄ = the batch mean of q(c|x) (the batch
      estimate of the aggregate posterior; per process under DDP): 0 for a batch spread evenly over
      the categories, log K for a batch all in one. Not in the paper's objective (``beta_marginal``
      is 0 by default) but always logged, as a measure of cluster balance; with ``beta_marginal > 0``
      it is the "evenly distributed" pressure the paper ascribes to its entropy term, which
      ``kl_cat``, being per sample, does not exert on the batch as a whole;
    - ``w`` = ``kl_weight()``, the KL warm-up factor (1 unless ``kl_warmup_epochs`` or
      ``kl_warmup_steps`` is set; it weights only the two KL terms of the ELBO, not ``marginal``
      nor InfoCatVAE's ``info``), logged as ``kl_weight`` on training steps while a warm-up is set;
    - ``recon``: with ``recon="marginal"`` (the paper's eq. 3 under q(c|x) q(z|x,c), section 6),
      Σ_c q(c|x) · −log p(x | z_c), z_c ~ q(z|x,c) reparameterised, all K decoder passes in one
      batched call; with ``recon="soft"`` (the authors' public code), one z drawn from the
      Gaussian heads fed with [h, q(c|x)].
    """

    has_prior_means = True

    @property
    def has_elbo(self) -> bool:
        """With the Bernoulli likelihood: ``recon`` is then −log p(x|z). Appendix C's squared error (``gaussian``,
        averaged over a row, no variance, no normalising constant) is a loss, not a log-likelihood, so no ELBO."""
        return self.likelihood == "bernoulli"

    def __init__(
        self,
        net: Mapping,
        optimizer: Mapping,
        *,
        K: int,
        delta: int,
        lam: float,
        beta_cat: float,
        beta_cont: float,
        recon: str,
        likelihood: str,
        beta_marginal: float,
        kl_warmup_epochs: int,
        kl_warmup_steps: int,
    ) -> None:
        # No defaults here: conf/model/catvae.yaml and conf/net/*.yaml hold them (README, "Layout").
        super().__init__(net, optimizer, K=K, decoder_in=K * delta, likelihood=likelihood)
        self.save_hyperparameters(logger=False)
        self.delta, self.d = delta, K * delta
        self.heads = CategoricalHeads(self.encoder.out_dim, K, self.d)
        self.prior = MixturePrior(K, delta, lam, learn_means=False, learn_logvar=False, init="block")

    @property
    def prior_means(self) -> torch.Tensor:
        """The K × d means µ_c of p(z|c): eq. (8) when fixed, the current values when learned."""
        return self.prior.means

    def _encode(self, x: torch.Tensor):
        h = self.encoder(x)
        logits = self.heads.logits(h)
        mu, logvar = self.heads.gaussian(h)
        return h, logits, mu, logvar

    def encode(self, x: torch.Tensor) -> Encoding:
        _, logits, mu, logvar = self._encode(x)
        return Encoding(logits.float().softmax(-1), mu, logvar)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of q(z|x, c*) for the most likely category c*: a (B, d) code."""
        q_c, mu, _ = self.encode(x)
        return mu[torch.arange(len(mu), device=mu.device), q_c.argmax(-1)]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded ``embed(x)``: the mean code of the most likely category."""
        return self.decode(self.embed(x)).view(-1, *IMAGE_SHAPE)

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        """Images of categories ``c``: z ~ p(z|c), decoded (section 4, last paragraph)."""
        return self.decode(self.prior.sample(c)).view(-1, *IMAGE_SHAPE)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        # drawn row-major whatever mu's strides (randn_like would keep them): torch's vectorised CPU normal_
        # needs a contiguous tensor, and eager and compiled code (whose layouts may differ) draw the same numbers
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)
        return mu + eps * (0.5 * logvar).exp()

    def per_sample_terms(self, x: torch.Tensor, recon: str | None = None) -> dict[str, torch.Tensor]:
        """``recon``, ``kl_cat`` and ``kl_cont`` per sample (shape [B]); ``recon`` defaults to the config's."""
        return self._per_sample_terms(x, recon)[0]

    def _per_sample_terms(
        self, x: torch.Tensor, recon: str | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``per_sample_terms`` and the logits of q(c|x) they came from."""
        h, logits, mu, logvar = self._encode(x)
        # float32: CPU autocast leaves softmax in bf16 (CUDA's does not), whose backward of sum_c q_c · recon_c
        # (recon_c ~ 200 nats, bf16's spacing 1 there) rounds away the differences between the categories
        q_c = logits.float().softmax(-1)
        x_flat = x.flatten(1)
        if (recon or self.hparams.recon) == "marginal":
            logits_x = self.decode_logits(self.reparameterise(mu, logvar))  # [B, K, 784]: one batched call
            rec = (q_c * L.reconstruction(logits_x, x_flat.unsqueeze(1), self.likelihood)).sum(-1)
        else:
            mu_s, logvar_s = self.heads.gaussian_soft(h, q_c)
            rec = L.reconstruction(self.decode_logits(self.reparameterise(mu_s, logvar_s)), x_flat, self.likelihood)
        return {
            "recon": rec,
            "kl_cat": L.kl_cat(logits),
            "kl_cont": L.kl_cont(q_c, mu, logvar, self.prior.means, self.prior.logvar),
        }, logits

    def kl_weight(self) -> float:
        """The KL warm-up factor ``w`` that multiplies ``beta_cat`` and ``beta_cont``, in [0, 1].

        With ``kl_warmup_epochs = W > 0``: ``min(1, e / W)`` in the 0-based training epoch ``e``
        (``trainer.current_epoch``): 0 for the whole first epoch, 1/W for the second, ..., full from
        epoch W on. With ``kl_warmup_steps = S > 0``: ``min(1, s / S)`` at optimiser step ``s``
        (``trainer.global_step``, 0 at the first step): full from step S on. Both counters are
        restored from checkpoints, so a resumed run continues the schedule.

        1 (full weights) when no warm-up is set, outside training steps (validation, test, the sanity
        check: so ``val/loss``, which picks the best checkpoint, always has the full objective) and
        when no trainer is attached (``losses`` called directly)."""
        if not self.warming_up():
            return 1.0
        hp, trainer = self.hparams, self._trainer
        if hp.kl_warmup_epochs > 0:
            return min(1.0, trainer.current_epoch / hp.kl_warmup_epochs)
        return min(1.0, trainer.global_step / hp.kl_warmup_steps)

    def warming_up(self) -> bool:
        """Whether a warm-up is set and a training step of a trainer runs now (``kl_weight`` follows the schedule)."""
        hp = self.hparams
        trainer = self._trainer  # the ``trainer`` property raises when none is attached
        return (hp.kl_warmup_epochs > 0 or hp.kl_warmup_steps > 0) and trainer is not None and trainer.training

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        per_sample, logits = self._per_sample_terms(x)
        terms = {k: v.mean() for k, v in per_sample.items()}
        terms["marginal"] = L.kl_marginal(logits)
        hp = self.hparams
        w = self.kl_weight()
        # w * beta is a Python float: with w = 1 the loss is bit-identical to the unweighted sum.
        terms["loss"] = terms["recon"] + w * hp.beta_cat * terms["kl_cat"] + w * hp.beta_cont * terms["kl_cont"]
        if hp.beta_marginal:
            terms["loss"] = terms["loss"] + hp.beta_marginal * terms["marginal"]
        if self.warming_up():
            # a fill kernel on the loss's device: no host-to-device copy
            terms["kl_weight"] = torch.full((), w, device=terms["loss"].device)
        return terms

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample ELBO of Proposition 1 (eq. 14): marginal reconstruction, unit weights."""
        if not self.has_elbo:
            raise NotImplementedError(f"{type(self).__name__} has no ELBO with the {self.likelihood} likelihood")
        t = self.per_sample_terms(x, recon="marginal")
        return -(t["recon"] + t["kl_cat"] + t["kl_cont"])


class FreePriorCatVAE(CatVAE):
    """CatVAE whose prior means µ_c (and, with ``learn_prior_logvar``, per-category log-variances)
    are learned by the same loss: the free-prior mixture baseline of section 11 (Dilokthanakul et
    al., 2016). ``prior_init``: ``block`` starts at eq. (8), ``random`` at N(0, λ²) draws."""

    def __init__(
        self, net: Mapping, optimizer: Mapping, *, prior_init: str, learn_prior_logvar: bool, **kwargs
    ) -> None:
        super().__init__(net, optimizer, **kwargs)
        # The fixed prior built by CatVAE drew nothing from the RNG: this one's random init draws what it did.
        self.prior = MixturePrior(
            self.K, self.delta, kwargs["lam"], learn_means=True, learn_logvar=learn_prior_logvar, init=prior_init
        )
