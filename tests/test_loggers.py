"""The logger configs (conf/logger: tensorboard, csv, mlflow, wandb, many) and the debug configs
(conf/debug: tiny, fdr, overfit, profiler): each composes and sets what it promises; CSV, MLflow and
W&B (offline) continue the same run when a job resumes; a missing optional package stops the run
before training with the extra to install."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import hydra.utils
import pytest
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf

from infocatvae.callbacks import ImageLogger
from infocatvae.config import CONFIG_DIR, instantiate_all
from infocatvae.loggers import MLFLOW_RUN_ID_FILE, WANDB_RUN_ID_FILE, _AppendingWriter
from tests.helpers import DATA_DIR, REPO, TINY, cli_env, make_cfg, run_entry

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def trainer_of(cfg):
    callbacks = instantiate_all(cfg.callbacks)
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False)


# ---- debug configs --------------------------------------------------------------------------------
def test_debug_tiny_is_one_epoch_of_a_few_batches_on_the_cpu_quietly(tmp_path):
    cfg = make_cfg(["debug=tiny"], tmp_path)
    assert cfg.task_name == "debug" and (cfg.data.batch_size, cfg.data.eval_batch_size) == (64, 256)
    trainer = trainer_of(cfg)
    assert trainer.max_epochs == 1
    assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (3, 1, 1)
    assert type(trainer.accelerator).__name__ == "CPUAccelerator" and trainer.num_devices == 1
    assert trainer.log_every_n_steps == 1
    assert not any(isinstance(c, ImageLogger) for c in trainer.callbacks)
    (bar,) = [c for c in trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert bar.is_disabled
    # a test's own overrides still win over debug=tiny (it comes last in the defaults list)
    cfg = make_cfg(["debug=tiny", "trainer.max_epochs=3", "trainer.limit_train_batches=40"], tmp_path)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (3, 40)


def test_debug_wins_over_an_experiment(tmp_path):
    cfg = make_cfg(["experiment=table1_catvae", "debug=tiny"], tmp_path)
    assert cfg.trainer.max_epochs == 1 and cfg.model._target_ == "infocatvae.models.CatVAE"


@pytest.mark.parametrize("debug", ["fdr", "overfit", "profiler"])
def test_debug_configs_set_what_they_promise_in_a_fresh_folder(debug, tmp_path):
    cfg = make_cfg([f"debug={debug}"], tmp_path)
    trainer = trainer_of(cfg)
    if debug == "fdr":
        assert trainer.fast_dev_run == 1 and trainer.limit_train_batches == 1 and trainer.limit_val_batches == 1
    elif debug == "overfit":
        assert trainer.overfit_batches == 3 and trainer.limit_train_batches == 3 and trainer.max_epochs == 100
    else:
        assert isinstance(trainer.profiler, SimpleProfiler) and trainer.max_epochs == 1
        assert Path(trainer.profiler.dirpath) == tmp_path and trainer.profiler.filename == "profile"
    # a debug run is never resumed: each one gets a new folder under logs/debug/runs/<overrides>/
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hcfg = compose("train", overrides=[f"debug={debug}"], return_hydra_config=True)
    assert hcfg.task_name == "debug"
    assert OmegaConf.to_container(hcfg.hydra.run)["dir"].endswith("/${now:%Y-%m-%d_%H-%M-%S}")  # unresolved


def test_trainer_limits_are_set_without_plus(tmp_path):
    cfg = make_cfg(
        [
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=0.5",
            "trainer.limit_test_batches=2",
            "trainer.gradient_clip_val=1.0",
            "trainer.accumulate_grad_batches=2",
            "trainer.val_check_interval=0.5",
        ],
        tmp_path,
    )
    t = cfg.trainer
    assert (t.limit_train_batches, t.limit_val_batches, t.limit_test_batches) == (5, 0.5, 2)
    assert (t.gradient_clip_val, t.accumulate_grad_batches, t.val_check_interval) == (1.0, 2, 0.5)
    # and by default they are Lightning's defaults
    d = make_cfg([], tmp_path).trainer
    assert [
        d[k]
        for k in (
            "limit_train_batches",
            "limit_val_batches",
            "limit_test_batches",
            "gradient_clip_val",
            "accumulate_grad_batches",
            "val_check_interval",
        )
    ] == [None, None, None, None, 1, None]


def test_cli_debug_tiny_cfg_job_composes(tmp_path):
    res = run_entry("infocatvae.train", "debug=tiny", f"hydra.run.dir={tmp_path / 'run'}", "--cfg", "job", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = yaml.safe_load(res.stdout)
    assert cfg["trainer"]["max_epochs"] == 1 and cfg["trainer"]["limit_train_batches"] == 3
    assert cfg["trainer"]["accelerator"] == "cpu" and cfg["callbacks"]["images"] is None
    assert not (tmp_path / "run").exists()  # --cfg job prints the config and runs nothing


# ---- logger configs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "logger,keys",
    [
        ("tensorboard", ["tensorboard"]),
        ("csv", ["csv"]),
        ("mlflow", ["mlflow"]),
        ("wandb", ["wandb"]),
        ("many", ["tensorboard", "csv", "mlflow", "wandb"]),
        ("[tensorboard,csv]", ["tensorboard", "csv"]),
    ],
)
def test_logger_configs_build_their_loggers_in_the_run_folder(logger, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg([f"logger={logger}"], tmp_path)
    assert list(cfg.logger) == keys
    built = instantiate_all(cfg.logger)
    names = {"tensorboard": "TensorBoardLogger", "csv": "CSVLogger", "mlflow": "MLFlowLogger", "wandb": "WandbLogger"}
    assert [type(lg).__name__ for lg in built] == [names[k] for k in keys]
    for lg in built:
        if lg.save_dir is not None and not str(lg.save_dir).startswith("file:"):
            assert str(lg.save_dir).startswith(str(tmp_path)), (type(lg).__name__, lg.save_dir)


def test_csv_writer_appends_and_drops_rows_logged_after_the_resumed_checkpoint(tmp_path):
    first = _AppendingWriter(str(tmp_path))
    for step in range(6):  # a job killed at step 5; its last checkpoint was at step 3
        first.log_metrics({"train/loss": 10.0 - step, "epoch": step // 3}, step)
    first.log_metrics({"val/loss": 7.5, "epoch": 0}, 2)
    first.save()
    resumed = _AppendingWriter(str(tmp_path))
    resumed.log_metrics({"train/loss": 6.5, "epoch": 1}, 3)
    resumed.log_metrics({"train/lr": 1e-4, "epoch": 1}, 4)  # a new column: the file is rewritten
    resumed.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(int(r["step"]), r["train/loss"], r["val/loss"], r["train/lr"]) for r in rows] == [
        (0, "10.0", "", ""),
        (1, "9.0", "", ""),
        (2, "8.0", "", ""),
        (2, "", "7.5", ""),
        (3, "6.5", "", ""),
        (4, "", "", "0.0001"),
    ]


def _train(run: Path, epochs: int, *extra: str) -> dict:
    from infocatvae.train import train

    return train(make_cfg([*TINY, f"trainer.max_epochs={epochs}", *extra], run))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'infocatvae[mlflow]')")
def test_csv_and_mlflow_resume_into_the_same_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    _train(run, 1, "logger=[csv,mlflow]")
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    _train(run, 2, "logger=[csv,mlflow]")
    assert (run / MLFLOW_RUN_ID_FILE).read_text().strip() == run_id

    # CSV: one metrics file holding both epochs, each step once
    assert [p.relative_to(run) for p in run.rglob("metrics.csv")] == [Path("csv/metrics.csv")]
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    train_steps = [int(r["step"]) for r in rows if r["train/loss_step"]]
    assert train_steps == [0, 1, 2, 3, 4, 5]
    val = [(int(float(r["epoch"])), float(r["val/loss"])) for r in rows if r["val/loss"]]
    assert [e for e, _ in val] == [0, 1]

    # MLflow: one run in the run folder's store, holding both epochs, its status FINISHED
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.run_name == "run" and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val/loss")
    assert [m.step for m in history] == [2, 5] and [m.value for m in history] == pytest.approx([v for _, v in val])
    assert sorted({m.value for m in client.get_metric_history(run_id, "epoch")}) == [0.0, 1.0]


def test_tensorboard_drops_what_a_killed_job_logged_after_its_checkpoint(tmp_path):
    """A job killed after its checkpoint had logged later steps; the resumed job logs them again. TensorBoard's
    ``purge_step`` (the checkpoint's batches) drops the killed job's: each step once, the resumed job's values."""
    from torch.utils.tensorboard import SummaryWriter

    from infocatvae.loggers import read_scalars

    run = tmp_path / "run"
    _train(run, 1)  # 3 batches: steps 0, 1, 2; last.ckpt holds 3 batches
    with SummaryWriter(str(run / "tensorboard")) as killed:  # what the killed job wrote after it
        for step in (3, 4):
            killed.add_scalar("train/loss_step", 9999.0, step)
    _train(run, 2)
    events = read_scalars(run, ["train/loss_step"])["train/loss_step"]
    assert [e.step for e in events] == [0, 1, 2, 3, 4, 5]
    assert all(e.value < 9999.0 for e in events)


def logged(path: Path, needle: bytes, timeout: float = 30) -> bool:
    """Whether W&B's offline transaction log holds ``needle``; its service may still be writing it
    when ``wandb.finish()`` returns."""
    end = time.monotonic() + timeout
    while needle not in path.read_bytes():
        if time.monotonic() > end:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'infocatvae[wandb]')")
def test_wandb_offline_resumes_the_same_run_id(tmp_path, monkeypatch):
    import wandb

    for var, sub in [("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    try:
        _train(run, 1, "logger=wandb")
        wandb.finish()  # as when the first job's process ends
        run_id = (run / WANDB_RUN_ID_FILE).read_text().strip()
        _train(run, 2, "logger=wandb")
        # another job in the same process (a multirun): its own W&B run, not the previous job's
        _train(tmp_path / "other", 1, "logger=wandb")
    finally:
        wandb.finish()
    assert (run / WANDB_RUN_ID_FILE).read_text().strip() == run_id
    parts = sorted((run / "wandb").glob("offline-run-*"))
    # wandb sync uploads both into one run
    assert [p.name.rsplit("-", 1)[1] for p in parts] == [run_id, run_id], list((run / "wandb").iterdir())
    for part in parts:
        assert logged(part / f"run-{run_id}.wandb", b"val/loss")
    other_id = (tmp_path / "other" / WANDB_RUN_ID_FILE).read_text().strip()
    assert other_id != run_id
    others = list((tmp_path / "other" / "wandb").glob("offline-run-*"))
    assert len(others) == 1, others
    (other,) = others
    assert other.name.endswith(other_id) and logged(other / f"run-{other_id}.wandb", b"val/loss")


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_missing_optional_package_names_the_extra(extra, tmp_path, monkeypatch):
    cfg = make_cfg([f"logger={extra}"], tmp_path)
    monkeypatch.setitem(sys.modules, extra, None)  # import mlflow / wandb fails as when not installed
    with pytest.raises(Exception, match=rf"pip install 'infocatvae\[{extra}\]'"):
        hydra.utils.instantiate(cfg.logger[extra])


def test_cli_without_wandb_stops_before_training_naming_the_extra(tmp_path):
    run = tmp_path / "run"
    code = (
        "import runpy, sys; sys.modules['wandb'] = None; "
        f"sys.argv = ['infocatvae.train', *{[*TINY, 'logger=wandb', f'paths.data_dir={DATA_DIR}']!r}, "
        f"'hydra.run.dir={run}']; runpy.run_module('infocatvae.train', run_name='__main__', alter_sys=True)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=120
    )
    assert res.returncode != 0
    assert "pip install 'infocatvae[wandb]'" in res.stderr, res.stderr[-3000:]
    assert not (run / "checkpoints").exists()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "infocatvae[wandb]" in status["error"] and status["step"] is None


def test_read_scalars_returns_every_event_of_the_tags_asked_for(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from infocatvae.loggers import read_scalars

    assert read_scalars(tmp_path) == {}  # no tensorboard/ folder
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    n = 10_050  # more than the 10,000 events TensorBoard's reader keeps of a tag by default
    for step in range(n):
        writer.add_scalar("train/loss_step", float(step) / 2, step)
    for epoch in range(3):
        writer.add_scalar("val/loss", 100.0 - epoch, epoch)
    writer.close()

    every = read_scalars(tmp_path)
    assert set(every) == {"train/loss_step", "val/loss"}
    assert [e.step for e in every["train/loss_step"]] == list(range(n))
    assert [e.value for e in every["train/loss_step"]][-1] == (n - 1) / 2
    asked = read_scalars(tmp_path, ["val/loss", "val/never_logged"])
    assert list(asked) == ["val/loss"]
    assert [(e.step, e.value) for e in asked["val/loss"]] == [(0, 100.0), (1, 99.0), (2, 98.0)]
