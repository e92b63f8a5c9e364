"""``infocatvae.summarize`` on fake sweep folders written as the real jobs write them: ``status.json``
(``train.write_status``) and ``.hydra/overrides.yaml`` (Hydra's list of the job's overrides).
The end-to-end sweep with real training is in test_sweeps.py (slow)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from infocatvae import summarize


def write_job(
    sweep: Path,
    name: str,
    overrides: list[str],
    status: str = "completed",
    metrics: dict | None = None,
    error: str | None = None,
) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    # Hydra saves the job's task overrides as a YAML list of strings
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    fields = {
        "status": status,
        "model": "infocatvae.models.CatVAE",
        "max_epochs": 3,
        "resumed_from": None,
        "error": error,
        "updated": "2026-01-01T00:00:00",
    }
    if status == "completed":
        fields.update(metrics=metrics or {}, epoch=3, step=30)
    elif status == "failed":
        fields.update(epoch=None, step=None)
    (job / "status.json").write_text(json.dumps(fields, indent=2, default=str))  # as train.write_status
    return job


def metrics(acc: float, loss: float, **extra: float) -> dict:
    return {"val/loss": loss, "val/cluster_acc": acc, "val/nmi": acc / 2, "train/loss": loss + 1, **extra}


@pytest.fixture
def seeds_sweep(tmp_path) -> Path:
    """K=5 with seeds 0, 1, 2; K=10 with seeds 0, 1 completed and seed 2 failed."""
    sweep = tmp_path / "sweep"
    accs = {5: [0.5, 0.6, 0.7], 10: [0.8, 0.9]}
    losses = {5: [100.0, 110.0, 120.0], 10: [90.0, 96.0]}
    i = 0
    for K in (5, 10):
        for seed, (acc, loss) in enumerate(zip(accs[K], losses[K])):
            extra = {"test/cluster_acc": 0.55} if (K, seed) == (5, 0) else {}
            write_job(sweep, str(i), [f"model.K={K}", f"seed={seed}"], metrics=metrics(acc, loss, **extra))
            i += 1
    write_job(sweep, str(i), ["model.K=10", "seed=2"], status="failed", error="RuntimeError: boom")
    return sweep


def table_rows(text: str, header_start: str) -> list[dict[str, str]]:
    """The Markdown table of ``text`` whose header starts with ``header_start``, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start} |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_jobs_differing_only_in_seed_are_grouped_with_mean_std_and_count(seeds_sweep, capsys):
    assert summarize.main([str(seeds_sweep)]) == 0
    out = capsys.readouterr().out
    # the per-job table is unchanged: one row per job, summary.md and summary.csv as before
    assert len(table_rows(out, "model.K")) == 6
    assert (seeds_sweep / "summary.md").read_text().count("\n") == 2 + 6
    assert len(list(csv.DictReader((seeds_sweep / "summary.csv").open()))) == 6
    # the group table: by model.K (every override but seed)
    assert "By model.K: mean ± standard deviation" in out
    groups = {g["model.K"]: g for g in table_rows(out.split("By model.K")[1], "model.K")}
    assert set(groups) == {"5", "10"}
    assert (groups["5"]["jobs"], groups["5"]["n"]) == ("3", "3")
    assert (groups["10"]["jobs"], groups["10"]["n"]) == ("3", "2")  # the failed job counts in jobs, not in n
    assert groups["5"]["val/cluster_acc"] == "0.6 ± 0.1"
    assert groups["5"]["val/loss"] == "110 ± 10"
    assert groups["10"]["val/cluster_acc"] == f"0.85 ± {statistics.stdev([0.8, 0.9]):.4g}" == "0.85 ± 0.07071"
    assert groups["10"]["val/loss"] == "93 ± 4.243"
    assert groups["5"]["test/cluster_acc"] == "0.55 (1)"  # one value: no std; only 1 of the 3 jobs has it
    assert groups["10"]["test/cluster_acc"] == ""
    assert "train/loss" not in groups["5"]  # final validation and test metrics only, as in the job table
    # the same numbers in summary_groups.csv, unrounded
    written = {r["model.K"]: r for r in csv.DictReader((seeds_sweep / "summary_groups.csv").open())}
    assert float(written["5"]["val/cluster_acc"]) == pytest.approx(0.6)
    assert float(written["5"]["val/cluster_acc_std"]) == pytest.approx(0.1)
    assert written["5"]["val/cluster_acc_n"] == "3" and written["10"]["val/cluster_acc_n"] == "2"
    assert float(written["10"]["val/nmi_std"]) == pytest.approx(statistics.stdev([0.4, 0.45]))
    assert written["5"]["test/cluster_acc_std"] == "" and written["10"]["test/cluster_acc"] == ""
    assert (seeds_sweep / "summary_groups.md").read_text() in out


def test_group_by_chooses_the_keys_and_sort_orders_the_groups(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    values = {("5", "1"): 0.3, ("5", "2"): 0.5, ("10", "1"): 0.4, ("10", "2"): 0.9}
    for i, ((K, lam), acc) in enumerate(values.items()):
        write_job(sweep, str(i), [f"model.K={K}", f"model.lam={lam}", "seed=0"], metrics=metrics(acc, 1.0))
    # no seeds repeated: no group table unless asked for
    assert summarize.main([str(sweep)]) == 0
    assert "mean ± standard deviation" not in capsys.readouterr().out
    assert not (sweep / "summary_groups.md").exists()
    assert summarize.main([str(sweep), "--group-by", "model.lam", "--sort", "val/cluster_acc"]) == 0
    groups = table_rows(capsys.readouterr().out.split("By model.lam")[1], "model.lam")
    assert [g["model.lam"] for g in groups] == ["2", "1"]  # mean 0.7 before mean 0.35
    assert groups[0]["val/cluster_acc"] == f"0.7 ± {statistics.stdev([0.5, 0.9]):.4g}"
    assert groups[1]["val/cluster_acc"] == f"0.35 ± {statistics.stdev([0.3, 0.4]):.4g}"
    assert all(g["jobs"] == g["n"] == "2" for g in groups)
    # several keys, comma-separated: one job per group, the mean alone
    assert summarize.main([str(sweep), "--group-by", "model.K, model.lam"]) == 0
    groups = table_rows(capsys.readouterr().out.split("By model.K, model.lam")[1], "model.K")
    assert len(groups) == 4 and {g["val/cluster_acc"] for g in groups} == {"0.3", "0.5", "0.4", "0.9"}


def test_non_finite_values_are_left_out_of_the_statistics_and_counted(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed, loss in enumerate([1.0, 3.0, math.nan]):
        write_job(sweep, str(seed), ["model.K=10", f"seed={seed}"], metrics=metrics(0.5, loss))
    assert summarize.main([str(sweep)]) == 0
    (group,) = table_rows(capsys.readouterr().out.split("By model.K")[1], "model.K")
    assert group["n"] == "3" and group["val/loss"] == f"2 ± {math.sqrt(2):.4g} (2)"
    assert group["val/cluster_acc"] == "0.5 ± 0"


def test_group_by_an_unknown_key_is_an_error_naming_the_keys(seeds_sweep, capsys):
    assert summarize.main([str(seeds_sweep), "--group-by", "model.lam"]) == 2
    err = capsys.readouterr().err
    assert "no job overrides model.lam" in err and "model.K, seed" in err


def test_an_evaluation_folder_inside_a_job_is_not_a_job(seeds_sweep, capsys):
    """``infocatvae.evaluate`` writes ``<job>/eval/<name>/.hydra/overrides.yaml`` (its ckpt_path): the table
    still has one row per job, and ckpt_path is no override column nor a grouping key."""
    evaluation = seeds_sweep / "0" / "eval" / "last" / ".hydra"
    evaluation.mkdir(parents=True)
    (evaluation / "overrides.yaml").write_text(f"- ckpt_path={seeds_sweep / '0' / 'checkpoints' / 'last.ckpt'}\n")
    assert summarize.find_jobs(seeds_sweep) == sorted(seeds_sweep / str(i) for i in range(6))
    assert summarize.main([str(seeds_sweep)]) == 0
    out = capsys.readouterr().out
    assert len(table_rows(out, "model.K")) == 6 and "ckpt_path" not in out
    assert "By model.K: mean ± standard deviation" in out


@pytest.mark.parametrize(
    "metric,best_first",
    [
        ("val/loss", True),
        ("val/recon", True),
        ("val/kl_cat", True),
        ("val/info", True),  # a cross-entropy
        ("val/marginal", True),  # a KL
        ("val/gen", True),  # the AAE's adversarial loss
        ("val/cluster_acc", False),
        ("val/nmi", False),
        ("test/usage_perplexity", False),
        ("val/disc_acc", True),  # the AAE's discriminator accuracy: lower is the encoder fooling it
    ],
)
def test_sort_puts_small_losses_and_large_scores_first_by_default(metric, best_first):
    rows = [{"job": "small", metric: 0.1}, {"job": "missing"}, {"job": "large", metric: 2.0}]
    order = [r["job"] for r in summarize.sort_rows(rows, metric, None)]
    assert order == (["small", "large", "missing"] if best_first else ["large", "small", "missing"])
    # --ascending / --descending turn it round; jobs without the metric stay last
    flipped = [r["job"] for r in summarize.sort_rows(rows, metric, best_first)]
    assert flipped == [*order[:2][::-1], "missing"]


def test_a_job_recorded_running_that_no_process_holds_is_reported_killed(tmp_path):
    """status.json says running after a SIGKILL (nothing can record it): the folder's lock, which the kernel drops
    with the process, tells a killed job from a running one."""
    from infocatvae.runs import RunLock

    job = write_job(tmp_path, "job", ["model.lam=1"], status="running")
    with RunLock(job):
        assert summarize.read_job(job)["status"] == "running"
    row = summarize.read_job(job)
    assert row["status"] == "killed" and "resumes it from last.ckpt" in row["error"]


def test_a_new_attempt_clears_the_results_of_the_one_before(tmp_path):
    """A run extended, or run again after a failure, is not ranked by the earlier attempt's scores while it runs,
    nor after it fails."""
    from infocatvae.runs import JobStatus, read_status

    with JobStatus(tmp_path) as job:
        job.running(max_epochs=1)
        job.metrics = {"val/cluster_acc": 0.9}
    assert read_status(tmp_path)["metrics"] == {"val/cluster_acc": 0.9}
    with pytest.raises(RuntimeError), JobStatus(tmp_path) as job:
        job.running(max_epochs=2)
        assert read_status(tmp_path)["metrics"] == {}
        raise RuntimeError("out of memory")
    status = read_status(tmp_path)
    assert status["status"] == "failed" and status["metrics"] == {} and status["max_epochs"] == 2


def test_only_a_refused_config_leaves_a_runs_record_as_it_was(tmp_path):
    """Before the job starts, a ValueError (a bad value) keeps the record of the run the folder holds; any other
    failure there (a corrupt checkpoint, missing data) is recorded, so that the summary does not call the run
    killed and resumable when its command fails."""
    from infocatvae.runs import JobStatus, read_status

    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "metrics": {}}))
    with pytest.raises(ValueError), JobStatus(tmp_path):
        raise ValueError("model.K must be an integer >= 1, got 0")
    assert read_status(tmp_path)["status"] == "running"
    with pytest.raises(RuntimeError), JobStatus(tmp_path):
        raise RuntimeError("data files missing")
    status = read_status(tmp_path)
    assert status["status"] == "failed" and "data files missing" in status["error"]
