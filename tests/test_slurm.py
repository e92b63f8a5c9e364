"""Sweeps on a real SLURM cluster: a one-node cluster on this machine (``tests/slurm_cluster.py``, started once
per session) runs ``python -m infocatvae.train -m hydra/launcher=slurm_cpu ...`` as a user would, on real MNIST.

What is checked, in two tests (each job start costs seconds of imports, so one sweep covers four cases):
- a sweep of four jobs: the time-limit signal (USR2) mid-epoch saves ``last.ckpt``, submitit requeues the
  job and it resumes to the epoch and step of an uninterrupted job; a preemption (``scontrol requeue``)
  resumes from the job's folder with one ``last.ckpt`` and the same TensorBoard steps as an uninterrupted
  job (nothing lost, nothing logged twice); a failing job is recorded as failed while the others finish;
  the summary shows all four; no sacct noise with accounting off; no ``+``/``++`` in folder names;
- a two-process DDP job (``trainer=ddp``, ``tasks_per_node=2``, gloo) trains, only rank 0 writes, and the
  same command with more epochs resumes it.
They need root and the Debian packages (``apt-get install -y slurmctld slurmd munge slurm-client``;
``.ci/run`` installs them); elsewhere they skip and say so. ``pytest -m slurm`` runs only them. The tests of
``run_id`` and of the squeue fallback (``infocatvae.slurm``, with stand-in ``sacct``/``squeue`` scripts) need
neither.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from infocatvae.runs import run_id
from tests.slurm_cluster import SlurmCluster, unavailable

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = str(Path(os.environ.get("INFOCATVAE_DATA_DIR") or REPO.parent / "shared" / "data").resolve())
SQUEUE_LINE = "job states are read from squeue"
# the preset's defaults: 1 CPU per job (two jobs at once on 2 cores), 2 GB, no GPU
SLURM_CPU = ["hydra/launcher=slurm_cpu"]
TINY = ["debug=tiny"]


class Pace(L.Callback):
    """Test-only callback: sleeps ``seconds`` before each training batch, so that a signal lands mid-epoch and, as
    in real training where nearly all the time is spent computing, before a batch is trained; appends
    ``epoch batch step slurm_job_id`` to ``<run>/pace.txt`` (read by the tests to time the signal)."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            # an array element as <array>_<index>: its own numeric id may be the array's, which names every element
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
            with open(Path(trainer.default_root_dir) / "pace.txt", "a") as f:
                f.write(f"{trainer.current_epoch} {batch_idx} {trainer.global_step} {job}\n")
        time.sleep(self.seconds)


PACE = "+callbacks.pace={_target_:tests.test_slurm.Pace,seconds:0.3}"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster for the session (daemons' files under a pytest temporary folder)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if not (Path(DATA_DIR) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {DATA_DIR} (set INFOCATVAE_DATA_DIR)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def job_env(cluster: SlurmCluster) -> dict[str, str]:
    return {**cluster.env, "INFOCATVAE_DATA_DIR": DATA_DIR, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def sweep_cmd(cluster: SlurmCluster, sweep: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "infocatvae.train",
        "-m",
        *SLURM_CPU,
        f"hydra.launcher.partition={cluster.partition}",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        *overrides,
    ]


def run_sweep(cluster: SlurmCluster, sweep: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The sweep command, to its end (output captured); then no job of the cluster is left running."""
    res = subprocess.run(
        sweep_cmd(cluster, sweep, *overrides),
        cwd=REPO,
        env=job_env(cluster),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wait_idle(cluster)
    return res


def start_sweep(cluster: SlurmCluster, sweep: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        sweep_cmd(cluster, sweep, *overrides),
        cwd=REPO,
        env=job_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(cluster: SlurmCluster, proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wait_idle(cluster)
    return proc.returncode, out, err


def signal_once(cluster: SlurmCluster, *cmd: str) -> None:
    """``scancel --signal`` (or ``scontrol requeue``) with a single attempt: scancel retries every 5+ seconds while
    the job is in transition (a requeue in progress) and would signal its next run too."""
    try:
        subprocess.run(cmd, env=cluster.env, capture_output=True, timeout=4)
    except subprocess.TimeoutExpired:
        pass


def wait_idle(cluster: SlurmCluster, timeout: float = 180) -> None:
    """Until no job is pending or running (a sweep command may exit before its other jobs end)."""
    end = time.monotonic() + timeout
    while cluster.active_jobs():
        assert time.monotonic() < end, f"jobs still active: {cluster.active_jobs()}\n{cluster.logs_tail()}"
        time.sleep(0.5)


def run_of(sweep: Path, override: str) -> Path:
    """The run folder of the sweep's job with ``override`` among its overrides (it may not exist yet)."""
    (name,) = [n for n in job_folders(sweep) if override in n.split(",")]
    return sweep / name


def wait_pace(sweep: Path, override: str, epoch: int, batch: int, proc: subprocess.Popen, timeout: float = 180) -> str:
    """Until the sweep's job with ``override`` has trained batch ``batch`` of epoch ``epoch``; returns its job id."""
    end = time.monotonic() + timeout
    while True:
        paces = [p for p in sweep.glob("*/pace.txt") if override in p.parent.name.split(",")]
        lines = paces[0].read_text().split() if paces else []
        rows = [lines[i : i + 4] for i in range(0, len(lines), 4)]
        for e, b, _, job in rows:
            if (int(e), int(b)) >= (epoch, batch):
                return job
        if proc.poll() is not None or time.monotonic() > end:
            out, err = proc.communicate()
            pytest.fail(f"the job never reached epoch {epoch}, batch {batch}: {rows}\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.05)


def job_folders(sweep: Path) -> dict[str, Path]:
    """Run folder of each job of a sweep, by its folder name (the overrides)."""
    return {p.parent.parent.name: p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")}


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def ckpt_progress(path: Path) -> tuple[int, int]:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["epoch"], ckpt["global_step"]


def tb_steps(run: Path, tag: str = "train/loss_step") -> list[list[int]]:
    """The steps logged under ``tag``, one list per TensorBoard event file of the run (in the order written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    per_file = []
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            per_file.append([e.step for e in acc.Scalars(tag)])
    return per_file


def submitit_logs(sweep: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit").rglob("*_log.*")))


# ---------------------------------------------------------------------------------------------- the cluster


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_with_time_limit_signal_preemption_and_failure(slurm, tmp_path):
    """One sweep of four jobs, two at a time on the two CPUs (one sweep, to keep the tests short):
    - model.lam=1 gets the time-limit signal (USR2, what SLURM sends signal_delay_s before the limit) mid-epoch:
      submitit requeues it, InterruptCheckpoint saves last.ckpt, the requeued job resumes from it;
    - model.lam=2 is preempted (``scontrol requeue``: SIGTERM, back in the queue) mid-epoch 0, and resumes;
    - model.lam=3 runs uninterrupted: the reference;
    - model.lam=-1 fails (λ < 0 is refused): recorded as failed, the others finish.
    Each resumed job ends at the reference's epoch and step, with the same TensorBoard steps (none lost, none
    logged twice); the summary shows the four; no sacct noise; no "+"/"++" in the folder names."""
    sweep = tmp_path / "sweep"
    proc = start_sweep(
        slurm, sweep, "model.lam=1,2,3,-1", "++trainer.max_epochs=3", "++trainer.limit_train_batches=6", PACE
    )
    # lam=2 first, in its first epoch: the two jobs run side by side, and a job 3 s ahead of the other would
    # otherwise be past its last batch by the time scancel (up to 4 s) returns and the requeue is sent
    slurm.run("scontrol", "requeue", wait_pace(sweep, "model.lam=2", epoch=0, batch=2, proc=proc))
    signal_once(slurm, "scancel", "--signal=USR2", wait_pace(sweep, "model.lam=1", epoch=1, batch=2, proc=proc))
    rc, out, err = finish(slurm, proc)
    logs = submitit_logs(sweep)
    # the failing job makes the sweep command exit non-zero, after the other jobs finished
    assert rc != 0, out[-3000:] + err[-3000:] + logs[-5000:]
    assert len(job_folders(sweep)) == 4, (list(job_folders(sweep)), err[-3000:])
    assert not [name for name in job_folders(sweep) if name.startswith("+") or ",+" in name], job_folders(sweep)
    signalled, preempted, reference = (run_of(sweep, f"model.lam={lam}") for lam in (1, 2, 3))
    failed = run_of(sweep, "model.lam=-1")

    # the reference and the failure
    assert status(reference)["status"] == "completed" and status(reference)["step"] == 18, status(reference)
    assert "Interrupted" not in (reference / "train.log").read_text()
    assert status(failed)["status"] == "failed" and "model.lam" in status(failed)["error"], status(failed)
    final = ckpt_progress(reference / "checkpoints" / "last.ckpt")
    assert final[1] == 18

    # the time-limit signal: last.ckpt saved mid-epoch (after the first epoch's 6 steps, before the second's end),
    # the job requeued by submitit, resumed from it, ended where the reference ended
    train_log = (signalled / "train.log").read_text()
    interrupted = [line for line in train_log.splitlines() if "Interrupted (SystemExit): saved" in line]
    assert len(interrupted) == 1, train_log
    assert 6 < int(interrupted[0].rsplit("step ", 1)[1]) < 12, interrupted
    assert "Caught signal SIGUSR2" in train_log and "Requeued job" in train_log, train_log
    last = signalled / "checkpoints" / "last.ckpt"
    assert f"Resuming from {last}" in train_log and status(signalled)["resumed_from"] == str(last), train_log
    assert status(signalled)["status"] == "completed" and ckpt_progress(last) == final, status(signalled)

    # the preemption: SIGTERM saved last.ckpt, the job came back and resumed from its folder; one last.ckpt,
    # no leftover of an atomic write; its curves continue: two event files (before and after), the same steps
    # as the reference's, none twice
    train_log = (preempted / "train.log").read_text()
    assert "Interrupted (SIGTERMException): saved" in train_log and "Resuming from" in train_log, train_log
    assert status(preempted)["status"] == "completed", status(preempted)
    checkpoints = sorted(p.name for p in (preempted / "checkpoints").iterdir())
    assert [n for n in checkpoints if "last" in n or "tmp" in n] == ["last.ckpt"], checkpoints
    assert ckpt_progress(preempted / "checkpoints" / "last.ckpt") == final
    for tag in ("train/loss_step", "val/loss"):
        steps = [part for part in tb_steps(preempted, tag) if part]  # no val/loss before the preemption in epoch 0
        ref_steps = tb_steps(reference, tag)
        flat = [s for part in steps for s in part]
        assert all(max(a) < min(b) for a, b in zip(steps, steps[1:])), (tag, steps)
        assert len(steps) == (2 if tag == "train/loss_step" else 1), (tag, steps)  # the curve continues in a new file
        assert len(set(flat)) == len(flat), f"{tag}: steps logged twice: {steps}"
        # a step missing here was trained but not logged: the batch during which SIGTERM came must finish, its
        # metrics logged, before the job stops (Lightning >= 2.6 raises SIGTERMException just after that)
        assert flat == [s for part in ref_steps for s in part], f"{tag}: {steps} against uninterrupted {ref_steps}"

    # accounting is off on this cluster: one line says so, no per-poll sacct warning
    assert "Bypassing sacct error" not in out + err, out[-3000:] + err[-3000:]
    assert "accounting storage is disabled" not in err, err[-3000:]
    assert [line for line in out.splitlines() if "sacct" in line or "accounting" in line] == [
        next(line for line in out.splitlines() if SQUEUE_LINE in line)
    ], out[-3000:]

    # the summary: the four jobs, the failure with its error
    summ = subprocess.run(
        [sys.executable, "-m", "infocatvae.summarize", str(sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert summ.returncode == 0, summ.stderr
    rows = {r["model.lam"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert {k: r["status"] for k, r in rows.items()} == {
        "1": "completed",
        "2": "completed",
        "3": "completed",
        "-1": "failed",
    }, rows
    assert all(0 <= float(rows[k]["val/cluster_acc"]) <= 1 for k in ("1", "2", "3")) and rows["-1"]["error"], rows


@pytest.mark.slurm
@pytest.mark.slow
def test_ddp_job_of_two_tasks_trains_writes_once_and_resumes(slurm, tmp_path):
    """``trainer=ddp`` on two CPU processes of one SLURM job (tasks_per_node=2, gloo): it trains, rank 0 alone writes
    the run's status.json and TensorBoard files, and the same command with more epochs resumes it."""
    sweep = tmp_path / "sweep"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "hydra.launcher.tasks_per_node=2"]
    res = run_sweep(slurm, sweep, *ddp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + submitit_logs(sweep)[-5000:]
    runs = job_folders(sweep)
    assert len(runs) == 1, runs
    (run,) = runs.values()
    # one writer: one status.json, one TensorBoard folder whose files all come from one process (rank 0)
    assert [p.parent for p in sweep.rglob("status.json")] == [run]
    assert status(run)["status"] == "completed" and status(run)["step"] == 3, status(run)
    events = list(run.rglob("events.out.tfevents.*"))
    assert events and {e.parent for e in events} == {run / "tensorboard"}, events
    writers = {e.name.rsplit(".", 2)[1] for e in events}  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert len(writers) == 1, events
    logs = submitit_logs(sweep)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in logs, logs[-5000:]

    again = run_sweep(slurm, sweep, *ddp, "trainer.max_epochs=2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:] + submitit_logs(sweep)[-5000:]
    st = status(run)
    assert st["status"] == "completed" and st["epoch"] == 2 and st["step"] == 6, st
    assert "Resuming from" in (run / "train.log").read_text()
    assert [p.parent for p in sweep.rglob("status.json")] == [run]
    assert ckpt_progress(run / "checkpoints" / "last.ckpt")[1] == 6
    assert len({e.name.rsplit(".", 2)[1] for e in run.rglob("events.out.tfevents.*")}) == 2  # one writer per run
    # both processes resumed (rank 1 logs into the same train.log: each process of the job runs the Hydra job)
    assert (run / "train.log").read_text().count("Resuming from") == 2


# ---------------------------------------------------------------------------- no cluster needed


def test_run_id_leaves_out_plus_prefixes():
    assert run_id("") == "default"
    assert run_id("model.lam=4,model=catvae") == "model.lam=4,model=catvae"
    # Hydra sorts the items with their prefixes; without them they sort as the plain overrides do
    assert run_id("++trainer.limit_train_batches=5,debug=tiny,model.lam=1") == (
        "debug=tiny,model.lam=1,trainer.limit_train_batches=5"
    )
    assert run_id("+experiment=table1_catvae,model.K=5") == run_id("experiment=table1_catvae,model.K=5")
    assert run_id("+callbacks.x={a:1,b:[1,+2]},model.K=5") == "callbacks.x={a:1,b:[1,+2]},model.K=5"
    assert run_id("data=seq_mnist,hydra/launcher=local") == "data=seq_mnist,hydra_launcher=local"
    assert run_id("~callbacks.images,model.K=5") == "~callbacks.images,model.K=5"


def test_run_id_names_the_same_folder_with_or_without_plus(tmp_path):
    """Through Hydra itself: ``+x``/``++x`` and ``x`` give one job folder."""
    from hydra import compose, initialize_config_dir

    from infocatvae.config import CONFIG_DIR

    dirs = []
    for prefix in ("", "+", "++"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            overrides = [f"{prefix}trainer.limit_train_batches=5", "model.lam=3"]
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            dirs.append(cfg.hydra.run.dir)
    assert len(set(dirs)) == 1 and dirs[0].endswith("/runs/model.lam=3,trainer.limit_train_batches=5"), dirs


def fake_slurm_bin(folder: Path, sacct: str, squeue: str) -> None:
    folder.mkdir()
    for name, body in (("sacct", sacct), ("squeue", squeue)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)


def test_squeue_fallback_when_sacct_does_not_answer(tmp_path, monkeypatch, caplog):
    """With sacct refusing (accounting off), states come from squeue: one log line, no warning, a pending
    array element stays unfinished, an ended one is finished, a job squeue no longer lists has ended."""
    from infocatvae import slurm

    bin_dir = tmp_path / "bin"
    squeue_out = "7_0|RUNNING|vm\\n7_1|CONFIGURING|\\n7_2|COMPLETED|vm\\n8|PENDING|"
    fake_slurm_bin(
        bin_dir,
        sacct='echo "Slurm accounting storage is disabled" >&2; exit 1',
        squeue=f'echo "$@" >> "{tmp_path}/squeue_args"; printf "{squeue_out}\\n"',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    watcher = slurm.make_watcher()
    with caplog.at_level("INFO"):
        for job in ("7_0", "7_1", "7_2", "8", "9"):
            watcher.register_job(job)
        watcher.update()
        watcher.update()
    assert watcher.use_squeue
    assert [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"] == [
        "sacct does not answer (Slurm accounting storage is disabled): job states are read from squeue"
    ]
    states = {j: watcher.get_state(j, mode="cache") for j in ("7_0", "7_1", "7_2", "8", "9")}
    assert states == {"7_0": "RUNNING", "7_1": "PENDING", "7_2": "COMPLETED", "8": "PENDING", "9": slurm.ENDED}
    assert [watcher.is_done(j, mode="cache") for j in states] == [False, False, True, False, True]
    assert "--jobs=7,8,9" in (tmp_path / "squeue_args").read_text()


def test_sacct_kept_when_it_answers(tmp_path, monkeypatch):
    from infocatvae import slurm

    bin_dir = tmp_path / "bin"
    fake_slurm_bin(bin_dir, sacct='printf "JobID|State|NodeList\\n5|RUNNING|vm\\n"', squeue="exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    watcher = slurm.make_watcher()
    watcher.register_job("5")
    watcher.update()
    assert watcher.use_squeue is False and watcher.get_state("5", mode="cache") == "RUNNING"


def test_the_slurm_launchers_install_the_fallback():
    """The callback of conf/hydra/default.yaml installs the watcher for the SLURM launcher only."""
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmJob

    from infocatvae import slurm

    saved = SlurmJob.watcher
    try:
        local = OmegaConf.create({"hydra": {"launcher": {"_target_": "x.submitit_launcher.LocalLauncher"}}})
        slurm.SqueueWhenNoSacct().on_multirun_start(local)
        assert SlurmJob.watcher is saved
        cfg = OmegaConf.create({"hydra": {"launcher": {"_target_": "x.submitit_launcher.SlurmLauncher"}}})
        slurm.SqueueWhenNoSacct().on_multirun_start(cfg)
        assert type(SlurmJob.watcher).__name__ == "SqueueFallbackWatcher"
    finally:
        SlurmJob.watcher = saved
