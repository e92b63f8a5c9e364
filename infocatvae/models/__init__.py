"""The four models and loading any of them from a checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import torch

from infocatvae.models.aae import AAE
from infocatvae.models.base import MODEL_KEY, BaseModel
from infocatvae.models.catvae import CatVAE, FreePriorCatVAE
from infocatvae.models.infocatvae import InfoCatVAE

__all__ = [
    "AAE",
    "BaseModel",
    "CatVAE",
    "FreePriorCatVAE",
    "InfoCatVAE",
    "CheckpointError",
    "read_checkpoint",
    "load_model",
    "check_compatible",
]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that does not exist, cannot be read, or holds another model."""


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


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> BaseModel:
    """Any of the four models from its checkpoint, in eval mode."""
    ckpt = read_checkpoint(path)
    cls = hydra.utils.get_class(ckpt[MODEL_KEY])
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()


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
    """
    stored, configured = _flat(ckpt.get("hyper_parameters", {})), _flat(dict(model.hparams))
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
