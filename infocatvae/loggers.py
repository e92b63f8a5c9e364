"""Experiment loggers that resume into the same run when a job resumes (``conf/logger/``).

A job owns one folder and running the same command again resumes it from ``last.ckpt``; its logs
continue too:

- :class:`CSVLogger`: one ``csv/metrics.csv`` per run folder, appended to on resume (Lightning's own
  deletes the file when its folder exists); rows logged after the checkpoint the job resumed from
  (by a job killed mid-epoch) are dropped, as training repeats those steps.
- :class:`MLFlowLogger`: the MLflow run id is kept in ``<run folder>/mlflow_run_id``; a resumed job
  logs into that run.
- :class:`WandbLogger`: a W&B run id is made once per run folder and kept in ``<run folder>/wandb_run_id``;
  a resumed job passes it with ``resume="allow"``. Offline, each attempt is a part of its own under that id,
  whose ``_step`` starts at 0 again: syncing them may keep only the last part's history (README).

MLflow and W&B are optional dependencies (``pip install 'infocatvae[mlflow]'``, ``'infocatvae[wandb]'``):
without them these loggers raise an ImportError naming the extra, before any training.

:func:`read_scalars` reads back what the TensorBoard logger wrote, for the scripts that report a run.
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

MLFLOW_RUN_ID_FILE = "mlflow_run_id"
WANDB_RUN_ID_FILE = "wandb_run_id"


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the {extra} logger needs the optional package '{module}', which is not installed: "
            f"pip install 'infocatvae[{extra}]' (or choose another logger=...)"
        ) from err


def read_scalars(run_dir: Path, tags: Iterable[str] | None = None) -> dict[str, list]:
    """The scalars of a run folder's ``tensorboard/`` events: tag -> its events (``wall_time``, ``step``,
    ``value``), all of them (TensorBoard's reader keeps a sample of 10,000 by default). Every tag, or those
    of ``tags`` that were logged; empty when the run has no TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / "tensorboard"
    if not folder.is_dir():
        return {}
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    logged = acc.Tags()["scalars"]
    return {tag: acc.Scalars(tag) for tag in (logged if tags is None else tags) if tag in logged}


def resume_curves_at(logger_cfg: Any, step: int) -> Any:
    """``logger_cfg`` (the ``logger`` group) with each TensorBoard logger's ``purge_step`` set to ``step``, the
    batches the resumed checkpoint holds: TensorBoard then drops the points a killed job logged after that
    checkpoint (training logs them again), as the CSV logger drops its rows. Without it the curves held two
    points at those steps."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    if not isinstance(logger_cfg, DictConfig) or step <= 0:
        return logger_cfg
    logger_cfg = OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))  # a copy, resolved in place
    for entry in logger_cfg.values():
        if isinstance(entry, DictConfig) and str(entry.get("_target_", "")).endswith("TensorBoardLogger"):
            with open_dict(entry):
                entry.purge_step = step
    return logger_cfg


def read_run_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def write_run_id(path: Path, run_id: str) -> None:
    """Write ``run_id`` to ``path`` (a temporary file, then renamed); only on global rank 0."""
    if rank_zero_only.rank != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)


# ---- CSV -----------------------------------------------------------------------------------------
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but it keeps an existing ``metrics.csv`` and appends to it.

    The header of the existing file seeds the known columns (a new column rewrites the file, as
    Lightning does). At the first save, rows of the existing file from the first new row's step on are
    dropped: they were logged after the checkpoint that this job resumed from, and are logged again.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._resumed = self._fs.isfile(self.metrics_file_path)
        if self._resumed:
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        pass

    def save(self) -> None:
        if self._resumed and self.metrics:
            self._resumed = False
            self._drop_rows_from(min(m["step"] for m in self.metrics))
        super().save()

    def _drop_rows_from(self, step: int) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or float(r["step"]) < step]
        if len(kept) < len(rows):
            log.info(
                "CSV log %s: dropping %d rows from step %d on (logged after the checkpoint resumed from)",
                self.metrics_file_path,
                len(rows) - len(kept),
                step,
            )
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSVLogger whose ``metrics.csv`` continues when the job resumes (use a fixed
    ``version``, e.g. ``""``, so that the resumed job finds the same folder)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# ---- MLflow --------------------------------------------------------------------------------------
class MLFlowLogger(pl_loggers.MLFlowLogger):
    """Lightning's MLFlowLogger that keeps its run id in ``<run_dir>/mlflow_run_id``.

    Args:
        run_dir: the job's folder. When it holds ``mlflow_run_id`` and the tracking store has that
            run, the job logs into it (its status set back to RUNNING); else a new run is created
            and its id written there.
        run_name: the MLflow run's name; ``None``: the run folder's name.
        **kwargs: Lightning's MLFlowLogger arguments (``tracking_uri``, ``experiment_name``, ...).
    """

    def __init__(
        self, run_dir: str | Path, run_name: str | None = None, run_id: str | None = None, **kwargs: Any
    ) -> None:
        require("mlflow", "mlflow")
        self._run_id_file = Path(run_dir) / MLFLOW_RUN_ID_FILE
        self._stored_run_id = None if run_id else read_run_id(self._run_id_file)
        self._run_id_saved = False
        super().__init__(
            run_name=run_name or Path(run_dir).resolve().name, run_id=run_id or self._stored_run_id, **kwargs
        )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if not self._initialized and self._stored_run_id:
            from mlflow.exceptions import MlflowException

            try:
                run = self._mlflow_client.get_run(self._stored_run_id)
            except MlflowException as err:
                log.warning(
                    "MLflow run %s (from %s) is not in %s (%s); starting a new MLflow run",
                    self._stored_run_id,
                    self._run_id_file,
                    self._tracking_uri,
                    err,
                )
                self._run_id = None
            else:
                if run.info.lifecycle_stage == "deleted":
                    log.warning(
                        "MLflow run %s (from %s) was deleted; starting a new MLflow run",
                        self._stored_run_id,
                        self._run_id_file,
                    )
                    self._run_id = None
                else:
                    log.info("Resuming MLflow run %s (%s)", self._stored_run_id, self._tracking_uri)
                    self._mlflow_client.update_run(self._stored_run_id, status="RUNNING")
            self._stored_run_id = None
        client = super().experiment
        if not self._run_id_saved:
            if read_run_id(self._run_id_file) != self._run_id:
                write_run_id(self._run_id_file, self._run_id)
            self._run_id_saved = True
        return client


# ---- Weights & Biases ----------------------------------------------------------------------------
class WandbLogger(pl_loggers.WandbLogger):
    """Lightning's WandbLogger with a run id kept in ``<run_dir>/wandb_run_id`` and ``resume="allow"``,
    so that a resumed job continues the same W&B run online (offline: each resumed job adds an
    ``offline-run-*-<id>`` folder under ``<run_dir>/wandb``, whose ``_step`` starts at 0 again; syncing the
    parts of one id may keep only the last part's history: W&B issues 3841, 5865).

    Args:
        run_dir: the job's folder; ``save_dir`` too unless given.
        id: the W&B run id; ``None``: the one kept in the run folder, made (random) the first time.
        name: the W&B run's name; ``None``: the run folder's name.
        **kwargs: Lightning's WandbLogger arguments (``project``, ``offline``, ...).
    """

    def __init__(
        self,
        run_dir: str | Path,
        id: str | None = None,
        name: str | None = None,
        resume: str = "allow",
        save_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        require("wandb", "wandb")
        id_file = Path(run_dir) / WANDB_RUN_ID_FILE
        if id is None:
            id = read_run_id(id_file)
            if id is None:
                id = uuid.uuid4().hex[:16]
                write_run_id(id_file, id)
        super().__init__(
            id=id, name=name or Path(run_dir).resolve().name, resume=resume, save_dir=str(save_dir or run_dir), **kwargs
        )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            import wandb

            # A W&B run of an earlier job of this process (a multirun's jobs run one after another in
            # one process) would be reused by Lightning: finish it, so that this job gets its own run.
            if wandb.run is not None and wandb.run.id != self._wandb_init.get("id"):
                log.info("Finishing W&B run %s of an earlier job", wandb.run.id)
                wandb.run.finish()
        return super().experiment
