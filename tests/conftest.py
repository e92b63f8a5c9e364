"""Fixtures shared by the tests. Helpers (the data folder, configs, models, entry points): tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import DATA_DIR


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The real data folder. The one policy when it is missing: the tests that need it fail, naming it."""
    if not (Path(DATA_DIR) / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST not found under {DATA_DIR}: set INFOCATVAE_DATA_DIR to the folder holding MNIST/raw")
    return DATA_DIR
