"""``hydra/launcher=local``: submitit's local launcher, at most ``max_jobs`` jobs at once; and
``hydra/launcher=slurm`` (``slurm_cpu``): submitit's SLURM launcher. Both report a job killed without a result
as a failed job (``job_result``).

submitit's local executor starts every job of a sweep at once (it has no ``array_parallelism``:
that is a SLURM array setting, and ``hydra_submitit_launcher`` hands the whole sweep to
``map_array``). Several trainings on the same cores run many times slower than one after another
(measured: two 2-thread trainings on 2 cores, 6 to 13 times slower each), so this launcher keeps a
rolling window instead: it submits a job whenever fewer than ``max_jobs`` run, each still its own
process with submitit's logs, time limit and ``cpus_per_task`` (the job's torch threads, read by
``infocatvae.train.cpu_threads``). ``max_jobs: null`` is as many jobs as the machine has cores to
give them: ``cores // cpus_per_task``, at least 1.

A Hydra launcher must be defined under the ``hydra_plugins`` package (Hydra refuses a ``_target_``
elsewhere), hence this module beside ``infocatvae``; it imports nothing of ``infocatvae`` or torch,
since Hydra imports every plugin module at each start. Hydra finds it by scanning ``hydra_plugins``,
except through an editable install's import hook: ``infocatvae.train`` registers it too
(``infocatvae/launcher.py``). No ``from __future__ import annotations`` here: Hydra's scan executes this
module before it is in ``sys.modules``, where ``dataclasses`` would look string annotations up.
"""

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which ``taskset`` or a container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def job_limit(max_jobs: int | None, cpus_per_task: int | None, cores: int | None = None) -> int:
    """How many jobs may run at once: ``max_jobs`` when set, else ``cores // cpus_per_task`` (a job
    without ``cpus_per_task`` takes every core, as ``infocatvae.train.cpu_threads`` gives it), at least 1."""
    if max_jobs is not None:
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ValueError(f"hydra.launcher.max_jobs must be null or an integer >= 1, got {max_jobs!r}")
        return max_jobs
    cores = cores or available_cores()
    return max(1, cores // (cpus_per_task or cores))


def run_throttled(submit: Callable[..., Any], args: Sequence[tuple], limit: int, poll_s: float = 0.2) -> list[Any]:
    """``submit(*a)`` for each ``a`` of ``args`` in order, never more than ``limit`` of the returned jobs
    unfinished (``job.done()`` false) at once; returns once every job is done, the jobs in order."""
    jobs: list[Any] = []
    running: list[Any] = []
    for a in args:
        while len(running) >= limit:
            time.sleep(poll_s)
            running = [j for j in running if not j.done()]
        job = submit(*a)
        jobs.append(job)
        running.append(job)
    while any(not j.done() for j in running):
        time.sleep(poll_s)
    return jobs


def job_result(job: Any, overrides: Sequence[str]) -> JobReturn:
    """``job``'s JobReturn. A job that ended without one (killed: SIGKILL, out of memory, scancel, a lost node,
    its time limit after the last requeue) is a failed job like one that raised: submitit's
    UncompletedJobError had ended the whole sweep at the first such job, unreported jobs and an Optuna study
    (whose ``max_failure_rate`` counts failed trials) with it."""
    try:
        return job.results()[0]
    except Exception as err:  # submitit's UncompletedJobError, FailedJobError
        log.error(f"job {job.job_id} ({' '.join(filter_overrides(overrides))}) ended without a result: {err}")
        ret = JobReturn(overrides=list(overrides))
        ret.status = JobStatus.FAILED
        ret._return_value = err
        return ret


def make_executor(launcher: Any) -> Any:
    """The submitit executor of ``launcher`` with its parameters, as hydra-submitit-launcher's
    ``BaseSubmititLauncher.launch`` builds it, and the sweep folder made."""
    import submitit  # lazily, as the base class: plugin discovery stays fast

    init_keys = {"max_num_timeout", "submitit_folder"}
    executor = submitit.AutoExecutor(
        cluster=launcher._EXECUTOR,
        folder=launcher.params["submitit_folder"],
        **{f"{launcher._EXECUTOR}_{k}": v for k, v in launcher.params.items() if k == "max_num_timeout"},
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in base else f"{launcher._EXECUTOR}_{k}": v for k, v in launcher.params.items() if k not in init_keys}
    )
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(launcher.config.hydra.sweep.mode), 8))
    return executor


def job_args(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[tuple]:
    """Each job's arguments to the launcher's ``__call__``, logged as the base class does."""
    args = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    return args


@dataclass
class ThrottledLocalQueueConf(LocalQueueConf):
    _target_: str = "hydra_plugins.infocatvae_launcher.launchers.ThrottledLocalLauncher"
    # jobs running at once; null: cores // cpus_per_task
    max_jobs: Optional[int] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/launcher", name="submitit_local_throttled", node=ThrottledLocalQueueConf, provider="infocatvae"
)


# (subclassed through its module: a class imported by name would be listed again as a plugin of this module)
class ThrottledLocalLauncher(submitit_launcher.LocalLauncher):
    """hydra-submitit-launcher's ``LocalLauncher`` with a rolling window of ``max_jobs`` jobs."""

    def __init__(self, max_jobs: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.max_jobs = max_jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        limit = job_limit(self.max_jobs, self.params.get("cpus_per_task"))
        executor = make_executor(self)
        log.info(f"Submitit 'local' sweep output dir : {self.config.hydra.sweep.dir} ({limit} job(s) at once)")
        args = [(self, *a) for a in job_args(self, job_overrides, initial_job_idx)]
        jobs = run_throttled(executor.submit, args, limit)
        # Every job has ended; a failed or killed one is a failed JobReturn, which the sweeper reports.
        return [job_result(j, o) for j, o in zip(jobs, job_overrides)]


@dataclass
class ReportingSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.infocatvae_launcher.launchers.ReportingSlurmLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="submitit_slurm_reporting", node=ReportingSlurmQueueConf, provider="infocatvae"
)


class ReportingSlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's ``SlurmLauncher`` (one job array) whose killed jobs are failed jobs
    (``job_result``)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        executor = make_executor(self)
        log.info(f"Submitit 'slurm' sweep output dir : {self.config.hydra.sweep.dir}")
        jobs = executor.map_array(self, *zip(*job_args(self, job_overrides, initial_job_idx)))
        return [job_result(j, o) for j, o in zip(jobs, job_overrides)]
