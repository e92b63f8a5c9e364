"""A run folder: its status file, its last checkpoint, its write check and its lock.

One job owns one folder (``paths.output_dir``) holding ``.hydra/``, ``checkpoints/`` (``last.ckpt``),
``tensorboard/``, ``status.json`` and ``train.log``. Everything that reads or writes those
bookkeeping files goes through here: train, summarize and the experiment scripts. What a
checkpoint holds, and how one is read, checked and loaded, lives in ``infocatvae.checkpoints``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from infocatvae.config import run_dir_of

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
MIN_FREE_BYTES = 200 * 2**20  # a few checkpoints and event files


class RunFolderBusy(RuntimeError):
    """Another live process owns the run folder."""


def last_ckpt(run_dir: str | Path) -> Path:
    """The checkpoint that ``callbacks.last_checkpoint`` rewrites at the end of every epoch."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def is_own(ckpt_path: str | Path, run_dir: str | Path) -> bool:
    """Whether ``ckpt_path`` lies in the ``checkpoints/`` folder of ``run_dir``."""
    return run_dir_of(ckpt_path) == Path(run_dir).resolve()


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """``status.json`` of a run folder, ``{}`` when it is missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(
                f"the run folder {self.path.parent} is in use by another job (process {holder}); wait for it "
                f"to end or stop it, or choose another folder with hydra.run.dir=<folder>"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
