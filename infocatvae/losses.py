"""Loss terms of the paper's objectives, each returned per sample (shape [B]).

The models average them over the batch; keeping them per sample lets the
evaluation reuse them for test-set ELBOs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "gaussian")


def kl_cat(logits: torch.Tensor) -> torch.Tensor:
    """KL(q(c|x) ‖ uniform) = log K − H(q(c|x)), the first term of eq. (5).

    Computed in float32: under bf16 autocast the difference of two numbers near log K loses
    every digit and can turn negative."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


def gaussian_kl(
    mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
) -> torch.Tensor:
    """Closed-form KL(N(mu, e^logvar) ‖ N(prior_mu, e^prior_logvar)), summed over the last axis (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (
        prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0
    ).sum(-1)


def kl_cont(
    q_c: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_means: torch.Tensor,
    prior_logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_c q(c|x) · KL(q(z|x,c) ‖ p(z|c)), the second term of eq. (5).

    ``q_c`` is [B, K]; ``mu`` and ``logvar`` are [B, K, d]; ``prior_means`` is [K, d].
    """
    if prior_logvar is None:
        prior_logvar = torch.zeros_like(prior_means)
    return (q_c * gaussian_kl(mu, logvar, prior_means, prior_logvar)).sum(-1)


def reconstruction(x_hat: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli") -> torch.Tensor:
    """−log p(x|z) up to a constant, summed over the last axis (pixels, or steps × values).

    ``bernoulli``: binary cross-entropy on pixel probabilities, the static-image
    decoder of appendix B. ``gaussian``: the squared error, the sequence loss of
    appendix C ("the sum of the mean squared error of each time step"). Both
    tensors are flat in their last axis and broadcast against each other (the
    marginal reconstruction passes ``x_hat`` [B, K, D] with ``x`` [B, 1, D]).
    """
    # In float32 outside autocast: CUDA autocast refuses binary_cross_entropy on half tensors.
    with torch.autocast(device_type=x_hat.device.type, enabled=False):
        return _reconstruction(x_hat.float(), x.float().expand_as(x_hat), likelihood)


def _reconstruction(x_hat: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    if likelihood == "bernoulli":
        err = F.binary_cross_entropy(x_hat, x, reduction="none")
    elif likelihood == "gaussian":
        err = (x_hat - x).pow(2)
    else:
        raise ValueError(f"model.likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    return err.sum(-1)
