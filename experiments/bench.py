"""Benchmark: framework overhead, data share, KDE speed. ``make bench`` (python -m experiments.bench).

Prints one JSON object per line:

- ``{"record": "train", "model", "net", "device", "batch_size", "bare_img_per_s", "lightning_img_per_s",
  "train_ratio_lightning_vs_bare", "data_share"}``: a Lightning training epoch (the real config's
  callbacks and TensorBoard logger, no validation) against the same model's ``losses`` and
  optimiser step in a bare PyTorch loop over in-memory tensors, same batch size, same process;
  ``data_share`` is the time to fetch and scale a batch through the data module over the time of a
  Lightning step.
- ``{"record": "kde", ...}``: ``kde_score_samples`` (median of 10 calls) against scikit-learn's
  KernelDensity, both with its defaults (``kde_speedup_vs_sklearn``; inexact in 784-D) and with a single
  leaf, its one exact setting (``..._sklearn_exact``): time ratios and largest differences relative to
  max(|log p|, 1 nat); ``kde_max_rel_err`` is against the exact log-density (scipy ``cdist`` + logsumexp).
- ``{"record": "kde_protocol", ...}``: the whole Table 1 density protocol (5-fold search over the
  60K training images, then 10K samples), timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import hydra.utils
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from infocatvae.config import CONFIG_DIR, instantiate_all
from infocatvae.data import default_data_dir

MODELS = ("catvae", "infocatvae", "catvae_free", "aae")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def compose_cfg(model: str, net: str, out_dir: str, data_dir: str, device: str):
    data = "seq_mnist" if net == "gru" else "mnist"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={model}",
                f"net={net}",
                f"data={data}",
                f"paths.data_dir={data_dir}",
                f"trainer.accelerator={device}",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = out_dir
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_throughput(
    model, x_all: torch.Tensor, batch_size: int, steps: int, device: torch.device, repeats: int = 3
) -> float:
    """Images per second of the model's own loss and optimiser step(s) in a plain loop (median of ``repeats``)."""
    model.to(device).train()
    opts = model.configure_optimizers()
    opts = opts if isinstance(opts, tuple) else (opts,)
    idx = torch.randperm(len(x_all), device=x_all.device)

    def step(i: int) -> None:
        x = x_all[idx[i * batch_size : (i + 1) * batch_size]]
        if len(opts) == 3:  # the AAE's three phases (models/aae.py)
            for opt, loss in (
                (opts[0], model.recon_loss),
                (opts[1], model.generator_loss),
                (opts[2], lambda b: model.discriminator_loss(b)[0]),
            ):
                opt.zero_grad(set_to_none=True)
                loss(x).backward()
                opt.step()
        else:
            opts[0].zero_grad(set_to_none=True)
            model.losses(x)["loss"].backward()
            opts[0].step()

    for i in range(3):  # warm-up
        step(i)
    rates = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for i in range(steps):
            step(i % (len(x_all) // batch_size))
        sync(device)
        rates.append(steps * batch_size / (time.perf_counter() - t))
    return statistics.median(rates)


class EpochTimer(L.Callback):
    """Times each training epoch and, between epochs (outside the timed window), the bare loop on the
    same number of batches, so that each Lightning epoch is compared with a bare run of the same moment:
    this shared 2-core machine drifts by ±10 % over a minute."""

    def __init__(self, bare) -> None:
        self.bare = bare
        self.times: list[float] = []
        self.bare_rates: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.times.append(time.perf_counter() - self._t)
        self.bare_rates.append(self.bare())


def lightning_vs_bare(cfg, steps: int, device: torch.device, repeats: int = 5) -> tuple[float, float, float, object]:
    """Images per second of a Lightning training epoch of ``steps`` batches and of the bare loop, each the
    median over ``repeats`` alternating rounds after a warm-up round, and the median of their ratios."""
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False, _convert_="all")
    callbacks = instantiate_all(
        {k: c for k, c in cfg.callbacks.items() if k not in ("model_checkpoint", "last_checkpoint")}
    )
    bare_model = hydra.utils.instantiate(cfg.model, _recursive_=False, _convert_="all")

    def bare() -> float:  # the data module is set up by the trainer by then (on the GPU with data.on_device)
        x_all = datamodule.scale(datamodule.train_set.images[: 64 * cfg.data.batch_size]).to(device)
        return bare_throughput(bare_model, x_all, cfg.data.batch_size, steps, device, repeats=1)

    timer = EpochTimer(bare)
    loggers = instantiate_all(cfg.logger)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        max_epochs=1 + repeats,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, timer],
        logger=loggers,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with contextlib.redirect_stdout(sys.stderr):  # the progress bar writes to stdout; the records own it
        trainer.fit(model, datamodule=datamodule)
    light = [steps * cfg.data.batch_size / t for t in timer.times[1:]]
    ratios = [a / b for a, b in zip(light, timer.bare_rates[1:])]
    return statistics.median(light), statistics.median(timer.bare_rates[1:]), statistics.median(ratios), datamodule


def data_seconds_per_batch(datamodule, device: torch.device, batches: int) -> float:
    """Fetching and scaling a batch through the data module's own loader, as training does."""
    loader = datamodule.train_dataloader()
    it = iter(loader)
    sync(device)
    t = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
        datamodule.on_after_batch_transfer((x.to(device, non_blocking=True), y.to(device, non_blocking=True)), 0)
    sync(device)
    return (time.perf_counter() - t) / batches


def matmul_peak_flops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """The machine's measured float32 matrix-product rate (FLOP/s): the median of ``repeats`` n×n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def step_flops_per_image(cfg, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward of every phase), per image, counted by
    torch's FlopCounterMode (matrix products and convolutions; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = hydra.utils.instantiate(cfg.model, _recursive_=False, _convert_="all").train()
    x = torch.rand(batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        if hasattr(model, "recon_loss"):  # the AAE's three phases
            for loss in (model.recon_loss(x), model.generator_loss(x), model.discriminator_loss(x)[0]):
                loss.backward()
        else:
            model.losses(x)["loss"].backward()
    return counter.get_total_flops() / batch_size


def sigmoid_bce_reconstruction(logits, x, likelihood="bernoulli", step_size=28):
    """The reconstruction as computed before the decoders returned logits: a sigmoid, then
    ``binary_cross_entropy`` on the probabilities (``--baseline`` times it beside today's)."""
    import torch.nn.functional as F

    p = torch.sigmoid(logits.float())
    return F.binary_cross_entropy(p, x.float().expand_as(p), reduction="none").sum(-1)


def bench_formulation(data_dir: str, device_name: str, steps: int, rounds: int) -> None:
    """InfoCatVAE-MLP in the bare loop, today's logits loss against the sigmoid + BCE baseline,
    alternated ``rounds`` times (the median of the per-round ratios)."""
    from infocatvae import losses

    device = torch.device("cuda" if device_name == "gpu" else "cpu")
    today = losses.reconstruction
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg("infocatvae", "mlp", out, data_dir, device_name)
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("fit")
        x_all = dm.scale(dm.train_set.images[: 64 * cfg.data.batch_size]).to(device)
        models = [hydra.utils.instantiate(cfg.model, _recursive_=False, _convert_="all") for _ in range(2)]
        rates: dict[str, list[float]] = {"logits": [], "sigmoid_bce": []}
        try:
            for _ in range(rounds + 1):  # the first round warms up
                for name, model in zip(rates, models):
                    losses.reconstruction = today if name == "logits" else sigmoid_bce_reconstruction
                    rates[name].append(bare_throughput(model, x_all, cfg.data.batch_size, steps, device, repeats=1))
        finally:
            losses.reconstruction = today
    ratios = [a / b for a, b in zip(rates["logits"][1:], rates["sigmoid_bce"][1:])]
    emit(
        {
            "record": "formulation",
            "model": "infocatvae",
            "net": "mlp",
            "device": str(device),
            "steps": steps,
            "rounds": rounds,
            "logits_img_per_s": round(statistics.median(rates["logits"][1:]), 1),
            "sigmoid_bce_img_per_s": round(statistics.median(rates["sigmoid_bce"][1:]), 1),
            "speedup_logits_vs_sigmoid_bce": round(statistics.median(ratios), 3),
        }
    )


def bench_training(
    models, nets, steps_mlp: int, steps_gru: int, data_dir: str, device_name: str, rounds: int = 7
) -> None:
    device = torch.device("cuda" if device_name == "gpu" else "cpu")
    peak = matmul_peak_flops(device)
    emit({"record": "matmul_peak", "device": str(device), "gflop_per_s": round(peak / 1e9, 1)})
    for net in nets:
        steps = steps_mlp if net == "mlp" else steps_gru
        for model_name in models:
            with tempfile.TemporaryDirectory() as out:
                cfg = compose_cfg(model_name, net, out, data_dir, device_name)
                torch.manual_seed(0)
                light, bare, ratio, dm = lightning_vs_bare(cfg, steps, device, repeats=rounds)
                data_s = data_seconds_per_batch(dm, device, min(steps, 50))
                flops = step_flops_per_image(cfg, cfg.data.batch_size)
            emit(
                {
                    "record": "train",
                    "model": model_name,
                    "net": net,
                    "device": str(device),
                    "batch_size": cfg.data.batch_size,
                    "steps": steps,
                    "rounds": rounds,
                    "bare_img_per_s": round(bare, 1),
                    "lightning_img_per_s": round(light, 1),
                    "train_ratio_lightning_vs_bare": round(ratio, 3),
                    "data_share": round(data_s / (cfg.data.batch_size / light), 4),
                    "epoch_s": round(55000 / light, 1),
                    "mflop_per_image": round(flops / 1e6, 1),
                    "peak_fraction": round(flops * light / peak, 3),
                }
            )


def bench_kde(n_fit: int, n_samples: int, data_dir: str, device_name: str, protocol: bool, repeats: int = 5) -> None:
    from scipy.spatial.distance import cdist
    from scipy.special import logsumexp
    from sklearn.neighbors import KernelDensity

    from infocatvae import kde
    from infocatvae.data import load_split

    device = torch.device("cuda" if device_name == "gpu" else "cpu")
    images = load_split(data_dir, "mnist", train=True)[0].flatten(1).double() / 255.0
    fit, samples = images[:n_fit], images[-n_samples:]
    h = 0.2
    kde.kde_score_samples(fit[:100], samples[:10], h, device=device)  # warm-up
    times = []

    def time_ours() -> torch.Tensor:
        # Several calls before and after scikit-learn's ~50 s, their median: the speed of this shared VM
        # drifts by ±20 % over minutes, and this spreads our timing over the same window as scikit-learn's.
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            out = kde.kde_score_samples(fit, samples, h, device=device)
            sync(device)
            times.append(time.perf_counter() - t)
        return out

    time_ours()
    # scikit-learn as the paper would call it (default tree and tolerances) ...
    t = time.perf_counter()
    sk = KernelDensity(kernel="gaussian", bandwidth=h).fit(fit.numpy()).score_samples(samples.numpy())
    t_sk = time.perf_counter() - t
    # ... and in the one setting where it is exact in 784-D: a single leaf (leaf_size >= N), i.e. brute force.
    t = time.perf_counter()
    sk_exact = (
        KernelDensity(kernel="gaussian", bandwidth=h, leaf_size=n_fit).fit(fit.numpy()).score_samples(samples.numpy())
    )
    t_sk_exact = time.perf_counter() - t
    ours = time_ours()
    t_ours = statistics.median(times)
    # The exact reference: squared distances from direct differences (scipy's cdist, no expansion), float64
    # logsumexp. scikit-learn's default tree estimator is not exact here: in 784 dimensions it is off by
    # hundreds of nats for samples far from every fitted point (scikit-learn issues #7492, #25799).
    d2 = cdist(samples.numpy(), fit.numpy(), "sqeuclidean")
    exact = torch.as_tensor(
        logsumexp(-d2 / (2 * h * h), axis=1) - math.log(len(fit)) - 0.5 * fit.shape[1] * math.log(2 * math.pi * h * h)
    )
    ours, sk, sk_exact = ours.double().cpu(), torch.as_tensor(sk), torch.as_tensor(sk_exact)

    def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Relative to max(|b|, 1 nat): a log-density that crosses zero has no meaningful relative error.
        return (a - b).abs() / b.abs().clamp(min=1.0)

    emit(
        {
            "record": "kde",
            "device": str(device),
            "n_fit": n_fit,
            "n_samples": n_samples,
            "bandwidth": h,
            "sklearn_s": round(t_sk, 3),
            "torch_s": round(t_ours, 4),
            "torch_s_all": [round(x, 4) for x in times],
            "kde_speedup_vs_sklearn": round(t_sk / t_ours, 1),
            "kde_max_rel_err": rel(ours, exact).max().item(),
            "kde_max_abs_err": (ours - exact).abs().max().item(),
            "kde_max_rel_err_vs_sklearn": rel(ours, sk).max().item(),
            "sklearn_max_rel_err": rel(sk, exact).max().item(),
            "sklearn_share_within_1e-6": (rel(sk, exact) <= 1e-6).float().mean().item(),
            "sklearn_exact_s": round(t_sk_exact, 3),
            "kde_speedup_vs_sklearn_exact": round(t_sk_exact / t_ours, 1),
            "kde_max_rel_err_vs_sklearn_exact": rel(ours, sk_exact).max().item(),
        }
    )
    if protocol:
        # The Table 1 protocol as evaluate.py runs it, with conf/eval.yaml's grid and folds.
        kde_cfg = OmegaConf.load(os.path.join(CONFIG_DIR, "eval.yaml")).kde
        grid = [float(b) for b in kde_cfg.bandwidths]
        # Stand-in samples: mirrored training digits, far from every training image, so the pruning keeps
        # more pairs for them (146 per sample, measured) than for test images or blurred ones (~43): a
        # pessimistic timing of the scoring step.
        generated = images[:10000].flip(-1)
        t = time.perf_counter()
        best, _ = kde.select_bandwidth(images, grid, folds=kde_cfg.folds, chunk_size=kde_cfg.chunk_size, device=device)
        t_search = time.perf_counter() - t
        kde.kde_score_samples(images, generated, best, chunk_size=kde_cfg.chunk_size, device=device)
        sync(device)
        total = time.perf_counter() - t
        emit(
            {
                "record": "kde_protocol",
                "device": str(device),
                "n_fit": len(images),
                "n_samples": len(generated),
                "folds": kde_cfg.folds,
                "bandwidths": grid,
                "bandwidth": best,
                "search_s": round(t_search, 1),
                "score_s": round(total - t_search, 1),
                "seconds": round(total, 1),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--nets", nargs="+", default=["mlp", "gru"], choices=["mlp", "gru"])
    parser.add_argument("--steps-mlp", type=int, default=60, help="batches per timed MLP epoch")
    parser.add_argument("--steps-gru", type=int, default=12, help="batches per timed GRU epoch")
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="alternating Lightning/bare rounds per model (their median ratio is reported)",
    )
    parser.add_argument("--kde-fit", type=int, default=10000)
    parser.add_argument("--kde-samples", type=int, default=2000)
    parser.add_argument("--no-protocol", action="store_true", help="skip the full Table 1 density protocol")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "kde", "formulation"])
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="only the logits loss against the former sigmoid + BCE formulation (InfoCatVAE-MLP)",
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data_dir = default_data_dir()
    emit(
        {
            "record": "machine",
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": L.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    )
    if args.baseline or "formulation" not in args.skip:
        bench_formulation(data_dir, args.device, args.steps_mlp, args.rounds)
    if args.baseline:
        return
    if "train" not in args.skip:
        bench_training(args.models, args.nets, args.steps_mlp, args.steps_gru, data_dir, args.device, args.rounds)
    if "kde" not in args.skip:
        bench_kde(args.kde_fit, args.kde_samples, data_dir, args.device, not args.no_protocol)


if __name__ == "__main__":
    main()
