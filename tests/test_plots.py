"""The image grids' layout: which image lands in which cell (``infocatvae.plots``). A stand-in model whose
images carry their category (or their input) as a pixel value, so that each cell can be read back."""

from __future__ import annotations

import torch

from infocatvae import plots

CELL = 30  # a 28-pixel image and make_grid's 2-pixel padding


class Marked:
    """``sample(c)``: images of value (c + 1) / 20, a mark per category; ``reconstruct(x)``: 1 − x."""

    K, device = 4, torch.device("cpu")

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        return ((c.float() + 1) / 20).view(-1, 1, 1, 1).expand(-1, 1, 28, 28)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x.view(-1, 1, 28, 28)


def cell(grid: torch.Tensor, row: int, col: int) -> torch.Tensor:
    return grid[0, 2 + row * CELL : CELL + row * CELL, 2 + col * CELL : CELL + col * CELL]


def test_samples_grid_has_one_row_per_category():
    grid = plots.samples_grid(Marked(), per_category=3)
    assert grid.shape[1:] == (2 + 4 * CELL, 2 + 3 * CELL)  # K rows, per_category columns
    for c in range(4):
        for col in range(3):
            assert torch.all(cell(grid, c, col) == (c + 1) / 20), (c, col)


def test_reconstruction_grid_puts_the_inputs_above_their_reconstructions():
    x = torch.linspace(0.1, 0.6, 6).view(-1, 1).expand(-1, 784)  # image i of value x_i
    grid = plots.reconstruction_grid(Marked(), x)
    assert grid.shape[1:] == (2 + 2 * CELL, 2 + 6 * CELL)
    for i in range(6):
        assert torch.allclose(cell(grid, 0, i), x[i, 0].expand(28, 28))
        assert torch.allclose(cell(grid, 1, i), 1 - x[i, 0].expand(28, 28))
