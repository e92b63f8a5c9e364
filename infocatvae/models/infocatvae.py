"""InfoCatVAE (section 5): CatVAE plus the InfoGAN-style mutual-information term (7)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from infocatvae.models.base import is_number, require
from infocatvae.models.catvae import CatVAE


class InfoCatVAE(CatVAE):
    """CatVAE with ``beta_info * info`` added to its loss (eqs. 6 and 7).

    ``info``: draw c ~ p(c) uniform (one per batch element), z ~ N(µ_c, I), x̃ = decoder(z);
    the cross-entropy of c under q(c|x̃), i.e. −E[log q(c|x̃)], a Monte Carlo estimate of the
    negative of term (7). Nothing is detached: its gradient reaches decoder and encoder.
    """

    def __init__(self, net: Mapping, optimizer: Mapping, beta_info: float = 100.0, **kwargs) -> None:
        require("model.beta_info", is_number(beta_info) and beta_info >= 0, "a number >= 0", beta_info)
        super().__init__(net, optimizer, **kwargs)

    def info_logits(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Categories c ~ uniform and the classifier logits of q(c|x̃) on their generated x̃."""
        c = torch.randint(self.K, (batch_size,), device=self.device)
        x_gen = self.decode(self.prior.sample(c))
        return c, self.heads.logits(self.encoder(x_gen))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().losses(x)
        c, logits = self.info_logits(len(x))
        terms["info"] = F.cross_entropy(logits, c)
        terms["loss"] = terms["loss"] + self.hparams.beta_info * terms["info"]
        return terms
