"""Every experiment config composes (Hydra compose API) into the paper's setting for its result."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from infocatvae.config import CONFIG_DIR

APPENDIX = {"K": 10, "delta": 2, "lam": 2.0, "beta_cat": 10.0, "beta_cont": 10.0}
EXPERIMENTS = {
    # name: (model target, K, dataset, sequential, encoder, likelihood, beta_info or None)
    "table1_aae": ("infocatvae.models.AAE", 1, "mnist", False, "MLPEncoder", "bernoulli", None),
    "table1_catvae": ("infocatvae.models.CatVAE", 10, "mnist", False, "MLPEncoder", "bernoulli", None),
    "table1_infocatvae": ("infocatvae.models.InfoCatVAE", 10, "mnist", False, "MLPEncoder", "bernoulli", 100.0),
    "fig34_infocatvae_fashion": (
        "infocatvae.models.InfoCatVAE",
        10,
        "fashion_mnist",
        False,
        "MLPEncoder",
        "bernoulli",
        100.0,
    ),
    "fig5_free_catvae": ("infocatvae.models.FreePriorCatVAE", 10, "mnist", True, "GRUEncoder", "gaussian", None),
    "fig5_catvae": ("infocatvae.models.CatVAE", 10, "mnist", True, "GRUEncoder", "gaussian", None),
    "fig5_infocatvae": ("infocatvae.models.InfoCatVAE", 10, "mnist", True, "GRUEncoder", "gaussian", 100.0),
}


def test_every_experiment_file_is_covered():
    files = {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    assert set(EXPERIMENTS) <= files


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_composes(name):
    target, K, dataset, sequential, encoder, likelihood, beta_info = EXPERIMENTS[name]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    m = cfg.model
    assert m._target_ == target and m.K == K and m.likelihood == likelihood
    assert m.net.encoder._target_ == f"infocatvae.nets.{encoder}"
    assert m.optimizer.lr == 1e-4  # appendices B and C
    assert cfg.data.name == dataset and cfg.data.sequential == sequential
    assert cfg.trainer.max_epochs == 600
    if target != "infocatvae.models.AAE":
        assert {k: m[k] for k in APPENDIX} == APPENDIX
        assert m.get("beta_info") == beta_info
    else:
        assert m.d == 20  # the decoder input of Table 2
    # the experiment is recorded in the job's override string, hence in its run folder name
    assert f"experiment={name}" in cfg.hydra.job.override_dirname
    # and the composed config builds its model
    import hydra.utils

    model = hydra.utils.instantiate(cfg.model)
    assert model.K == K


def test_experiment_scripts_use_existing_configs():
    import re

    files = {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    scripts = Path(CONFIG_DIR).parent / "experiments"
    for script in ("table1.py", "info_ce.py", "fig3.py", "fig4.py", "fig5.py"):
        named = set(re.findall(r'"((?:table1|fig\d+)_[a-z_]+)"', (scripts / script).read_text()))
        assert named and named <= files, (script, named - files)


def test_experiment_scripts_reuse_an_evaluation_only_when_it_matches(tmp_path, monkeypatch):
    """``common.evaluate`` reruns ``infocatvae.evaluate`` unless the stored evaluation has the same overrides
    and is newer than the checkpoint."""
    import json
    import os
    import subprocess
    import sys

    from omegaconf import OmegaConf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import common

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"weights")
    args = common.parser("").parse_args(["--log-dir", str(tmp_path)])
    calls = []

    def fake_run(cmd, cwd, check):  # what infocatvae.evaluate writes: metrics.json, and Hydra's overrides.yaml
        calls.append(cmd)  # (the task's overrides: Hydra keeps hydra.run.dir and the other hydra.* elsewhere)
        out = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        task = [a for a in cmd[3:] if not a.startswith("hydra.")]
        OmegaConf.save(OmegaConf.create(task), out / ".hydra" / "overrides.yaml")
        (out / "metrics.json").write_text(json.dumps({"kde_ll": float(len(calls))}))

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert common.evaluate(run_dir, "table1", ["info.enabled=false"], args)[0] == {"kde_ll": 1.0}
    assert common.evaluate(run_dir, "table1", ["info.enabled=false"], args)[0] == {"kde_ll": 1.0}  # reused
    assert len(calls) == 1
    assert common.evaluate(run_dir, "table1", ["info.enabled=true"], args)[0] == {"kde_ll": 2.0}  # other overrides
    later = (run_dir / "eval" / "table1" / "metrics.json").stat().st_mtime + 10
    os.utime(ckpt, (later, later))  # the run trained on after the evaluation
    assert common.evaluate(run_dir, "table1", ["info.enabled=true"], args)[0] == {"kde_ll": 3.0}
