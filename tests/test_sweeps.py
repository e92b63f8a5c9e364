"""Sweeps for real: a Hydra multirun through hydra-submitit-launcher's local launcher on real
MNIST, the summary table, running the same sweep again, a failing job, and DDP on two CPU
processes. Everything runs as subprocesses of the entry points."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import TINY, run_entry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("data_dir"),  # real MNIST (the one policy: conftest.py)
]


def entry(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_entry(module, *args, timeout=timeout)


def job_dirs(sweep: Path) -> dict[str, Path]:
    """K value -> job folder."""
    out = {}
    for status in sweep.glob("*/status.json"):
        overrides = (status.parent / ".hydra" / "overrides.yaml").read_text()
        k = next(line.split("=")[1] for line in overrides.splitlines() if "model.K=" in line)
        out[k.strip()] = status.parent
    return out


def test_submitit_sweep_summary_failure_rerun_and_resume(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = ["-m", "hydra/launcher=submitit_local", *TINY, "model.K=0,3,5", f"hydra.sweep.dir={sweep}"]
    first = entry("infocatvae.train", *cmd)
    # the job with K=0 fails: the sweep reports it (non-zero exit) after the others finished
    assert first.returncode != 0, first.stdout[-2000:] + first.stderr[-2000:]
    jobs = job_dirs(sweep)
    assert set(jobs) == {"0", "3", "5"}, (list(sweep.iterdir()), first.stderr[-3000:])
    status = {k: json.loads((d / "status.json").read_text()) for k, d in jobs.items()}
    assert status["0"]["status"] == "failed" and "model.K" in status["0"]["error"]
    for k in ("3", "5"):
        assert status[k]["status"] == "completed", status[k]
        assert 0.0 <= status[k]["metrics"]["val/cluster_acc"] <= 1.0
        assert (jobs[k] / "checkpoints" / "last.ckpt").is_file()
        # TensorBoard: each job's events with its hyperparameters for the HParams tab
        events = list((jobs[k] / "tensorboard").glob("events.out.tfevents.*"))
        assert events and any(b"hparams" in e.read_bytes() for e in events)

    # the summary: one row per job, the failure marked with its error, sorted by a metric
    summ = entry("infocatvae.summarize", str(sweep), "--sort", "val/cluster_acc", timeout=60)
    assert summ.returncode == 0, summ.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 3
    by_k = {r["model.K"]: r for r in rows}
    assert by_k["0"]["status"] == "failed" and "model.K must be an integer" in by_k["0"]["error"]
    assert rows[-1]["model.K"] == "0"  # no metric: sorted last
    accs = [float(r["val/cluster_acc"]) for r in rows[:2]]
    assert accs == sorted(accs, reverse=True)
    assert by_k["3"]["val/nmi"] and by_k["3"]["val/loss"]
    assert (sweep / "summary.md").read_text().count("\n") == 2 + 3
    assert "failed" in summ.stdout

    # simulate a job cut off after its first checkpoint: K=5 was interrupted, K=3 finished
    s5 = jobs["5"] / "status.json"
    s5.write_text(json.dumps({**status["5"], "status": "interrupted", "metrics": {}}))
    done_ckpt = jobs["3"] / "checkpoints" / "last.ckpt"
    before = (done_ckpt.stat().st_mtime_ns, done_ckpt.read_bytes())
    again = entry("infocatvae.train", *cmd)
    assert again.returncode != 0  # K=0 still fails
    log3 = (jobs["3"] / "train.log").read_text()
    assert "already completed" in log3 and "skipping" in log3
    assert (done_ckpt.stat().st_mtime_ns, done_ckpt.read_bytes()) == before, "a finished job was retrained"
    log5 = (jobs["5"] / "train.log").read_text()
    assert "Resuming from" in log5 and str(jobs["5"] / "checkpoints" / "last.ckpt") in log5
    assert json.loads(s5.read_text())["status"] == "completed"


@pytest.mark.parametrize(
    "model", ["infocatvae", "aae"]
)  # the AAE: three manual backward passes, each leaving parameters out
def test_ddp_two_cpu_processes(tmp_path, model):
    run = tmp_path / "ddp"
    res = entry(
        "infocatvae.train",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"model={model}",
        *TINY,
        f"hydra.run.dir={run}",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["step"] == (9 if model == "aae" else 3)  # the AAE: 3 per batch
    # both processes ran, and report the same (synced) metrics
    logs = [run / "train.log", run / "train_ddp_process_1.log"]
    finished = [next(line for line in p.read_text().splitlines() if "Finished" in line) for p in logs]
    metrics = [f.split(": ", 1)[1] for f in finished]
    assert metrics[0] == metrics[1], finished
    from infocatvae.checkpoints import load_model

    load_model(run / "checkpoints" / "last.ckpt")


def test_optuna_sweeper_maximises_cluster_accuracy(tmp_path):
    import yaml

    sweep = tmp_path / "optuna"
    res = entry(
        "infocatvae.train",
        "-m",
        "hydra/sweeper=optuna_acc",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=1",
        "model.lam=choice(0.5,2,8)",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sweep.glob("*/status.json")]
    assert trials and all(t["status"] == "completed" for t in trials)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t["metrics"]["val/cluster_acc"] for t in trials))


def test_local_launcher_job_limit_and_rolling_window(monkeypatch):
    """hydra/launcher=local's limit: cores // cpus_per_task unless max_jobs is set, and never more than that many
    jobs unfinished at once, the next starting as soon as one ends. The jobs end after a number of the launcher's
    polls, not of seconds, and its sleeps are recorded, not slept: the order of events is the same on any machine."""
    import types

    from hydra_plugins.infocatvae_launcher import launchers
    from hydra_plugins.infocatvae_launcher.launchers import job_limit, run_throttled

    assert job_limit(None, 1, cores=2) == 2
    assert job_limit(None, 3, cores=8) == 2
    assert job_limit(None, 4, cores=2) == 1  # more threads per job than cores: one at a time
    assert job_limit(None, None, cores=8) == 1  # no cpus_per_task: each job takes every core
    assert job_limit(3, 1, cores=2) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_jobs"):
            job_limit(bad, 1, cores=2)

    events: list[tuple] = []  # ("start", i), ("end", i): the poll at which job i was first seen done, ("sleep",)
    monkeypatch.setattr(launchers, "time", types.SimpleNamespace(sleep=lambda s: events.append(("sleep",))))

    class Job:
        def __init__(self, i: int, polls: int) -> None:
            self.i, self.polls_left = i, polls

        @property
        def finished(self) -> bool:
            return self.polls_left == 0

        def done(self) -> bool:  # one poll of the launcher
            if self.polls_left:
                self.polls_left -= 1
                if self.finished:
                    events.append(("end", self.i))
            return self.finished

    submitted: list[Job] = []
    unfinished_at_submit = []

    def submit(i: int, polls: int) -> Job:
        unfinished_at_submit.append(sum(not j.finished for j in submitted))
        events.append(("start", i))
        submitted.append(Job(i, polls))
        return submitted[-1]

    # jobs of 1, 2 and 3 polls: the two running at once never end in the same poll
    jobs = run_throttled(submit, [(i, 1 + i % 3) for i in range(7)], limit=2, poll_s=0.005)
    assert jobs == submitted and all(j.finished for j in jobs)  # returned once every job was done
    assert [e[1] for e in events if e[0] == "start"] == list(range(7))  # in order
    assert max(unfinished_at_submit) == 1  # a third job never started while two ran
    assert events[:2] == [("start", 0), ("start", 1)]  # the second started beside the first, without waiting
    for i in range(2, 7):
        # the next job starts in the poll in which one ends: the first end since the job before it started,
        # with no sleep between them
        since = events[events.index(("start", i - 1)) + 1 : events.index(("start", i))]
        ends = [k for k, e in enumerate(since) if e[0] == "end"]
        assert ends and ("sleep",) not in since[ends[0] :], (i, since)
    assert events[-1][0] == "end"  # and returns at the last job's end, with no sleep after it


def test_local_sweep_runs_at_most_max_jobs_at_once(tmp_path):
    """hydra/launcher=local with max_jobs=1: 3 tiny jobs run one at a time (each starts after the previous one
    wrote its final status), all complete, each with cpus_per_task (1) torch threads."""
    sweep = tmp_path / "sweep"
    res = entry(
        "infocatvae.train",
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.max_jobs=1",
        *TINY,
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "(1 job(s) at once)" in res.stdout + res.stderr
    jobs = [s.parent for s in sweep.glob("*/status.json")]
    assert len(jobs) == 3, list(sweep.iterdir())
    windows = []
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed", job
        assert "torch CPU threads: 1" in (job / "train.log").read_text()
        # .hydra/config.yaml is written as the job starts, status.json last as it ends
        windows.append(((job / ".hydra" / "config.yaml").stat().st_mtime_ns, (job / "status.json").stat().st_mtime_ns))
    windows.sort()
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert start > end, windows


def test_a_killed_job_is_a_failed_job_not_the_end_of_the_sweep(tmp_path):
    """A submitit job that ends without a result (SIGKILL: out of memory, scancel) is reported as a failed
    JobReturn; submitit's UncompletedJobError had ended the sweep, or the Optuna study, at the first one."""
    import signal

    import submitit
    from hydra.core.utils import JobStatus

    from hydra_plugins.infocatvae_launcher.launchers import job_result

    executor = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    executor.update_parameters(timeout_min=1)
    killed = executor.submit(_kill_self, signal.SIGKILL)
    done = executor.submit(int, "7")
    ret = job_result(killed, ["model.lam=1"])
    assert ret.status == JobStatus.FAILED and ret.overrides == ["model.lam=1"]
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        _ = ret.return_value  # the sweeper reads the error from it, as from any failed job
    assert job_result(done, []) == 7  # a job's own result passes through unchanged


def _kill_self(sig: int) -> None:
    import os

    os.kill(os.getpid(), sig)


def test_a_sweep_over_a_key_left_out_of_the_folder_names_is_refused_before_any_job(tmp_path):
    """``trainer.max_epochs=1,2``: both values would train in one folder; refused with the key named, nothing run."""
    res = entry("infocatvae.train", "-m", *TINY, "trainer.max_epochs=1,2", f"hydra.sweep.dir={tmp_path}/sweep")
    assert res.returncode != 0
    assert "trainer.max_epochs takes several values in this sweep, but the job folders are not named by it" in (
        res.stderr + res.stdout
    )
    assert not list(tmp_path.rglob("status.json"))
