"""End to end through the Hydra entry point on slices of the real MNIST."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from infocatvae.checkpoints import load_model
from infocatvae.models import AAE, CatVAE, FreePriorCatVAE, InfoCatVAE
from infocatvae.runs import read_status
from infocatvae.train import slurm_hint, train
from tests.helpers import DATA_DIR, IMAGES, MODELS, TINY, make_cfg, make_model

CLASSES = dict(zip(MODELS, (CatVAE, InfoCatVAE, FreePriorCatVAE, AAE)))  # the class each conf/model option builds


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", ["mnist", "fashion_mnist", "seq_mnist"])
@pytest.mark.parametrize("net", ["mlp", "gru"])
def test_every_model_data_net_config_composes_and_instantiates(model, data, net, tmp_path):
    cfg = make_cfg([f"model={model}", f"data={data}", f"net={net}"], tmp_path)
    m = hydra.utils.instantiate(cfg.model)
    dm = hydra.utils.instantiate(cfg.data)
    assert type(m) is CLASSES[model]
    assert dm.sequential == (data == "seq_mnist") and dm.name == data.replace("seq_", "")


def test_defaults_are_appendix_b(tmp_path):
    cfg = make_cfg([], tmp_path)
    m = cfg.model
    assert m._target_ == "infocatvae.models.InfoCatVAE" and cfg.data.name == "mnist"
    assert (m.K, m.delta, m.lam, m.beta_cat, m.beta_cont, m.beta_info) == (10, 2, 2.0, 10.0, 10.0, 100.0)
    assert m.optimizer.lr == 1e-4 and cfg.data.batch_size == 128 and m.recon == "marginal"


def _events(run: Path) -> list[Path]:
    return list((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.parametrize("model", [*MODELS, "aae model.K=10"])
def test_short_training_writes_checkpoint_and_events_then_resumes(model, tmp_path):
    run = tmp_path / "run"
    metrics = train(make_cfg([*TINY, *f"model={model}".split()], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and _events(run)
    assert read_status(run)["status"] == "completed"
    assert {"val/loss", "val/recon", "train/loss"} <= set(metrics)
    if "K=10" in model or not model.startswith("aae"):
        assert 0.0 <= metrics["val/cluster_acc"] <= 1.0 and "val/nmi" in metrics
    # load_from_checkpoint with no other argument
    cls = CLASSES[model.split()[0].removeprefix("model=")] if " " not in model else AAE
    loaded = cls.load_from_checkpoint(ckpt)
    assert type(loaded) is cls and type(load_model(ckpt)) is cls
    first = torch.load(ckpt, weights_only=True)
    assert first["epoch"] == 0
    # the same command with more epochs resumes at the next epoch in the same folder
    train(make_cfg([*TINY, "trainer.max_epochs=2", *f"model={model}".split()], run))
    second = torch.load(ckpt, weights_only=True)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"]
    assert read_status(run)["resumed_from"] == str(ckpt)
    assert len(_events(run)) >= 2  # the curves continue in the same TensorBoard folder


def test_a_job_started_beside_slurm_says_once_how_to_reach_it_instead_of_lightnings_srun_advice(
    tmp_path, monkeypatch, recwarn, caplog, data_dir
):
    bin_dir = tmp_path / "bin"  # a login node's srun (never run here)
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    with pytest.warns(PossibleUserWarning, match="prepend your python command with `srun`"):
        SLURMEnvironment.detect()  # premise: what Lightning says, three times a job, unless told otherwise
    with caplog.at_level(logging.INFO, logger="infocatvae.train"):
        train(make_cfg(TINY, tmp_path / "run"))
    assert read_status(tmp_path / "run")["status"] == "completed"
    assert [str(w.message) for w in recwarn if "srun" in str(w.message)] == []
    hint = slurm_hint()
    assert hint and "hydra/launcher=slurm" in hint
    assert [r.getMessage() for r in caplog.records if "srun" in r.getMessage()] == [hint]
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # inside a SLURM job there is nothing to say
    assert slurm_hint() is None


@pytest.mark.slow
@pytest.mark.parametrize("model", ["catvae", "infocatvae", "catvae_free", "aae model.K=10"])
def test_recurrent_networks_on_row_sequential_mnist(model, tmp_path):
    train(make_cfg([*TINY, *IMAGES, *f"model={model}".split(), "net=gru", "data=seq_mnist"], tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    m = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert type(m.encoder).__name__ == "GRUEncoder" and m.likelihood == "gaussian"
    # sequences appear in TensorBoard as 28×28 images: inputs above reconstructions, 8 per row
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    recon = acc.Images("images/reconstructions")[-1]
    assert (recon.height, recon.width) == (2 * 30 + 2, 8 * 30 + 2)  # make_grid pads each 28×28 image by 2
    assert "images/samples" in acc.Tags()["images"]
    # at the x of the curves, Lightning's batch count (2 at the validation after the third batch); not global_step,
    # which was one ahead and, for the AAE, counts its three optimiser steps a batch (9)
    assert recon.step == acc.Scalars("val/loss")[-1].step == 2


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["clustering_mnist", "infocatvae_clustering"])
def test_clustering_presets_train_from_one_command(preset, tmp_path):
    """``experiment=<preset>`` (with the tiny run's limits) trains, tests, and logs the balance term."""
    metrics = train(make_cfg([*TINY, f"experiment={preset}", "test=true"], tmp_path))
    assert read_status(tmp_path)["status"] == "completed"
    assert {"test/cluster_acc", "test/nmi", "test/ari", "train/marginal", "val/marginal"} <= set(metrics)


@pytest.mark.slow
def test_tensorboard_holds_losses_clustering_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg([*TINY, *IMAGES, "model=infocatvae"], tmp_path))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for term in ("loss", "recon", "kl_cat", "kl_cont", "info"):
        assert f"train/{term}_epoch" in scalars and f"val/{term}" in scalars
    assert {"val/cluster_acc", "val/nmi"} <= scalars
    assert {"images/reconstructions", "images/samples", "images/centroids"} <= set(acc.Tags()["images"])


@pytest.mark.slow
def test_test_true_scores_the_test_images_like_validation(tmp_path):
    """``test=true``: after training, the 10K test images go through the same terms and clustering
    scores as validation, under ``test/``; returned by ``train`` and kept in ``status.json``."""
    metrics = train(make_cfg([*TINY, "model=infocatvae", "test=true", "trainer.limit_test_batches=null"], tmp_path))
    terms = ("loss", "recon", "kl_cat", "kl_cont", "info", "marginal", "cluster_acc", "nmi", "ari", "usage_perplexity")
    for term in terms:
        assert f"test/{term}" in metrics and f"val/{term}" in metrics, term
    assert metrics["test/loss"] != metrics["val/loss"]  # other images
    status = read_status(tmp_path)
    assert status["status"] == "completed" and status["metrics"]["test/cluster_acc"] == metrics["test/cluster_acc"]


# Each field's message is checked in-process (tests/test_validation.py) and each kind of bad value
# through the CLI (tests/test_faults.py); here, one full message as the CLI prints it.
@pytest.mark.parametrize(
    "override,message",
    [
        ("model.recon=hard", "model.recon must be one of ['marginal', 'soft'], got 'hard'"),
    ],
)
def test_bad_hyperparameters_exit_non_zero_before_training(override, message, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "infocatvae.train", override, f"paths.data_dir={DATA_DIR}", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tensorboard").exists()


def test_debug_overfit_trains_on_the_same_first_batches(tmp_path, monkeypatch):
    """``debug=overfit`` (Lightning's overfit_batches: its own sequential sampler) trains, on the same 3 batches of
    the training set in order every epoch."""
    from infocatvae.models.base import BaseModel

    seen: list[int] = []
    original = BaseModel.training_step

    def recording(self, batch, batch_idx):
        seen.append(int(batch[1].sum()))
        assert batch[0].shape == (128, 1, 28, 28)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(BaseModel, "training_step", recording)
    metrics = train(make_cfg(["debug=overfit", "trainer.max_epochs=2", "callbacks.images.every_n_epochs=10"], tmp_path))
    assert "val/loss" in metrics and read_status(tmp_path)["status"] == "completed"
    assert len(seen) == 6 and seen[:3] == seen[3:]


def test_the_run_folder_is_named_by_what_changes_the_training_only():
    """The folder name (Hydra's override_dirname) holds the overrides that change the training, not where its
    curves go (``logger``), its length, paths or the progress bar: those resume the same folder."""
    from hydra import compose, initialize_config_dir

    from infocatvae.config import CONFIG_DIR

    same = ["logger=csv", "trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0", "test=true"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model.lam=4", *same], return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == "model.lam=4"


def test_ddp_finds_unused_parameters_for_a_model_that_optimises_by_hand(tmp_path):
    """The AAE's phases each leave parameters out of their backward pass: under DDP it gets Lightning's
    ``*_find_unused_parameters_true`` strategy; the models of one backward pass keep plain DDP."""
    from infocatvae.train import strategy_for

    aae, catvae = make_model("model=aae", tmp_path), make_model("model=catvae", tmp_path)
    assert strategy_for("ddp", aae) == "ddp_find_unused_parameters_true"
    assert strategy_for("ddp_spawn", aae) == "ddp_spawn_find_unused_parameters_true"
    assert strategy_for("ddp", catvae) == "ddp" and strategy_for("auto", aae) == "auto"
