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
# absolute, so that tests running from another folder find it too
DATA_DIR = str(Path(os.environ.get("INFOCATVAE_DATA_DIR") or REPO.parent / "shared" / "data").resolve())

# Tiny end-to-end runs on slices of the real data, in-process or as subprocesses of the entry points:
# conf/debug/tiny.yaml (one epoch of 3 training batches and 1 validation batch of 64 images on the
# CPU, no image grids, no progress bar).
TINY = ["debug=tiny"]
CLI_TINY = TINY

# debug=tiny turns the image grids off; the tests that check them turn them on again.
IMAGES = ["callbacks.images={_target_:infocatvae.callbacks.ImageLogger}"]


def cli_env() -> dict:
    return {**os.environ, "INFOCATVAE_DATA_DIR": DATA_DIR, "HYDRA_FULL_ERROR": "0"}


def run_entry(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the repository root, on the real data, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=cli_env(), timeout=timeout, cwd=REPO
    )


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
