"""``infocatvae.validation``: every config field's rule, in-process on composed configs. The CLI's refusal
before training (exit code, status.json, no checkpoint written) is checked in tests/test_faults.py."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from infocatvae import validation
from infocatvae.config import CONFIG_DIR

MODELS = ["catvae", "infocatvae", "catvae_free", "aae"]


@pytest.fixture(scope="module", autouse=True)
def hydra_once():
    """Hydra initialised once for the module: composing is then ~10x faster than with one init each."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield


def composed(name: str, overrides: list[str]):
    cfg = compose(name, overrides=overrides)
    if name == "eval":
        with open_dict(cfg):
            cfg.ckpt_path = "x.ckpt"
    return cfg


def refused(name: str, overrides: list[str]) -> str:
    with pytest.raises(ValueError) as err:
        validation.check(composed(name, overrides))
    return str(err.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.K=0", "model.K must be an integer >= 1, got 0"),
        ("model.K=ten", "model.K must be an integer >= 1, got 'ten'"),
        ("model.K=null", "model.K must be an integer >= 1, got None"),
        ("model.delta=0", "model.delta must be an integer >= 1"),
        ("model.lam=-1", "model.lam must be a finite number >= 0"),
        ("model.lam=abc", "model.lam must be a finite number >= 0"),
        ("model.lam=???", "model.lam must be set (it is ???)"),
        ("model.beta_cat=-1", "model.beta_cat must be a finite number >= 0"),
        ("model.beta_cont=-0.5", "model.beta_cont must be a finite number >= 0"),
        ("model.beta_info=-3", "model.beta_info must be a finite number >= 0"),
        ("model.beta_marginal=-1", "model.beta_marginal must be a finite number >= 0"),
        ("model.kl_warmup_epochs=-1", "model.kl_warmup_epochs must be an integer >= 0"),
        ("model.kl_warmup_steps=2.5", "model.kl_warmup_steps must be an integer >= 0"),
        ("model.optimizer.lr=0", "model.optimizer.lr must be a finite number > 0"),
        ("model.recon=hard", "model.recon must be one of ['marginal', 'soft'], got 'hard'"),
        ("model.info_loss=mse", "model.info_loss must be one of ['ce', 'ce_on_probs']"),
        ("model.info_per_category=0", "model.info_per_category must be null or an integer >= 1"),
        ("model.info_trains_decoder=maybe", "model.info_trains_decoder must be true or false, got 'maybe'"),
        ("model.likelihood=poisson", "model.likelihood must be one of ['bernoulli', 'gaussian']"),
        ("model.net.decoder.output_dropout=1.5", "model.net.decoder.output_dropout must be a number in [0, 1)"),
        ("data.name=cifar", "data.name must be one of ['mnist', 'fashion_mnist'], got 'cifar'"),
        ("data.batch_size=0", "data.batch_size must be an integer >= 1"),
        ("data.val_size=70000", "data.val_size must be an integer in [1, 59999], got 70000"),
        ("threads=0", "threads must be null or an integer >= 1, got 0"),
        ("compile=maybe", "compile must be true or false, got 'maybe'"),
        ("trainer.max_epochs=abc", "trainer.max_epochs must be null or an integer >= -1, got 'abc'"),
        (
            "trainer.limit_val_batches=abc",
            "trainer.limit_val_batches must be null, an integer >= 0 (batches) or a number in [0, 1] (a fraction), "
            "got 'abc'",
        ),
        ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches must be null, an integer >= 0"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval must be null, an integer >= 1 (batches)"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be null or a number >= 0 (0: no clipping)"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be an integer >= 1, got 0"),
        ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps must be an integer >= 0, got -1"),
        ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch must be null or an integer >= 1"),
        ("callbacks.images.n_images=0", "callbacks.images.n_images must be an integer >= 1, got 0"),
        ("test=1", "test must be true or false, got 1"),
        ("data.on_device=yes", "data.on_device must be true or false, got 'yes'"),
        ("model.optimizer.fused=on", "model.optimizer.fused must be null, true or false, got 'on'"),
        ("callbacks.snapshots.every_n_epochs=-5", "callbacks.snapshots.every_n_epochs must be an integer >= 0"),
        (
            "net=gru model.net.decoder.style=authors",
            "model.net.decoder.style must be one of ['table3', 'authors_code'], got 'authors'",
        ),
        ("model.lam=inf", "model.lam must be a finite number >= 0, got inf"),
        ("model.optimizer.lr=inf", "model.optimizer.lr must be a finite number > 0, got inf"),
        ("trainer.precision=bf16-true", "trainer.precision must be one of ['32-true', '32', 32, 'bf16-mixed'"),
        ("trainer.precision=64-true", "trainer.precision must be one of"),
        (
            "model.optimizer._target_=torch.optim.RMSprop",
            "model.optimizer cannot build its optimizer (torch.optim.RMSprop): ",  # the shipped entry's fused: true
        ),
        (
            "model.optimizer._partial_=false",
            "model.optimizer must be an optimizer entry with _target_ (e.g. torch.optim.Adam) and _partial_: true",
        ),
        (
            "model.kl_warmup_epochs=5 model.kl_warmup_steps=100",
            "model.kl_warmup_epochs and model.kl_warmup_steps cannot both be > 0, got 5 and 100",
        ),
    ],
)
def test_bad_training_values_name_field_rule_and_value(override, message):
    assert message in refused("train", ["model=infocatvae", *override.split()])


@pytest.mark.parametrize(
    "model,override,message",
    [
        ("catvae_free", "model.prior_init=zeros", "model.prior_init must be one of ['block', 'random']"),
        ("catvae_free", "model.learn_prior_logvar=2", "model.learn_prior_logvar must be true or false, got 2"),
        ("aae", "model.d=0", "model.d must be an integer >= 1"),
        ("aae", "model.disc_layers=-1", "model.disc_layers must be an integer >= 0"),
        ("aae", "model.disc_noise=-0.1", "model.disc_noise must be a finite number >= 0, got -0.1"),
        ("aae", "model.net.encoder.layers=0", "model.net.encoder.layers must be an integer >= 1, got 0"),
        ("catvae", "model.net.decoder.layers=1.5", "model.net.decoder.layers must be an integer >= 1, got 1.5"),
        (
            "aae",
            "model.gen_optimizer={_target_:torch.optim.SGD,_partial_:true,lr:-1}",
            "model.gen_optimizer.lr must be a finite number > 0, got -1",
        ),
        (
            "aae",
            "model.disc_optimizer={_target_:torch.optim.Adam,_partial_:true,lr:0}",
            "model.disc_optimizer.lr must be a finite number > 0, got 0",
        ),
    ],
)
def test_fields_of_one_model_are_checked_where_they_exist(model, override, message):
    assert message in refused("train", [f"model={model}", override])


@pytest.mark.parametrize(
    "overrides,message",
    [
        # an experiment config made for another model: Hydra's instantiate failed with a TypeError naming no field
        (["experiment=infocatvae_clustering", "model=aae"], "model.beta_cat is not a field of infocatvae.models.AAE"),
        (["experiment=aae_clustering", "model=catvae"], "model.d is not a field of infocatvae.models.CatVAE"),
        (["model=aae", "model.gen_optimizer={lr:1e-3}"], "model.gen_optimizer must be an optimizer entry with"),
    ],
)
def test_a_field_the_model_does_not_take_is_refused_by_name(overrides, message):
    assert message in refused("train", overrides)


def test_model_fields_follow_the_init_chain():
    """InfoCatVAE's fields are its own and CatVAE's (its ``**kwargs``); every shipped model config gives only
    fields its class takes; a user's class taking ``**hparams`` is not checked (its signature does not tell)."""
    import hydra.utils
    import lightning

    from infocatvae.models import AAE, CatVAE, InfoCatVAE
    from infocatvae.models.base import init_fields

    info, catvae = init_fields(InfoCatVAE), init_fields(CatVAE)
    assert catvae < info and {"beta_info", "info_loss", "lam", "delta"} <= info and "d" not in info
    assert "d" in init_fields(AAE)
    for model in MODELS:
        cfg = composed("train", [f"model={model}"])
        given = {k for k in cfg.model if not k.startswith("_")}
        assert given == init_fields(hydra.utils.get_class(cfg.model._target_)), model  # the classes take no defaults

    class Mine(lightning.LightningModule):
        def __init__(self, **hparams):
            super().__init__()

    class Derived(CatVAE):
        def __init__(self, **kwargs):
            super().__init__(K=10, **kwargs)

    assert init_fields(Mine) is None and init_fields(Derived) == catvae


@pytest.mark.parametrize(
    "overrides,refusal",
    [
        (["model=aae", "trainer.gradient_clip_val=0.5"], "trainer.gradient_clip_val must be null or 0 for AAE"),
        (["model=aae", "trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches must be 1 for AAE"),
        (["model=aae", "trainer.gradient_clip_val=0"], None),
        (["model=catvae", "trainer.gradient_clip_val=0.5", "trainer.accumulate_grad_batches=2"], None),
    ],
)
def test_lightnings_clipping_and_accumulation_are_refused_for_a_model_that_optimises_by_hand(overrides, refusal):
    """Lightning applies them in automatic optimisation only; the AAE's fit stopped at its start with
    Lightning's MisconfigurationException."""
    import hydra.utils

    cfg = composed("train", overrides)
    validation.check(cfg)
    model = hydra.utils.instantiate(cfg.model)
    if refusal is None:
        validation.check_built(cfg, model)
    else:
        with pytest.raises(ValueError, match=refusal):
            validation.check_built(cfg, model)


def test_every_experiment_config_passes():
    """Each shipped experiment gives its model only fields the model takes (and values its rules allow)."""
    from pathlib import Path

    for path in sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
        validation.check(composed("train", [f"experiment={path.stem}"]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("device=tpu", "device must be auto, cpu, cuda or cuda:<index>, got 'tpu'"),
        ("parzen.bandwidth_split=test", "parzen.bandwidth_split must be one of ['val', 'train'], got 'test'"),
        ("kde.folds=1", "kde.folds must be an integer >= 2"),
        ("kde.bandwidths=[0.1,-1]", "kde.bandwidths must be a non-empty list of numbers > 0, got [0.1, -1]"),
        ("kde.bandwidths=[]", "kde.bandwidths must be a non-empty list of numbers > 0, got []"),
        ("parzen.bandwidths=abc", "parzen.bandwidths must be a non-empty list of numbers > 0, got 'abc'"),
        ("reader.lr=0", "reader.lr must be a finite number > 0"),
        ("reader.epochs=0", "reader.epochs must be an integer >= 1"),
        ("reader.n_per_category=0", "reader.n_per_category must be an integer >= 1"),
        ("n_generated=0", "n_generated must be an integer >= 1"),
        ("info.enabled=no", "info.enabled must be true or false, got 'no'"),
        ("infer_data=0", "infer_data must be true or false, got 0"),
    ],
)
def test_bad_evaluation_values_name_the_field(override, message):
    assert message in refused("eval", [override])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("net,data", [("mlp", "mnist"), ("gru", "seq_mnist"), ("mlp", "fashion_mnist")])
def test_every_shipped_combination_passes(model, net, data):
    validation.check(composed("train", [f"model={model}", f"net={net}", f"data={data}"]))


@pytest.mark.parametrize(
    "override",
    [
        "trainer.limit_train_batches=5 trainer.limit_val_batches=0.25 trainer.limit_test_batches=0",
        "trainer.limit_val_batches=1.0 trainer.val_check_interval=0.5 trainer.gradient_clip_val=0",
        "trainer.val_check_interval=100 trainer.gradient_clip_val=0.5 trainer.log_every_n_steps=0",
        "trainer.check_val_every_n_epoch=null trainer.accumulate_grad_batches=4",
    ],
)
def test_lightnings_batch_counts_and_fractions_pass(override):
    validation.check(composed("train", override.split()))


@pytest.mark.parametrize("debug", ["tiny", "fdr", "overfit", "profiler"])
def test_the_debug_configs_pass(debug):
    validation.check(composed("train", [f"debug={debug}"]))


def test_the_shipped_evaluation_config_passes_and_cuda_indices_are_allowed():
    validation.check(composed("eval", []))
    validation.check(composed("eval", ["device=cuda:1"]))


def test_every_rule_names_a_field_of_a_shipped_config():
    """A rule whose field no config has would never fire (a renamed field): each one must be found."""
    configs = [composed("train", [f"model={m}", f"net={n}"]) for m in MODELS for n in ("mlp", "gru")]
    configs.append(composed("eval", []))
    # the AAE's phase optimisers are null by default (null = model.optimizer's settings), set as whole entries
    adam = "{_target_:torch.optim.Adam,_partial_:true,lr:1e-3}"
    configs.append(composed("train", ["model=aae", f"model.gen_optimizer={adam}", f"model.disc_optimizer={adam}"]))
    stale = [f for f in validation.RULES if all(validation._value(c, f) is validation._ABSENT for c in configs)]
    assert not stale


def tiny_run(run_dir, overrides: list[str]):
    """The train config of a tiny run (tests/helpers.TINY) on the real data, writing into ``run_dir``."""
    from tests.helpers import DATA_DIR, TINY

    cfg = composed("train", [*TINY, f"paths.data_dir={DATA_DIR}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["model=catvae", "callbacks.model_checkpoint.monitor=val/los"], "callbacks.model_checkpoint.monitor"),
        # the AAE with K = 1 has no categories to score
        (["model=aae", "model.K=1", "callbacks.model_checkpoint.monitor=val/cluster_acc"], "model_checkpoint"),
    ],
)
def test_a_monitored_metric_the_model_does_not_log_is_refused_before_training(tmp_path, overrides, field):
    """Lightning's own error came at the first epoch's end, with that epoch lost: now after the sanity check's
    validation batches, naming the field and what the model logs; no training step, no checkpoint."""
    from infocatvae.train import train

    with pytest.raises(ValueError, match=rf"{field}.* must name a metric that \w+ logs, got .*; it logs \['val/"):
        train(tiny_run(tmp_path, overrides))
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert json.loads((tmp_path / "status.json").read_text())["step"] == 0


def test_monitored_fields_are_the_callbacks_monitors_and_the_swept_metric():
    """``optimized_metric`` is checked only where a sweeper optimises it (no Hydra here: none)."""
    from infocatvae.train import monitored_fields

    cfg = composed("train", ["model=aae", "model.K=1"])
    assert monitored_fields(cfg) == {"callbacks.model_checkpoint.monitor": "val/loss"}


def test_a_refused_rerun_leaves_the_record_of_the_run_in_its_folder(tmp_path):
    """A finished run run again with a bad value (``test=maybe``: the same folder, as ``test`` is not part of
    its name) is refused, and its status.json still says completed, with its metrics."""
    from infocatvae.train import train

    record = {"status": "completed", "max_epochs": 1, "epoch": 1, "metrics": {"val/loss": 1.0}}
    (tmp_path / "status.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="test must be true or false"):
        train(tiny_run(tmp_path, ["test=maybe"]))
    assert json.loads((tmp_path / "status.json").read_text()) == record
    # in a fresh folder the refusal is recorded, so that a sweep's summary shows it
    with pytest.raises(ValueError):
        train(tiny_run(tmp_path / "fresh", ["test=maybe"]))
    assert json.loads((tmp_path / "fresh" / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed", "null", "32-true", "bf16-mixed"])
def test_lightnings_precision_aliases_pass(precision):
    validation.check(composed("train", [f"trainer.precision={precision}"]))


def test_the_monitor_check_leaves_names_it_cannot_know_to_lightning():
    """At the sanity check's end only val/ metrics exist: a train/ monitor, step or epoch is not refused here."""
    from types import SimpleNamespace

    from infocatvae.callbacks import MonitoredMetrics

    trainer = SimpleNamespace(
        callback_metrics={"val/loss": 1.0}, strategy=SimpleNamespace(broadcast=lambda obj, src: obj)
    )
    fields = {"a": "train/loss_epoch", "b": "step", "c": "epoch", "d": "val/loss", "e": "test/loss"}
    MonitoredMetrics(fields).on_sanity_check_end(trainer, object())
    with pytest.raises(ValueError, match="f must name a metric that object logs, got 'test/nmi'"):
        MonitoredMetrics({**fields, "f": "test/nmi"}).on_sanity_check_end(trainer, object())


@pytest.mark.parametrize(
    "task,params,refused",
    [
        (["trainer.max_epochs=1,2"], {}, "trainer.max_epochs"),
        (["+test=true,false"], {}, "test"),
        ([], {"trainer.max_epochs": "1,2"}, "trainer.max_epochs"),
        ([], {"ckpt_path": "choice(a.ckpt,b.ckpt)"}, "ckpt_path"),
        (["trainer.max_epochs=5", "model.lam=1,2"], {"test": "true", "model.K": "interval(5,20)"}, None),
    ],
)
def test_a_sweep_is_refused_only_where_a_key_the_folders_do_not_name_takes_several_values(task, params, refused):
    """Command-line sweeps and the sweeper's params (a sweep file's, Optuna's ranges); a fixed value of an
    excluded key (one max_epochs for every job) is fine."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from infocatvae.runs import OneFolderPerJob

    excluded = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "default.yaml").job.config.override_dirname.exclude_keys
    config = OmegaConf.create(
        {
            "hydra": {
                "job": {"config": {"override_dirname": {"exclude_keys": list(excluded)}}},
                "overrides": {"task": task},
                "sweeper": {"params": params},
            }
        }
    )
    if refused is None:
        OneFolderPerJob().on_multirun_start(config)
    else:
        with pytest.raises(SystemExit, match=f"^{refused} takes several values in this sweep"):
            OneFolderPerJob().on_multirun_start(config)
