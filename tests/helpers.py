"""What the tests share: the real data folder, the list of models, configs composed with Hydra's compose
API, objects built from them, and the entry points run as subprocesses. Fixtures live in conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from infocatvae.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
# absolute, so that tests running from another folder find it too; the ``data_dir`` fixture checks it is there
DATA_DIR = str(Path(os.environ.get("INFOCATVAE_DATA_DIR") or REPO.parent / "shared" / "data").resolve())

# The four models, as their conf/model/ options.
MODELS = ("catvae", "infocatvae", "catvae_free", "aae")

# Tiny end-to-end runs on slices of the real data, in-process or as subprocesses of the entry points:
# conf/debug/tiny.yaml (one epoch of 3 training batches of 64 images and 1 validation batch of 256 on the
# CPU, no image grids, no progress bar).
TINY = ["debug=tiny"]

# debug=tiny turns the image grids off; the tests that check them turn them on again.
IMAGES = ["callbacks.images={_target_:infocatvae.callbacks.ImageLogger,every_n_epochs:1,n_images:8}"]


def make_cfg(overrides: list[str], output_dir: str | Path, data_dir: str = DATA_DIR, name: str = "train") -> DictConfig:
    """The ``name`` config (train or eval) for ``overrides``, writing into ``output_dir``, reading the real data."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.data_dir={data_dir}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def make_model(overrides: str | list[str], tmp_path: str | Path = "unused"):
    """The model of the train config with ``overrides`` ("model=aae model.K=10" or a list), in training mode."""
    overrides = overrides.split() if isinstance(overrides, str) else overrides
    return hydra.utils.instantiate(make_cfg(overrides, tmp_path).model)


def make_datamodule(*overrides: str):
    """The data module of the train config with ``overrides`` ("data=seq_mnist", "data.batch_size=64"), real data."""
    return hydra.utils.instantiate(make_cfg(list(overrides), "unused").data)


def cli_env() -> dict:
    return {**os.environ, "INFOCATVAE_DATA_DIR": DATA_DIR, "HYDRA_FULL_ERROR": "0"}


def run_entry(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the repository root, on the real data, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=cli_env(), timeout=timeout, cwd=REPO
    )


def skip_without_cpp_compiler() -> None:
    """Skips the calling test where ``torch.compile`` cannot build CPU kernels: inductor compiles them with a C++
    compiler at run time."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as err:
        pytest.skip(f"torch.compile cannot build CPU kernels here (no C++ compiler): {err}")
