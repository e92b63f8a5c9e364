"""Training entry point: ``python -m infocatvae.train [overrides]`` (console script ``infocatvae-train``).

One command runs a single job or, with ``-m``, a Hydra multirun sweep. Each job owns one folder
(``paths.output_dir``) holding ``.hydra/``, ``checkpoints/`` (with ``last.ckpt``), ``tensorboard/``
and ``status.json``; running the same command again resumes from ``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf

from infocatvae import hardware, validation
from infocatvae.callbacks import EpochSeed, MonitoredMetrics
from infocatvae.checkpoints import (
    STARTED_FROM,
    AtomicCheckpointIO,
    check_starting_point,
    order_checkpoint_callbacks,
    resolve_checkpoint,
    starting_point,
)
from infocatvae.config import CONFIG_DIR, instantiate_all
from infocatvae.launcher import register_launchers
from infocatvae.loggers import resume_curves_at
from infocatvae.runs import JobStatus, RunLock, check_output_dir, is_own, last_ckpt, read_status

log = logging.getLogger(__name__)
# hydra/launcher=local and slurm, also from an editable install (infocatvae/launcher.py)
register_launchers()


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config's model, data and trainer fields as one flat dict, for TensorBoard's HParams tab."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    keep = {k: resolved[k] for k in ("model", "data", "trainer") if k in resolved}
    flat = {"seed": cfg.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not k.startswith("_"):  # _target_, _partial_, _recursive_, _convert_
                    walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", keep)
    return flat


def quiet_known_warnings() -> None:
    """Silences the warnings of Lightning that give a user of this framework nothing to act on."""
    # In-memory batches need no worker processes (see data.py).
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # resuming into the run's own checkpoints/ folder is the point, not a mistake
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    # Lightning 2.6's own batch flattening builds torch's deprecated LeafSpec (a FutureWarning of torch
    # >= 2.10, twice a run, pointing into Lightning): nothing a user of this framework can change
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    # Where srun exists (a cluster's login node), every check for SLURM advises prepending srun to the
    # command, three times a job; this framework's jobs reach SLURM through hydra/launcher=slurm, which
    # train() says once instead (slurm_hint).
    warnings.filterwarnings("ignore", r"The `srun` command is available", PossibleUserWarning)


def slurm_hint() -> str | None:
    """What to tell a job started outside SLURM on a machine where SLURM's ``srun`` exists (None elsewhere)."""
    if shutil.which("srun") is None or "SLURM_JOB_ID" in os.environ:
        return None
    return "SLURM's srun is on this machine; this job runs here (hydra/launcher=slurm sends jobs to SLURM)"


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


def strategy_for(strategy: Any, model: L.LightningModule) -> Any:
    """``trainer.strategy`` for ``model``: DDP finds the parameters a backward pass left unused (Lightning's
    ``ddp*_find_unused_parameters_true``) for a model that optimises by hand, as the AAE does: each of its three
    phases leaves some parameters out (the discriminators in reconstruction, the autoencoder in discrimination),
    which DDP's plain reducer waits for ("Expected to have finished reduction in the prior iteration")."""
    if isinstance(strategy, str) and strategy in ("ddp", "ddp_spawn", "ddp_fork") and not model.automatic_optimization:
        return f"{strategy}_find_unused_parameters_true"
    return strategy


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
            raise ValueError(
                "trainer.strategy=ddp cannot run inside a local multirun (Lightning's launcher re-runs "
                "the command line); use trainer.strategy=ddp_spawn, or submit to SLURM with "
                "hydra.launcher.tasks_per_node equal to trainer.devices"
            )


def monitored_fields(cfg: DictConfig) -> dict[str, str]:
    """The metrics the config asks the model to log, by field: each callback's ``monitor``, and
    ``optimized_metric`` where a sweeper optimises the job's return value (Optuna; Hydra's basic sweeper reads
    none)."""
    fields = {
        f"callbacks.{name}.monitor": c.monitor
        for name, c in (cfg.get("callbacks") or {}).items()
        if isinstance(c, DictConfig) and c.get("monitor")
    }
    try:
        from hydra.core.hydra_config import HydraConfig

        sweeper = str(HydraConfig.get().sweeper.get("_target_", ""))
    except ValueError:  # no Hydra (tests calling train() directly)
        sweeper = ""
    if cfg.get("optimized_metric") and sweeper and not sweeper.endswith("BasicSweeper"):
        fields["optimized_metric"] = cfg.optimized_metric
    return fields


def cpu_threads(cfg: DictConfig) -> int:
    """torch's CPU thread count for this job: ``threads``, else the submitit launcher's ``cpus_per_task``, else
    ``$SLURM_CPUS_PER_TASK``, else every core this process may use (``os.sched_getaffinity``). The launcher's
    first: a local sweep started inside a SLURM allocation inherits its ``SLURM_CPUS_PER_TASK``, while the local
    launcher runs as many jobs at once as the cores hold its ``cpus_per_task`` (under the SLURM launcher the
    two are the same)."""
    if cfg.get("threads") is not None:
        return cfg.threads
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher_cpus = HydraConfig.get().launcher.get("cpus_per_task")
    except (ValueError, AttributeError):  # no Hydra (train() called directly), or a launcher without the field
        launcher_cpus = None
    if launcher_cpus:
        return int(launcher_cpus)
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return len(os.sched_getaffinity(0))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one job; returns its final metrics (validation, and test when ``test=true``)."""
    # A job writes only in its own folder, which it owns while it runs; a ckpt_path of another run is only read.
    run_dir = Path(cfg.paths.output_dir)
    tuned = hardware.tune_process()
    if tuned["nvml_check_skipped"]:
        log.info("No NVIDIA driver library: torch's NVML check turned off (%s=0)", hardware.NVML_CHECK)
    if tuned["malloc_keeps_freed_memory"]:
        log.info(
            "glibc malloc keeps freed memory for reuse (mmap threshold %d MiB, trim threshold %d MiB)",
            hardware.MMAP_THRESHOLD >> 20,
            hardware.TRIM_THRESHOLD >> 20,
        )
    quiet_known_warnings()
    if hint := slurm_hint():
        log.info(hint)
    check_output_dir(run_dir)
    with RunLock(run_dir):
        return _train_locked(cfg, run_dir)


def _train_locked(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """``train`` once this process owns ``run_dir``: skip, or build, check, fit and record the status."""
    status = read_status(run_dir)
    max_epochs = cfg.trainer.get("max_epochs")
    explicit = cfg.get("ckpt_path")
    # refused before status.json is touched: that folder holds another run, whose record stays as it is
    check_starting_point(explicit, run_dir, status)
    completed = status.get("metrics") or {}
    if (
        status.get("status") == "completed"
        and status.get("max_epochs") == max_epochs
        and not (explicit and is_own(explicit, run_dir))
        and not (cfg.get("test") and not any(k.startswith("test/") for k in completed))
    ):
        log.info(
            "Job in %s already completed %s epochs; skipping (delete its status.json to retrain)", run_dir, max_epochs
        )
        return completed

    with JobStatus(run_dir) as job:
        # Everything that can be rejected is built and checked before any training starts
        # (a failure here is recorded in status.json too, so that a sweep's summary shows it).
        validation.check(cfg)  # every field's value, before anything is built from it
        torch.set_num_threads(cpu_threads(cfg))
        # Seeded first: the initial weights come from the global RNG.
        L.seed_everything(cfg.seed, workers=True)
        datamodule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model)
        validation.check_built(cfg, model)
        has_own_last = last_ckpt(run_dir).exists()
        ckpt_path, batches = resolve_checkpoint(cfg, run_dir, model)
        # the curves go on from the checkpoint: what a killed job logged after it is dropped
        logger_cfg = resume_curves_at(cfg.get("logger"), batches)
        callbacks, loggers = instantiate_all(cfg.get("callbacks")), instantiate_all(logger_cfg)
        # Each epoch's randomness depends only on (seed, epoch): resumed runs match uninterrupted ones.
        callbacks.append(EpochSeed(cfg.seed))
        callbacks.append(MonitoredMetrics(monitored_fields(cfg)))
        # last.ckpt written after best-*.ckpt, so that it holds the best checkpoint's state of its own epoch
        callbacks = order_checkpoint_callbacks(callbacks)
        check_strategy(cfg)
        configured = cfg.trainer.get("strategy", "auto")
        strategy = strategy_for(configured, model)
        if strategy != configured:
            log.info(
                "trainer.strategy=%s: %s optimises by hand, its phases leave parameters unused",
                strategy,
                type(model).__name__,
            )
        trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers, plugins=trainer_plugins(), strategy=strategy
        )
        job.trainer = trainer
        if rank_zero_only.rank == 0:
            datamodule.prepare_data()  # missing or corrupt data files fail now (DataError)
        if not ckpt_path:
            log.info("Starting %s from scratch", run_dir)
        log.info("torch CPU threads: %d", torch.get_num_threads())
        if cfg.get("compile"):
            model.compile_losses()

        origin = {} if has_own_last else {STARTED_FROM: starting_point(ckpt_path, run_dir)}  # kept once written
        job.running(model=cfg.model._target_, max_epochs=max_epochs, resumed_from=ckpt_path, **origin)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt
        # fit had nothing left to train when it logged nothing (its checkpoint was at max_epochs already): a job
        # killed after its last epoch validates its final weights; a finished job run again to add test=true
        # keeps the metrics it recorded
        trained = bool(trainer.callback_metrics)
        if not trained and not (status.get("status") == "completed" and completed):
            trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if v.numel() == 1 and not k.endswith("_step")
        }
        if not trained and not metrics:
            metrics = dict(completed)
        if cfg.get("test"):
            for k, v in trainer.test(model, datamodule=datamodule)[0].items():
                metrics[k] = float(v)
        if trainer.is_global_zero:
            hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
            for lg in trainer.loggers:
                if isinstance(lg, L.pytorch.loggers.TensorBoardLogger):
                    lg.log_hyperparams(flat_hparams(cfg), hp_metrics)
        job.metrics = metrics
    log.info("Finished %s: %s", run_dir, {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
