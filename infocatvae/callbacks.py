"""Lightning callbacks: the finite-loss guard, the per-epoch seed, the checkpoint on interrupt, the epoch
snapshots, the check of the monitored metrics' names and the image grids in TensorBoard. Writing checkpoints
atomically: ``infocatvae.checkpoints``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from infocatvae import plots
from infocatvae.runs import last_ckpt

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Stops training when a loss term turns NaN or infinite, naming the step and the term.

    The check runs before Lightning's ModelCheckpoint (which Lightning always orders last), so
    ``last.ckpt`` keeps the last good state. To avoid a host synchronisation at every GPU step,
    the first bad step is recorded on the device and read every ``check_every_n_steps`` steps
    and before every validation and checkpoint.
    """

    def __init__(self, check_every_n_steps: int | None) -> None:
        self.requested = check_every_n_steps
        self.every = check_every_n_steps or 1
        self._terms: list[str] | None = None
        self._first: torch.Tensor | None = None  # [3]: first bad optimiser step, its batch, the term (-1: none)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, dict):
            return
        names = [k for k, v in outputs.items() if torch.is_tensor(v)]
        if not names:  # a training_step that returned no tensor (manual optimisation may return None)
            return
        single = getattr(trainer, "world_size", 1) == 1  # under DDP every check is collective: none skipped
        if (
            single
            and self.every == 1
            and all(outputs[k].device.type == "cpu" and outputs[k].numel() == 1 for k in names)
        ):
            # checked every step on the CPU, where reading a scalar costs a microsecond: a good step has
            # nothing to record (stacking the terms and testing them as a tensor took 0.15 ms a step here)
            if all(math.isfinite(outputs[k].item()) for k in names):
                return
        values = torch.stack([outputs[k].detach().float() for k in names])
        if self._first is None or self._terms != names:
            self._terms = names
            self._first = torch.full((3,), -1, dtype=torch.long, device=values.device)
        bad = ~torch.isfinite(values)
        is_new = bad.any() & (self._first[0] < 0)
        # torch.full launches a fill kernel; torch.tensor(..., device=cuda) would copy and synchronise.
        candidate = torch.stack(
            [
                torch.full((), trainer.global_step, dtype=torch.long, device=values.device),
                torch.full((), batch_idx, dtype=torch.long, device=values.device),
                bad.long().argmax(),
            ]
        )
        self._first = torch.where(is_new, candidate, self._first)
        if (batch_idx + 1) % self.every == 0:
            self.check(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        # null: every step on the CPU, where reading a value costs nothing; every 100 steps on an
        # accelerator, where it would stall the queue of kernels at each step.
        if self.requested is None:
            self.every = 1 if pl_module.device.type == "cpu" else 100

    def check(self, trainer) -> None:
        """Raises if a bad step was recorded. Under DDP the processes decide together (one all-reduce: every
        process checks at the same points), so that all of them stop: a process stopping alone would leave the
        others waiting in their next collective until the process group's timeout."""
        step, batch, term = self._first.tolist() if self._first is not None else (-1, -1, -1)
        bad_here = step >= 0
        bad = bad_here
        if getattr(trainer, "world_size", 1) > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad_here, all=False)
        if not bad:
            return
        ckpt = last_ckpt(trainer.default_root_dir)
        where = (
            f"loss term '{self._terms[term]}' became non-finite at epoch {trainer.current_epoch}, "
            f"batch {batch} (optimiser step {step})"
            if bad_here
            else f"a loss term became non-finite in another process by epoch {trainer.current_epoch}"
        )
        raise NonFiniteLossError(f"{where}; training stopped. The last good checkpoint, if any, is kept at {ckpt}.")

    def on_validation_start(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning calls this before any checkpoint file is written (step-based, epoch-end, on interrupt):
        # a state after a bad step raises here and is never written
        self.check(trainer)


class EpochSeed(L.Callback):
    """Reseeds torch's global RNG (dropout, reparameterisation noise) at the start of every
    training epoch from ``(seed, epoch)``.

    Lightning's checkpoints do not hold RNG states, so without this a run resumed from
    ``last.ckpt`` at an epoch boundary would draw other noise than the uninterrupted run.
    With it, each epoch's randomness depends only on the seed and the epoch number, and
    resuming gives the same weights as not stopping at all. The shuffling order already
    depends only on ``(shuffle_seed, epoch)`` (see ``data.py``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def _reseed(self, trainer, batches_done: int = 0) -> None:
        epoch_seed = (self.seed * 100_003 + trainer.current_epoch) % 2**63
        # different ranks of a DDP job draw different noise, as they would without reseeding
        torch.manual_seed((epoch_seed + 7919 * trainer.global_rank + 1_000_033 * batches_done) % 2**63)

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed in the middle of an epoch skips that epoch's on_train_epoch_start: the rest of the epoch
        # draws from (seed, epoch, batches done), per rank (correct, not the uninterrupted run's noise). At
        # any other start on_train_epoch_start follows and reseeds from (seed, epoch).
        self._reseed(trainer, trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reseed(trainer)


class InterruptCheckpoint(L.Callback):
    """Saves ``last.ckpt`` when the process is asked to stop: SIGTERM (a cluster's preemption)
    or SIGINT (Ctrl-C), or submitit's preemption/time-out signal (which exits through
    ``SystemExit`` after requeueing the job), into the run folder's ``last.ckpt``. Other errors
    (a NaN loss) save nothing, so ``last.ckpt`` keeps the last good state. Only while training runs
    (from ``on_train_start``, after Lightning restored a resumed run, to ``on_train_end``): a stop
    during the set-up (data, devices, the restore itself) would overwrite the run's ``last.ckpt``
    with freshly initialised weights."""

    def __init__(self, run_dir: str) -> None:
        self.path = last_ckpt(run_dir)
        self._training = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._training = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._training = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning >= 2.6 raises SIGTERMException itself once the batch during which SIGTERM came is
        # logged; older versions only at the epoch's end: stop before the next batch. Raising in
        # on_train_batch_end would skip the logging of a batch already trained (a gap in the curves).
        if trainer.received_sigterm:
            raise SIGTERMException()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException, SystemExit)):
            return
        name = type(exception).__name__
        if not self._training:
            log.warning("Interrupted (%s) before training started: %s left as it was", name, self.path)
            return
        # a full checkpoint (optimiser states too), said explicitly: Lightning >= 2.6 logs a line otherwise
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        except NonFiniteLossError as err:  # the guard refused a state after a bad step: keep the last good one
            log.warning("Interrupted (%s): %s not saved: %s", name, self.path, err)
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        log.warning("Interrupted (%s): saved %s at epoch %d, step %d", name, self.path, epoch, step)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` (``conf/callbacks/default.yaml``): Lightning's ModelCheckpoint, monitoring nothing, that also
    writes the run's final state when training ends after a step it did not save (with
    ``every_n_train_steps`` instead of every epoch):
    ModelCheckpoint itself writes nothing when training ends but a ``save_last`` copy, which it makes only
    beside a checkpoint of its own, and last.ckpt here is that checkpoint."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # (not yet saved at this step, not in a sanity check)
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class EpochSnapshots(Checkpoint):
    """Keeps ``epochNNNN.ckpt`` after every ``every_n_epochs``-th epoch (0: off), NNNN counting epochs
    from 1 as ``status.json`` does, so that a run can be evaluated at several points of its training
    (full checkpoints, with the optimiser states, as ``last.ckpt``).

    Lightning's ModelCheckpoint names files by its 0-based epoch index (``epoch=9`` after the 10th
    epoch); this one-method callback names them by epochs completed instead. A ``Checkpoint``, so that
    Lightning runs it with the ModelCheckpoints, last, and after the best checkpoint's callback
    (``checkpoints.order_checkpoint_callbacks``): written at the epoch's very end, whether or not validation
    ran in it, a snapshot holds what ``last.ckpt`` holds at that epoch and a run can go on from it alike.
    """

    def __init__(self, dirpath: str, every_n_epochs: int) -> None:
        self.dirpath, self.every = Path(dirpath), every_n_epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        if self.every and done % self.every == 0:
            trainer.save_checkpoint(self.dirpath / f"epoch{done:04d}.ckpt", weights_only=False)


class MonitoredMetrics(L.Callback):
    """Refuses a metric that the config asks for and the model does not log, once the sanity check's validation
    batches have logged the run's ``val/`` metrics and before the first training batch: ``fields`` maps each
    config field to its metric (``callbacks.model_checkpoint.monitor``: ``val/loss``). Lightning's own error
    for a checkpoint's ``monitor`` came at the first epoch's end, and that epoch was lost. A ``test/`` metric is
    checked by its ``val/`` name (the two stages log the same names); other names (``train/loss_epoch``,
    ``step``) are left to Lightning. With ``trainer.num_sanity_val_steps=0`` nothing is checked here."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        logged = set(trainer.callback_metrics)  # rank 0's: the clustering scores are logged there only
        # only the validation (and test) names are known here; a train/ name, step or epoch is Lightning's to check
        missing = [
            (field, metric)
            for field, metric in self.fields.items()
            if metric.startswith(("val/", "test/")) and "val/" + metric.split("/", 1)[1] not in logged
        ]
        missing = trainer.strategy.broadcast(missing, src=0)  # every process stops, or none
        if missing:
            field, metric = missing[0]
            raise ValueError(
                f"{field} must name a metric that {type(pl_module).__name__} logs, got {metric!r}; it logs "
                f"{sorted(k for k in logged if k.startswith('val/'))} (and the same under test/ with test=true)"
            )


class ImageLogger(L.Callback):
    """TensorBoard image grids on each validation epoch: reconstructions beside their inputs,
    class-conditional samples (one row per category) and the decoded centroids µ_c."""

    def __init__(self, every_n_epochs: int, n_images: int) -> None:
        self.every, self.n = every_n_epochs, n_images

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every or not trainer.is_global_zero:
            return
        writer = next(
            (lg.experiment for lg in trainer.loggers if isinstance(lg, L.pytorch.loggers.TensorBoardLogger)), None
        )
        if writer is None:
            return
        x, _ = next(iter(trainer.val_dataloaders))
        x = trainer.datamodule.scale(x[: self.n]).to(pl_module.device)
        # the x of Lightning's own scalars (global_step counts each of the AAE's three optimiser steps a batch)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        writer.add_image("images/reconstructions", plots.reconstruction_grid(pl_module, x), step)
        writer.add_image("images/samples", plots.samples_grid(pl_module, self.n), step)
        if pl_module.has_prior_means:
            writer.add_image("images/centroids", plots.centroids_grid(pl_module), step)
