"""Hydra plumbing shared by the entry points: the config folder and the ``run_id`` resolver."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# The configs live at the repository's top level (conf/); the package is installed editable.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def run_id(override_dirname: str) -> str:
    """A job's folder name from its overrides (``model.lam=4,model=catvae``), ``default`` when none."""
    return override_dirname.replace("/", "_") or "default"


OmegaConf.register_new_resolver("run_id", run_id, replace=True)
