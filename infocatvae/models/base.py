"""What every model shares: networks from config, the optimiser, logging, clustering on validation.

Each model (pythae style) only states what differs: its heads, its latent code
and its loss terms in ``losses``. The public API, the same on every model:

- ``encode(x) -> Encoding(q_c [B, K], mu [B, K, d], logvar [B, K, d] or None)``
- ``decode(z) -> pixel values (B, 784) in [0, 1]``; ``decode_logits(z)`` before the sigmoid
- ``sample(c) -> images (B, 1, 28, 28)`` for category indices ``c``
- ``reconstruct(x) -> images (B, 1, 28, 28)``, ``embed(x) -> codes (B, d)``
- ``losses(x) -> dict`` of batch means, with at least ``loss`` and ``recon``
- what a model offers beyond that is stated, not probed: ``has_prior_means`` (a Gaussian-mixture
  prior with means ``prior_means``, drawn in Figures 3 and 4) and ``has_elbo`` (``elbo(x)``, eq. 14)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import hydra.utils
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from infocatvae import metrics

IMAGE_SHAPE = (1, 28, 28)
MODEL_KEY = "infocatvae_model"  # checkpoint entry naming the model class, for loading and resume checks


def plain(cfg: Any) -> Any:
    """A DictConfig as plain dicts and lists, so that checkpoints hold no OmegaConf objects
    (torch.load(weights_only=True) refuses them)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class Encoding(NamedTuple):
    """What ``encode`` returns: the inference network's distributions for a batch of B inputs."""

    q_c: torch.Tensor  # (B, K): q(c|x)
    mu: torch.Tensor  # (B, K, d): the mean of q(z|x, c) for each category
    logvar: torch.Tensor | None  # (B, K, d), or None for a deterministic code (the AAE)


def init_fields(cls: type) -> set[str] | None:
    """The hyperparameters a model class takes: the keyword arguments of its ``__init__`` and of the model
    classes' ``__init__`` it passes ``**kwargs`` on to (InfoCatVAE's to CatVAE's). None when they cannot be read
    from the signatures: ``**kwargs`` that reach a class other than this framework's models (a user's own class
    taking ``**hparams``)."""
    fields: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        if not issubclass(klass, BaseModel) or klass is BaseModel:
            return None  # the **kwargs chain left the model classes
        params = list(inspect.signature(klass.__dict__["__init__"]).parameters.values())[1:]  # not self
        fields |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return fields
    return None


class BaseModel(L.LightningModule):
    """Base of the four models: builds ``encoder`` and ``decoder`` from the ``net`` config, logs every
    loss term under ``train/`` and ``val/``, and the clustering accuracy and NMI of ``argmax q(c|x)``
    on each validation epoch. Its hyperparameters arrive checked (``infocatvae.validation``)."""

    has_prior_means = False  # a Gaussian-mixture prior p(z|c) with means ``prior_means`` (K, d)
    has_elbo = False  # ``elbo(x)``: the per-sample evidence lower bound
    loss_functions: tuple[str, ...] = ("losses",)  # what the training and evaluation steps call

    def __init__(self, net: Mapping, optimizer: Mapping, *, K: int, decoder_in: int, likelihood: str) -> None:
        super().__init__()
        net, optimizer = plain(net), plain(optimizer)
        self.K, self.likelihood, self.optimizer_cfg = K, likelihood, optimizer
        self.encoder = hydra.utils.instantiate(net["encoder"])
        self.decoder = hydra.utils.instantiate(net["decoder"], latent_dim=decoder_in)
        self._val_pred: list[torch.Tensor] = []
        self._val_true: list[torch.Tensor] = []
        # per stage: the term names, their batch-size-weighted sums on the device, the number of images
        self._term_sums: dict[str, tuple[list[str], torch.Tensor, int]] = {}

    # ---- the API each model fills in -------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Encoding:
        raise NotImplementedError

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's pixel logits (B, 784) for codes z (B, latent); extra leading axes are kept."""
        lead = z.shape[:-1]
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*lead, -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel values (B, 784) in [0, 1]: the sigmoid of ``decode_logits``."""
        return torch.sigmoid(self.decode_logits(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) decoded from the code of each input."""
        raise NotImplementedError

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample evidence lower bound (B,), where ``has_elbo``."""
        raise NotImplementedError(f"{type(self).__name__} has no ELBO")

    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The category of each input: argmax q(c|x)."""
        return self.encode(x).q_c.argmax(-1)

    def compile_losses(self, mode: str | None = None) -> None:
        """``torch.compile`` each of ``loss_functions`` (``compile=true``; ``mode`` as torch.compile's). Not the
        LightningModule: compiling that compiles ``training_step``, whose ``self.log`` calls break the graph and
        recompile once per metric name (up to dynamo's recompile limit). Instance attributes: the state_dict
        keys stay the same."""
        for name in self.loss_functions:
            setattr(self, name, torch.compile(getattr(self, name), mode=mode))

    # ---- Lightning -------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning writes the running hook's name to ``_current_fx_name`` before and after every hook it calls
        # (54 times per AAE batch); nn.Module.__setattr__ first checks the value against parameters, buffers and
        # submodules: 3.3 µs a write against 0.3 µs for a plain attribute (about 0.16 ms per AAE batch).
        # A hook's name is never one of those, so it is stored as a plain attribute.
        # (Not super(): experiments/bench.py's overhead record lends this method to a plain LightningModule.)
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            L.LightningModule.__setattr__(self, name, value)

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())

    def make_optimizer(self, params, cfg: Mapping | None = None) -> torch.optim.Optimizer:
        """An optimizer config (a ``_partial_`` target, Adam by default; ``optimizer`` when ``cfg`` is None)
        applied to ``params``."""
        return hydra.utils.instantiate(self.optimizer_cfg if cfg is None else cfg)(params)

    @property
    def _barebones(self) -> bool:
        """Whether Lightning's ``Trainer(barebones=True)`` runs this model: its mode for timing the Trainer, in
        which ``self.log`` raises."""
        return self._trainer is not None and self._trainer.barebones

    def log_terms(self, stage: str, terms: Mapping[str, torch.Tensor], batch_size: int) -> None:
        """``train/<term>_step`` on the trainer's logging steps and ``train/<term>_epoch`` at each epoch's end;
        ``val/<term>`` (``test/<term>``) at the end of each validation (test) epoch: batch-size-weighted means.

        Under Lightning's ``Trainer(barebones=True)``, made for timing the Trainer and forbidding ``self.log``,
        nothing is summed or logged (``experiments/bench.py``'s ``floor`` record).

        The terms are summed on the device and handed to ``self.log`` once per key and epoch (and on the
        training logging steps), not per batch as ``self.log(..., on_epoch=True)`` in every step would:
        each ``self.log`` call costs 0.25 ms of Python (timed alone; about 1 ms inside a training loop) in
        Lightning 2.6, which moves the stored metric to the value's device at every call (``_ResultMetric.to``
        walks its attributes): per training batch, longer than a GPU step of these models. One way for the
        three stages; nothing here reads a value back to the host.
        """
        if self._barebones:
            return
        values = torch.stack([v.detach().float() for v in terms.values()])
        keys, sums, count = self._term_sums.get(stage, (None, None, 0))
        if keys != list(terms):
            keys, sums, count = list(terms), torch.zeros_like(values), 0
        sums.add_(values, alpha=batch_size)
        self._term_sums[stage] = (keys, sums, count + batch_size)
        # The logger connector's own test for "this step is written" (every trainer.log_every_n_steps).
        if stage == "train" and getattr(self.trainer._logger_connector, "should_update_logs", True):
            # Not in the progress bar: Lightning converts progress-bar values to floats at every step
            # after they were logged once, which would read the device at every step.
            self.log_dict({f"train/{k}_step": v for k, v in zip(keys, values)}, on_step=True, on_epoch=False)

    def _log_term_means(self, stage: str, suffix: str = "") -> None:
        """Logs ``<stage>/<term><suffix>``: each term's mean over the epoch's images of every process."""
        keys, sums, count = self._term_sums.pop(stage, (None, None, 0))
        if not count:
            return
        # summed over processes first (weighted by the images each saw); after that the
        # values are the same on every process, so sync_dist's mean leaves them as they are
        totals = self.trainer.strategy.reduce(torch.cat([sums, sums.new_tensor([count])]), reduce_op="sum")
        means = dict(zip(keys, totals[:-1] / totals[-1]))
        loss = means.pop("loss", None)
        self.log_dict({f"{stage}/{k}{suffix}": v for k, v in means.items()}, on_epoch=True, sync_dist=True)
        if loss is not None:  # the run's headline number: in the progress bar after validation
            self.log(f"{stage}/loss{suffix}", loss, prog_bar=stage != "train", on_epoch=True, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self._term_sums.pop("train", None)  # what an epoch stopped before its end left

    def on_train_epoch_end(self) -> None:
        self._log_term_means("train", "_epoch")

    def on_validation_epoch_start(self) -> None:
        self._term_sums.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._term_sums.pop("test", None)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        terms = self.losses(x)
        self.log_terms("train", terms, len(x))
        return terms

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        """The 10K test images through the same terms and clustering scores as validation, under ``test/``."""
        self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch) -> None:
        x, y = batch
        terms = self.losses(x)
        self.log_terms(stage, terms, len(x))
        if self.K > 1:
            self._val_pred.append(self.cluster(x))
            self._val_true.append(y)

    def on_validation_epoch_end(self) -> None:
        self._log_term_means("val")
        self._log_clustering("val")

    def on_test_epoch_end(self) -> None:
        self._log_term_means("test")
        self._log_clustering("test")

    def _log_clustering(self, stage: str) -> None:
        """``<stage>/cluster_acc``, ``<stage>/nmi``, ``<stage>/ari`` and ``<stage>/usage_perplexity`` of argmax
        q(c|x) over the whole epoch."""
        if not self._val_pred:
            return
        pred = self.all_gather(torch.cat(self._val_pred)).flatten().cpu().numpy()
        true = self.all_gather(torch.cat(self._val_true)).flatten().cpu().numpy()
        self._val_pred.clear()
        self._val_true.clear()
        if self._barebones:
            return
        scores = metrics.clustering_scores(true, pred, K=self.K)
        # rank_zero_only: the values are already gathered from every process.
        self.log(f"{stage}/cluster_acc", float(scores["cluster_acc"]), rank_zero_only=True)
        self.log(f"{stage}/nmi", float(scores["nmi"]), rank_zero_only=True)
        self.log(f"{stage}/ari", float(scores["ari"]), rank_zero_only=True)
        self.log(f"{stage}/usage_perplexity", float(scores["usage_perplexity"]), rank_zero_only=True)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's ``load_from_checkpoint``; with no argument but the file (and ``map_location``), also a checkpoint
        written before a field of the model existed: ``checkpoints.load_model``, which completes such a field from
        the shipped config (the classes take no defaults), checked to hold a ``cls``. Returned in eval mode, on
        either path (a ``map_location`` other than a device, a dict or a function, takes Lightning's)."""
        if (
            hparams_file is not None
            or strict is not None
            or kwargs
            or not isinstance(map_location, (str, torch.device, type(None)))
        ):
            model = super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, **kwargs)
            return model.eval()
        from infocatvae.checkpoints import load_model  # (checkpoints imports this module)

        model = load_model(checkpoint_path, map_location or "cpu")
        if not isinstance(model, cls):
            raise TypeError(f"{checkpoint_path} holds a model of class {type(model).__name__}, not {cls.__name__}")
        return model

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[MODEL_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
