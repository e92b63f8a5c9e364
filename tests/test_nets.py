"""The networks' own pieces: the CPU dropout drawn from uniform numbers against ``nn.Dropout``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infocatvae.nets import Dropout


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_cpu_dropout_has_nn_dropouts_distribution_and_gradient(p):
    torch.manual_seed(0)
    x = (torch.rand(512, 784) + 0.5).requires_grad_()
    drop = Dropout(p).train()
    out = drop(x)
    kept = out != 0
    # the share dropped is p within 4 binomial standard deviations over 401,408 values
    assert abs(1 - kept.float().mean().item() - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))  # inverted dropout: kept values scaled by 1/(1-p)
    ref = nn.Dropout(p).train()(x)  # torch's own, for the mean it keeps
    assert out.mean().item() == pytest.approx(ref.mean().item(), rel=0.01)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))  # gradient through the kept values only
    # the mask follows torch's generator: the same seed, the same mask
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x))


def test_cpu_dropout_is_the_identity_in_eval_and_at_p0_and_zero_at_p1():
    x = torch.rand(64, 400) + 0.5
    assert torch.equal(Dropout(0.25).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_cpu_dropout_of_bf16_activations_scales_in_float32():
    """Under bf16 autocast the activations are bf16; the kept values come back scaled exactly (float32)."""
    torch.manual_seed(0)
    x = torch.rand(256, 400).add(0.5).bfloat16()
    out = Dropout(0.25).train()(x)
    kept = out != 0
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[kept], x[kept].float() * (4 / 3))
