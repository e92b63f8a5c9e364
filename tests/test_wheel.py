"""A non-editable install carries its configs: the wheel holds conf/ as infocatvae/conf, and the
installed entry point composes and trains from another folder, with a user's own config folder on
Hydra's search path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import DATA_DIR, REPO


@pytest.mark.slow
def test_wheel_ships_the_configs_and_trains_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build_existed = (REPO / "build").exists()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    if not build_existed:  # setuptools' build folder, left in the clone by pip wheel
        shutil.rmtree(REPO / "build", ignore_errors=True)
    (wheel,) = wheels.glob("infocatvae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "infocatvae/conf/train.yaml" in names and "infocatvae/conf/model/infocatvae.yaml" in names
    assert not any(n.startswith("infocatvae/conf/local/") for n in names)
    assert "hydra_plugins/infocatvae_launcher/launchers.py" in names  # hydra/launcher=local

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # torch, Lightning, Hydra... from this environment's site-packages (appended after the new venv's own,
    # whose .pth files, this project's editable install among them, are not processed)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "my_conf" / "model").mkdir(parents=True)
    (elsewhere / "my_conf" / "model" / "my_catvae.yaml").write_text("defaults:\n  - catvae\n  - _self_\n\nK: 7\n")
    where = subprocess.run(
        [py, "-c", "import infocatvae.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert where[0].startswith(site) and where[1] == str(Path(site) / "infocatvae" / "conf")

    train = venv / "bin" / "infocatvae-train"
    res = subprocess.run(
        [train, "--cfg", "job", f"hydra.searchpath=[file://{elsewhere / 'my_conf'}]", "model=my_catvae"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "_target_: infocatvae.models.CatVAE" in res.stdout and "K: 7" in res.stdout

    run = elsewhere / "run"
    res = subprocess.run(
        [train, "debug=tiny", f"paths.data_dir={DATA_DIR}", f"hydra.run.dir={run}"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file() and '"completed"' in (run / "status.json").read_text()
