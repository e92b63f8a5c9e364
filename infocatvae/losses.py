"""Loss terms of the paper's objectives, each returned per sample (shape [B]).

The models average them over the batch; keeping them per sample lets the
evaluation reuse them for test-set ELBOs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

LIKELIHOODS = ("bernoulli", "gaussian")


def kl_cat(logits: torch.Tensor) -> torch.Tensor:
    """KL(q(c|x) ‖ uniform) = log K − H(q(c|x)), the first term of eq. (5).

    Computed in float32: under bf16 autocast the difference of two numbers near log K loses
    every digit and can turn negative."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


def kl_marginal(logits: torch.Tensor) -> torch.Tensor:
    """KL(q̄(c) ‖ uniform) = log K − H(q̄), with q̄(c) = mean over the batch of q(c|x): a scalar.

    q̄ is the batch estimate of the aggregate posterior; the term is 0 when the batch is spread
    evenly over the K categories and log K when every sample goes to the same one, whatever the
    confidence of each q(c|x) (unlike ``kl_cat``, which is per sample and pushes each q(c|x)
    towards uniform). ``logits`` is [B, K] (leading axes other than the last are all batch).
    Computed in float32 from the log-probabilities: log q̄ = logsumexp_b log q(c|x_b) − log B,
    finite (and with a finite gradient) even where a category's q̄ underflows to 0."""
    log_q = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
    log_qbar = torch.logsumexp(log_q, dim=0) - math.log(log_q.shape[0])
    return (log_qbar.exp() * log_qbar).sum() + math.log(logits.shape[-1])


def gaussian_kl(
    mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
) -> torch.Tensor:
    """Closed-form KL(N(mu, e^logvar) ‖ N(prior_mu, e^prior_logvar)), summed over the last axis (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0).sum(-1)


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


class _BernoulliNLL(torch.autograd.Function):
    """Σ over the last axis of ``binary_cross_entropy_with_logits(logits, x)``, with its gradient
    sigmoid(logits) − x (and −logits for ``x``).

    Written out because torch's CPU ``log1p``, behind ``binary_cross_entropy_with_logits``, ``softplus``
    and ``logsigmoid``, is about ten times slower in its AVX-512 kernel than in its AVX2 one on an AMD
    Zen 4 (measured: 5.8 against 0.57 ms for 10⁶ floats; experiments/results/bench.md), where it was most
    of an InfoCatVAE step. log(1 + e^−|l|) from ``exp`` and ``log`` instead differs from ``log1p`` by less
    than 6e-8 a pixel (where e^−|l| < 2^−24 it rounds to 0), below float32's rounding of the sum.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        # softplus(l) − l·x = max(l, 0) − l·x + log(1 + e^−|l|), in place on one fresh tensor
        out = logits.abs().neg_().exp_().add_(1.0).log_()
        return out.add_(logits.clamp(min=0.0)).addcmul_(logits, x, value=-1.0).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_x = logits.neg().mul_(grad) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def reconstruction(
    logits: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli", step_size: int = 28
) -> torch.Tensor:
    """−log p(x|z) up to a constant, from the decoder's logits (pre-sigmoid outputs).

    ``bernoulli``: binary cross-entropy of the pixels, summed (the static-image decoder of
    appendix B), with the values and gradients of ``binary_cross_entropy_with_logits``
    (``_BernoulliNLL``): exact where a sigmoid would round to 0 or 1 (no clamp of log 0).
    ``gaussian``: appendix C's sequence loss, "the sum of the mean squared error of each time
    step": the squared error of the pixel values sigmoid(logits), averaged over the ``step_size``
    values of each step (a 28-pixel row) and summed over the steps. Both tensors are flat in their
    last axis and broadcast against each other (the marginal reconstruction passes ``logits``
    [B, K, D] with ``x`` [B, 1, D]).
    """
    # In float32 outside autocast: the sums over 784 pixels lose digits in bf16.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits, x = logits.float(), x.float().expand_as(logits)
        if likelihood == "bernoulli":
            return _BernoulliNLL.apply(logits, x)
        if likelihood == "gaussian":
            err = (torch.sigmoid(logits) - x).pow(2)
            return err.unflatten(-1, (-1, step_size)).mean(-1).sum(-1)
        raise ValueError(f"unknown likelihood {likelihood!r}: the known ones are {list(LIKELIHOODS)}")
