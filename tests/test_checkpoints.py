"""``infocatvae.checkpoints``: a model rebuilt from the hyperparameters stored in its checkpoint, old
checkpoints included. Resume (tests/test_resume.py) and bad files (tests/test_faults.py) are elsewhere."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from infocatvae.checkpoints import CheckpointError, datamodule_from, load_model
from infocatvae.models import MODEL_KEY
from tests.helpers import DATA_DIR, make_model


def saved(model, path, edit=lambda hp: None):
    """``model`` written as a checkpoint whose stored hyperparameters ``edit`` changed."""
    hp = copy.deepcopy(dict(model.hparams))
    edit(hp)
    torch.save(
        {
            MODEL_KEY: f"{type(model).__module__}.{type(model).__qualname__}",
            "state_dict": model.state_dict(),
            "hyper_parameters": hp,
        },
        path,
    )
    return path


def test_a_checkpoint_written_before_a_field_existed_still_loads(tmp_path, caplog):
    """Fields added since (beta_marginal, the GRU decoder's output_dropout) take the shipped defaults, a field
    the class no longer takes (learn_prior) is dropped, both logged; the weights are the saved ones."""
    torch.manual_seed(0)
    model = make_model("model=catvae_free net=gru model.prior_init=random")

    def older(hp):
        del hp["beta_marginal"], hp["net"]["decoder"]["output_dropout"]
        hp["learn_prior"] = True

    with caplog.at_level(logging.INFO, logger="infocatvae.checkpoints"):
        loaded = load_model(saved(model, tmp_path / "old.ckpt", older))
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.hparams.beta_marginal == 0.0 and loaded.hparams.net["decoder"]["output_dropout"] == 0.0
    assert loaded.hparams.prior_init == "random"  # stored values win over the defaults
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert "model.beta_marginal" in caplog.text and "model.net.decoder.output_dropout" in caplog.text
    assert "learn_prior" in caplog.text


def test_an_aae_checkpoint_from_before_the_phase_optimisers_and_balance_term_loads(tmp_path, caplog):
    """The AAE's fields added since (gen_optimizer, disc_optimizer, beta_marginal) come from conf/model/aae.yaml."""
    torch.manual_seed(0)
    model = make_model("model=aae model.K=10")

    def older(hp):
        del hp["gen_optimizer"], hp["disc_optimizer"], hp["beta_marginal"]

    with caplog.at_level(logging.INFO, logger="infocatvae.checkpoints"):
        loaded = load_model(saved(model, tmp_path / "old_aae.ckpt", older))
    assert loaded.hparams.gen_optimizer is None and loaded.hparams.disc_optimizer is None
    assert loaded.hparams.beta_marginal == 0.0 and loaded.K == 10
    assert "model.beta_marginal" in caplog.text


def test_weights_that_do_not_fit_their_hyperparameters_are_refused(tmp_path):
    model = make_model("model=catvae")
    path = saved(model, tmp_path / "k5.ckpt", lambda hp: hp.update(K=5))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} does not fit the CatVAE"):
        load_model(path)


def test_the_data_module_comes_from_the_checkpoint_else_from_the_config():
    stored = {"name": "fashion_mnist", "sequential": True, "val_size": 4000, "split_seed": 3, "batch_size": 64}
    fallback = {"name": "mnist", "sequential": False, "val_size": 5000, "split_seed": 0, "batch_size": 128,
                "eval_batch_size": 1000, "shuffle_seed": 0, "on_device": True, "download": True,
                "_target_": "infocatvae.data.MNISTDataModule", "data_dir": "elsewhere"}  # fmt: skip
    dm, source = datamodule_from({"datamodule_hyper_parameters": stored}, DATA_DIR, fallback)
    assert source == "checkpoint" and (dm.name, dm.sequential, dm.val_size, dm.split_seed) == stored_view(stored)
    assert dm.data_dir == DATA_DIR and not dm.on_device and not dm.download and dm.eval_batch_size == 1000
    dm, source = datamodule_from({}, DATA_DIR, fallback)
    assert source == "config" and (dm.name, dm.sequential, dm.val_size) == ("mnist", False, 5000)


def stored_view(d: dict) -> tuple:
    return d["name"], d["sequential"], d["val_size"], d["split_seed"]


def test_checkpoint_writers_that_monitor_nothing_run_after_those_that_monitor_a_metric(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from infocatvae.callbacks import EpochSeed, EpochSnapshots, FiniteLossGuard
    from infocatvae.checkpoints import order_checkpoint_callbacks

    last = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    snapshots = EpochSnapshots(str(tmp_path), every_n_epochs=5)
    guard, seed = FiniteLossGuard(None), EpochSeed(0)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss")
    extra = ModelCheckpoint(dirpath=tmp_path, monitor="val/recon")  # as a `+callbacks.x=...` override appends it
    ordered = order_checkpoint_callbacks([last, guard, snapshots, best, seed, extra])
    assert ordered == [guard, best, seed, extra, last, snapshots]


def test_a_checkpoint_from_before_a_field_existed_resumes_without_a_change_at_that_fields_default(caplog):
    """A GRU checkpoint written before ``model.net.decoder.style`` existed was Table 3's decoder: resuming it with
    the default config is no change; asking for the authors' decoder is refused, naming the field."""
    from infocatvae.checkpoints import check_compatible

    old = make_model("model=catvae net=gru data=seq_mnist")
    hparams = copy.deepcopy(dict(old.hparams))
    del hparams["net"]["decoder"]["style"]  # as written before the field existed
    ckpt = {"hyper_parameters": hparams, "state_dict": old.state_dict()}
    with caplog.at_level(logging.INFO, logger="infocatvae.checkpoints"):
        assert check_compatible(ckpt, make_model("model=catvae net=gru data=seq_mnist"), "old.ckpt") == []
    assert "changed hyperparameter" not in caplog.text
    authors = make_model("model=catvae net=gru data=seq_mnist model.net.decoder.style=authors_code")
    with pytest.raises(CheckpointError, match="model.net.decoder.style: 'table3' in the checkpoint, 'authors_code'"):
        check_compatible(ckpt, authors, "old.ckpt")
    # a field that did exist and changed is still reported
    changed = make_model("model=catvae net=gru data=seq_mnist model.lam=3")
    assert check_compatible(ckpt, changed, "old.ckpt") == ["model.lam: 2.0 in the checkpoint, 3 configured"]


def test_load_from_checkpoint_completes_a_field_added_after_the_checkpoint_was_written(tmp_path):
    """``InfoCatVAE.load_from_checkpoint(path)`` (the README's API) on a checkpoint written before
    ``model.info_trains_decoder`` existed: the field takes the shipped default, the weights are the stored ones;
    a checkpoint of another model is refused, naming both."""
    from infocatvae.models import AAE, InfoCatVAE
    from infocatvae.models.base import BaseModel

    model = make_model("model=infocatvae")
    hparams = copy.deepcopy(dict(model.hparams))
    del hparams["info_trains_decoder"]  # as written before the field existed
    path = tmp_path / "old.ckpt"
    import lightning

    stored = {"hyper_parameters": hparams, "state_dict": model.state_dict(), MODEL_KEY: "infocatvae.models.InfoCatVAE"}
    torch.save({**stored, "pytorch-lightning_version": lightning.__version__}, path)
    with pytest.raises(TypeError, match="info_trains_decoder"):  # what Lightning's own loader does with it
        super(BaseModel, InfoCatVAE).load_from_checkpoint(path)
    loaded = InfoCatVAE.load_from_checkpoint(path)
    assert type(loaded) is InfoCatVAE and loaded.hparams.info_trains_decoder is True and not loaded.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(TypeError, match="holds a model of class InfoCatVAE, not AAE"):
        AAE.load_from_checkpoint(path)


def test_load_from_checkpoint_returns_eval_mode_on_lightnings_path_too(tmp_path):
    """With Lightning's own arguments (``strict``, a ``map_location`` dict) the model comes back in eval mode as
    on the default path: dropout off in ``sample`` and ``reconstruct``."""
    import lightning

    from infocatvae.models import CatVAE

    model = make_model("model=catvae")
    path = tmp_path / "new.ckpt"
    stored = {
        "hyper_parameters": dict(model.hparams),
        "state_dict": model.state_dict(),
        MODEL_KEY: "infocatvae.models.CatVAE",
    }
    torch.save({**stored, "pytorch-lightning_version": lightning.__version__}, path)
    for kwargs in ({"strict": True}, {"map_location": {"cuda:0": "cpu"}}, {}):
        loaded = CatVAE.load_from_checkpoint(path, **kwargs)
        assert type(loaded) is CatVAE and not loaded.training, kwargs


def test_a_checkpoints_place_on_the_training_curves_is_the_batches_it_trained():
    """``logger_step``: after 3 batches the validation and epoch-end scalars sit at x = 2 (Lightning's count of the
    batches before the last); the AAE's ``global_step`` is 9 there. A checkpoint without loops (written by hand)
    falls back to ``global_step``."""
    from infocatvae.checkpoints import logger_step

    loops = {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 3}}}
    assert logger_step({"global_step": 9, "loops": loops}) == 2
    assert logger_step({"global_step": 3}) == 2 and logger_step({}) == 0
