"""Faults and bad input, each as a real subprocess of the entry points: a clear message naming
the field or file, a non-zero exit, and no training; kills, SIGTERM/SIGINT and NaN losses
during training."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infocatvae.data import RAW_FILES
from tests.helpers import DATA_DIR, TINY, cli_env, run_entry

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("data_dir")  # real MNIST (the one policy: conftest.py)

NO_TRAINING = ("Epoch 0", "Sanity Checking", "Trainer.fit")


def entry(module: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_entry(module, *args, timeout=timeout)


def tiny(args) -> list[str]:
    """TINY with the keys set again in ``args`` left out."""
    keys = {a.lstrip("+").split("=")[0] for a in args}
    return [t for t in TINY if t.lstrip("+").split("=")[0] not in keys]


def train(run: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return entry("infocatvae.train", *tiny(args), f"hydra.run.dir={run}", *args, timeout=timeout)


def start(run: Path, *args: str) -> subprocess.Popen:
    log = open(run.parent / f"{run.name}.out", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "infocatvae.train", *tiny(args), f"hydra.run.dir={run}", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cli_env(),
        cwd=ROOT,
        # Ctrl-C's default action in the job, however this test was started: a shell's background job (nohup
        # ... &) ignores SIGINT, the child would inherit that and Python would then leave SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(pred, deadline_s: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + deadline_s
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the condition held")
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def assert_refused(res: subprocess.CompletedProcess, *needles: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    for n in needles:
        assert n in out, f"{n!r} not in output:\n{out[-3000:]}"
    for n in NO_TRAINING:
        assert n not in out, f"training started before the error:\n{out[-3000:]}"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """One finished tiny InfoCatVAE run: its last.ckpt is the base of the checkpoint faults."""
    run = tmp_path_factory.mktemp("good") / "run"
    res = train(run)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def bad_ckpts(good_run, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    good = (good_run / "checkpoints" / "last.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(good[: len(good) // 3])
    (d / "corrupt.ckpt").write_bytes(b"not a checkpoint" * 1000)
    torch.save({"state_dict": {}, "epoch": 0}, d / "foreign.ckpt")  # a Lightning-like file of another project
    return {
        "missing": d / "missing.ckpt",
        "truncated": d / "truncated.ckpt",
        "corrupt": d / "corrupt.ckpt",
        "foreign": d / "foreign.ckpt",
    }


# ---- bad config --------------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["model", "data", "net", "trainer"])
def test_unknown_group_option(tmp_path, group):
    assert_refused(train(tmp_path / "run", f"{group}=nope"), f"{group}/nope")


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.K=0", "model.K"),
        ("model.K=ten", "model.K"),
        ("model.lam=-2", "model.lam"),
        ("model.beta_info=abc", "model.beta_info"),
        ("model.optimizer.lr=0", "model.optimizer.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.K=null", "model.K"),
        ("model.lam=???", "model.lam"),
        ("threads=0", "threads"),  # refused by its rule, before torch.set_num_threads sees it
        ("seed=4294967296", "seed"),  # beyond seed_everything's range
    ],
)
def test_bad_values(tmp_path, override, field):
    res = train(tmp_path / "run", override)
    assert_refused(res, field)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and field.split(".")[-1] in status["error"]


def test_output_folder_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = entry("infocatvae.train", *TINY, f"hydra.run.dir={blocker}/run")
    assert_refused(res, str(blocker))


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: room for Hydra's config files, not for checkpoints."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_refused_at_start(full_disk):
    res = entry("infocatvae.train", *TINY, f"hydra.run.dir={full_disk}/run")
    assert_refused(res, "MiB free")
    assert not (full_disk / "run" / "checkpoints").exists()


# ---- bad checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "truncated", "corrupt", "foreign"])
def test_bad_checkpoint_to_resume(tmp_path, bad_ckpts, kind):
    path = bad_ckpts[kind]
    assert_refused(train(tmp_path / "run", f"ckpt_path={path}"), str(path))


def test_checkpoint_of_another_model_type(tmp_path, good_run):
    ckpt = good_run / "checkpoints" / "last.ckpt"
    res = train(tmp_path / "run", "model=aae", f"ckpt_path={ckpt}")
    assert_refused(res, str(ckpt), "InfoCatVAE", "AAE")


@pytest.mark.skipif(importlib.util.find_spec("infocatvae.evaluate") is None, reason="infocatvae.evaluate missing")
@pytest.mark.parametrize("kind", ["missing", "truncated", "corrupt", "foreign"])
def test_bad_checkpoint_to_evaluate(tmp_path, bad_ckpts, kind):
    path = bad_ckpts[kind]
    res = entry("infocatvae.evaluate", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and str(path) in out, out[-3000:]


# ---- bad data ----------------------------------------------------------------------------------
def copy_data(tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, _ in RAW_FILES:
        os.symlink(Path(DATA_DIR) / "MNIST" / "raw" / name, raw / name)
    return raw


@pytest.mark.parametrize("fault", ["missing", "truncated", "corrupt"])
def test_bad_data_files(tmp_path, fault):
    raw = copy_data(tmp_path)
    target = raw / "train-labels-idx1-ubyte"
    original = Path(os.readlink(target)).read_bytes()
    target.unlink()
    if fault == "truncated":
        target.write_bytes(original[: len(original) // 2])
    elif fault == "corrupt":
        target.write_bytes(b"\xff" * len(original))
    elif fault == "missing":
        (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")  # present archive, bad
        (raw / "train-images-idx3-ubyte").unlink()  # and another one missing (a download is not tried)
        target.write_bytes(original)
    res = train(tmp_path / "run", f"paths.data_dir={tmp_path / 'data'}")
    needle = "train-images-idx3-ubyte" if fault == "missing" else str(target)
    assert_refused(res, needle)


def test_data_folder_not_writable_for_download(tmp_path):
    # root ignores permission bits, so the folder is made unwritable by a file where a folder must be
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    res = train(tmp_path / "run", f"paths.data_dir={blocker}/data")
    assert_refused(res, f"{blocker}/data", "train-images-idx3-ubyte")


# ---- faults during training --------------------------------------------------------------------
# SIGKILL mid-run, then the same command resumes: tests/test_resume.py


def test_checkpoint_writer_removes_files_of_killed_writers(tmp_path):
    """A writer killed mid-write leaves ``.last.ckpt.tmp<pid>``; the next save removes it once its
    process is gone and it is a minute old, and leaves a live process's file and a fresh one alone."""
    from infocatvae.checkpoints import AtomicCheckpointIO

    dead = subprocess.Popen(["true"])
    dead.wait()
    last = tmp_path / "last.ckpt"
    stale, fresh, live = (tmp_path / f".last.ckpt.tmp{pid}" for pid in (dead.pid, dead.pid + 1_000_000, 1))
    for f in (stale, fresh, live):
        f.write_bytes(b"half a checkpoint")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, last)
    assert not stale.exists() and fresh.exists() and live.exists()
    assert torch.load(last, weights_only=True) == {"epoch": 1}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_sigint_save_checkpoint(tmp_path, sig):
    run = tmp_path / "run"
    proc = start(run, "trainer.max_epochs=30", "trainer.limit_train_batches=40")
    last = run / "checkpoints" / "last.ckpt"
    try:
        wait_for(last.exists, 120, proc)
        first = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    out = (run.parent / "run.out").read_text()
    # the signal may come before the step after ``first`` ends (a slow machine starting epoch 1's loader), so the
    # save is known by its log line and the step it names, not by a step count above ``first``
    name = "KeyboardInterrupt" if sig == signal.SIGINT else "SIGTERMException"
    said = re.search(rf"Interrupted \({name}\): saved {re.escape(str(last))} at epoch \d+, step (\d+)", out)
    assert said, f"no checkpoint saved on the signal:\n{out[-3000:]}"
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert saved == int(said[1]) >= first
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted"


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, good_run):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    last = run / "checkpoints" / "last.ckpt"
    before = (last.stat().st_mtime_ns, last.read_bytes())
    (run / "status.json").unlink()
    # beta_cont=1e39 (above float32's range) makes the weighted loss infinite at the first step of epoch 1
    res = train(run, "trainer.max_epochs=2", "model.beta_cont=1e39")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    # 3 good steps in epoch 0 (the checkpoint), the first batch of epoch 1 (the 4th optimiser step) is bad
    assert "became non-finite at epoch 1, batch 0 (optimiser step 4)" in out and "loss term '" in out, out[-3000:]
    assert (last.stat().st_mtime_ns, last.read_bytes()) == before, "last.ckpt was overwritten after the NaN"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "NonFiniteLossError" in status["error"]


@pytest.mark.parametrize("every", [1, 4])
def test_finite_loss_guard_names_the_first_bad_term_and_step(every, tmp_path):
    """The guard's CPU path (checked every step) and its deferred path (recorded on the device, read every
    ``every`` steps) stop at the same first bad step and term; outputs without tensors are skipped."""
    from types import SimpleNamespace

    from infocatvae.callbacks import FiniteLossGuard, NonFiniteLossError

    guard = FiniteLossGuard(check_every_n_steps=every)
    trainer = SimpleNamespace(global_step=0, current_epoch=2, default_root_dir=str(tmp_path))
    guard.on_train_batch_end(trainer, None, {}, None, 0)  # a training_step that returned nothing
    good = {"loss": torch.tensor(1.0), "recon": torch.tensor(0.5), "n": 3}
    bad = {"loss": torch.tensor(float("inf")), "recon": torch.tensor(float("nan")), "n": 3}
    later_bad = {"loss": torch.tensor(1.0), "recon": torch.tensor(float("nan")), "n": 3}
    raised = None
    for batch_idx, out in enumerate([good, good, bad, later_bad, good, good]):
        trainer.global_step = batch_idx + 1
        try:
            guard.on_train_batch_end(trainer, None, out, None, batch_idx)
        except NonFiniteLossError as err:
            raised = (batch_idx, str(err))
            break
    assert raised is not None
    # raised at the bad batch (every step) or at the next multiple of `every`, naming the FIRST bad one
    assert raised[0] == (2 if every == 1 else 3)
    assert "loss term 'loss' became non-finite at epoch 2, batch 2 (optimiser step 3)" in raised[1]


def test_finite_loss_guard_checks_before_any_checkpoint_is_written(tmp_path):
    """On an accelerator the guard reads its record every 100 steps; a checkpoint written in between (every N
    training steps, or on an interrupt) must not hold the state after a bad step: Lightning calls the callbacks'
    ``on_save_checkpoint`` before writing the file, and the guard raises there."""
    from types import SimpleNamespace

    from infocatvae.callbacks import FiniteLossGuard, NonFiniteLossError

    guard = FiniteLossGuard(check_every_n_steps=100)
    trainer = SimpleNamespace(global_step=0, current_epoch=1, default_root_dir=str(tmp_path))
    for batch_idx, loss in enumerate([1.0, float("nan"), 1.0]):
        trainer.global_step = batch_idx + 1
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, batch_idx)  # not read yet
    with pytest.raises(NonFiniteLossError, match=r"'loss' became non-finite at epoch 1, batch 1 \(optimiser step 2\)"):
        guard.on_save_checkpoint(trainer, None, {})


def test_finite_loss_guard_decides_with_the_other_processes_under_ddp(tmp_path):
    """Under DDP every process checks at the same steps and the processes decide together (one all-reduce, any
    bad): a bad step on another process stops this one too, instead of leaving it waiting in its next collective."""
    from types import SimpleNamespace

    from infocatvae.callbacks import FiniteLossGuard, NonFiniteLossError

    decisions: list[bool] = []
    elsewhere = {"bad": False}

    def reduce_boolean_decision(decision, all=True):
        assert all is False  # any process's bad step counts
        decisions.append(decision)
        return decision or elsewhere["bad"]

    strategy = SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision)
    trainer = SimpleNamespace(
        global_step=0, current_epoch=0, default_root_dir=str(tmp_path), world_size=2, strategy=strategy
    )
    guard = FiniteLossGuard(check_every_n_steps=None)
    guard.on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))
    for batch_idx in range(3):  # finite steps: checked (collectively) at every step on the CPU all the same
        trainer.global_step = batch_idx + 1
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, batch_idx)
    assert decisions == [False, False, False]
    elsewhere["bad"] = True
    with pytest.raises(NonFiniteLossError, match="became non-finite in another process by epoch 0"):
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 3)


def test_an_interrupt_after_a_bad_step_keeps_the_last_good_checkpoint_and_lets_lightning_finish(tmp_path, caplog):
    """A preemption after a NaN the guard has recorded but not read yet: the interrupt's save is refused by the
    guard (``on_save_checkpoint``); the interrupt handler logs it and returns, so that Lightning's own interrupt
    handling (loggers, teardown, the exit status of a SIGTERM) goes on instead of a crash inside it."""
    from types import SimpleNamespace

    from infocatvae.callbacks import InterruptCheckpoint, NonFiniteLossError

    def save_checkpoint(path, weights_only=False):
        raise NonFiniteLossError("loss term 'loss' became non-finite at epoch 0, batch 1 (optimiser step 2)")

    trainer = SimpleNamespace(save_checkpoint=save_checkpoint, current_epoch=0, global_step=2)
    interrupt = InterruptCheckpoint(str(tmp_path))
    interrupt.on_train_start(trainer, None)
    with caplog.at_level("WARNING", logger="infocatvae.callbacks"):
        interrupt.on_exception(trainer, None, SystemExit("preempted"))
    assert "not saved" in caplog.text and "non-finite" in caplog.text
