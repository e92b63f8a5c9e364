"""Priors p(c) p(z|c) of the categorical models (paper sections 4 and 7)."""

from __future__ import annotations

import torch
from torch import nn


def block_means(K: int, delta: int, lam: float) -> torch.Tensor:
    """Eq. (8): µ_c = λ on coordinates [c·δ, (c+1)·δ) and 0 elsewhere, d = K·δ.

    Returns a K × d tensor whose rows are mutually orthogonal.
    """
    return lam * torch.eye(K).repeat_interleave(delta, dim=1)


class MixturePrior(nn.Module):
    """p(c) = uniform over K categories, p(z|c) = N(µ_c, diag(σ_c²)).

    With ``learn_means=False`` (CatVAE, InfoCatVAE) the means are the fixed block
    means of eq. (8) and the variances are 1. With ``learn_means=True`` (the
    free-prior CatVAE of section 11, after Dilokthanakul et al. 2016) the means
    are parameters initialised either at eq. (8) (``init="block"``) or at random
    N(0, λ²) draws (``init="random"``); ``learn_logvar`` also frees per-category
    log-variances.
    """

    INITS = ("block", "random")

    def __init__(
        self,
        K: int,
        delta: int,
        lam: float,
        learn_means: bool,
        learn_logvar: bool,
        init: str,
    ) -> None:
        super().__init__()
        self.K, self.delta, self.d = K, delta, K * delta
        if init == "block":
            means = block_means(K, delta, lam)
        elif init == "random":
            means = lam * torch.randn(K, K * delta)
        else:
            raise ValueError(f"unknown init {init!r}: the known ones are {list(self.INITS)}")
        logvar = torch.zeros(K, K * delta)
        if learn_means:
            self.means = nn.Parameter(means)
        else:
            self.register_buffer("means", means)
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar)

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        """z ~ p(z|c) for a batch of category indices ``c`` (shape [B])."""
        mu, logvar = self.means[c], self.logvar[c]
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
