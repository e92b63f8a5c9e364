"""SLURM clusters without accounting: submitit reads its jobs' states from ``squeue`` instead of ``sacct``.

submitit (behind ``hydra/launcher=slurm`` and ``slurm_cpu``) polls ``sacct`` for the state of the
jobs a sweep waits on. On a cluster with accounting off (``AccountingStorageType=accounting_storage/none``,
common on small clusters) every poll fails: the terminal fills with "Bypassing sacct error ... status
may be inaccurate" and sacct's own "Slurm accounting storage is disabled", and a job that dies without
writing its result (killed, out of memory) is never seen to end, so the sweep waits for ever.

``SqueueWhenNoSacct`` is a Hydra callback (``conf/hydra/default.yaml``, ``hydra.callbacks.slurm_states``)
that, when a multirun starts with the SLURM launcher, gives submitit's ``SlurmJob`` a watcher that
asks ``sacct`` once whether it answers; when it does, nothing changes; when it does not, it logs one
line saying so and reads the states from ``squeue`` (which lists the jobs slurmctld holds: pending,
running, requeued, and those ended within its ``MinJobAge``, 300 s by default). A job that squeue no
longer lists has ended; submitit then reads its result file, or reports that it left none.
"""

from __future__ import annotations

import logging
import subprocess
import time
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

SQUEUE_FIELDS = "JobID|State|NodeList"
SQUEUE_FORMAT = "%i|%T|%N"
# the state given to a job that squeue no longer lists (anything but submitit's pending/running states ends a wait)
ENDED = "ENDED"
# squeue's transient states that submitit's list of unfinished ones (READY PENDING RUNNING UNKNOWN REQUEUED
# COMPLETING PREEMPTED, named after sacct's) lacks: reported as the one they stand for, so that no wait ends early
TRANSIENT = {
    "CONFIGURING": "PENDING",
    "REQUEUE_FED": "REQUEUED",
    "REQUEUE_HOLD": "REQUEUED",
    "RESV_DEL_HOLD": "PENDING",
    "RESIZING": "RUNNING",
    "SIGNALING": "RUNNING",
    "STAGE_OUT": "COMPLETING",
    "STOPPED": "RUNNING",
    "SUSPENDED": "RUNNING",
}


def sacct_error() -> str | None:
    """Why ``sacct`` cannot report job states here (its error message), None when it answers."""
    try:
        res = subprocess.run(
            ["sacct", "--noheader", "--jobs=1", "--format=JobID"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    if res.returncode != 0:
        return (res.stderr or res.stdout).strip() or f"exit status {res.returncode}"
    return None


def make_watcher(delay_s: int = 600) -> Any:
    """A submitit ``SlurmInfoWatcher`` that falls back on ``squeue`` when ``sacct`` does not answer."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueFallbackWatcher(SlurmInfoWatcher):
        use_squeue: bool | None = None  # decided at the first poll

        def update(self) -> None:
            if self.use_squeue is None:
                error = sacct_error()
                self.use_squeue = error is not None
                if error is not None:
                    log.info("sacct does not answer (%s): job states are read from squeue", error.splitlines()[0])
            if not self.use_squeue:
                super().update()
                return
            to_check = self._registered - self._finished
            if not to_check:
                return
            self._num_calls += 1
            main_ids = sorted({job_id.split("_")[0] for job_id in to_check})
            command = ["squeue", "--noheader", "--array", "--states=all", f"--format={SQUEUE_FORMAT}"]
            try:
                res = subprocess.run(
                    [*command, f"--jobs={','.join(main_ids)}"], capture_output=True, text=True, timeout=60
                )
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("squeue failed (%s); the jobs' states are polled again later", err)
                return
            # squeue refuses a single id that slurmctld has forgotten; several ids are filtered instead
            if res.returncode != 0 and "Invalid job id" not in res.stderr:
                log.warning("squeue failed (%s); the jobs' states are polled again later", res.stderr.strip())
                return
            info = self.read_info(f"{SQUEUE_FIELDS}\n{res.stdout if res.returncode == 0 else ''}")
            for stats in info.values():
                stats["State"] = TRANSIENT.get(stats.get("State", ""), stats.get("State", ""))
            for job_id in to_check:
                info.setdefault(job_id, {"JobID": job_id, "State": ENDED, "NodeList": ""})
            self._info_dict.update(info)
            self._last_status_check = time.time()
            for job_id in to_check:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return SqueueFallbackWatcher(delay_s=delay_s)


def install() -> None:
    """Give submitit's ``SlurmJob`` the squeue-fallback watcher (once per process)."""
    from submitit.slurm.slurm import SlurmJob

    if type(SlurmJob.watcher).__name__ != "SqueueFallbackWatcher":
        SlurmJob.watcher = make_watcher()


class SqueueWhenNoSacct(Callback):
    """Hydra callback: with the SLURM launcher, submitit reads job states from squeue when sacct does not answer."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        # submitit's SlurmLauncher, or hydra/launcher=slurm's ReportingSlurmLauncher (hydra_plugins/infocatvae_launcher)
        if target.endswith("SlurmLauncher"):
            install()
