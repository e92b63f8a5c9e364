"""What each config field may hold, written once, and the one check that applies it.

The entry points call ``check(cfg)`` on the composed config before they build anything from it
(``train``: before the data, the model, the callbacks and the trainer; ``evaluate``: before the
checkpoint is read). A bad value stops the job with a ValueError that names the field, what is
allowed and what was given (``model.K must be an integer >= 1, got 0``). The classes built from a
checked config (models, networks, the data module, callbacks, the reader) do not check their
arguments again, and the maths modules raise no config messages. (The density estimator of
``infocatvae.kde`` checks its inputs as any numerical function does: the data's shape and finiteness,
a bandwidth grid of positive numbers, a fold count within the data; its messages name the argument.)

A rule applies where its field exists: ``model.delta`` in the CatVAE family, ``model.d`` in the AAE,
``reader.*`` in the evaluation config. Hydra refuses unknown fields and group options on the command line;
a field that a config file (an experiment for another model, a typo in one's own file) gives a model that
does not take it is refused here (``model.lam is not a field of model=aae``), as is an optimizer entry that
cannot build an optimizer. ``check_built`` adds the checks that need the built model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf

from infocatvae.data import DATASETS
from infocatvae.losses import LIKELIHOODS
from infocatvae.models.base import init_fields
from infocatvae.models.catvae import RECON_MODES
from infocatvae.models.infocatvae import INFO_LOSSES
from infocatvae.nets import GRUDecoder
from infocatvae.priors import MixturePrior

_ABSENT = object()
# Lightning's names and its aliases (trainer.precision=32 arrives as an int); 16-mixed is CUDA's float16 (Lightning
# runs bf16-mixed in its place on a CPU). Not 64-true, bf16-true or 16-true: they cast the weights, not the inputs
# (no autocast; the networks' CPU dropout returns float32), and the first matrix product failed on mixed dtypes
PRECISIONS = ("32-true", "32", 32, "bf16-mixed", "bf16", "16-mixed", "16", 16, None)
# the optimizer entries of the models: a _partial_ target applied to the parameters (BaseModel.make_optimizer)
OPTIMIZERS = ("model.optimizer", "model.gen_optimizer", "model.disc_optimizer")


@dataclass(frozen=True)
class Rule:
    allowed: str  # said in the message: "an integer >= 1", "one of ['ce', 'ce_on_probs']"
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool): inf passed every bound and trained until the loss guard stopped it."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int, high: int | None = None, nullable: bool = False) -> Rule:
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    return Rule(
        f"{'null or ' if nullable else ''}an integer {bounds}",
        lambda v: (nullable and v is None) or (_is_int(v) and v >= low and (high is None or v <= high)),
    )


def number(low: float, above: bool = False) -> Rule:
    """A number >= low (> low when ``above``)."""
    return Rule(
        f"a finite number {'>' if above else '>='} {low}",
        lambda v: _is_number(v) and (v > low if above else v >= low),
    )


def positive_numbers() -> Rule:
    return Rule(
        "a non-empty list of numbers > 0",
        lambda v: isinstance(v, list) and bool(v) and all(_is_number(x) and x > 0 for x in v),
    )


def batches(low: int) -> Rule:
    """Lightning's way to count batches: an integer (that many) or a float in [0, 1] (that fraction); null:
    Lightning's default. Lightning checks the range when the Trainer is built, but not the type."""
    fraction = "[0, 1]" if low == 0 else "(0, 1]"
    return Rule(
        f"null, an integer >= {low} (batches) or a number in {fraction} (a fraction)",
        lambda v: (
            v is None
            or (_is_int(v) and v >= low)
            or (isinstance(v, float) and (0 <= v <= 1 if low == 0 else 0 < v <= 1))
        ),
    )


def probability() -> Rule:
    return Rule("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1)


def boolean(nullable: bool = False) -> Rule:
    # a YAML or command-line true/false; "yes", 1 or "maybe" would be read as true by an ``if`` downstream
    return Rule(
        f"{'null, ' if nullable else ''}true or false", lambda v: (nullable and v is None) or isinstance(v, bool)
    )


def one_of(values: Iterable[Any], nullable: bool = False) -> Rule:
    values = list(values)
    return Rule(f"{'null or ' if nullable else ''}one of {values}", lambda v: (nullable and v is None) or v in values)


RULES: dict[str, Rule] = {
    # conf/model/*.yaml
    "model.K": integer(1),
    "model.delta": integer(1),
    "model.lam": number(0),
    "model.beta_cat": number(0),
    "model.beta_cont": number(0),
    "model.beta_info": number(0),
    "model.beta_marginal": number(0),
    "model.kl_warmup_epochs": integer(0),
    "model.kl_warmup_steps": integer(0),
    "model.recon": one_of(RECON_MODES),
    "model.likelihood": one_of(LIKELIHOODS),
    "model.prior_init": one_of(MixturePrior.INITS),
    "model.info_loss": one_of(INFO_LOSSES),
    "model.info_per_category": integer(1, nullable=True),
    "model.info_trains_decoder": boolean(),
    "model.d": integer(1),
    "model.disc_hidden": integer(1),
    "model.disc_layers": integer(0),
    "model.disc_noise": number(0),
    "model.learn_prior_logvar": boolean(),
    "model.optimizer.lr": number(0, above=True),
    "model.optimizer.fused": boolean(nullable=True),  # null: torch chooses
    "model.gen_optimizer.lr": number(0, above=True),
    "model.disc_optimizer.lr": number(0, above=True),
    # conf/net/*.yaml
    "model.net.encoder.hidden": integer(1),
    "model.net.encoder.dropout": probability(),
    "model.net.encoder.layers": integer(1),
    "model.net.decoder.hidden": integer(1),
    "model.net.decoder.dropout": probability(),
    "model.net.decoder.output_dropout": probability(),
    "model.net.decoder.layers": integer(1),
    "model.net.decoder.style": one_of(GRUDecoder.STYLES),
    # conf/data/*.yaml
    "data.name": one_of(DATASETS),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.val_size": integer(1, 59999),  # held out of the 60K training images
    "data.split_seed": integer(0),
    "data.shuffle_seed": integer(0),
    "data.sequential": boolean(),
    "data.on_device": boolean(),
    "data.download": boolean(),
    # conf/train.yaml, conf/callbacks/default.yaml
    "seed": integer(0, 2**32 - 1),  # seed_everything's range (numpy's)
    "test": boolean(),
    "compile": boolean(),
    "threads": integer(1, nullable=True),
    "callbacks.snapshots.every_n_epochs": integer(0),
    "callbacks.finite_loss.check_every_n_steps": integer(1, nullable=True),
    "callbacks.images.every_n_epochs": integer(1),
    "callbacks.images.n_images": integer(1),
    # conf/trainer/*.yaml: Lightning checks most of its own arguments when the Trainer is built, not this one's
    # type (max_epochs=abc trained until the first epoch's end); -1: no limit, null: Lightning's default
    "trainer.max_epochs": integer(-1, nullable=True),
    "trainer.precision": one_of(PRECISIONS),
    # limit_val_batches=abc failed inside Lightning with "'<=' not supported between 'int' and 'str'"
    "trainer.limit_train_batches": batches(0),
    "trainer.limit_val_batches": batches(0),
    "trainer.limit_test_batches": batches(0),
    "trainer.val_check_interval": batches(1),
    # Lightning skips clipping for any value <= 0, so a negative one would train unclipped without a word
    "trainer.gradient_clip_val": Rule("null or a number >= 0 (0: no clipping)", lambda v: v is None or number(0).ok(v)),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.log_every_n_steps": integer(0),  # 0: no step-level logging (Lightning's reading)
    "trainer.check_val_every_n_epoch": integer(1, nullable=True),
    # conf/eval.yaml
    "device": Rule("auto, cpu, cuda or cuda:<index>", lambda v: v in ("auto", "cpu", "cuda") or _cuda_index(v)),
    "infer_data": boolean(),
    "batch_size": integer(1),
    "n_test": integer(1, nullable=True),
    "n_generated": integer(1),
    "info.enabled": boolean(),
    "info.n_samples": integer(1),
    "kde.enabled": boolean(),
    "parzen.enabled": boolean(),
    "reader.enabled": boolean(),
    "figures.enabled": boolean(),
    "kde.bandwidths": positive_numbers(),
    "kde.fit_size": integer(2, nullable=True),
    "kde.folds": integer(2),
    "kde.chunk_size": integer(1),
    "parzen.bandwidths": positive_numbers(),
    "parzen.bandwidth_split": one_of(("val", "train")),
    "parzen.n_valid": integer(1, nullable=True),
    "parzen.chunk_size": integer(1),
    "reader.n_per_category": integer(1),
    "reader.epochs": integer(1),
    "reader.batch_size": integer(1),
    "reader.lr": number(0, above=True),
    "reader.width": integer(1),
    "reader.hidden": integer(1),
    "reader.seed": integer(0),
    "reader.train_size": integer(1, nullable=True),
    "reader.device": one_of(("auto", "cpu", "cuda"), nullable=True),
    "figures.per_category": integer(1),
    "figures.n_recon": integer(1),
    "figures.pca_points": integer(2),
}


def _cuda_index(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()


def _value(cfg: DictConfig, field: str) -> Any:
    """The field's value, ``_ABSENT`` where the config has no such field; a ``???`` value is refused."""
    parent, _, key = field.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig) or key not in node.keys():
        return _ABSENT
    if OmegaConf.is_missing(node, key):
        raise ValueError(f"{field} must be set (it is ???)")
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check(cfg: DictConfig) -> None:
    """Raise a ValueError naming the first field of ``cfg`` that breaks its rule (see ``RULES``)."""
    for field, rule in RULES.items():
        value = _value(cfg, field)
        if value is not _ABSENT and not rule.ok(value):
            raise ValueError(f"{field} must be {rule.allowed}, got {value!r}")
    _check_model_fields(cfg)
    for field in OPTIMIZERS:
        if (entry := _value(cfg, field)) not in (_ABSENT, None):
            _check_optimizer(field, entry)
    epochs, steps = _value(cfg, "model.kl_warmup_epochs"), _value(cfg, "model.kl_warmup_steps")
    if _is_int(epochs) and _is_int(steps) and epochs > 0 and steps > 0:
        raise ValueError(
            f"model.kl_warmup_epochs and model.kl_warmup_steps cannot both be > 0, got {epochs} and {steps}: "
            f"warm up over epochs or over steps, and set the other to 0"
        )


def _check_model_fields(cfg: DictConfig) -> None:
    """``model.*`` against what the model class takes: a field of another model (an experiment config for the
    CatVAE family with model=aae) failed inside Hydra's instantiate with a TypeError that named no field."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or "_target_" not in model:
        return
    try:
        cls = hydra.utils.get_class(model._target_)
    except Exception as err:  # Hydra's own error names the target; ours names the field as well
        raise ValueError(f"model._target_ must name an importable model class, got {model._target_!r}") from err
    fields = init_fields(cls)
    if fields is None:  # a class whose fields its signatures do not tell: Hydra's instantiate will say
        return
    given = {k for k in model.keys() if not str(k).startswith("_")}
    if extra := sorted(given - fields):
        raise ValueError(
            f"model.{extra[0]} is not a field of {model._target_} (the model chosen by model=...); its fields: "
            f"{sorted(fields)}. An experiment config made for another model sets it, or a config file misspells it"
        )


def _check_optimizer(field: str, entry: Any) -> None:
    """An optimizer entry builds an optimizer: a ``_partial_`` ``_target_`` whose arguments the class takes (its
    first use was inside ``trainer.fit``, with messages that named no field)."""
    if not isinstance(entry, dict) or "_target_" not in entry or entry.get("_partial_") is not True:
        raise ValueError(
            f"{field} must be an optimizer entry with _target_ (e.g. torch.optim.Adam) and _partial_: true, "
            f"got {entry!r}"
        )
    try:
        hydra.utils.instantiate(entry)([torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:
        raise ValueError(f"{field} cannot build its optimizer ({entry['_target_']}): {err}") from err


def check_built(cfg: DictConfig, model: torch.nn.Module) -> None:
    """The checks that need the built model, still before the Trainer exists: Lightning's gradient clipping
    and accumulation apply to automatic optimisation only; with a model that optimises by hand (the AAE) the
    fit stopped at its start with Lightning's MisconfigurationException."""
    if getattr(model, "automatic_optimization", True):
        return
    clip, accumulate = _value(cfg, "trainer.gradient_clip_val"), _value(cfg, "trainer.accumulate_grad_batches")
    if clip not in (_ABSENT, None, 0, 0.0):
        raise ValueError(
            f"trainer.gradient_clip_val must be null or 0 for {type(model).__name__}, which optimises by hand "
            f"(three optimisers a batch), got {clip!r}"
        )
    if accumulate not in (_ABSENT, 1):
        raise ValueError(
            f"trainer.accumulate_grad_batches must be 1 for {type(model).__name__}, which optimises by hand, "
            f"got {accumulate!r}"
        )
