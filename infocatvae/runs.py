"""A run folder: its status file (``JobStatus`` records a job in it), its last checkpoint, its evaluation
folders, its write check and its lock.

One job owns one folder (``paths.output_dir``) holding ``.hydra/``, ``checkpoints/`` (``last.ckpt``),
``tensorboard/``, ``status.json``, ``train.log`` and ``eval/<checkpoint>/``. Everything that reads or
writes those bookkeeping files goes through here: train, evaluate, summarize and the experiment
scripts. What a checkpoint holds, and how one is read, checked and loaded, lives in
``infocatvae.checkpoints``; what a config field may hold, in ``infocatvae.validation``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
MIN_FREE_BYTES = 200 * 2**20  # a few checkpoints and event files


class RunFolderBusy(RuntimeError):
    """Another live process owns the run folder."""


def _split_overrides(override_dirname: str) -> list[str]:
    """Hydra's ``override_dirname`` cut into its ``key=value`` items: at the commas outside brackets and quotes.
    (By hand: Hydra parses single overrides, not the comma-joined string it makes of them.)"""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(override_dirname):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(override_dirname[start:i])
            start = i + 1
    items.append(override_dirname[start:])
    return items


def run_id(override_dirname: str) -> str:
    """A job's folder name from its overrides (``model.lam=4,model=catvae``), ``default`` when none.

    Hydra's ``+``/``++`` prefixes are left out, so that ``++trainer.limit_train_batches=5`` and
    ``trainer.limit_train_batches=5`` name the same job (and folder); the items are then sorted again,
    as Hydra sorts them with their prefixes. A name without prefixes is kept as Hydra wrote it."""
    items = _split_overrides(override_dirname)
    stripped = [item.lstrip("+") for item in items]
    if stripped != items:
        override_dirname = ",".join(sorted(stripped))
    return override_dirname.replace("/", "_") or "default"


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The training run folder holding ``ckpt_path`` (``<run>/checkpoints/<file>`` with ``<run>/.hydra``)."""
    parent = Path(ckpt_path).resolve().parent
    if parent.name == "checkpoints" and (parent.parent / ".hydra").is_dir():
        return parent.parent
    return None


OmegaConf.register_new_resolver("run_id", run_id, replace=True)


def eval_dir(ckpt_path: str | None, log_dir: str) -> str:
    """The folder of an evaluation (conf/eval.yaml's run folder): ``<run>/eval/<ckpt stem>`` for a checkpoint
    inside a training run, else ``<log_dir>/eval/runs/<folder>_<ckpt stem>``."""
    if not ckpt_path:
        return str(Path(log_dir) / "eval" / "runs" / "no_ckpt_path")
    run = run_dir_of(ckpt_path)
    stem = Path(ckpt_path).stem
    if run is not None:
        return str(run / "eval" / stem)
    return str(Path(log_dir) / "eval" / "runs" / f"{Path(ckpt_path).resolve().parent.name}_{stem}")


OmegaConf.register_new_resolver("eval_dir", eval_dir, replace=True)


def last_ckpt(run_dir: str | Path) -> Path:
    """The checkpoint that ``callbacks.last_checkpoint`` rewrites at the end of every epoch."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def is_own(ckpt_path: str | Path, run_dir: str | Path) -> bool:
    """Whether ``ckpt_path`` lies in the ``checkpoints/`` folder of ``run_dir``."""
    return run_dir_of(ckpt_path) == Path(run_dir).resolve()


def read_status(run_dir: str | Path, strict: bool = False) -> dict[str, Any]:
    """``status.json`` of a run folder: ``{}`` when it is missing, or unreadable unless ``strict`` (then the
    OSError or ValueError propagates, for a summary that reports it)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        if strict:
            raise
        return {}


def write_status(run_dir: str | Path, **fields: Any) -> None:
    """Update ``status.json`` in the run folder (written to a temporary file, then renamed).

    Only the process of global rank 0 writes (the other processes of a DDP job do nothing)."""
    if rank_zero_only.rank != 0:
        return
    path = Path(run_dir) / STATUS_FILE
    status = {**read_status(run_dir), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(tmp, path)


class JobStatus:
    """Records a job in its folder's ``status.json``, as a context manager around the job::

        with JobStatus(run_dir) as job:
            ...  # build; job.trainer = trainer; job.running(...); fit; job.metrics = {...}

    On leaving: ``completed`` with ``job.metrics``, else ``failed`` (or ``interrupted`` for Ctrl-C and
    signals) with the error, and the trainer's epoch and step once ``job.trainer`` is set, so that a sweep's
    summary shows every job's outcome. A config refused before the job started (a ValueError before
    ``job.running``: a bad value) is recorded only in a folder that holds no run yet: the record of a run the
    folder holds (a finished one, say, run again with a typo) stays as it was. Any other failure (a corrupt
    checkpoint, missing data) is recorded. Lightning's SIGTERM exit
    (SystemExit(None): status 0) leaves as exit status 128 + SIGTERM, so that a scheduler sees the job did not
    finish.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = run_dir
        self.trainer: Any = None
        self.metrics: dict[str, float] = {}
        self.started = False

    def running(self, **fields: Any) -> None:
        """The job has started: the record of an earlier attempt (its metrics, epoch and step) is cleared, so
        that a failed, killed or running attempt is never ranked by the scores of the one before it."""
        self.started = True
        write_status(self.run_dir, status="running", error=None, metrics={}, epoch=None, step=None, **fields)

    def __enter__(self) -> JobStatus:
        return self

    def __exit__(self, exc_type, err, tb) -> bool:
        t = self.trainer
        progress = {"epoch": t.current_epoch if t else None, "step": t.global_step if t else None}
        if err is None:
            write_status(self.run_dir, status="completed", metrics=self.metrics, **progress)
            return False
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
        status = "interrupted" if interrupted else "failed"
        held = read_status(self.run_dir).get("status") if not self.started and isinstance(err, ValueError) else None
        if held:
            log.error(
                "%s before the job started; %s/%s still records the run this folder holds (%s)",
                type(err).__name__,
                self.run_dir,
                STATUS_FILE,
                held,
            )
            return False
        write_status(self.run_dir, status=status, error=f"{type(err).__name__}: {err}", **progress)
        if isinstance(err, SIGTERMException):
            raise SystemExit(128 + signal.SIGTERM) from err
        return False


def check_output_dir(run_dir: Path) -> None:
    """Fail now, not after an epoch, when the run folder cannot be written or the disk is full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as err:
        raise RuntimeError(
            f"the output folder {run_dir} cannot be written ({err.strerror or err}); "
            f"choose another with hydra.run.dir=<folder> or paths.log_dir=<folder>"
        ) from err
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise RuntimeError(
            f"the disk holding {run_dir} has {free / 2**20:.0f} MiB free; "
            f"at least {MIN_FREE_BYTES // 2**20} MiB are needed for checkpoints and logs"
        )


def is_locked(run_dir: str | Path) -> bool:
    """Whether a job holds ``run_dir``'s lock now (``RunLock``): a shared ``flock`` tried without waiting, and
    released at once. A folder whose status.json says running and that no job holds was killed (SIGKILL, out of
    memory, a lost node), as nothing else leaves that record behind."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class RunLock:
    """One owner per run folder: an exclusive ``flock`` on ``<run>/.lock``, held for the whole job.

    A second process on the same folder (a sweep re-launched while the first still runs, a requeued
    job while the old one exits) gets ``RunFolderBusy`` at once, naming the folder and the holder's
    process id and host, before it writes anything of the job. The kernel drops the lock when its
    process dies (SIGKILL, out-of-memory, node failure), so a lock is never stale: the file may stay,
    the lock does not. Only global rank 0 locks (the other ranks of a DDP job share its folder).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if rank_zero_only.rank != 0:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # a second's grace: is_locked (a sweep's summary) holds a shared lock for an instant
            for attempt in range(20):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 19:
                        raise
                    time.sleep(0.05)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(
                f"the run folder {self.path.parent} is in use by another job (process {holder}); wait for it "
                f"to end or stop it, or choose another folder with hydra.run.dir=<folder>"
            ) from None
        holder = f"{os.getpid()} on {socket.gethostname()}\n".encode()
        os.pwrite(fd, holder, 0)  # then the tail of a longer line before it: never an empty file to a reader
        os.ftruncate(fd, len(holder))
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class OneFolderPerJob(Callback):
    """Hydra callback: refuses, before any job starts, a multirun that sweeps a key left out of the job folders'
    names (``hydra.job.config.override_dirname.exclude_keys``: ``trainer.max_epochs``, ``ckpt_path``, ``test``,
    ``logger``, ...), whose values would all train in one folder: one job resumed or skipped the other's run,
    or, run side by side, was refused as the folder was busy. Command-line sweeps and the Optuna sweeper's
    ``params`` are both read."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        excluded = set(config.hydra.job.config.override_dirname.exclude_keys)
        params = config.hydra.sweeper.get("params") or {}
        overrides = [*config.hydra.overrides.task, *(f"{k}={v}" for k, v in params.items())]
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
        if clash := sorted({k.lstrip("+~") for k in swept} & excluded):
            # SystemExit: Hydra turns a callback's Exception into a warning and goes on with the sweep
            raise SystemExit(
                f"{clash[0]} takes several values in this sweep, but the job folders are not named by it "
                f"(hydra.job.config.override_dirname.exclude_keys): every value would train in the same folder. "
                f"Run one sweep per value (with its own sweep_name=...), or sweep another key"
            )
