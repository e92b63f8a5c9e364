"""Networks, separate from the objectives that train them (appendix B, Table 2; appendix C, Table 3).

Every encoder maps a batch of images, (B, 1, 28, 28), (B, 784) or row sequences
(B, 28, 28), to features ``h`` of width ``out_dim``; every decoder maps codes
(B, latent_dim) to flat pixel logits (B, 784): the paper's final sigmoid is
applied by the models where pixel values are needed (``decode``) and fused into
the loss otherwise (``losses.reconstruction``). Both families accept
either data view: the MLP flattens whatever it gets and the GRU reads any
28×28 image as 28 rows, so ``net`` and ``data`` compose freely.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask, on the CPU, is drawn from random bits: the same distribution, faster.

    torch's CPU generators fill a tensor one number at a time from one Mersenne twister: its
    ``bernoulli_`` (behind ``F.dropout``) and ``uniform_`` both draw one number per element (the
    ``profile`` record of ``make bench``: ``bernoulli_`` took half of an InfoCatVAE-MLP step, uniform
    numbers a fifth). Here each element reads one byte of 64-bit random words (``keep_mask``), through
    the operator ``infocatvae::dropout_scale`` (``dropout_scale``), which ``torch.compile`` calls as it is:
    compiled code draws the same masks as eager code, at eager's speed. Off the CPU (CUDA's fused kernel)
    it is ``nn.Dropout``. The kept values are scaled by 1 / (1 − p) in float32, so a bf16 input gives a
    float32 output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p == 1 or x.device.type != "cpu" or not SEEDED_CUSTOM_OPS:
            return super().forward(x)
        return x * dropout_scale(list(x.shape), self.p)


def _dropout_scale(shape: list[int], p: float) -> torch.Tensor:
    """A float32 CPU tensor of ``shape``: 1 / (1 − p) with probability 1 − p, else 0, independently; the
    multiplier of ``Dropout``, equal to ``keep_mask`` drawn from the same generator state, scaled."""
    draws, threshold = _random_draws(shape, p)
    if draws.dtype == torch.uint8:
        # bytes compared as float32 (exact): torch's uint8 >= with its bool output took 4 times as long
        return draws.to(torch.float32).ge_(threshold).mul_(1 / (1 - p))
    # through uint8: torch's CPU cast from bool to float32 is scalar code, from uint8 vectorised (6 times faster)
    return (draws >= threshold).view(torch.uint8).to(torch.float32).mul_(1 / (1 - p))


def _dropout_scale_fake(shape: list[int], p: float) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32)


# An operator of its own, opaque to torch.compile: dynamo cannot trace ``random_``, and inductor's own CPU
# draws (one Philox number per element, a boolean mask cast through a scalar loop) made the compiled
# InfoCatVAE-MLP step half as fast as eager (experiments/results/bench.md). Tagged as seeded randomness:
# two calls with the same arguments are two draws (compiled graphs would otherwise merge them into one).
# The tags are a tuple: older torch spreads them into a list (a lone Tag raised TypeError at import there).
# A torch whose custom_op takes no tags keeps nn.Dropout's own draws: an untagged op could be merged.
SEEDED_CUSTOM_OPS = "tags" in inspect.signature(torch.library.custom_op).parameters
if SEEDED_CUSTOM_OPS:
    dropout_scale = torch.library.custom_op(
        "infocatvae::dropout_scale", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
    )(_dropout_scale)
    dropout_scale.register_fake(_dropout_scale_fake)
else:
    dropout_scale = _dropout_scale


def keep_mask(shape: torch.Size | tuple[int, ...] | list[int], p: float) -> torch.Tensor:
    """A boolean CPU tensor of ``shape``, each element True with probability 1 − p, independently: one byte of
    torch's 64-bit random words per element when 256 p is an integer, exactly probability 1 − p (Table 2's
    0.25, 0.5); else 32 bits (resolution 2⁻³², finer than a float32 uniform's 2⁻²⁴)."""
    draws, threshold = _random_draws(shape, p)
    return draws >= threshold


def _random_draws(shape: torch.Size | tuple[int, ...] | list[int], p: float) -> tuple[torch.Tensor, int]:
    """Random integers of ``shape`` from torch's 64-bit random words, bytes or 32-bit words, and the threshold at
    or above which an element is kept (``keep_mask``)."""
    n = math.prod(shape)
    if (p * 256).is_integer():
        dtype, threshold = torch.uint8, int(p * 256)  # a byte b in [0, 255]: P(b >= 256 p) = 1 − p
    else:  # a signed word v in [-2³¹, 2³¹): P(v >= round(p 2³²) − 2³¹) = 1 − round(p 2³²) / 2³²
        dtype, threshold = torch.int32, min(round(p * 2**32) - 2**31, 2**31 - 1)
    words = torch.empty(-(-n * dtype.itemsize // 8), dtype=torch.int64).random_(-(2**63), None)
    return words.view(dtype)[:n].view(shape), threshold


def _hidden_blocks(in_dim: int, hidden: int, dropout: float, layers: int) -> list[nn.Module]:
    """``layers`` blocks FC + Dropout + ReLU of width ``hidden``, the first reading ``in_dim`` (Table 2's MLPs)."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(in_dim if i == 0 else hidden, hidden), Dropout(dropout), nn.ReLU()]
    return blocks


class MLPEncoder(nn.Module):
    """Table 2, left column: FC 784→400 + Dropout(0.25) + ReLU (``layers = 1``); ``layers`` such blocks
    of width ``hidden`` (public reimplementations of the clustering AAE use two)."""

    def __init__(self, hidden: int, dropout: float, layers: int, in_dim: int = 784) -> None:
        super().__init__()
        self.out_dim = hidden
        self.net = nn.Sequential(nn.Flatten(), *_hidden_blocks(in_dim, hidden, dropout, layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Table 2, right column: FC d→400 + Dropout(0.25) + ReLU, FC 400→784 + Dropout(0.25) + Sigmoid
    (``layers = 1``: the number of FC + Dropout + ReLU blocks before the output layer).

    Returns the logits, before the sigmoid; ``output_dropout`` is the dropout on them (the
    paper's 0.25; the authors' public code has none)."""

    def __init__(
        self,
        latent_dim: int,
        hidden: int,
        dropout: float,
        output_dropout: float,
        layers: int,
        out_dim: int = 784,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *_hidden_blocks(latent_dim, hidden, dropout, layers), nn.Linear(hidden, out_dim), Dropout(output_dropout)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class GRUEncoder(nn.Module):
    """Table 3, left column: a bidirectional GRU (hidden 128) over the 28 rows; its two final states (256)."""

    def __init__(self, hidden: int, row_dim: int = 28) -> None:
        super().__init__()
        self.row_dim = row_dim
        self.out_dim = 2 * hidden
        self.gru = nn.GRU(row_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.gru(x.reshape(x.shape[0], -1, self.row_dim))  # h_n: [2, B, hidden]
        return torch.cat([h_n[0], h_n[1]], dim=-1)


class GRUDecoder(nn.Module):
    """Table 3, right column (``style="table3"``): FC d→128 gives the initial state; a GRU reads z at
    each of the 28 steps (hidden 128) + ReLU; FC 128→28 + Sigmoid at every step. Returns the logits
    before the sigmoid, (B, steps·row_dim).

    ``style="authors_code"``: the recurrent decoder of the authors' public code (``infoCatRecVAE.py``),
    which is not Table 3's: the initial state is tanh(FC(z)), the GRU reads at each step its own previous
    output row (the sigmoid of the previous logits; zeros at the first step) instead of z, and no ReLU
    comes before the output layer. (That code also leaves the first row out of its loss; here every row
    is decoded and scored.) Its 28 steps run one after another, each waiting for the last one's output.
    """

    STYLES = ("table3", "authors_code")

    def __init__(
        self,
        latent_dim: int,
        hidden: int,
        output_dropout: float,
        row_dim: int = 28,
        steps: int = 28,
        style: str = "table3",
    ) -> None:
        super().__init__()
        if style not in self.STYLES:
            raise ValueError(f"GRUDecoder style must be one of {list(self.STYLES)}, got {style!r}")
        self.steps, self.row_dim, self.style = steps, row_dim, style
        self.init = nn.Linear(latent_dim, hidden)
        self.gru = nn.GRU(latent_dim if style == "table3" else row_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, row_dim)
        self.drop = Dropout(output_dropout)  # none in Table 3; a field for the same interface as the MLP

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.style == "authors_code":
            return self._forward_on_previous_rows(z)
        h0 = self.init(z).unsqueeze(0)
        seq, _ = self.gru(z.unsqueeze(1).expand(-1, self.steps, -1), h0)
        return self.drop(self.out(F.relu(seq))).flatten(1)

    def _forward_on_previous_rows(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.init(z)).unsqueeze(0)
        row = z.new_zeros(len(z), 1, self.row_dim)
        logits = []
        for _ in range(self.steps):
            out, h = self.gru(row, h)
            step = self.drop(self.out(out))  # (B, 1, row_dim)
            logits.append(step)
            row = torch.sigmoid(step)
        return torch.cat(logits, dim=1).flatten(1)


class CategoricalHeads(nn.Module):
    """q(c|x) and the Gaussian heads of q(z|x, c) on [h, onehot(c)] (Tables 2 and 3: D, Qµ, Qσ).

    Qµ and Qσ are linear layers on the concatenation [h, onehot(c)]. Because the
    one-hot part of a linear layer only selects a column of its weight, the heads
    are evaluated for all K categories at once as ``W_h h + W_c[:, c] + b``: one
    batched call, no loop over c. ``soft`` feeds [h, q(c|x)] instead (the
    authors' public code).
    """

    def __init__(self, in_dim: int, K: int, d: int) -> None:
        super().__init__()
        self.in_dim, self.K = in_dim, K
        self.classifier = nn.Linear(in_dim, K)
        self.mu = nn.Linear(in_dim + K, d)
        self.logvar = nn.Linear(in_dim + K, d)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h)

    def _all_categories(self, layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        w_h, w_c = layer.weight[:, : self.in_dim], layer.weight[:, self.in_dim :]
        # w_c.t() made contiguous (a K × d copy): added to it as a transposed view, the [B, K, d] sum took its
        # strides (200, 1, 10), and every op after it (the draw of z, the decoder's input) read that layout
        return F.linear(h, w_h, layer.bias).unsqueeze(1) + w_c.t().contiguous().unsqueeze(0)  # [B, K, d]

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x, c) for every c: two [B, K, d] tensors."""
        return self._all_categories(self.mu, h), self._all_categories(self.logvar, h)

    def gaussian_soft(self, h: torch.Tensor, q_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the heads fed with [h, q(c|x)]: two [B, d] tensors."""
        hq = torch.cat([h, q_c], dim=-1)
        return self.mu(hq), self.logvar(hq)


class Discriminator(nn.Module):
    """MLP discriminator on codes for the adversarial autoencoder: returns one logit per code.

    ``noise`` > 0 adds Gaussian noise of that standard deviation to every code it reads in training
    (instance noise, as in the public reimplementation of the clustering AAE by musyoku, std 0.3): an
    exact one-hot draw and a saturated softmax then overlap, so the encoder is not pushed to saturate
    y to pass for a prior draw. None at evaluation."""

    def __init__(self, in_dim: int, hidden: int, layers: int, noise: float) -> None:
        super().__init__()
        self.noise = noise
        mods: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        mods.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise > 0:
            z = z + self.noise * torch.randn_like(z)
        return self.net(z).squeeze(-1)
