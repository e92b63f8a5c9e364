"""Hydra plumbing shared by the entry points: the config folder, the ``run_id`` resolver and the run
folder of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _config_dir() -> str:
    """The top-level ``conf/`` of a clone (an editable install: the configs users read and edit), else
    the copy a wheel ships inside the package (``infocatvae/conf``, see pyproject.toml)."""
    clone = Path(__file__).resolve().parents[1] / "conf"
    if (clone / "train.yaml").is_file():
        return str(clone)
    return str(Path(__file__).resolve().parent / "conf")


CONFIG_DIR = _config_dir()


def run_id(override_dirname: str) -> str:
    """A job's folder name from its overrides (``model.lam=4,model=catvae``), ``default`` when none."""
    return override_dirname.replace("/", "_") or "default"


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The training run folder holding ``ckpt_path`` (``<run>/checkpoints/<file>`` with ``<run>/.hydra``)."""
    parent = Path(ckpt_path).resolve().parent
    if parent.name == "checkpoints" and (parent.parent / ".hydra").is_dir():
        return parent.parent
    return None


def instantiate_all(group: Any) -> list[Any]:
    """The objects of a config group of named entries (``callbacks``, ``logger``); an entry set to
    null is turned off (``callbacks: {images: null}`` in a config file, where no key can be deleted)."""
    import hydra.utils

    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None]


OmegaConf.register_new_resolver("run_id", run_id, replace=True)
