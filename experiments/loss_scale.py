"""Can clustering pay under a likelihood? What the reconstruction can save by knowing each image's digit,
against what the KL term charges for a confident q(c|x).

A CatVAE that puts image x confidently in one category pays beta_cat * KL(q(c|x) || uniform) = beta_cat * log K
for it (eq. 5); what it can buy is a lower reconstruction loss. Two bounds on that, from the data alone: the
best decoder that ignores its code outputs the training mean image (both likelihoods are minimised by the mean
pixel value), so no code can save more than that image's test reconstruction (the loss is >= 0); the best
decoder that knows only the digit outputs that digit's mean image, so knowing the category saves at least the
difference of the two. For a loss of reconstruction + beta * KL (CatVAE, free-prior CatVAE): when the first
bound is below beta_cat * log K, no confident clustering of real images lowers the loss, however long the
model trains; when the second is above, a decoder told the category would make clustering pay before z carries
anything else. That second bound is optimistic: the CatVAE's decoder is told z ~ p(z|c), not c, and the
components of p(z|c) overlap (eq. 8's means are lambda * sqrt(2 delta) apart), so a decoder of z alone saves
less. (InfoCatVAE's info term acts on generated images and is left out.) No training: the data and the shipped loss
(``infocatvae.losses.reconstruction``) with ``K`` and ``beta_cat`` of ``--experiment``.

    python experiments/loss_scale.py
"""

from __future__ import annotations

import argparse
import math
import time

import common
import torch

from infocatvae.config import compose_train
from infocatvae.data import default_data_dir, ensure_dataset, load_split
from infocatvae.losses import LIKELIHOODS, reconstruction


def constant_decoder_recon(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, likelihood: str
) -> tuple[float, float]:
    """Mean test reconstruction (``losses.reconstruction``) of the training mean image and of the training mean
    image of each test image's digit. Images are flat (N, 784) in [0, 1]."""

    # logits of the mean pixel values; clamped so that a pixel that is 0 in every image costs a finite amount
    def logits(p: torch.Tensor) -> torch.Tensor:
        return torch.logit(p, eps=1e-6)

    mean = train_x.mean(0)
    class_means = torch.stack([train_x[train_y == k].mean(0) for k in range(int(train_y.max()) + 1)])
    whole = reconstruction(logits(mean).expand_as(test_x), test_x, likelihood).mean().item()
    by_digit = reconstruction(logits(class_means[test_y]), test_x, likelihood).mean().item()
    return whole, by_digit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=default_data_dir(), help="MNIST in torchvision's layout")
    p.add_argument("--experiment", default="fig5_catvae", help="the experiment config whose K and beta_cat apply")
    args = p.parse_args()
    start = time.perf_counter()
    model = compose_train([f"experiment={args.experiment}"]).model
    charge = model.beta_cat * math.log(model.K)
    ensure_dataset(args.data_dir, "mnist", download=False)  # a clear error naming the missing files
    (train_x, train_y), (test_x, test_y) = (load_split(args.data_dir, "mnist", train) for train in (True, False))
    train_x, test_x = (x.flatten(1).float() / 255 for x in (train_x, test_x))
    rows = []
    for likelihood in LIKELIHOODS:
        whole, by_digit = constant_decoder_recon(train_x, train_y, test_x, test_y, likelihood)
        rows.append(
            f"| `{likelihood}` | {whole:.3f} | {by_digit:.3f} | {whole - by_digit:.3f} | {charge:.2f} | "
            f"{'no' if whole < charge else 'yes' if whole - by_digit > charge else 'not settled'} |"
        )
    lines = [
        "# Can clustering pay? The reconstruction's scale against the categorical KL",
        "",
        " ".join(__doc__.split("\n\n")[1].split()),
        "",
        f"Config `experiment={args.experiment}`: K = {model.K}, beta_cat = {model.beta_cat} (the model's "
        f"likelihood there: `{model.likelihood}`). MNIST, 60,000 training and 10,000 test images, pixels / 255.",
        "",
        "| likelihood | recon of the mean image (no code can save more) | recon of each digit's mean image "
        "| saving by the digit alone | beta_cat · log K | can a confident clustering pay? |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "`bernoulli`: binary cross-entropy summed over the 784 pixels (appendix B); `gaussian`: appendix C's "
        '"sum of the mean squared error of each time step" (squared error averaged over a 28-pixel row, summed '
        f"over the 28 rows). {common.hardware()}; {time.perf_counter() - start:.1f} s; "
        "`python experiments/loss_scale.py`.",
    ]
    common.write("loss_scale", lines)


if __name__ == "__main__":
    main()
