"""Fixtures shared by the tests. Helpers (the data folder, configs, models, entry points): tests/helpers.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import DATA_DIR

# The loggers whose levels a test may change: Lightning's, which experiments.bench.main() sets to ERROR.
LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The real data folder. The one policy when it is missing: the tests that need it fail, naming it."""
    if not (Path(DATA_DIR) / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST not found under {DATA_DIR}: set INFOCATVAE_DATA_DIR to the folder holding MNIST/raw")
    return DATA_DIR


def deterministic_mode() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.fixture(autouse=True)
def process_state():
    """Each test gets the process-wide state the one before it found, whatever it ran in this process:
    ``train()`` sets torch's thread count, a Trainer with ``deterministic=true`` (trainer=cpu) torch's
    deterministic mode, cuDNN's flags and ``CUBLAS_WORKSPACE_CONFIG``, ``seed_everything`` ``PL_GLOBAL_SEED`` and
    ``PL_SEED_WORKERS``, ``hardware.tune_process`` ``PYTORCH_NVML_BASED_CUDA_CHECK``; the bench sets Lightning's
    log levels; the experiment scripts' tests put experiments/ on sys.path."""
    threads = torch.get_num_threads()
    deterministic = deterministic_mode()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    matmul = torch.get_float32_matmul_precision()
    environ = dict(os.environ)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    path = list(sys.path)
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if deterministic_mode() != deterministic:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
    if torch.get_float32_matmul_precision() != matmul:
        torch.set_float32_matmul_precision(matmul)
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    sys.path[:] = path
