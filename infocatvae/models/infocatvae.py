"""InfoCatVAE (section 5): CatVAE plus the InfoGAN-style mutual-information term (7)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from infocatvae.models.catvae import CatVAE

INFO_LOSSES = ("ce", "ce_on_probs")


class InfoCatVAE(CatVAE):
    """CatVAE with ``beta_info * info`` added to its loss (eqs. 6 and 7).

    ``info``: draw c ~ p(c) uniform, z ~ N(µ_c, I), x̃ = decoder(z); then, with
    ``info_loss="ce"`` (eq. 7), the cross-entropy of c under q(c|x̃), i.e. −E[log q(c|x̃)], a
    Monte Carlo estimate of the negative of term (7). ``info_loss="ce_on_probs"`` is the authors'
    public code: ``cross_entropy`` applied to the probabilities q(c|x̃) as if they were logits,
    i.e. −log softmax(q(c|x̃))_c, a bounded surrogate whose gradient vanishes as q(c|x̃) sharpens.
    One draw per batch element (``info_per_category: null``), or exactly ``info_per_category``
    draws of each category (the authors' code: 10 of each).

    Which networks the term trains: eqs. (6) and (7) put it under max_φ, which read literally trains
    only the inference network q (``info_trains_decoder: false``: x̃ is detached); the InfoGAN analogy of
    section 8 (max over the generator too), section 6 ("does not block the back-propagation") and the
    authors' code let its gradient reach the decoder as well (``info_trains_decoder: true``, the default).
    """

    def __init__(
        self,
        net: Mapping,
        optimizer: Mapping,
        *,
        beta_info: float,
        info_loss: str,
        info_per_category: int | None,
        info_trains_decoder: bool,
        **kwargs,
    ) -> None:
        super().__init__(net, optimizer, **kwargs)

    def info_logits(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Categories c and the classifier logits of q(c|x̃) on their generated x̃."""
        n = self.hparams.info_per_category
        if n is None:
            c = torch.randint(self.K, (batch_size,), device=self.device)
        else:
            c = torch.arange(self.K, device=self.device).repeat(n)
        x_gen = self.decode(self.prior.sample(c))
        if not self.hparams.info_trains_decoder:
            x_gen = x_gen.detach()
        return c, self.heads.logits(self.encoder(x_gen))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().losses(x)
        c, logits = self.info_logits(len(x))
        if self.hparams.info_loss == "ce_on_probs":
            logits = logits.float().softmax(-1)
        terms["info"] = F.cross_entropy(logits.float(), c)
        terms["loss"] = terms["loss"] + self.hparams.beta_info * terms["info"]
        return terms
