"""The four models and loading any of them from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import torch

from infocatvae.models.aae import AAE
from infocatvae.models.base import MODEL_KEY, BaseModel
from infocatvae.models.catvae import CatVAE, FreePriorCatVAE
from infocatvae.models.infocatvae import InfoCatVAE

__all__ = ["AAE", "BaseModel", "CatVAE", "FreePriorCatVAE", "InfoCatVAE", "CheckpointError", "read_checkpoint",
           "load_model"]


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
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(ckpt, dict) or MODEL_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} was not written by infocatvae (no {MODEL_KEY!r} entry)")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> BaseModel:
    """Any of the four models from its checkpoint, in eval mode."""
    ckpt = read_checkpoint(path)
    cls = hydra.utils.get_class(ckpt[MODEL_KEY])
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()
