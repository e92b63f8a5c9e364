"""Shared test helpers: the real data folder and configs composed with Hydra's compose API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from infocatvae.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("INFOCATVAE_DATA_DIR") or str(REPO.parent / "shared" / "data")

# Tiny trainer limits for end-to-end runs on slices of the real data.
TINY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
        "trainer.accelerator=cpu", "data.eval_batch_size=200", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="session")
def data_dir() -> str:
    if not (Path(DATA_DIR) / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST not found under {DATA_DIR}; set INFOCATVAE_DATA_DIR")
    return DATA_DIR


def make_cfg(overrides: list[str], output_dir: str | Path, data_dir: str = DATA_DIR) -> DictConfig:
    """The train config for ``overrides``, writing into ``output_dir``, reading the real data."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg
