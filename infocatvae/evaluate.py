"""Evaluation entry point: ``python -m infocatvae.evaluate ckpt_path=<file>`` (console script ``infocatvae-eval``).

Loads any of the four models, scores it, draws Figures 3 to 5 and writes ``metrics.json`` and the
PNGs into its run folder, and the same to the training run's TensorBoard. Which protocols are the
paper's (section 10) and which are not:

- the paper's: Table 1's kernel density log-likelihood (``kde_ll``: a kernel density on the 60K
  training images, scikit-learn's KernelDensity in the paper and exact torch code here, bandwidth by
  grid search with 5-fold cross-validation over them, scored on 10K generated samples) and the
  information cross-entropy (``info_ce`` and its variant ``info_ce_on_probs``, see ``info_metrics``:
  10K categories drawn uniformly, decoded, classified by q(c|x̃)). The bandwidth grid is ours: the
  paper does not give it.
- not the paper's: the Parzen protocol of Goodfellow et al. 2014 and Makhzani et al. 2015
  (``parzen_test_ll``, bandwidth chosen on the data module's held-out validation split by default);
  the clustering scores of the test images (``cluster_acc``, ``nmi``, ``ari``); test reconstruction
  and ELBO; ``info_acc``; and the independent reader of the samples
  (``gen_confidence``, ``gen_agreement``, ``gen_distinct``, ``reader_test_acc``; see ``infocatvae.reader``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from infocatvae import kde, metrics, plots, reader
from infocatvae.checkpoints import load_model
from infocatvae.config import CONFIG_DIR, run_dir_of
from infocatvae.data import MNISTDataModule, ensure_dataset, load_split

log = logging.getLogger(__name__)


def eval_dir(ckpt_path: str | None, log_dir: str) -> str:
    """Hydra run folder of an evaluation: ``<run>/eval/<ckpt stem>`` for a checkpoint inside a training
    run, else ``<log_dir>/eval/runs/<folder>_<ckpt stem>``."""
    if not ckpt_path:
        return str(Path(log_dir) / "eval" / "runs" / "no_ckpt_path")
    run = run_dir_of(ckpt_path)
    stem = Path(ckpt_path).stem
    if run is not None:
        return str(run / "eval" / stem)
    return str(Path(log_dir) / "eval" / "runs" / f"{Path(ckpt_path).resolve().parent.name}_{stem}")


OmegaConf.register_new_resolver("eval_dir", eval_dir, replace=True)


def train_config(cfg: DictConfig) -> tuple[DictConfig | None, str]:
    """The checkpoint's own training config (``<run>/.hydra/config.yaml``) and its path, when its run folder
    has one and ``infer_data`` is on; else (None, "config")."""
    run = run_dir_of(cfg.ckpt_path)
    if cfg.get("infer_data", True) and run is not None and (run / ".hydra" / "config.yaml").is_file():
        return OmegaConf.load(run / ".hydra" / "config.yaml"), str(run / ".hydra" / "config.yaml")
    return None, "config"


def data_view(cfg: DictConfig, model) -> tuple[str, bool, str]:
    """(dataset name, sequential, where it came from): the checkpoint's own training config when its run
    folder has ``.hydra/config.yaml`` (and ``infer_data``), else ``cfg.data``; ``sequential`` falls back to
    the encoder type (a GRU encoder was trained on row sequences)."""
    train_cfg, source = train_config(cfg)
    if train_cfg is not None:
        data = train_cfg.get("data") or {}
        if "name" in data:
            return str(data["name"]), bool(data.get("sequential", False)), source
    sequential = cfg.data.get("sequential", False)
    encoder = model.hparams.get("net", {}).get("encoder", {}).get("_target_", "")
    if not sequential and encoder.endswith("GRUEncoder"):
        sequential = True
    return str(cfg.data.name), bool(sequential), "config"


def split_view(cfg: DictConfig) -> tuple[int, int, str]:
    """(val_size, split_seed, where they came from) of the data module that trained the checkpoint: its
    run's ``.hydra/config.yaml`` when there is one (and ``infer_data``), else ``cfg.data``."""
    train_cfg, source = train_config(cfg)
    if train_cfg is not None:
        val_size = OmegaConf.select(train_cfg, "data.val_size", default=None)
        split_seed = OmegaConf.select(train_cfg, "data.split_seed", default=None)
        if val_size is not None and split_seed is not None:
            return int(val_size), int(split_seed), source
    return int(cfg.data.val_size), int(cfg.data.split_seed), "config"


def validation_images(data_dir: str, dataset: str, val_size: int, split_seed: int) -> torch.Tensor:
    """The uint8 images (val_size, 28, 28) that ``MNISTDataModule`` holds out of the training set for
    validation with these settings: the module itself makes the split, so these are the images a model it
    trained never saw."""
    dm = MNISTDataModule(
        name=dataset, data_dir=data_dir, val_size=val_size, split_seed=split_seed, on_device=False, download=False
    )
    dm.setup("validate")
    return dm.val_set.images


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def to_view(images: torch.Tensor, sequential: bool, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) or float images → float in [0, 1] in the model's view: (N, 28, 28) rows or (N, 1, 28, 28)."""
    x = images.to(device)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    x = x.reshape(len(x), 28, 28)
    return x if sequential else x.unsqueeze(1)


def batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


@torch.no_grad()
def generate(model, n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples: c ~ uniform over the K categories, z ~ p(z|c), decoded (section 4, last paragraph).
    Returns categories (n,) and flat pixel values (n, 784) on the model's device."""
    c = torch.randint(model.K, (n,), generator=generator).to(model.device)
    out = [model.sample(c[s]).flatten(1) for s in batches(n, batch_size)]
    return c, torch.cat(out)


@torch.no_grad()
def info_metrics(model, n: int, batch_size: int, sequential: bool, generator: torch.Generator) -> dict[str, float]:
    """Section 10 (the paper's, with n = 10K there): ``n`` categories drawn uniformly, decoded, classified by q(c|x̃).

    ``info_ce``: the cross-entropy −mean log q(c|x̃) (the Monte Carlo estimate of −term (7));
    ``info_ce_on_probs``: F.cross_entropy applied to the probabilities q(c|x̃) as if they were
    logits, as the authors' public code computes its classifier loss (it lies in
    [log(e + K − 1) − 1, log(e + K − 1)], [1.46, 2.46] for K = 10); ``info_acc``: share classified
    as their own category. The paper reports a cross-entropy (2.03 for CatVAE, 1.62 for InfoCatVAE)
    that lies in ``info_ce_on_probs``'s range, so it may be that variant; ``info_acc`` is ours.
    """
    c, x_gen = generate(model, n, batch_size, generator)
    q = torch.cat([model.encode(to_view(x_gen[s], sequential, model.device)).q_c for s in batches(n, batch_size)])
    log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()
    return {
        "info_ce": float(F.nll_loss(log_q, c)),
        "info_ce_on_probs": float(F.cross_entropy(q, c)),
        "info_acc": float((q.argmax(-1) == c).float().mean()),
    }


@torch.no_grad()
def test_metrics(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """``test_recon`` (the model's reconstruction term, batch means averaged), ``test_elbo`` (eq. 14,
    CatVAE family) and, when K > 1, the clustering scores of argmax q(c|x) (``metrics.clustering_scores``:
    Hungarian one-to-one mapping when K ≤ the number of labels, majority vote when K exceeds it). None of
    these are reported in the paper: they are ours."""
    recon, elbo, pred = 0.0, 0.0, []
    has_elbo = model.has_elbo
    for s in batches(len(x), batch_size):
        xb = x[s]
        recon += float(model.losses(xb)["recon"]) * len(xb)
        if has_elbo:
            elbo += float(model.elbo(xb).sum())
        if model.K > 1:
            pred.append(model.cluster(xb).cpu())
    out: dict[str, Any] = {"test_recon": recon / len(x)}
    if has_elbo:
        out["test_elbo"] = elbo / len(x)
    if model.K > 1:
        out.update(metrics.clustering_scores(y.cpu().numpy(), torch.cat(pred).numpy(), K=model.K))
    return out


def warn_edge(name: str, best: float, grid: list[float]) -> bool:
    at_edge = best in (min(grid), max(grid))
    if at_edge:
        log.warning("%s: the chosen bandwidth %.3g is at the edge of the grid %s; widen the grid", name, best, grid)
    return at_edge


def cv_bandwidth(
    cfg: DictConfig, dataset: str, fit: torch.Tensor, grid: list[float], device: torch.device
) -> tuple[float, dict[float, float], bool]:
    """Table 1's k-fold search over the training images (the paper's: 5 folds over the 60K; the grid is
    ours, the paper does not give it). It depends on the data only, not on the model,
    so its result is kept in ``kde.cache_dir`` (keyed by data set, size, folds, seed and grid)
    and reused by every model evaluated on the same data. Returns (best h, {h: score}, from cache)."""
    key = {"data": dataset, "fit_size": len(fit), "folds": cfg.kde.folds, "seed": cfg.seed, "bandwidths": grid}
    path = None
    if cfg.kde.get("cache_dir"):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(cfg.kde.cache_dir) / f"kde_cv_{dataset}_{digest}.json"
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return float(saved["best"]), {float(h): v for h, v in saved["scores"].items()}, True
        except (OSError, ValueError, KeyError):
            pass
    best, scores = kde.select_bandwidth(
        fit, grid, folds=cfg.kde.folds, seed=cfg.seed, chunk_size=cfg.kde.chunk_size, device=device
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "best": best, "scores": {str(h): v for h, v in scores.items()}}))
        os.replace(tmp, path)
    return best, scores, False


PARZEN_SPLITS = ("val", "train")


@torch.no_grad()
def density_metrics(
    cfg: DictConfig,
    dataset: str,
    train_flat: torch.Tensor,
    test_flat: torch.Tensor,
    gen: torch.Tensor,
    device: torch.device,
    val_flat: torch.Tensor | None = None,
) -> dict[str, Any]:
    """``kde_ll`` (Table 1, the paper's protocol) and ``parzen_test_ll`` (Goodfellow et al. / Makhzani et al.,
    not the paper's); not comparable.

    The Parzen bandwidth is chosen on ``parzen.n_valid`` images (a seeded draw when the split holds more)
    of ``parzen.bandwidth_split``: ``val``, the data module's held-out validation images ``val_flat``
    (5K, never trained on: as Goodfellow et al. and Makhzani et al. chose it on a validation set), or
    ``train``, the 60K training images ``train_flat`` (about 92 % of them trained on; this project's
    protocol before the ``val`` default).
    """
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.kde.enabled:
        t0 = time.perf_counter()
        fit = train_flat
        if cfg.kde.fit_size is not None:
            fit = fit[torch.randperm(len(fit), generator=g)[: cfg.kde.fit_size]]
        grid = [float(b) for b in cfg.kde.bandwidths]
        best, scores, cached = cv_bandwidth(cfg, dataset, fit, grid, device)
        t1 = time.perf_counter()
        ll = kde.kde_score_samples(fit, gen, best, chunk_size=cfg.kde.chunk_size, device=device)
        out.update(
            {
                "kde_ll": float(ll.mean()),
                "kde_ll_sem": float(ll.std() / math.sqrt(len(ll))),
                "kde_bandwidth": best,
                "kde_bandwidth_at_edge": warn_edge("kde", best, grid),
                "kde_cv_scores": {str(h): s for h, s in scores.items()},
                "kde_fit_size": len(fit),
                "kde_folds": cfg.kde.folds,
                "kde_cv_seconds": t1 - t0,
                "kde_cv_cached": cached,
                "kde_score_seconds": time.perf_counter() - t1,
            }
        )
    if cfg.parzen.enabled:
        t0 = time.perf_counter()
        split = parzen_split(cfg)
        pool = train_flat if split == "train" else val_flat
        if pool is None:
            raise ValueError("parzen.bandwidth_split=val needs the validation images (val_flat)")
        n_valid = cfg.parzen.get("n_valid")
        valid = pool[torch.randperm(len(pool), generator=g)[:n_valid]]
        grid = [float(b) for b in cfg.parzen.bandwidths]
        best, scores = kde.select_bandwidth_holdout(gen, valid, grid, chunk_size=cfg.parzen.chunk_size, device=device)
        ll = kde.kde_score_samples(gen, test_flat, best, chunk_size=cfg.parzen.chunk_size, device=device)
        out.update(
            {
                "parzen_test_ll": float(ll.mean()),
                "parzen_test_ll_sem": float(ll.std() / math.sqrt(len(ll))),
                "parzen_bandwidth": best,
                "parzen_bandwidth_at_edge": warn_edge("parzen", best, grid),
                "parzen_valid_scores": {str(h): s for h, s in scores.items()},
                "parzen_bandwidth_split": split,
                "parzen_n_valid": len(valid),
                "parzen_seconds": time.perf_counter() - t0,
            }
        )
    return out


def parzen_split(cfg: DictConfig) -> str:
    split = cfg.parzen.get("bandwidth_split", "val")
    if split not in PARZEN_SPLITS:
        raise ValueError(f"parzen.bandwidth_split must be one of {list(PARZEN_SPLITS)}, got {split!r}")
    return split


def reader_metrics(cfg: DictConfig, dataset: str, model, device: torch.device) -> dict[str, Any]:
    """The independent reader (``infocatvae.reader``; ours, not the paper's): a CNN trained on the real
    training images (cached in ``reader.cache_dir``) reads ``reader.n_per_category`` samples of each
    category. ``gen_confidence``, ``gen_agreement``, ``gen_distinct`` and the reader's own ``reader_test_acc``."""
    rc = cfg.reader
    settings = reader.ReaderSettings(
        epochs=rc.epochs,
        batch_size=rc.batch_size,
        lr=rc.lr,
        width=rc.width,
        hidden=rc.hidden,
        seed=rc.seed,
        train_size=rc.get("train_size"),
    )
    reader_device = device if rc.get("device") in (None, "auto") else pick_device(rc.device)
    r = reader.load_or_train(cfg.data.data_dir, dataset, settings, rc.get("cache_dir"), reader_device)
    target = reader.MIN_TEST_ACC.get(dataset)
    if target is not None and r.test_acc < target:
        log.warning(
            "reader: test accuracy %.4f on %s is below %.2f; its gen_* metrics are less trustworthy",
            r.test_acc,
            dataset,
            target,
        )
    # Its own seed, so that the other metrics draw the same numbers with the reader on or off.
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        out = reader.read_samples(r.net, model, rc.n_per_category, cfg.batch_size)
    return {
        **out,
        "reader_test_acc": r.test_acc,
        "reader_cached": r.cached,
        "reader_seconds": r.seconds,
        "reader_train_seconds": r.train_seconds,
        "reader_path": str(r.path) if r.path is not None else None,
    }


@torch.no_grad()
def figures(cfg: DictConfig, model, x: torch.Tensor, y: torch.Tensor, out_dir: Path) -> dict[str, Any]:
    """Figure 3 (interpolation), Figure 4 (λ variation), Figure 5 style samples, reconstructions and the
    PCA of the latent means; PNGs in ``out_dir``. Returns {name: grid tensor or matplotlib figure}."""
    figs: dict[str, Any] = {}
    if model.has_prior_means:
        figs["fig3_interpolation"] = plots.interpolation_grid(model)
        figs["fig4_lambda"] = plots.lambda_grid(model)
    figs["samples"] = plots.samples_grid(model, cfg.figures.per_category)
    figs["reconstructions"] = plots.reconstruction_grid(model, x[: cfg.figures.n_recon])
    n = min(cfg.figures.pca_points, len(x))
    codes = torch.cat([model.embed(x[s]) for s in batches(n, cfg.batch_size)])
    figs["latent_pca"] = plots.pca_figure(codes, y[:n], title=f"{type(model).__name__}: PCA of the latent means")
    for name, fig in figs.items():
        path = out_dir / f"{name}.png"
        if torch.is_tensor(fig):
            plots.save_grid(fig, path)
        else:
            fig.savefig(path)
    return figs


def tensorboard_folder(cfg: DictConfig) -> Path | None:
    tb = cfg.get("tensorboard_dir")
    if tb is None or tb is False or str(tb).lower() in ("none", "null", ""):
        return None
    if tb == "auto":
        run = run_dir_of(cfg.ckpt_path)
        return run / "tensorboard" if run is not None and (run / "tensorboard").is_dir() else None
    return Path(tb)


def to_tensorboard(folder: Path, results: dict[str, Any], figs: dict[str, Any], step: int) -> None:
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for k, v in results.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                writer.add_scalar(f"eval/{k}", v, step)
        for name, fig in figs.items():
            if torch.is_tensor(fig):
                writer.add_image(f"eval/{name}", fig, step)
            else:
                writer.add_figure(f"eval/{name}", fig, step)
    finally:
        writer.close()
        for fig in figs.values():
            if not torch.is_tensor(fig):
                plt.close(fig)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint ``cfg.ckpt_path`` and write ``metrics.json`` and the figures to ``cfg.output_dir``.

    Returns the metrics (the content of ``metrics.json``).
    """
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path is required: python -m infocatvae.evaluate ckpt_path=<file.ckpt>")
    start = time.perf_counter()
    device = pick_device(cfg.device)
    model = load_model(cfg.ckpt_path, map_location=device)  # CheckpointError names a bad file
    step = int(torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True).get("global_step", 0))
    name, sequential, data_source = data_view(cfg, model)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    ensure_dataset(cfg.data.data_dir, name, download=False)
    train_u8, _ = load_split(cfg.data.data_dir, name, train=True)
    test_u8, test_y = load_split(cfg.data.data_dir, name, train=False)
    if cfg.n_test is not None:
        test_u8, test_y = test_u8[: cfg.n_test], test_y[: cfg.n_test]
    x_test = to_view(test_u8, sequential, device)

    results: dict[str, Any] = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "model": type(model).__name__,
        "K": model.K,
        "likelihood": model.likelihood,
        "data": name,
        "sequential": sequential,
        "data_source": data_source,
        "global_step": step,
        "device": str(device),
        "n_test": len(x_test),
        "seed": cfg.seed,
    }
    results.update(test_metrics(model, x_test, test_y, cfg.batch_size))
    if cfg.info.enabled and model.K > 1:
        results.update(info_metrics(model, cfg.info.n_samples, cfg.batch_size, sequential, gen))
    if cfg.kde.enabled or cfg.parzen.enabled:
        _, x_gen = generate(model, cfg.n_generated, cfg.batch_size, gen)
        results["n_generated"] = len(x_gen)
        train_flat = train_u8.reshape(len(train_u8), -1).float().div_(255.0)
        test_flat = test_u8.reshape(len(test_u8), -1).float().div_(255.0)
        val_flat = None
        if cfg.parzen.enabled and parzen_split(cfg) == "val":
            val_size, split_seed, split_source = split_view(cfg)
            val_u8 = validation_images(cfg.data.data_dir, name, val_size, split_seed)
            val_flat = val_u8.reshape(len(val_u8), -1).float().div_(255.0)
            results.update(
                {"parzen_val_size": val_size, "parzen_split_seed": split_seed, "parzen_split_source": split_source}
            )
        results.update(density_metrics(cfg, name, train_flat, test_flat, x_gen.cpu(), device, val_flat))
    if cfg.get("reader") is not None and cfg.reader.enabled and model.K > 1:
        results.update(reader_metrics(cfg, name, model, device))

    figs = figures(cfg, model, x_test, test_y, out_dir) if cfg.figures.enabled else {}
    results["figures"] = sorted(f"{k}.png" for k in figs)
    tb = tensorboard_folder(cfg)
    results["tensorboard_dir"] = str(tb) if tb is not None else None
    results["seconds"] = time.perf_counter() - start
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    if tb is not None:
        to_tensorboard(tb, results, figs, step)
    else:
        import matplotlib.pyplot as plt

        for fig in figs.values():
            if not torch.is_tensor(fig):
                plt.close(fig)
    log.info(
        "Evaluated %s → %s: %s",
        cfg.ckpt_path,
        out_dir / "metrics.json",
        {k: round(v, 4) for k, v in results.items() if isinstance(v, float)},
    )
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
