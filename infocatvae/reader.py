"""An independent reader of generated samples: a small CNN trained once on the real training images.

The paper's information metric (section 10) reads the generated samples with the model's own
classifier q(c|x), which the model trains itself (InfoCatVAE even on its own samples, term (7)), so a
model can score well on it with samples no one would read as digits. The reader here is a classifier
the model never trained against: trained on the real labelled training images of the data set, kept
on disk, then applied to N samples per category (c fixed, z ~ p(z|c), decoded). It reports

- ``gen_confidence``: its mean max-softmax probability on the samples (how readable they are),
- ``gen_agreement``: the share of each category's samples read as that category's majority label,
  averaged over the categories (how consistent a category is),
- ``gen_distinct``: how many distinct labels the K categories' majority labels make up (how many
  classes the categories cover).

These are this project's metrics, not the paper's. Like most neural classifiers, the reader is overconfident
away from its training images (it reads dense uniform noise as an 8 with ~0.9 confidence, sparse
noise with ~0.66): read ``gen_confidence`` together with ``gen_agreement`` and ``gen_distinct``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from infocatvae.data import ensure_dataset, load_split
from infocatvae.metrics import seeded

log = logging.getLogger(__name__)

# Bump when the network, its training or the cache format changes: older cache files are then ignored.
READER_VERSION = 1
N_LABELS = 10
# The test accuracy the reader should reach with its default settings; evaluate warns below it.
MIN_TEST_ACC = {"mnist": 0.98, "fashion_mnist": 0.89}


class ReaderCNN(nn.Module):
    """Two 5×5 convolutions of stride 2 (16 and 32 channels, batch norm, ReLU) and two fully connected
    layers (128 hidden units): about 0.9 M multiply-adds per image.

    A small torch CNN rather than a ready-made library model: scikit-learn's logistic regression reaches
    only ~92 % test accuracy on MNIST, and the reader must reach 98 % (89 % on FashionMNIST); with the
    defaults this one reaches 99.0 % and 90.1 % after 2 epochs.
    Takes images in [0, 1] of any shape with 784 values per image; returns logits (N, 10).
    """

    def __init__(self, width: int = 16, hidden: int = 128, n_labels: int = N_LABELS) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(*block(1, width), *block(width, 2 * width))  # 28 → 14 → 7
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, n_labels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, 28, 28).float()
        return self.head(self.features(x * 2.0 - 1.0))


@dataclass(frozen=True)
class ReaderSettings:
    """What the trained weights depend on (with the data set and READER_VERSION): the cache key.
    The values are conf/eval.yaml's ``reader`` block (``from_config``); they have no defaults here."""

    epochs: int
    batch_size: int
    lr: float  # Adam's learning rate, decayed linearly to 0 over the training steps
    width: int
    hidden: int
    seed: int
    train_size: int | None  # training images used (the first ones of a seeded shuffle); None: all 60K

    @classmethod
    def from_config(cls, reader_cfg: Mapping) -> ReaderSettings:
        """The settings of a ``reader`` config block (its other keys are ignored)."""
        return cls(**{f.name: reader_cfg[f.name] for f in fields(cls)})

    def key(self, dataset: str) -> dict[str, Any]:
        return {
            "version": READER_VERSION,
            "data": dataset,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": float(self.lr),
            "width": self.width,
            "hidden": self.hidden,
            "seed": self.seed,
            "train_size": self.train_size,
        }


@dataclass
class Reader:
    net: ReaderCNN
    test_acc: float
    cached: bool
    seconds: float  # time to train it (or to load it from the cache)
    train_seconds: float  # time its training took, when it was trained (also read back from the cache)
    path: Path | None


def cache_path(cache_dir: str | Path, dataset: str, settings: ReaderSettings) -> Path:
    digest = hashlib.sha1(json.dumps(settings.key(dataset), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"reader_{dataset}_v{READER_VERSION}_{digest}.pt"


def train_reader(
    images: torch.Tensor, labels: torch.Tensor, settings: ReaderSettings, device: str | torch.device = "cpu"
) -> ReaderCNN:
    """Adam on cross-entropy over ``images`` (uint8 (N, 28, 28) or floats in [0, 1]), its learning rate
    decayed linearly to 0, seeded by ``settings.seed``; torch's global random state is left as it was."""
    device = torch.device(device)
    with seeded(settings.seed, device), torch.enable_grad():
        net = ReaderCNN(settings.width, settings.hidden).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        steps = settings.epochs * -(-len(images) // settings.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
        gen = torch.Generator().manual_seed(settings.seed)
        x = _scale(images).to(device)
        y = labels.to(device)
        net.train()
        for _ in range(settings.epochs):
            for idx in torch.randperm(len(x), generator=gen).split(settings.batch_size):
                idx = idx.to(device)
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


def _scale(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def predict_proba(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Softmax probabilities (N, 10) of images in [0, 1] (uint8 is scaled), on the reader's device."""
    device = next(net.parameters()).device
    out = [net(_scale(images[s : s + batch_size]).to(device)).softmax(-1) for s in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, N_LABELS, device=device)


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    pred = predict_proba(net, images, batch_size).argmax(-1).cpu()
    return float((pred == labels.cpu()).float().mean())


def load_or_train(
    data_dir: str | Path,
    dataset: str,
    settings: ReaderSettings,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Reader:
    """The reader of ``dataset``: read from ``cache_dir`` when a file there has the same key
    (data set, settings, READER_VERSION), else trained on the real training images, scored on the
    real test images and saved there (null ``cache_dir``: not kept)."""
    device = torch.device(device)
    key = settings.key(dataset)
    t0 = time.perf_counter()
    path = cache_path(cache_dir, dataset, settings) if cache_dir else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                net = ReaderCNN(settings.width, settings.hidden)
                net.load_state_dict(saved["state_dict"])
                return Reader(
                    net.to(device).eval(),
                    float(saved["test_acc"]),
                    True,
                    time.perf_counter() - t0,
                    float(saved.get("train_seconds", float("nan"))),
                    path,
                )
        except Exception as err:  # a truncated or foreign file (torch.load raises several kinds): train again
            log.warning("reader cache %s unreadable (%s); training again", path, err)
    ensure_dataset(data_dir, dataset, download=False)
    images, labels = load_split(data_dir, dataset, train=True)
    if settings.train_size is not None:
        gen = torch.Generator().manual_seed(settings.seed)
        keep = torch.randperm(len(labels), generator=gen)[: settings.train_size]
        images, labels = images[keep], labels[keep]
    net = train_reader(images, labels, settings, device)
    train_seconds = time.perf_counter() - t0
    test_images, test_labels = load_split(data_dir, dataset, train=False)
    test_acc = accuracy(net, test_images, test_labels)
    log.info(
        "reader for %s trained in %.1f s on %d images: test accuracy %.4f",
        dataset,
        train_seconds,
        len(labels),
        test_acc,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save({"key": key, "state_dict": state, "test_acc": test_acc, "train_seconds": train_seconds}, tmp)
        os.replace(tmp, path)
    return Reader(net, test_acc, False, time.perf_counter() - t0, train_seconds, path)


def sample_metrics(probs: torch.Tensor) -> dict[str, Any]:
    """``gen_confidence``, ``gen_agreement`` and ``gen_distinct`` of the reader's probabilities
    ``probs`` (K categories, N samples each, labels): see the module docstring. Also
    ``gen_majority_labels`` (the K majority labels; ties go to the smaller label) and
    ``gen_category_agreement`` (each category's share)."""
    if probs.ndim != 3 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"probs must be (K, N, labels) with K, N >= 1, got {tuple(probs.shape)}")
    probs = probs.detach().float().cpu()
    conf, pred = probs.max(-1)  # (K, N)
    counts = F.one_hot(pred, probs.shape[-1]).sum(1)  # (K, labels)
    majority = counts.argmax(-1)  # first maximum: the smaller label on ties
    share = counts.max(-1).values.float() / probs.shape[1]
    return {
        "gen_confidence": float(conf.mean()),
        "gen_agreement": float(share.mean()),
        "gen_distinct": int(len(torch.unique(majority))),
        "gen_majority_labels": majority.tolist(),
        "gen_category_agreement": share.tolist(),
    }


@torch.no_grad()
def read_samples(net: nn.Module, model, n_per_category: int, batch_size: int = 1000) -> dict[str, Any]:
    """``n_per_category`` samples of each of the model's K categories (``model.sample(c)``: z ~ p(z|c),
    decoded), read by ``net``; ``sample_metrics`` of them. Draws from torch's global random state."""
    c = torch.arange(model.K, device=model.device).repeat_interleave(n_per_category)
    probs = torch.cat(
        [
            predict_proba(net, model.sample(c[s : s + batch_size]), batch_size).cpu()
            for s in range(0, len(c), batch_size)
        ]
    )
    out = sample_metrics(probs.reshape(model.K, n_per_category, -1))
    out["gen_n_per_category"] = n_per_category
    return out


def reader_metrics(
    reader_cfg: Mapping, data_dir: str, dataset: str, model, device: torch.device, seed: int, batch_size: int
) -> dict[str, Any]:
    """The reader of ``dataset`` (trained, or read from ``reader_cfg.cache_dir``) reads
    ``reader_cfg.n_per_category`` samples of each category of ``model``: ``read_samples``'s metrics, its own
    ``reader_test_acc`` and its timings. Drawn under their own seed, so that the other metrics of an
    evaluation draw the same numbers with the reader on or off."""
    device_name = reader_cfg.get("device")
    reader_device = device if device_name in (None, "auto") else torch.device(device_name)
    r = load_or_train(
        data_dir, dataset, ReaderSettings.from_config(reader_cfg), reader_cfg.get("cache_dir"), reader_device
    )
    target = MIN_TEST_ACC.get(dataset)
    if target is not None and r.test_acc < target:
        log.warning(
            "reader: test accuracy %.4f on %s is below %.2f; its gen_* metrics are less trustworthy",
            r.test_acc,
            dataset,
            target,
        )
    with seeded(seed, model.device):
        out = read_samples(r.net, model, reader_cfg["n_per_category"], batch_size)
    return {
        **out,
        "reader_test_acc": r.test_acc,
        "reader_cached": r.cached,
        "reader_seconds": r.seconds,
        "reader_train_seconds": r.train_seconds,
        "reader_path": str(r.path) if r.path is not None else None,
    }
