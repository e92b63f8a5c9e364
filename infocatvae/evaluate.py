"""Evaluation entry point: ``python -m infocatvae.evaluate ckpt_path=<file>`` (console script ``infocatvae-eval``).

Orchestration only: read the checkpoint once, rebuild its model and data module, run the scores, write
``metrics.json`` and the figures into the evaluation folder (``runs.eval_dir``) and the same to the
training run's TensorBoard. The scores live with their concepts: ``metrics`` (clustering, the information
cross-entropy, test reconstruction and ELBO), ``kde`` (Table 1's density and the Parzen protocol),
``reader`` (the independent reader of the samples), ``plots`` (Figures 3 to 5). Which are the paper's
(section 10): ``kde_ll`` and ``info_ce`` (with its variant ``info_ce_on_probs``); the rest are ours.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from infocatvae import kde, metrics, plots, reader, validation
from infocatvae.checkpoints import datamodule_from, logger_step, model_from, read_checkpoint
from infocatvae.config import CONFIG_DIR
from infocatvae.data import load_split
from infocatvae.runs import run_dir_of  # also registers conf/eval.yaml's ${eval_dir:...} resolver

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def pick(node: DictConfig, *keys: str) -> dict[str, Any]:
    """Some fields of a config block as keyword arguments (None where the block lacks one)."""
    return {k: OmegaConf.to_container(v) if OmegaConf.is_config(v := node.get(k)) else v for k in keys}


def tensorboard_folder(cfg: DictConfig) -> Path | None:
    """``tensorboard_dir``: auto (the training run's ``tensorboard/`` when it has one), a folder, or none."""
    tb = cfg.get("tensorboard_dir")
    if tb is None or tb is False or str(tb).lower() in ("none", "null", ""):
        return None
    if tb == "auto":
        run = run_dir_of(cfg.ckpt_path)
        return run / "tensorboard" if run is not None and (run / "tensorboard").is_dir() else None
    return Path(tb)


def write_outputs(out_dir: Path, tb: Path | None, results: dict[str, Any], figs: dict[str, Any], step: int) -> None:
    """``metrics.json``, and the numbers and figures under ``eval/`` in TensorBoard at ``step``, the checkpoint's
    place on the training curves (``checkpoints.logger_step``)."""
    import matplotlib.pyplot as plt

    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    try:
        if tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(tb)) as writer:
                for k, v in results.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        writer.add_scalar(f"eval/{k}", v, step)
                for name, fig in figs.items():
                    add = writer.add_image if torch.is_tensor(fig) else writer.add_figure
                    add(f"eval/{name}", fig, step)
    finally:
        for fig in figs.values():
            if not torch.is_tensor(fig):
                plt.close(fig)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint ``cfg.ckpt_path``; write ``metrics.json`` and the figures to ``cfg.output_dir``.
    Returns the metrics (the content of ``metrics.json``)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path is required: python -m infocatvae.evaluate ckpt_path=<file.ckpt>")
    validation.check(cfg)
    start = time.perf_counter()
    device = pick_device(cfg.device)
    ckpt = read_checkpoint(cfg.ckpt_path)  # the one read: a CheckpointError names a bad file
    model = model_from(ckpt, cfg.ckpt_path).to(device)
    fallback = OmegaConf.to_container(cfg.data, resolve=True)
    dm, data_source = datamodule_from(ckpt if cfg.infer_data else {}, cfg.data.data_dir, fallback)
    dm.setup("fit")
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    n_test = cfg.n_test or len(dm.test_set)
    x_test = dm.scale(dm.test_set.images[:n_test]).to(device)
    y_test = dm.test_set.labels[:n_test]

    results: dict[str, Any] = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "model": type(model).__name__,
        "K": model.K,
        "likelihood": model.likelihood,
        "data": dm.name,
        "sequential": dm.sequential,
        "data_source": data_source,
        "global_step": int(ckpt.get("global_step", 0)),
        "device": str(device),
        "n_test": len(x_test),
        "seed": cfg.seed,
    }
    results.update(metrics.test_metrics(model, x_test, y_test, cfg.batch_size))
    # Each draw of generated samples starts from the seed, as if its metric ran alone: the categories from a
    # generator of its own, z from the global generator reseeded (metrics.seeded, restored after). So the
    # samples of the densities do not depend on whether the info metrics ran, nor on n_test (the test pass
    # above draws reparameterisation noise from the global generator).
    if cfg.info.enabled and model.K > 1:
        view = lambda x: dm.as_view(x).to(device)  # noqa: E731
        with metrics.seeded(cfg.seed, device):
            gen = torch.Generator().manual_seed(cfg.seed)
            results.update(metrics.info_metrics(model, cfg.info.n_samples, cfg.batch_size, view, gen))
    if cfg.kde.enabled or cfg.parzen.enabled:
        with metrics.seeded(cfg.seed, device):
            gen = torch.Generator().manual_seed(cfg.seed)
            _, x_gen = metrics.generate(model, cfg.n_generated, cfg.batch_size, gen)
        x_gen = x_gen.cpu()
        results["n_generated"] = len(x_gen)
        flat = lambda images: images.reshape(len(images), -1).float().div_(255.0)  # noqa: E731
        # the paper's KDE is fitted on all 60K training images (in load_split's order); the Parzen
        # bandwidth is chosen on the checkpoint's own validation split (or, on request, those 60K)
        need_60k = cfg.kde.enabled or cfg.parzen.bandwidth_split == "train"
        train_60k = flat(load_split(dm.data_dir, dm.name, train=True)[0]) if need_60k else None
        if cfg.kde.enabled:
            args = pick(cfg.kde, "bandwidths", "folds", "fit_size", "chunk_size", "cache_dir")
            results.update(kde.table1_protocol(train_60k, x_gen, **args, seed=cfg.seed, dataset=dm.name, device=device))
        if cfg.parzen.enabled:
            p = cfg.parzen
            on_val = p.bandwidth_split == "val"
            valid = flat(dm.val_set.images) if on_val else train_60k
            args = pick(p, "bandwidths", "n_valid", "chunk_size")
            test = flat(dm.test_set.images[:n_test])
            results.update(kde.parzen_protocol(x_gen, valid, test, **args, seed=cfg.seed, device=device))
            results["parzen_bandwidth_split"] = p.bandwidth_split
            if on_val:
                results.update({"parzen_val_size": dm.val_size, "parzen_split_seed": dm.split_seed})
    if cfg.reader.enabled and model.K > 1:
        results.update(reader.reader_metrics(cfg.reader, dm.data_dir, dm.name, model, device, cfg.seed, cfg.batch_size))

    figs = {}
    if cfg.figures.enabled:
        args = pick(cfg.figures, "per_category", "n_recon", "pca_points")
        figs = plots.evaluation_figures(model, x_test, y_test, out_dir, **args, batch_size=cfg.batch_size)
    results["figures"] = sorted(f"{k}.png" for k in figs)
    tb = tensorboard_folder(cfg)
    results["tensorboard_dir"] = str(tb) if tb is not None else None
    results["seconds"] = time.perf_counter() - start
    write_outputs(out_dir, tb, results, figs, logger_step(ckpt))
    floats = {k: round(v, 4) for k, v in results.items() if isinstance(v, float)}
    log.info("Evaluated %s → %s: %s", cfg.ckpt_path, out_dir / "metrics.json", floats)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
