"""A run folder has one owner at a time: the same command started twice trains once, and a lock
left by a killed process never blocks the resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infocatvae import runs
from infocatvae.runs import RunFolderBusy, RunLock
from tests.helpers import REPO, TINY, cli_env, make_cfg, run_entry

pytestmark = pytest.mark.usefixtures("data_dir")  # real MNIST (the one policy: conftest.py)


def start(run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "infocatvae.train", *TINY, f"hydra.run.dir={run}", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        cwd=REPO,
    )


def wait_running(run: Path, proc: subprocess.Popen, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while not (run / "status.json").is_file() or json.loads((run / "status.json").read_text())["status"] != "running":
        assert proc.poll() is None and time.monotonic() < end, "the first job never started training"
        time.sleep(0.05)


def test_a_disk_without_room_for_checkpoints_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """With less than ``MIN_FREE_BYTES`` free on the run folder's disk (``shutil.disk_usage`` of that folder, as
    runs.py reads it), ``train()`` stops at once, saying what is free and what is needed, and leaves the folder
    empty; with exactly that much it goes on. In-process, without the tmpfs (root) that tests/test_faults.py's
    end-to-end check needs."""
    from infocatvae.train import train

    free, asked, usage = {}, [], shutil.disk_usage(tmp_path)

    def disk_usage(path):
        asked.append(Path(path))
        return usage._replace(free=free["bytes"])

    monkeypatch.setattr(runs.shutil, "disk_usage", disk_usage)
    run = tmp_path / "run"
    free["bytes"] = 50 * 2**20
    needed = runs.MIN_FREE_BYTES // 2**20
    with pytest.raises(RuntimeError) as refused:
        train(make_cfg(TINY, run))
    assert str(refused.value) == (
        f"the disk holding {run} has 50 MiB free; at least {needed} MiB are needed for checkpoints and logs"
    )
    assert asked == [run] and list(run.iterdir()) == []  # no status.json, lock or checkpoint
    free["bytes"] = runs.MIN_FREE_BYTES - 1
    with pytest.raises(RuntimeError, match="MiB free"):
        runs.check_output_dir(run)
    free["bytes"] = runs.MIN_FREE_BYTES
    runs.check_output_dir(run)  # enough: no error


def test_lock_names_the_holder_and_is_released(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderBusy, match=f"{tmp_path} is in use by another job \\(process {os.getpid()} on"):
            RunLock(tmp_path).__enter__()  # flock locks are per open file: the same process is refused too
    with RunLock(tmp_path):  # released on exit
        pass


@pytest.mark.slow
def test_second_start_on_the_same_folder_is_refused_and_the_first_trains_alone(tmp_path):
    run = tmp_path / "run"
    args = ["trainer.max_epochs=100", "trainer.limit_train_batches=30"]
    first = start(run, *args)
    try:
        wait_running(run, first)
        second = run_entry("infocatvae.train", *TINY, f"hydra.run.dir={run}", *args, timeout=120)
        assert first.poll() is None, "the first job should still be training"
        assert json.loads((run / "status.json").read_text())["status"] == "running"  # not the refused job's "failed"
    finally:
        first.send_signal(signal.SIGTERM)  # saves last.ckpt and exits
        first.wait(60)
    out = second.stdout + second.stderr
    assert second.returncode != 0
    assert f"the run folder {run} is in use by another job (process {first.pid} on" in out, out[-2000:]
    assert "Epoch 0" not in out
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"  # the first job's own record
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and all(n.startswith("best-epoch") and "-v" not in n for n in names[:-1])


@pytest.mark.slow
def test_lock_of_a_killed_job_does_not_block_the_resume(tmp_path):
    run = tmp_path / "run"
    args = ["trainer.max_epochs=2", "trainer.limit_train_batches=30"]
    proc = start(run, *args)
    try:
        wait_running(run, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert (run / ".lock").read_text().startswith(f"{proc.pid} on")  # the file stays; the lock died with it
    res = run_entry("infocatvae.train", *TINY, f"hydra.run.dir={run}", *args, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


def test_cpu_threads_follow_the_config_then_the_launcher_then_slurm_then_the_cores(monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from infocatvae.train import cpu_threads

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert cpu_threads(OmegaConf.create({"threads": None})) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cpu_threads(OmegaConf.create({"threads": None})) == 3
    assert cpu_threads(OmegaConf.create({"threads": 1})) == 1
    # a local sweep inside a SLURM allocation: the local launcher's cpus_per_task, not the allocation's
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"launcher": {"cpus_per_task": 1}})))
    assert cpu_threads(OmegaConf.create({"threads": None})) == 1
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"launcher": {}})))  # basic launcher
    assert cpu_threads(OmegaConf.create({"threads": None})) == 3


def test_eval_dir_layout(tmp_path):
    from infocatvae.runs import eval_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    assert eval_dir(str(run / "checkpoints" / "last.ckpt"), "logs") == str(run.resolve() / "eval" / "last")
    assert eval_dir(str(tmp_path / "x" / "model.ckpt"), "logs") == str(Path("logs/eval/runs/x_model"))
