"""The four models. Reading, checking and loading their checkpoints: ``infocatvae.checkpoints``."""

from __future__ import annotations

from infocatvae.models.aae import AAE
from infocatvae.models.base import MODEL_KEY, BaseModel, Encoding
from infocatvae.models.catvae import CatVAE, FreePriorCatVAE
from infocatvae.models.infocatvae import InfoCatVAE

__all__ = ["AAE", "BaseModel", "CatVAE", "Encoding", "FreePriorCatVAE", "InfoCatVAE", "MODEL_KEY"]
