"""What ``last.ckpt`` holds and what resuming may touch (issue: no epoch lost, no run corrupted).

``last.ckpt`` must hold the state after EVERY epoch, whatever the monitored ``val/loss`` did:
since Lightning 2.6, ``ModelCheckpoint(save_last=True)`` writes it only when the top-k checkpoint
is saved too. These tests make ``val/loss`` "not improve" by monitoring it in the wrong direction
(``callbacks.model_checkpoint.mode=max``: only the first epoch is ever the best), so each of them
fails if ``last.ckpt`` follows the best checkpoint again. They check their own premise (the best
checkpoint is older than the last epoch).
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY, cli_env, make_cfg, run_entry

pytestmark = pytest.mark.usefixtures("data_dir")  # real MNIST (the one policy: conftest.py)

NOT_IMPROVING = "callbacks.model_checkpoint.mode=max"


def train_in_process(out: Path, epochs: int, *extra: str) -> dict:
    from infocatvae.train import train

    cfg = make_cfg([*TINY, f"trainer.max_epochs={epochs}", NOT_IMPROVING, *extra], out)
    train(cfg)
    return json.loads((out / "status.json").read_text())


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def best_epoch(run: Path) -> int:
    (best,) = (run / "checkpoints").glob("best-epoch*.ckpt")
    return ckpt(best)["epoch"]


def test_last_ckpt_holds_the_last_epoch_when_val_loss_does_not_improve(tmp_path, recwarn):
    # Lightning's INFO lines, whatever level an earlier test left its logger at (the bench's sets ERROR); caught by
    # a handler of its own, as that logger does not propagate to the root logger (so not to caplog)
    lightning_log = io.StringIO()
    handler = logging.StreamHandler(lightning_log)
    lightning = logging.getLogger("lightning.pytorch")
    level = lightning.level
    lightning.addHandler(handler)
    lightning.setLevel(logging.INFO)
    try:
        status = train_in_process(tmp_path, 3, "callbacks.snapshots.every_n_epochs=1")
    finally:
        lightning.removeHandler(handler)
        lightning.setLevel(level)
    assert "GPU available" in lightning_log.getvalue()  # premise: Lightning's INFO lines were caught
    # a long run's log stays readable: no line per snapshot, no warning about Lightning's own internals
    assert "`weights_only` was not set" not in lightning_log.getvalue()
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
    assert best_epoch(tmp_path) == 0, "premise: epochs 2 and 3 did not improve the monitored metric"
    last = ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert status["status"] == "completed" and status["epoch"] == 3
    assert last["epoch"] == 2 and last["global_step"] == status["step"] == 9  # 3 epochs x 3 batches
    # the weights after the third epoch: the same as the epoch-3 snapshot, not the best (first) epoch's
    third_snapshot = ckpt(tmp_path / "checkpoints" / "epoch0003.ckpt")
    third = third_snapshot["state_dict"]
    first = ckpt(tmp_path / "checkpoints" / "epoch0001.ckpt")["state_dict"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch*.ckpt")) == [
        "epoch0001.ckpt",
        "epoch0002.ckpt",
        "epoch0003.ckpt",
    ]
    # snapshots are full checkpoints, as last.ckpt: a run can go on from any of them
    assert len(third_snapshot["optimizer_states"]) == 1
    for k, v in last["state_dict"].items():
        assert torch.equal(v, third[k]), k
    assert any(not torch.equal(v, first[k]) for k, v in last["state_dict"].items())


def test_resume_after_a_non_improving_epoch_matches_the_uninterrupted_run(tmp_path):
    torch.use_deterministic_algorithms(False)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_in_process(straight, 3)
    train_in_process(resumed, 2)
    assert best_epoch(resumed) == 0 and ckpt(resumed / "checkpoints" / "last.ckpt")["epoch"] == 1
    status = train_in_process(resumed, 3)
    assert status["resumed_from"] == str(resumed / "checkpoints" / "last.ckpt") and status["step"] == 9
    a, b = (ckpt(r / "checkpoints" / "last.ckpt")["state_dict"] for r in (straight, resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} differs after resume")


@pytest.mark.slow
def test_sigkill_after_a_non_improving_epoch_loses_and_repeats_no_epoch(tmp_path):
    run, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = [*TINY, "trainer.limit_train_batches=20", NOT_IMPROVING, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "infocatvae.train", *args, "trainer.max_epochs=50"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        cwd=REPO,
    )
    try:
        deadline, epoch = time.monotonic() + 240, -1
        while epoch < 1:  # last.ckpt after the second epoch, which did not improve val/loss
            assert proc.poll() is None and time.monotonic() < deadline, "last.ckpt never reached epoch 2"
            if last.exists():
                epoch = ckpt(last)["epoch"]
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert best_epoch(run) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "running"  # killed: no chance to write
    held = ckpt(last)
    res = run_entry("infocatvae.train", *args, f"trainer.max_epochs={held['epoch'] + 3}", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (run / "train.log").read_text()
    # resumed at the end of the last completed epoch, then trained exactly the two epochs after it
    assert f"Resuming from {last} (epoch {held['epoch']}, step {held['global_step']})" in log
    assert held["global_step"] == 20 * (held["epoch"] + 1)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["epoch"] == held["epoch"] + 3
    assert status["resumed_from"] == str(last)
    assert status["step"] == 20 * (held["epoch"] + 3) == ckpt(last)["global_step"]


def test_failed_resume_leaves_the_checkpoints_run_untouched(tmp_path):
    """A checkpoint whose shapes do not fit the configured model is refused before anything is
    written, naming the field; the run it came from keeps its status, checkpoints and logs."""
    original, new = tmp_path / "original", tmp_path / "new"
    res = run_entry("infocatvae.train", *TINY, "data=fashion_mnist", f"hydra.run.dir={original}", timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in original.rglob("*") if p.is_file()}
    source = original / "checkpoints" / "last.ckpt"

    res = run_entry(
        "infocatvae.train",
        *TINY,
        "data=fashion_mnist",
        "model.K=5",
        f"ckpt_path={source}",
        f"hydra.run.dir={new}",
        timeout=180,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "model.K: 10 in the checkpoint, 5 configured" in out, out[-3000:]
    assert "Epoch 0" not in out and not (new / "checkpoints").exists()
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in original.rglob("*") if p.is_file()}
    assert after == before, "the checkpoint's run folder was modified"
    assert json.loads((new / "status.json").read_text())["status"] == "failed"  # recorded in its own folder

    # a change that keeps every shape (lambda) is allowed and logged; training goes on in the new folder
    cont = [
        *TINY,
        "data=fashion_mnist",
        "model.lam=4",
        f"ckpt_path={source}",
        f"hydra.run.dir={new}",
        "trainer.max_epochs=2",
    ]
    res = run_entry("infocatvae.train", *cont, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (new / "train.log").read_text()
    assert "changed hyperparameter: model.lam: 2.0 in the checkpoint, 4 configured" in log
    assert f"Resuming from {source} (epoch 0, step 3)" in log
    assert ckpt(new / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert json.loads((new / "status.json").read_text())["status"] == "completed"
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in original.rglob("*") if p.is_file()}
    assert after == before, "the checkpoint's run folder was modified"
    # the same command again (one more epoch) resumes the new run's own last.ckpt, not the source
    res = run_entry("infocatvae.train", *cont[:-1], "trainer.max_epochs=3", timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Resuming from {new / 'checkpoints' / 'last.ckpt'} (epoch 1, step 6)" in (new / "train.log").read_text()


def test_last_ckpt_knows_the_best_checkpoint_of_its_own_epoch_and_a_resume_keeps_one_best_file(tmp_path):
    # val/loss monitored as configured (min): the first epoch always writes best-epoch000.ckpt
    def fit(epochs: int) -> None:
        from infocatvae.train import train

        train(make_cfg([*TINY, f"trainer.max_epochs={epochs}"], tmp_path))

    def best_record(ckpt_path: Path) -> dict:
        (state,) = (v for k, v in ckpt(ckpt_path)["callbacks"].items() if "'monitor': 'val/loss'" in k)
        return state

    fit(1)
    best_files = list((tmp_path / "checkpoints").glob("best-epoch*.ckpt"))
    assert [p.name for p in best_files] == ["best-epoch000.ckpt"]
    # written after best-epoch000.ckpt at the same epoch end, last.ckpt knows it (before, it held an empty record)
    record = best_record(tmp_path / "checkpoints" / "last.ckpt")
    assert record["best_model_path"] == str(best_files[0])
    assert list(record["best_k_models"]) == [str(best_files[0])]
    fit(3)  # resumed from last.ckpt
    best_files = list((tmp_path / "checkpoints").glob("best-epoch*.ckpt"))
    assert len(best_files) == 1, f"a stale best checkpoint was left beside the new one: {best_files}"
    record = best_record(tmp_path / "checkpoints" / "last.ckpt")
    assert record["best_model_path"] == str(best_files[0])
    assert float(record["best_model_score"]) == pytest.approx(float(best_record(best_files[0])["best_model_score"]))


def _same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_snapshots_and_last_ckpt_are_written_every_epoch_even_when_validation_is_not(tmp_path):
    # validation every second epoch: before, both were written at validation's end only (epochs 2, 4, ...)
    train_in_process(tmp_path, 3, "callbacks.snapshots.every_n_epochs=1", "trainer.check_val_every_n_epoch=2")
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch*.ckpt")) == ["epoch0001.ckpt", "epoch0002.ckpt", "epoch0003.ckpt"]
    last, third = ckpt(folder / "last.ckpt"), ckpt(folder / "epoch0003.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 9
    # a snapshot is last.ckpt at its epoch: weights, optimiser, loops (counters) and callbacks' records alike,
    # so a run goes on from either in the same way
    for key in ("state_dict", "optimizer_states", "loops", "callbacks", "epoch", "global_step"):
        _same(third[key], last[key], key)


def test_a_stop_during_a_resumes_set_up_leaves_last_ckpt_as_it_was(tmp_path, monkeypatch):
    """Ctrl-C (or a preemption signal) while a resumed job loads its data, before Lightning restored the
    checkpoint, must not overwrite ``last.ckpt`` with the freshly initialised model."""
    from infocatvae.data import MNISTDataModule
    from infocatvae.train import train

    train_in_process(tmp_path, 1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def interrupted(self, stage=None):
        # submitit's preemption signal exits this way (Ctrl-C too, once Lightning turned it into sys.exit(1);
        # raising KeyboardInterrupt here would make Lightning ignore SIGINT in the test process)
        raise SystemExit("preempted")

    monkeypatch.setattr(MNISTDataModule, "setup", interrupted)
    with pytest.raises(SystemExit):
        train(make_cfg([*TINY, "trainer.max_epochs=2", NOT_IMPROVING], tmp_path))
    assert last.read_bytes() == before
    assert ckpt(last)["global_step"] == 3
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"


def test_step_based_last_ckpt_also_holds_the_runs_final_state(tmp_path):
    """With the README's step-based saving (every 4 steps, none at the epochs' ends) a 2-epoch run of 3 batches
    an epoch saves at step 4 and, when training ends, at step 6: a finished job's last.ckpt is its end."""
    step_based = ["callbacks.last_checkpoint.every_n_epochs=null", "callbacks.last_checkpoint.every_n_train_steps=4"]
    status = train_in_process(tmp_path, 2, *step_based)
    assert status["status"] == "completed" and status["step"] == 6
    assert ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6
    # and a longer run goes on from there: one more epoch of 3 steps, none repeated
    assert train_in_process(tmp_path, 3, *step_based)["step"] == 9
    assert ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 9


def test_a_job_with_nothing_left_to_train_records_its_validation_and_runs_test_when_asked(tmp_path):
    """Run again with ``test=true`` after it finished, a job is not skipped: it scores the test images with its
    final weights (no epoch trained again); killed after its last epoch (status not completed), it records the
    final weights' validation metrics, not none."""
    first = train_in_process(tmp_path, 1)
    assert first["status"] == "completed" and "val/loss" in first["metrics"]
    again = train_in_process(tmp_path, 1, "test=true")
    assert again["status"] == "completed" and again["step"] == 3, "an epoch was trained again"
    assert {"val/loss", "test/loss", "test/cluster_acc"} <= set(again["metrics"])
    # the training's own records kept, the test scores added
    assert {k: v for k, v in again["metrics"].items() if not k.startswith("test/")} == first["metrics"]
    # a job killed after writing its last epoch's checkpoint: status.json still says running
    status = json.loads((tmp_path / "status.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps({**status, "status": "running", "metrics": {}}))
    killed = train_in_process(tmp_path, 1)
    assert killed["status"] == "completed" and killed["step"] == 3
    assert killed["metrics"]["val/loss"] == pytest.approx(first["metrics"]["val/loss"], rel=0.05)


def test_ckpt_path_of_another_run_is_refused_where_a_run_started_otherwise_lives(tmp_path):
    """A folder holding a run from scratch (or from another checkpoint) would resume it and ignore ``ckpt_path``:
    refused, naming both, and that run's status.json is left as it was. The same ``ckpt_path`` again resumes."""
    from infocatvae.checkpoints import CheckpointError

    source, scratch, warm = tmp_path / "source", tmp_path / "scratch", tmp_path / "warm"
    train_in_process(source, 1)
    train_in_process(scratch, 1)
    source_last = source / "checkpoints" / "last.ckpt"
    assert json.loads((scratch / "status.json").read_text())["started_from"] is None
    before = (scratch / "status.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a run started from scratch: .*ckpt_path="):
        train_in_process(scratch, 2, f"ckpt_path={source_last}")
    assert (scratch / "status.json").read_bytes() == before
    # started from the source's checkpoint, then run again with the same command: it resumes its own last.ckpt
    assert train_in_process(warm, 2, f"ckpt_path={source_last}")["started_from"] == str(source_last.resolve())
    again = train_in_process(warm, 3, f"ckpt_path={source_last}")
    assert again["status"] == "completed" and again["step"] == 9
    with pytest.raises(CheckpointError, match=f"started from {source_last.resolve()}"):
        train_in_process(warm, 4, f"ckpt_path={scratch / 'checkpoints' / 'last.ckpt'}")


@pytest.mark.parametrize(
    "stop, error, extra, saved_step",
    [
        (3, SystemExit, [], 3),  # a preemption inside the 4th step: the interrupt checkpoint, 3 steps done
        # a crash inside the 6th step, after a step-based checkpoint at step 4: batch 5 is trained again
        (
            5,
            RuntimeError,
            ["callbacks.last_checkpoint.every_n_epochs=null", "callbacks.last_checkpoint.every_n_train_steps=4"],
            4,
        ),
    ],
)
def test_a_resume_from_a_mid_epoch_checkpoint_trains_the_rest_of_the_epoch(
    tmp_path, monkeypatch, stop, error, extra, saved_step
):
    """Resumed from a checkpoint written mid-epoch (by the interrupt, or every N steps), a run trains the epoch's
    batches after that checkpoint, in the uninterrupted run's order (before, Lightning counted on from there but
    the loader began the epoch's order again: the epoch's first batches twice, its last ones never)."""
    from infocatvae.models.base import BaseModel

    seen: list[list[int]] = []
    stop_at = {"batch": None}
    original = BaseModel.training_step

    def recording(self, batch, batch_idx):
        if batch_idx == stop_at["batch"]:
            raise error("stopped")  # inside the step, before its optimiser step
        seen[-1].append(int(batch[1].sum()))  # the batch's labels, as its fingerprint
        seeds[-1].add(torch.initial_seed())  # what the epoch's noise was seeded with
        return original(self, batch, batch_idx)

    seeds: list[set[int]] = []
    monkeypatch.setattr(BaseModel, "training_step", recording)
    six = ["trainer.limit_train_batches=6", "trainer.limit_val_batches=0", "seed=3", *extra]
    seen.append([]), seeds.append(set())
    train_in_process(tmp_path / "whole", 1, *six)
    stop_at["batch"] = stop
    seen.append([]), seeds.append(set())
    with pytest.raises(error):
        train_in_process(tmp_path / "split", 1, *six)
    assert ckpt(tmp_path / "split" / "checkpoints" / "last.ckpt")["global_step"] == saved_step
    stop_at["batch"] = None
    seen.append([]), seeds.append(set())
    status = train_in_process(tmp_path / "split", 1, *six)
    assert status["status"] == "completed" and status["step"] == 6
    whole, before, after = seen
    assert len(set(whole)) == 6, "premise: the six batches differ"
    assert before == whole[:stop] and after == whole[saved_step:]
    # the epoch's noise: from (seed 3, epoch 0); after the resume, which skips on_train_epoch_start, from
    # (seed, epoch, batches done), not seed_everything's 3 for the rest of the epoch
    assert seeds[0] == seeds[1] == {3 * 100_003}
    assert seeds[2] == {3 * 100_003 + 1_000_033 * saved_step}
