"""Image grids and figures (paper Figures 3 to 5) from any model's public API."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid

from infocatvae.models.base import IMAGE_SHAPE


def _grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    return make_grid(images.detach().float().cpu().view(-1, *IMAGE_SHAPE), nrow=nrow, pad_value=1.0)


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor) -> torch.Tensor:
    """Inputs (top row) above their reconstructions (bottom row)."""
    return _grid(torch.cat([x.reshape(-1, *IMAGE_SHAPE), model.reconstruct(x)]), nrow=len(x))


@torch.no_grad()
def samples_grid(model, per_category: int = 8) -> torch.Tensor:
    """Class-conditional samples, one row per category (the style of Figure 5)."""
    c = torch.arange(model.K, device=model.device).repeat_interleave(per_category)
    return _grid(model.sample(c), nrow=per_category)


@torch.no_grad()
def centroids_grid(model) -> torch.Tensor:
    """decode(µ_c) for every category: one row."""
    return _grid(model.decode(model.prior_means), nrow=model.K)
