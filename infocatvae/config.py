"""Hydra plumbing shared by the entry points: the config folder, the ``run_id`` resolver and the run
folder of a checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# The configs live at the repository's top level (conf/); the package is installed editable.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def run_id(override_dirname: str) -> str:
    """A job's folder name from its overrides (``model.lam=4,model=catvae``), ``default`` when none."""
    return override_dirname.replace("/", "_") or "default"


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The training run folder holding ``ckpt_path`` (``<run>/checkpoints/<file>`` with ``<run>/.hydra``)."""
    parent = Path(ckpt_path).resolve().parent
    if parent.name == "checkpoints" and (parent.parent / ".hydra").is_dir():
        return parent.parent
    return None


OmegaConf.register_new_resolver("run_id", run_id, replace=True)
