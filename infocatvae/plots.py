"""Image grids and figures (paper Figures 3 to 5) from any model's public API."""

from __future__ import annotations

from pathlib import Path

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


# ---- evaluation figures ------------------------------------------------------------------------


@torch.no_grad()
def interpolation_grid(model, steps: int = 9) -> torch.Tensor:
    """Figure 3: row c starts at decode(µ_c) and walks to µ_(c+1 mod K) in ``steps`` equal steps:
    columns decode((1 − t) µ_c + t µ_(c+1)) for t = 0, 1/steps, …, 1."""
    mu = model.prior_means
    t = torch.linspace(0.0, 1.0, steps + 1, device=mu.device)[None, :, None]
    path = (1 - t) * mu[:, None, :] + t * mu.roll(-1, dims=0)[:, None, :]  # [K, steps + 1, d]
    return _grid(model.decode(path.reshape(-1, mu.shape[-1])), nrow=steps + 1)


@torch.no_grad()
def lambda_grid(model, lambdas=range(10)) -> torch.Tensor:
    """Figure 4: row c decodes the block mean of category c (eq. 8) scaled by λ' = 0, 1, …, 9.

    The code is λ' times the unit block of c, written as µ_c / ||µ_c|| · λ' · √δ: exactly λ'·e_c
    (block) for the fixed prior, and the same norm along the learned direction for a free prior.
    """
    mu = model.prior_means
    delta = mu.shape[-1] // model.K
    unit = mu / mu.norm(dim=-1, keepdim=True).clamp_min(1e-12) * delta**0.5
    lam = torch.as_tensor(list(lambdas), dtype=mu.dtype, device=mu.device)
    codes = unit[:, None, :] * lam[None, :, None]  # [K, len(lambdas), d]
    return _grid(model.decode(codes.reshape(-1, mu.shape[-1])), nrow=len(lam))


def pca_figure(codes: torch.Tensor, labels: torch.Tensor, title: str = "latent means (PCA)"):
    """A matplotlib figure of the 2-D PCA projection of ``codes`` (N, d), coloured by true label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA

    codes = codes.detach().double().cpu().numpy()
    if codes.shape[1] >= 2:
        proj = PCA(n_components=2).fit_transform(codes)
    else:  # a one-dimensional code is drawn on a line
        proj = np.concatenate([codes - codes.mean(0), np.zeros_like(codes)], axis=1)
    labels = labels.cpu().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), fraction=0.046, pad=0.04, label="true label")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def save_grid(grid: torch.Tensor, path) -> None:
    """Save an image grid (3, H, W) in [0, 1] as a PNG."""
    from torchvision.utils import save_image

    save_image(grid, str(path))


@torch.no_grad()
def evaluation_figures(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir,
    *,
    per_category: int,
    n_recon: int,
    pca_points: int,
    batch_size: int,
) -> dict:
    """Figure 3 (interpolation) and Figure 4 (λ variation) where the model ``has_prior_means``, Figure 5
    style samples, reconstructions of the first ``n_recon`` inputs ``x`` and the PCA of the latent means
    of ``pca_points`` of them; each saved as ``<name>.png`` in ``out_dir``. Returns {name: grid tensor or
    matplotlib figure}."""
    figs: dict = {}
    if model.has_prior_means:
        figs["fig3_interpolation"] = interpolation_grid(model)
        figs["fig4_lambda"] = lambda_grid(model)
    figs["samples"] = samples_grid(model, per_category)
    figs["reconstructions"] = reconstruction_grid(model, x[:n_recon])
    n = min(pca_points, len(x))
    codes = torch.cat([model.embed(x[s : s + batch_size]) for s in range(0, n, batch_size)])[:n]
    figs["latent_pca"] = pca_figure(codes, y[:n], title=f"{type(model).__name__}: PCA of the latent means")
    for name, fig in figs.items():
        path = Path(out_dir) / f"{name}.png"
        if torch.is_tensor(fig):
            save_grid(fig, path)
        else:
            fig.savefig(path)
    return figs
