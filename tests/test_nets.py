"""The networks' own pieces: the CPU dropout drawn from random bits against ``nn.Dropout``; the layout of the
category heads' codes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infocatvae.nets import CategoricalHeads, Dropout
from tests.helpers import skip_without_cpp_compiler


@pytest.mark.parametrize("p", [0.1, 0.25, 0.3, 0.5])  # 0.25 and 0.5 read bytes, 0.1 and 0.3 32-bit words
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


@pytest.mark.parametrize("p", [0.25, 0.3])
def test_keep_masks_are_independent_between_neighbours_and_any_size(p):
    """Neighbouring elements read neighbouring bytes (or words) of one random word: each pair of neighbours is
    kept together with probability (1 − p)², and a size that is not a multiple of 8 is drawn whole."""
    from infocatvae.nets import keep_mask

    torch.manual_seed(0)
    m = keep_mask((1001, 803), p)  # 803,803 elements: not a multiple of 8
    assert m.shape == (1001, 803) and m.dtype == torch.bool
    flat = m.flatten().float()
    n = flat.numel()
    assert abs(flat.mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    both = (flat[1:] * flat[:-1]).mean().item()  # adjacent pairs overlap: a loose bound of 6 sd
    assert abs(both - (1 - p) ** 2) < 6 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / (n - 1)) ** 0.5
    # every position within a 64-bit word keeps the same share (a byte or word of fixed bits would not)
    per_position = flat[: n // 8 * 8].view(-1, 8).mean(0)
    assert (per_position - (1 - p)).abs().max().item() < 5 * (p * (1 - p) / (n // 8)) ** 0.5


@pytest.mark.parametrize("p", [0.25, 0.3])
def test_dropout_scale_is_the_keep_mask_of_the_same_draws_scaled(p):
    """``dropout_scale`` (bytes compared as float32 for p = k / 256, 32-bit words otherwise) is exactly
    ``keep_mask`` from the same generator state, times 1 / (1 − p)."""
    from infocatvae.nets import dropout_scale, keep_mask

    torch.manual_seed(0)
    scale = dropout_scale([300, 257], p)
    torch.manual_seed(0)
    keep = keep_mask([300, 257], p)
    assert scale.dtype == torch.float32
    assert torch.equal(scale, keep.float() * (1 / (1 - p)))


def test_cpu_dropout_under_torch_compile_draws_eagers_masks_in_one_graph():
    """Under ``torch.compile`` the mask comes from the same operator and generator as in eager code: one graph,
    no break, the eager outputs bit for bit; and two draws of one shape stay two draws in a graph with
    gradients (an untagged operator was merged into one there: every such layer shared one mask)."""
    skip_without_cpp_compiler()
    torch._dynamo.reset()
    drop = Dropout(0.25).train()
    w = torch.rand(784, 784, requires_grad=True)

    def two_layers(x):
        return drop(x @ w), drop(x @ w)

    explained = torch._dynamo.explain(two_layers)(torch.rand(8, 784))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    x = torch.rand(512, 784) + 0.5
    torch.manual_seed(0)
    eager = two_layers(x)
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = torch.compile(two_layers)(x)
    assert not torch.equal(compiled[0] != 0, compiled[1] != 0)
    for c, e in zip(compiled, eager):
        assert torch.equal(c != 0, e != 0)
        torch.testing.assert_close(c, e)
    kept = compiled[0] != 0
    assert abs(1 - kept.float().mean().item() - 0.25) < 4 * (0.25 * 0.75 / kept.numel()) ** 0.5


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


def test_mlp_layers_stack_hidden_blocks_and_one_layer_keeps_table_2s_parameter_names():
    from infocatvae.nets import MLPDecoder, MLPEncoder

    one = MLPEncoder(hidden=400, dropout=0.25, layers=1)
    assert [k for k in one.state_dict()] == ["net.1.weight", "net.1.bias"]  # the names older checkpoints hold
    two = MLPEncoder(hidden=50, dropout=0.0, layers=2)
    linears = [m for m in two.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 50), (50, 50)]
    assert two(torch.rand(3, 1, 28, 28)).shape == (3, 50)
    dec = MLPDecoder(latent_dim=7, hidden=30, dropout=0.0, output_dropout=0.0, layers=3).eval()
    linears = [m for m in dec.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 30), (30, 30), (30, 30), (30, 784)]
    # the hidden blocks are ReLU layers: the output is an affine map of non-negative features
    h = dec.net[:-2](torch.randn(4, 7))
    assert (h >= 0).all() and dec(torch.randn(4, 7)).shape == (4, 784)


def test_discriminator_noise_perturbs_its_input_in_training_only():
    from infocatvae.nets import Discriminator

    torch.manual_seed(0)
    clean = Discriminator(in_dim=5, hidden=16, layers=2, noise=0.0)
    noisy = Discriminator(in_dim=5, hidden=16, layers=2, noise=0.3)
    noisy.load_state_dict(clean.state_dict())
    x = torch.randn(4096, 5)
    assert torch.equal(clean.train()(x), clean(x))  # no noise: deterministic in training
    assert torch.equal(noisy.eval()(x), clean(x))  # evaluation: no noise
    noisy.train()
    out1, out2 = noisy(x), noisy(x)
    assert not torch.equal(out1, out2)
    # a linear discriminator (no hidden layer) reads x + e, e ~ N(0, 0.3² I): its output moves by w·e,
    # whose standard deviation is 0.3 |w|
    lin = Discriminator(in_dim=5, hidden=16, layers=0, noise=0.3).train()
    w = lin.net[0].weight.detach().squeeze(0)
    shift = lin(x) - lin.eval()(x)
    assert abs(shift.std().item() / (0.3 * w.norm().item()) - 1) < 0.05
    assert abs(shift.mean().item()) < 0.05 * 0.3 * w.norm().item() * 3


def test_category_heads_return_row_major_codes():
    """q(z|x, c) for every c comes out row-major [B, K, d], not in the transposed layout of the category weight."""
    mu, logvar = CategoricalHeads(in_dim=16, K=5, d=4).gaussian(torch.randn(8, 16))
    assert mu.is_contiguous() and logvar.is_contiguous()


def test_authors_code_gru_decoder_reads_its_previous_output_row_as_a_grucell_loop_does():
    """``style=authors_code`` against an independent loop of ``nn.GRUCell`` with the same weights:
    h0 = tanh(FC(z)), the first input a row of zeros, then each step's sigmoid output; no ReLU."""
    from infocatvae.nets import GRUDecoder

    torch.manual_seed(0)
    dec = GRUDecoder(latent_dim=20, hidden=16, output_dropout=0.0, style="authors_code").eval()
    cell = nn.GRUCell(28, 16)
    for ours, theirs in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh"), ("bias_ih_l0", "bias_ih")):
        getattr(cell, theirs).data.copy_(getattr(dec.gru, ours))
    cell.bias_hh.data.copy_(dec.gru.bias_hh_l0)
    z = torch.randn(5, 20)
    h, row, rows = torch.tanh(dec.init(z)), torch.zeros(5, 28), []
    for _ in range(28):
        h = cell(row, h)
        logits = dec.out(h)
        rows.append(logits)
        row = torch.sigmoid(logits)
    torch.testing.assert_close(dec(z), torch.cat(rows, dim=1))
    # Table 3's decoder (the default) reads z at every step: a GRU of input width latent_dim
    assert GRUDecoder(latent_dim=20, hidden=16, output_dropout=0.0).gru.input_size == 20
    assert dec.gru.input_size == 28
    with pytest.raises(ValueError, match="style must be one of"):
        GRUDecoder(latent_dim=20, hidden=16, output_dropout=0.0, style="authors")


def test_the_dropout_operator_is_registered_as_seeded_randomness():
    """``infocatvae::dropout_scale`` carries torch's nondeterministic_seeded tag (two calls are two draws under
    torch.compile), given as a sequence, the form every torch with ``custom_op(tags=...)`` accepts."""
    from infocatvae import nets

    assert nets.SEEDED_CUSTOM_OPS, "premise: this torch's custom_op takes tags"
    # torch 2.14 also takes a lone Tag; the GPU image's 2.11 spread it into a list and raised at import: the call
    # in nets.py must pass a tuple (read from its source, as no older torch is installed here)
    import ast
    import inspect

    calls = [
        node
        for node in ast.walk(ast.parse(inspect.getsource(nets)))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.library.custom_op"
    ]
    tags = [kw.value for call in calls for kw in call.keywords if kw.arg == "tags"]
    assert tags and all(isinstance(t, (ast.Tuple, ast.List)) for t in tags)
    assert torch.Tag.nondeterministic_seeded in torch.ops.infocatvae.dropout_scale.default.tags
    a, b = nets.dropout_scale([64, 64], 0.5), nets.dropout_scale([64, 64], 0.5)
    assert not torch.equal(a, b)
