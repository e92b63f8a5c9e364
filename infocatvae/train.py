"""Training entry point: ``python -m infocatvae.train [overrides]`` (console script ``infocatvae-train``).

One command runs a single job or, with ``-m``, a Hydra multirun sweep. Each job owns one folder
(``paths.output_dir``) holding ``.hydra/``, ``checkpoints/`` (with ``last.ckpt``), ``tensorboard/``
and ``status.json``; running the same command again resumes from ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from infocatvae.callbacks import AtomicCheckpointIO, EpochSeed
from infocatvae.config import CONFIG_DIR, run_dir_of
from infocatvae.models import CheckpointError, read_checkpoint
from infocatvae.models.base import MODEL_KEY

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
MIN_FREE_BYTES = 200 * 2**20  # a few checkpoints and event files


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_status(run_dir: Path, **fields: Any) -> None:
    """Update ``status.json`` in the run folder (written to a temporary file, then renamed).

    Only the process of global rank 0 writes (the other processes of a DDP job do nothing)."""
    if rank_zero_only.rank != 0:
        return
    path = Path(run_dir) / STATUS_FILE
    status = {**read_status(run_dir), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(tmp, path)


def check_output_dir(run_dir: Path) -> None:
    """Fail now, not after an epoch, when the run folder cannot be written or the disk is full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as err:
        raise RuntimeError(f"the output folder {run_dir} cannot be written ({err.strerror or err}); "
                           f"choose another with hydra.run.dir=<folder> or paths.log_dir=<folder>") from err
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise RuntimeError(f"the disk holding {run_dir} has {free / 2**20:.0f} MiB free; "
                           f"at least {MIN_FREE_BYTES // 2**20} MiB are needed for checkpoints and logs")


def resolve_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` when given, else this run's own ``last.ckpt``.

    Checks that it can be read and holds the configured model class before any training, and logs
    where training resumes.
    """
    explicit = cfg.get("ckpt_path")
    path = Path(explicit) if explicit else run_dir / "checkpoints" / "last.ckpt"
    if not explicit and not path.exists():
        return None
    ckpt = read_checkpoint(path)  # CheckpointError names the file
    if hydra.utils.get_class(ckpt[MODEL_KEY]) is not hydra.utils.get_class(cfg.model._target_):
        raise CheckpointError(f"checkpoint {path} holds a {ckpt[MODEL_KEY]} but model._target_ is "
                              f"{cfg.model._target_}; choose the matching model=... or another checkpoint")
    log.info("Resuming from %s (epoch %s, step %s)", path, ckpt.get("epoch"), ckpt.get("global_step"))
    return str(path)


def run_folder(cfg: DictConfig) -> Path:
    """The job's folder; resuming an explicit ``ckpt_path`` of another run continues in that run's folder."""
    explicit = cfg.get("ckpt_path")
    return (run_dir_of(explicit) if explicit else None) or Path(cfg.paths.output_dir)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config's model, data and trainer fields as one flat dict, for TensorBoard's HParams tab."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    keep = {k: resolved[k] for k in ("model", "data", "trainer") if k in resolved}
    flat = {"seed": cfg.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in ("_target_", "_partial_"):
                    walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", keep)
    return flat


def trainer_plugins() -> list[Any]:
    """Atomic checkpoint writes; under SLURM, Lightning's own auto-requeue is turned off.

    Preemption and time-outs on SLURM are handled by submitit (hydra/launcher=slurm): on its
    signal it requeues the job with the same overrides, ``InterruptCheckpoint`` saves
    ``last.ckpt`` as the process exits, and the requeued job resumes from it. Lightning's
    SIGUSR1 handler would requeue the job a second time, so it is disabled.
    """
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def check_strategy(cfg: DictConfig) -> None:
    """Lightning's ``ddp`` launcher re-runs the command line; inside a local multirun that would
    start a sweep in each process, so refuse it with advice instead."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy.startswith("ddp") and not strategy.startswith("ddp_spawn") and not SLURMEnvironment.detect():
        try:
            from hydra.core.hydra_config import HydraConfig

            multirun = HydraConfig.get().mode.name == "MULTIRUN"
        except ValueError:  # no Hydra (tests calling train() directly)
            multirun = False
        if multirun:
            raise ValueError("trainer.strategy=ddp cannot run inside a local multirun (Lightning's launcher re-runs "
                             "the command line); use trainer.strategy=ddp_spawn, or submit to SLURM with "
                             "hydra.launcher.tasks_per_node equal to trainer.devices")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one job; returns its final metrics (validation, and test when ``test=true``)."""
    run_dir = run_folder(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    check_output_dir(run_dir)

    status = read_status(run_dir)
    max_epochs = cfg.trainer.get("max_epochs")
    if status.get("status") == "completed" and status.get("max_epochs") == max_epochs and not cfg.get("ckpt_path"):
        log.info("Job in %s already completed %s epochs; skipping (delete its status.json to retrain)",
                 run_dir, max_epochs)
        return status.get("metrics", {})

    trainer: L.Trainer | None = None
    try:
        # Everything that can be rejected is built and checked before any training starts
        # (a failure here is recorded in status.json too, so that a sweep's summary shows it).
        # Seeded first: the initial weights come from the global RNG.
        L.seed_everything(cfg.seed, workers=True)
        datamodule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model, _recursive_=False, _convert_="all")
        ckpt_path = resolve_checkpoint(cfg, run_dir)
        callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
        loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values()]
        # Each epoch's randomness depends only on (seed, epoch): resumed runs match uninterrupted ones.
        callbacks.append(EpochSeed(cfg.seed))
        check_strategy(cfg)
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=trainer_plugins())
        if rank_zero_only.rank == 0:
            datamodule.prepare_data()  # missing or corrupt data files fail now (DataError)
        if not ckpt_path:
            log.info("Starting %s from scratch", run_dir)
        fit_model = torch.compile(model) if cfg.get("compile") else model

        write_status(run_dir, status="running", model=cfg.model._target_, max_epochs=max_epochs,
                     resumed_from=ckpt_path, error=None)
        # In-memory batches need no worker processes (see data.py).
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(fit_model, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt
        metrics = {k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
                   if v.numel() == 1 and not k.endswith("_step")}
        if cfg.get("test"):
            for k, v in trainer.test(model, datamodule=datamodule)[0].items():
                metrics[k] = float(v)
        if trainer.is_global_zero:
            hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
            for lg in trainer.loggers:
                if isinstance(lg, L.pytorch.loggers.TensorBoardLogger):
                    lg.log_hyperparams(flat_hparams(cfg), hp_metrics)
    except BaseException as err:
        write_status(run_dir, status="interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed",
                     error=f"{type(err).__name__}: {err}",
                     epoch=trainer.current_epoch if trainer else None, step=trainer.global_step if trainer else None)
        if isinstance(err, SIGTERMException):  # Lightning's SIGTERM exit is SystemExit(None): status 0
            raise SystemExit(128 + signal.SIGTERM) from err
        raise
    write_status(run_dir, status="completed", metrics=metrics, epoch=trainer.current_epoch, step=trainer.global_step)
    log.info("Finished %s: %s", run_dir, {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
