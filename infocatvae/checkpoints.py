"""A checkpoint: read and check it (model class, corruption, truncation, shapes against the configured
model), rebuild from it any of the four models and the data module that trained it, write it atomically
(after the best checkpoint's record is updated), and choose the one a job resumes. What a run folder holds
(status, lock, where last.ckpt is) lives in ``infocatvae.runs``."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from infocatvae.config import model_defaults
from infocatvae.data import MNISTDataModule
from infocatvae.models.base import MODEL_KEY, BaseModel, init_fields
from infocatvae.runs import is_own, last_ckpt

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that does not exist, cannot be read, or holds another model."""


def batches_trained(ckpt: dict) -> int:
    """The training batches a checkpoint holds (Lightning's ``_batches_that_stepped``), the count at which Lightning
    logs the next batch's scalars; not ``global_step``, which counts each of the AAE's three optimiser steps. A
    checkpoint without loops (written by hand): its ``global_step``."""
    loop = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", ckpt.get("global_step", 0)))


def logger_step(ckpt: dict) -> int:
    """A checkpoint's place on its training curves: the x of its last trained batch (Lightning logs a batch's
    scalars at the count of those before it, and the epoch-end and validation values at the epoch's last)."""
    return max(batches_trained(ckpt) - 1, 0)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path`` (on the CPU), or a CheckpointError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, unpickling refused
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(ckpt, dict) or MODEL_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} was not written by infocatvae (no {MODEL_KEY!r} entry)")
    return ckpt


def _deep_merge(base: Mapping, top: Mapping) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def model_from(ckpt: dict, path: str | Path) -> BaseModel:
    """The model a checkpoint dict (``read_checkpoint``) holds, with its weights, in eval mode, on the CPU.

    Built from the hyperparameters stored in it. A checkpoint written before a field existed (or after
    one was removed) still loads: missing fields take the shipped config's defaults (conf/model, conf/net)
    and fields the class no longer takes are dropped, both logged."""
    cls = hydra.utils.get_class(ckpt[MODEL_KEY])
    stored = ckpt.get("hyper_parameters", {})
    fields = init_fields(cls)
    fields = set(stored) if fields is None else fields  # a class whose signatures do not tell: all it stored
    hparams = {k: v for k, v in stored.items() if k in fields}
    if dropped := sorted(set(stored) - fields):
        log.info("%s: ignoring stored fields that %s no longer takes: %s", path, cls.__name__, dropped)
    try:
        model = cls(**hparams)
    except TypeError:  # a field added after the checkpoint was written: complete it from the shipped config
        completed = _completed(hparams, cls)
        added = sorted(set(_flat(completed)) - set(_flat(hparams)))
        if not added:  # no shipped option builds this class, or nothing was missing
            raise
        log.info("%s: fields missing from the checkpoint, set to the shipped defaults: %s", path, added)
        model = cls(**completed)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        msg = f"checkpoint {path} does not fit the {cls.__name__} its hyperparameters describe: {err}"
        raise CheckpointError(msg) from err
    return model.eval()


def datamodule_from(ckpt: dict, data_dir: str, fallback: Mapping) -> tuple[MNISTDataModule, str]:
    """The data module that trained the checkpoint, rebuilt from the hyperparameters Lightning stored in it
    (data set, view, validation split), reading ``data_dir``, in host memory; fields it lacks are taken from
    ``fallback`` (a ``data`` config). Returns the module and where its settings came from: ``checkpoint``,
    or ``config`` when the checkpoint stores none (a model trained without a data module)."""
    stored = ckpt.get("datamodule_hyper_parameters") or {}
    accepted = set(inspect.signature(MNISTDataModule.__init__).parameters) - {"self"}
    settings = {k: v for k, v in {**fallback, **stored}.items() if k in accepted}
    settings.update(data_dir=data_dir, on_device=False, download=False)
    return MNISTDataModule(**settings), "checkpoint" if stored else "config"


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> BaseModel:
    """Any of the four models from its checkpoint file, in eval mode (``model_from`` of ``read_checkpoint``)."""
    return model_from(read_checkpoint(path), path).to(map_location)


def _completed(hparams: Mapping, cls: type) -> dict:
    """A checkpoint's hyperparameters with the fields added since it was written set to the shipped defaults
    (which keep the behaviour from before each field existed), as ``model_from`` builds it."""
    encoder = (hparams.get("net") or {}).get("encoder", {}).get("_target_")
    defaults = model_defaults(cls, encoder) or {}
    fields = init_fields(cls) or set()
    return _deep_merge({k: v for k, v in defaults.items() if k in fields}, hparams)


def _flat(node: Any, prefix: str = "model") -> dict[str, Any]:
    """Nested hyperparameters as ``{"model.net.decoder.hidden": 400, ...}``."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


def check_compatible(ckpt: dict, model: BaseModel, path: str | Path) -> list[str]:
    """Compares a checkpoint with the configured ``model`` before anything is trained or written.

    A difference that changes a parameter's shape or the set of parameters (K, δ, widths, the net)
    raises a CheckpointError naming each differing hyperparameter with both values; other differences
    (λ, the betas, the learning rate) are allowed, logged, and returned as ``field: old -> new`` lines.
    A field added after the checkpoint was written counts as holding its shipped default there.
    """
    stored, configured = _flat(_completed(ckpt.get("hyper_parameters", {}), type(model))), _flat(dict(model.hparams))
    changed = [
        f"{k}: {stored.get(k, '<unset>')!r} in the checkpoint, {configured.get(k, '<unset>')!r} configured"
        for k in sorted(set(stored) | set(configured))
        if stored.get(k) != configured.get(k)
    ]
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    structural = sorted(k for k in set(own) | set(saved) if own.get(k) != saved.get(k))
    if structural:
        shapes = "; ".join(f"{k}: {saved.get(k, 'absent')} vs {own.get(k, 'absent')}" for k in structural[:4])
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured model: "
            + ("; ".join(changed) if changed else "no hyperparameter differs, but the parameters do")
            + f" (parameter shapes, checkpoint vs configured: {shapes}{' ...' if len(structural) > 4 else ''}). "
            "Set these fields to the checkpoint's values, or start a new run without ckpt_path"
        )
    for line in changed:
        log.info("Resuming with a changed hyperparameter: %s", line)
    return changed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it over the target.

    Lightning's own writer opens the target directly, so a kill mid-write leaves a truncated
    ``last.ckpt``; a rename is atomic on POSIX file systems, so a reader sees the old file or
    the new one, never half of one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.remove_stale(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def remove_stale(path: Path, min_age_s: float = 60.0) -> None:
        """Deletes temporary files of ``path`` left by a writer killed mid-write (SIGKILL, preemption):
        those whose process is gone from this machine and that are at least ``min_age_s`` old."""
        for tmp in path.parent.glob(f".{path.name}.tmp*"):
            pid = tmp.name.rpartition(".tmp")[2]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
                continue  # a live process of that id: maybe a writer, leave it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, owned by someone else
            try:
                if time.time() - tmp.stat().st_mtime >= min_age_s:
                    tmp.unlink()
                    log.info("removed %s, left by a writer that was killed mid-write", tmp)
            except FileNotFoundError:
                pass


def order_checkpoint_callbacks(callbacks: list[L.Callback]) -> list[L.Callback]:
    """The callbacks with every checkpoint writer that monitors nothing (``last.ckpt``, the epoch snapshots)
    after the ModelCheckpoints that monitor a metric (``best-*.ckpt``); the others keep their order.

    Lightning runs the checkpoint callbacks last, in the order given, and all of them save at the same
    epoch end. A ``last.ckpt`` written before the best checkpoint's callback has updated holds that
    callback's state of the epoch before: a run resumed from it would not know the newest ``best-*.ckpt``
    (which then stays on disk beside the next best) and would compare the next epochs with an older best.
    """
    return sorted(callbacks, key=lambda cb: isinstance(cb, Checkpoint) and getattr(cb, "monitor", None) is None)


STARTED_FROM = "started_from"  # status.json: the checkpoint of another run this run started from (None: scratch)


def starting_point(ckpt_path: str | None, run_dir: Path) -> str | None:
    """What a run starting now starts from, as ``status.json`` keeps it: another run's checkpoint (its absolute
    path), or None (from scratch, or from a file of its own folder)."""
    if not ckpt_path or is_own(ckpt_path, run_dir):
        return None
    return str(Path(ckpt_path).resolve())


def check_starting_point(ckpt_path: str | None, run_dir: Path, status: Mapping[str, Any]) -> None:
    """Refuses a ``ckpt_path`` of another run when ``run_dir`` already holds a run that started elsewhere: that
    folder's ``last.ckpt`` would be resumed (or its finished job skipped) and ``ckpt_path`` ignored. Running the
    same command again (the same ``ckpt_path``) resumes as usual; so does a run recorded before
    ``started_from`` existed, as it did then."""
    if not ckpt_path or is_own(ckpt_path, run_dir) or not last_ckpt(run_dir).exists() or STARTED_FROM not in status:
        return
    recorded, wanted = status[STARTED_FROM], starting_point(ckpt_path, run_dir)
    if recorded != wanted:
        raise CheckpointError(
            f"{run_dir} already holds a run started from {recorded or 'scratch'}: it would resume that run and "
            f"ignore ckpt_path={ckpt_path}. Start from that checkpoint in another folder (hydra.run.dir=<folder>, "
            f"or other overrides), or remove {run_dir}"
        )


def resolve_checkpoint(cfg: DictConfig, run_dir: Path, model: L.LightningModule) -> tuple[str | None, int]:
    """The checkpoint to resume from, checked against the configured model before anything is written, and the
    training batches it holds (``batches_trained``; 0 for a fresh start), read in the same pass.

    - no ``ckpt_path``: this run's own ``last.ckpt`` when it has one, else none (a fresh start);
    - ``ckpt_path`` in this run's ``checkpoints/``: that file;
    - ``ckpt_path`` elsewhere (another run): the starting point of this run, which trains and writes
      in its own folder and only reads the other; once this run has its own ``last.ckpt``, running
      the same command again resumes that instead.

    A checkpoint of another model class, or whose parameters do not fit the configured model
    (K, δ, widths, the net), is refused with a message naming the fields; other hyperparameter
    changes (λ, β, lr) are logged and allowed.
    """
    explicit, own_last = cfg.get("ckpt_path"), last_ckpt(run_dir)
    if explicit and not is_own(explicit, run_dir) and own_last.exists():
        log.info("%s already has %s: resuming it (ckpt_path=%s was its starting point)", run_dir, own_last, explicit)
        explicit = None
    path = Path(explicit) if explicit else own_last
    if not explicit and not path.exists():
        return None, 0
    ckpt = read_checkpoint(path)  # CheckpointError names the file
    if hydra.utils.get_class(ckpt[MODEL_KEY]) is not type(model):
        raise CheckpointError(
            f"checkpoint {path} holds a {ckpt[MODEL_KEY]} but model._target_ is "
            f"{cfg.model._target_}; choose the matching model=... or another checkpoint"
        )
    check_compatible(ckpt, model, path)
    log.info("Resuming from %s (epoch %s, step %s)", path, ckpt.get("epoch"), ckpt.get("global_step"))
    return str(path), batches_trained(ckpt)
