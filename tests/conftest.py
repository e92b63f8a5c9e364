"""Shared test helpers: the real data folder and configs composed with Hydra's compose API."""

from __future__ import annotations

import os
import subprocess
import sys
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


# Tiny limits for the entry points run as subprocesses (no progress bar, no image grids).
CLI_TINY = ["trainer=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
            "callbacks.progress_bar.refresh_rate=0", "~callbacks.images", "data.batch_size=64",
            "data.eval_batch_size=256"]


def cli_env() -> dict:
    return {**os.environ, "INFOCATVAE_DATA_DIR": DATA_DIR, "HYDRA_FULL_ERROR": "0"}


def run_entry(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the repository root, on the real data, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=REPO)


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
