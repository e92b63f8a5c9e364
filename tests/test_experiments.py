"""Every experiment config composes (Hydra compose API) into the paper's setting for its result."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from infocatvae.config import CONFIG_DIR
from tests.helpers import MODELS

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


@pytest.fixture
def experiments_on_path(monkeypatch):
    """experiments/ on sys.path for this test only, as the scripts run (``import common``)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))


# experiment=authors_code: where the authors' public code (github.com/edouardpineau/infoCatVAE) differs from the
# paper's text (README, "Where the paper is silent, and the authors' code"). For every model:
AUTHORS_CODE = {
    "model.optimizer.lr": 1e-3,  # main.py: optim.Adam(..., lr=1e-3); the paper's appendix B: 1e-4
    "model.net.decoder.output_dropout": 0.0,  # decode: sigmoid(fc4(h3)); Table 2: Dropout(0.25) on the output
}
# and for the CatVAE family, by conf/experiment_model/<file> (the AAE takes only the lines above)
SOFT = {"model.recon": "soft"}  # one z from the heads fed with [h, q(c|x)], decoded once
AUTHORS_CODE_MODEL = {
    "authors_code_catvae": SOFT,
    "authors_code_catvae_free": SOFT,  # the free-prior CatVAE runs the same code
    "authors_code_infocatvae": {
        **SOFT,
        "model.info_loss": "ce_on_probs",  # F.cross_entropy(softmax output, labels)
        "model.beta_info": 100 / 128,  # 100 * adv_loss beside a loss summed over a batch of 128
        "model.info_per_category": 10,  # sampling(model, 10, ...): 10 images of each category per step
    },
}


def test_every_experiment_file_is_covered():
    """Every file of conf/experiment/ and conf/experiment_model/ is composed, and its values checked, by a test
    below; and every experiment those tests name exists."""
    files = {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    assert files == set(EXPERIMENTS) | set(CLUSTERING_PRESETS) | {"authors_code"}
    model_files = {p.stem for p in (Path(CONFIG_DIR) / "experiment_model").glob("*.yaml")}
    assert model_files == set(AUTHORS_CODE_MODEL)
    # each of them is reached by composing its experiment with the model it is named after
    assert all(name.removeprefix("authors_code_") in MODELS for name in model_files)


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


@pytest.mark.parametrize("model", MODELS)
def test_authors_code_sets_the_authors_choices_and_nothing_else(model):
    """``model=<model> experiment=authors_code`` differs from ``model=<model>`` in exactly the authors' choices
    (AUTHORS_CODE, and AUTHORS_CODE_MODEL's lines of that model), and the model built from it has them."""
    import hydra.utils

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "experiment=authors_code"])
        base = compose("train", overrides=[f"model={model}"])
    expected = {**AUTHORS_CODE, **AUTHORS_CODE_MODEL.get(f"authors_code_{model}", {})}
    a, b = _flat(cfg), _flat(base)
    assert {k: a.get(k) for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == expected
    built = hydra.utils.instantiate(cfg.model)
    optimizers = built.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, tuple) else (optimizers,)  # the AAE: one for each phase
    assert {g["lr"] for o in optimizers for g in o.param_groups} == {1e-3}
    assert built.decoder.net[-1].p == 0.0  # the decoder's output dropout
    for key, value in expected.items():
        if key.count(".") == 1:  # the model's own fields
            assert built.hparams[key.split(".")[1]] == value, key


def test_experiment_scripts_use_existing_configs():
    import re

    files = {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    scripts = Path(CONFIG_DIR).parent / "experiments"
    for script in ("table1.py", "info_ce.py", "fig3.py", "fig4.py", "fig5.py"):
        # the experiment names a script quotes (a results file's stem, given to common.result_name, is not one)
        named = set(re.findall(r'(?<!result_name\()"((?:table1|fig\d+)_[a-z_]+)"', (scripts / script).read_text()))
        assert named and named <= files, (script, named - files)
    named = set(re.findall(r'"experiment=([a-z_0-9]+)"', (scripts / "clustering.py").read_text()))
    assert named and named <= files, ("clustering.py", named - files)


def test_long_runs_at_600_epochs_train_the_runs_the_result_scripts_reuse(tmp_path, experiments_on_path):
    """``long_runs.sh LOGDIR 600`` runs, for Table 1's rows, the FashionMNIST InfoCatVAE and Figure 5's models
    (with the Bernoulli likelihood, then as configured), the same ``infocatvae.train`` command as
    ``table1.py``/``fig3.py``/``fig4.py``/``fig5.py [--likelihood bernoulli] --epochs 600`` (``common.train``),
    so the scripts find those runs finished; a second argument other than 600 is refused before any run."""
    import os
    import subprocess

    import common
    import fig5

    repo = Path(__file__).resolve().parents[1]
    fake = tmp_path / "python"  # records each command line instead of training
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$CALLS"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls")}
    logs = tmp_path / "logs"
    script = ["bash", "experiments/long_runs.sh", str(logs)]
    done = subprocess.run([*script, "600"], cwd=repo, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()

    args = common.parser("").parse_args(["--epochs", "600", "--log-dir", str(logs)])
    bernoulli = (["model.likelihood=bernoulli"], "bernoulli")  # what fig5.py --likelihood bernoulli trains
    assert fig5.CONFIG_LIKELIHOOD != "bernoulli"
    expected = []
    for exp, (overrides, variant) in (
        ("table1_aae", ([], "")),
        ("table1_catvae", ([], "")),
        ("table1_infocatvae", ([], "")),
        ("fig34_infocatvae_fashion", ([], "")),
        ("fig5_infocatvae", bernoulli),
        ("fig5_catvae", bernoulli),
        ("fig5_free_catvae", bernoulli),
        ("fig5_infocatvae", ([], "")),
        ("fig5_catvae", ([], "")),
        ("fig5_free_catvae", ([], "")),
    ):
        run_dir = logs / "experiments" / common.run_name(exp, args, variant)
        cmd = common.train_command(run_dir, [f"experiment={exp}", *overrides], args)
        expected.append(" ".join(cmd[1:]))  # without the interpreter
    assert calls == expected

    bad = subprocess.run([*script, "60"], cwd=repo, env=env, capture_output=True)
    assert bad.returncode == 2 and b"may only be 600" in bad.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == len(expected)  # nothing more was run


def test_experiment_scripts_reuse_an_evaluation_only_when_it_matches(tmp_path, monkeypatch, experiments_on_path):
    """``common.evaluate`` reruns ``infocatvae.evaluate`` unless the stored evaluation has the same overrides
    and is newer than the checkpoint."""
    import json
    import os
    import subprocess

    import common
    from omegaconf import OmegaConf

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


def test_clustering_script_trains_each_seed_once_and_tabulates_mean_std(tmp_path, monkeypatch, experiments_on_path):
    """``experiments/clustering.py`` trains every (row, seed) with ``test=true`` into its own folder, reuses a
    completed one, and writes per row the mean ± sample std over seeds and the seeds' min / max."""
    import json
    import statistics
    import subprocess
    import sys

    import clustering
    import common

    calls = []
    acc = {0: 0.5, 1: 0.7, 2: 0.9}
    val = {0: 0.6, 1: 0.5, 2: 0.7}

    def fake_run(cmd, cwd, check):  # what a completed training job leaves: status.json with its metrics
        calls.append(cmd)
        seed = int(next(a for a in cmd if a.startswith("seed=")).split("=")[1])
        out = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        metrics = {
            "test/cluster_acc": acc[seed],
            "test/nmi": acc[seed] / 2,
            "test/ari": 0.1,
            "val/cluster_acc": val[seed],
        }
        (out / "status.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))

    evaluated = []

    def fake_evaluate(run_dir, purpose, overrides, args):  # the samples of the preset's best seed
        evaluated.append(run_dir.name)
        return {"gen_distinct": 7}, run_dir

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "evaluate", fake_evaluate)
    monkeypatch.setattr(common, "copy_figure", lambda src, name: name)
    argv = ["clustering.py", "--epochs", "3", "--seeds", "0", "1", "2", "--rows", "catvae", "aae_clustering_k30"]
    argv += ["--log-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    clustering.main()
    assert len(calls) == 6
    assert all("test=true" in c and "trainer.max_epochs=3" in c for c in calls)
    assert "experiment=aae_clustering" in calls[-1] and "model.K=30" in calls[-1]
    assert (tmp_path / "experiments" / "clustering" / "catvae_e3" / "seed2" / "status.json").is_file()
    table = (tmp_path / "results" / "clustering_e3.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| CatVAE"))
    mean, std = statistics.mean(acc.values()), statistics.stdev(acc.values())
    assert f"| 3 | {mean:.3f} ± {std:.3f} | 0.500 / 0.900 |" in row
    assert f"{mean / 2:.3f} ± {std / 2:.3f}" in row
    assert "Issue 14's goal" not in table and not evaluated  # no preset row asked for
    clustering.main()  # every run completed: nothing is trained again
    assert len(calls) == 6
    acc[1] = 0.96  # the preset's seeds: 0.5, 0.96, 0.9
    monkeypatch.setattr(sys, "argv", [*argv[:8], "clustering_mnist", *argv[-2:]])
    clustering.main()
    assert len(calls) == 9 and evaluated == ["seed2"]  # the best seed on validation, not on test (seed1)
    table = (tmp_path / "results" / "clustering_e3.md").read_text()
    goal = "mean 0.787 (goal ≥ 0.90: not met); lowest seed 0.500 (goal ≥ 0.80: not met); "
    assert goal + "best seed 0.960 (goal ≥ 0.95: met)" in table
    # a shorter training is another run, and another results file: nothing reused, nothing overwritten
    monkeypatch.setattr(sys, "argv", [*argv[:8], "catvae", *argv[-2:], "--limit-train-batches", "5"])
    clustering.main()
    assert len(calls) == 12 and all("trainer.limit_train_batches=5" in c for c in calls[9:])
    assert (tmp_path / "experiments" / "clustering" / "catvae_e3_b5" / "seed0" / "status.json").is_file()
    assert (tmp_path / "results" / "clustering_e3_b5.md").is_file()
    monkeypatch.setattr(sys, "argv", [*argv[:8], "catvae", *argv[-2:], "--trainer", "cpu"])
    clustering.main()  # the trainer is how, not what: the completed runs are reused
    assert len(calls) == 12
    # a completed run without test scores is run again (the framework then only scores the test set)
    status = tmp_path / "experiments" / "clustering" / "catvae_e3" / "seed1" / "status.json"
    status.write_text(json.dumps({"status": "completed", "metrics": {"val/cluster_acc": 0.5}}))
    clustering.main()
    assert len(calls) == 13 and "seed=1" in calls[-1] and "trainer=cpu" in calls[-1]


def _flat(cfg) -> dict:
    from omegaconf import OmegaConf

    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = v

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


# preset: (the overrides giving the same model without it, the keys it changes, K)
AAE_CHANGES = {"model.K", "model.d", "model.beta_marginal", "model.optimizer.lr"}
INFOCATVAE_CHANGES = {"model.lam", "model.beta_cat", "model.beta_info", "model.beta_marginal", "model.optimizer.lr"}
CLUSTERING_PRESETS = {
    "clustering_mnist": (["model=aae"], AAE_CHANGES, 10),
    "clustering_fashion": (["model=infocatvae", "data=fashion_mnist"], INFOCATVAE_CHANGES, 10),
    "infocatvae_clustering": (["model=infocatvae"], INFOCATVAE_CHANGES, 10),
    "aae_clustering": (["model=aae"], AAE_CHANGES, 16),
}


@pytest.mark.parametrize("name", list(CLUSTERING_PRESETS))
def test_clustering_presets_hold_only_what_differs_and_build(name):
    """A clustering preset changes only its own fields of the model (and the length), turns the
    balanced-category term on, and builds its model."""
    import hydra.utils

    base_overrides, changed, K = CLUSTERING_PRESETS[name]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
        base = compose("train", overrides=base_overrides)
    a, b = _flat(cfg), _flat(base)
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ == changed | {"trainer.max_epochs"}
    assert cfg.model.beta_marginal > 0 and cfg.model.K == K
    model = hydra.utils.instantiate(cfg.model)
    assert model.hparams.beta_marginal == cfg.model.beta_marginal


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONFIG_DIR) / "sweep").glob("*.yaml")))
def test_sweep_searches_existing_fields_with_valid_values(name):
    """Every field a sweep file searches exists in the config it composes, and each end of its range (each
    choice) passes the pre-training checks: a misspelt key or a bad value would otherwise be found only
    when a trial fails, after the other trials have spent their time."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
    from omegaconf import OmegaConf

    from infocatvae.validation import check

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={name}"], return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params)
        assert params and cfg.sweep_name == name
        for key, spec in params.items():
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{name}: {key} is not a field"
            override = OverridesParser.create().parse_overrides([f"{key}={spec}"])[0]
            value = override.value()
            if isinstance(value, ChoiceSweep):
                values = list(value.list)
            elif isinstance(value, IntervalSweep):
                values = [value.start, value.end]
            else:  # the basic sweeper's comma-separated list
                values = list(override.sweep_iterator())
            for v in values:
                check(compose("train", overrides=[f"sweep={name}", f"{key}={v}"]))


def test_convergence_script_evaluates_the_asked_snapshots_into_its_named_results(
    tmp_path, monkeypatch, experiments_on_path
):
    """``experiments/convergence.py`` evaluates each asked-for snapshot (and the latest) once, into a folder of
    its own (not evaluate's default ``eval/epochNNNN``, where a quick look by hand may lie), again when asked
    with other overrides, and writes ``<name>.md`` and ``<name>.png`` beside the other results, leaving
    ``convergence.md`` alone."""
    import json
    import subprocess
    import sys

    import common
    import convergence

    run = tmp_path / "experiments" / "table1_aae_e600"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=table1_aae\n- trainer.max_epochs=600\n")
    (run / "status.json").write_text(json.dumps({"status": "running", "max_epochs": 600, "epoch": 17}))
    for e in (5, 10, 15):
        (run / "checkpoints" / f"epoch{e:04d}.ckpt").write_bytes(b"")
    quick_look = (
        run / "eval" / "epoch0005"
    )  # python -m infocatvae.evaluate ckpt_path=.../epoch0005.ckpt n_generated=2000
    quick_look.mkdir(parents=True)
    (quick_look / "metrics.json").write_text(json.dumps({"kde_ll": -1.0}))
    calls = []

    def fake_run(cmd, cwd, check):  # what infocatvae.evaluate leaves: metrics.json and Hydra's overrides.yaml
        calls.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        epoch = int(out.name.removeprefix("convergence_epoch"))
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        (out / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {a}\n" for a in cmd[3:] if not a.startswith("hydra."))
        )
        (out / "metrics.json").write_text(json.dumps({"kde_ll": 100.0 + epoch, "test_elbo": -90.0}))

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    argv = ["convergence.py", "--log-dir", str(tmp_path), "--runs", "table1_aae_e600", "--epochs-at", "5"]
    monkeypatch.setattr(sys, "argv", [*argv, "--name", "convergence_e600"])
    convergence.main()
    assert [next(a for a in c if a.startswith("ckpt_path=")).rsplit("/", 1)[1] for c in calls] == [
        "epoch0005.ckpt",
        "epoch0015.ckpt",  # the latest snapshot, asked for or not
    ]
    text = (tmp_path / "results" / "convergence_e600.md").read_text()
    assert "![convergence](convergence_e600.png)" in text and (tmp_path / "results" / "convergence_e600.png").is_file()
    assert "| table1_aae_e600 | 5 | 105.000 |" in text and "| table1_aae_e600 | 15 | 115.000 |" in text
    assert "in progress, latest snapshot after epoch 15 of 600" in text
    assert not (tmp_path / "results" / "convergence.md").exists()
    from PIL import Image

    # one panel per metric the runs have (kde_ll, test_elbo), not five with three left empty
    width, height = Image.open(tmp_path / "results" / "convergence_e600.png").size
    assert 1.5 < width / height < 3.5
    convergence.main()  # evaluated snapshots are read back, not evaluated again
    assert len(calls) == 2
    monkeypatch.setattr(sys, "argv", [*argv, "--name", "convergence_e600", "--eval", "n_generated=2000"])
    convergence.main()  # other overrides: evaluated again
    assert len(calls) == 4 and all("n_generated=2000" in c for c in calls[2:])
    # no run under --log-dir: a message that names where it looked, not matplotlib's error on zero panels
    monkeypatch.setattr(sys, "argv", ["convergence.py", "--log-dir", str(tmp_path / "elsewhere")])
    with pytest.raises(SystemExit, match=r"no snapshot .* under .*elsewhere/experiments/; pass --log-dir"):
        convergence.main()


@pytest.mark.slow
def test_gpu_check_smoke_unpacks_the_kits_data_and_records_each_phase(tmp_path, data_dir):
    """``python -m experiments.gpu_check run --smoke`` (the GPU checks' plumbing on the CPU): with a kit holding
    MNIST's .gz files and no usable data folder otherwise, it trains from the unpacked files, records each
    epoch's time and losses and the bench's records, in at most eight flat files (the device tool's limit)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    raw = tmp_path / "kit" / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in Path(data_dir, "MNIST", "raw").glob("*-ubyte.gz"):
        shutil.copyfile(f, raw / f.name)
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, INFOCATVAE_DATA_DIR=str(tmp_path / "no_data_here"))
    cmd = [sys.executable, "-m", "experiments.gpu_check", "run", str(out), "--kit", str(tmp_path / "kit")]
    subprocess.run([*cmd, "--work", str(work), "--smoke"], cwd=root, env=env, check=True, timeout=600)

    assert (work / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 47040016
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["import"]["rc"] == 0
    train = summary["phases"]["train_eager"]
    assert train["rc"] == 0 and [e["epoch"] for e in train["epochs"]] == [1, 2]
    assert all(e["seconds"] > 0 and 0 < e["train_loss"] < 2000 and 0 < e["val_loss"] < 2000 for e in train["epochs"])
    assert summary["phases"]["bench"]["rc"] == 0
    records = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    baseline = next(r for r in records if r["record"] == "baseline")
    assert baseline["today_img_per_s"] > 0 and baseline["baseline_img_per_s"] > 0
    # run again on the same machine (a device machine kept warm keeps /tmp): it trains again, from scratch
    subprocess.run([*cmd, "--work", str(work), "--smoke"], cwd=root, env=env, check=True, timeout=600)
    again = json.loads((out / "summary.json").read_text())["phases"]["train_eager"]
    assert again["rc"] == 0 and [e["epoch"] for e in again["epochs"]] == [1, 2]
    assert all(e["seconds"] > 0 for e in again["epochs"])


def test_gpu_check_imports_no_hydra_before_the_kits_wheels_are_installed():
    """On the GPU machine hydra-core and omegaconf arrive with the kit's wheels, installed for the training
    subprocesses only: the parent process must run without them."""
    import subprocess
    import sys

    code = (
        "import sys; import experiments.gpu_check; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'antlr4', 'submitit')))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_figure_results_state_each_categorys_share_of_the_test_images(experiments_on_path):
    """fig3.py/fig4.py print, beside the figures, the shares of ``metrics.json`` (row c is category c); an older
    reused evaluation without them says so instead of failing."""

    import common  # as the scripts import it

    m = {"category_usage": [0.5, 0.3, 0.0, 0.2], "usage_perplexity": 2.8001, "K": 4}
    line = common.usage_line(m)
    assert "0.500, 0.300, 0.000, 0.200" in line and "`usage_perplexity` 2.80 of K = 4" in line
    assert "not in this evaluation" in common.usage_line({"cluster_acc": 0.5, "K": 4})


def test_loss_scale_bounds_are_the_best_constant_decoders_on_real_images(data_dir, experiments_on_path):
    """``loss_scale.constant_decoder_recon`` returns the test reconstruction of the training mean image and of each
    test image's digit mean image, under both likelihoods: checked against the formulas written out here (binary
    cross-entropy summed over pixels; squared error averaged over each 28-pixel row, summed over rows), and each
    constant is the best of its kind (nudging it makes the loss worse)."""

    import loss_scale
    import numpy as np
    import torch

    from infocatvae.data import load_split

    (xs, ys), (xt, yt) = (load_split(data_dir, "mnist", train) for train in (True, False))
    train_x, train_y = xs[:3000].flatten(1).double().numpy() / 255, ys[:3000].numpy()
    test_x, test_y = xt[:500].flatten(1).double().numpy() / 255, yt[:500].numpy()
    mean = train_x.mean(0)
    digit = np.stack([train_x[train_y == k].mean(0) for k in range(10)])[test_y]

    def bce(p, x):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(-1).mean()

    def rows_mse(p, x):
        return ((p - x) ** 2).reshape(len(x), 28, 28).mean(-1).sum(-1).mean()

    t = [torch.from_numpy(a).float() for a in (train_x, test_x)]
    for likelihood, formula in (("bernoulli", bce), ("gaussian", rows_mse)):
        whole, by_digit = loss_scale.constant_decoder_recon(
            t[0], torch.from_numpy(train_y), t[1], torch.from_numpy(test_y), likelihood
        )
        expected_whole, expected_digit = formula(mean, test_x), formula(digit, test_x)
        assert whole == pytest.approx(expected_whole, rel=1e-4), likelihood
        assert by_digit == pytest.approx(expected_digit, rel=1e-4), likelihood
        assert by_digit < whole
        # the training mean is the best constant for the training images under both losses
        for nudge in (0.9, 1.1):
            assert formula(mean, train_x) < formula(np.clip(mean * nudge, 0, 1), train_x)


@pytest.mark.parametrize(
    "argv, overrides, variant, result",
    [
        ([], [], "", "fig5_e3"),
        (["--likelihood", "bernoulli"], ["model.likelihood=bernoulli"], "bernoulli", "fig5_bernoulli_e3"),
    ],
)
def test_fig5_trains_the_other_likelihood_in_runs_and_results_of_its_own(
    monkeypatch, argv, overrides, variant, result, experiments_on_path
):
    """``fig5.py`` trains the configs as they are (appendix C's squared error, which ``CONFIG_LIKELIHOOD`` names);
    with ``--likelihood bernoulli`` it adds the override, names the runs ``<experiment>_bernoulli_e<epochs>``
    and writes ``fig5_bernoulli_e<epochs>.md``, so the two readings never share a run or a result file."""
    import sys

    import common
    import fig5

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for exp in fig5.RUNS:
            assert compose("train", overrides=[f"experiment={exp}"]).model.likelihood == fig5.CONFIG_LIKELIHOOD

    trained, written = [], {}
    metrics = dict.fromkeys(("cluster_acc", "ari", "info_ce", "info_acc", "test_recon"), 0.5)
    # q(c|x) spread evenly whatever the digit: an NMI near 0, and no collapse onto one category
    metrics.update(nmi=0.002, category_usage=[0.1] * 10, n_test=10000, K=10, gen_n_per_category=300)
    monkeypatch.setattr(
        common, "train", lambda exp, args, o=(), v="": trained.append((exp, list(o), v)) or (Path(exp), 0)
    )
    monkeypatch.setattr(common, "evaluate", lambda run_dir, purpose, o, args: (metrics, Path(run_dir)))
    monkeypatch.setattr(common, "copy_figure", lambda src, name: name)
    monkeypatch.setattr(common, "setup_lines", lambda args, s, runs, m: written.setdefault("runs", runs) and [])
    monkeypatch.setattr(common, "write", lambda name, lines: written.update(name=name, text="\n".join(lines)))
    monkeypatch.setattr(sys, "argv", ["fig5.py", "--epochs", "3", *argv])
    fig5.main()
    assert trained == [(exp, overrides, variant) for exp in fig5.RUNS]
    assert written["name"] == result
    assert written["runs"] == [f"{exp}{'_' + variant if variant else ''}_e3" for exp in fig5.RUNS]
    assert ("binary cross-entropy" if variant else "squared error") in written["text"]
    assert "10,000 test images" in written["text"] and "in one category" not in written["text"]
    assert "reading of 300 samples per category" in written["text"]
    metrics["category_usage"] = [0.995, 0.005] + [0.0] * 8  # every test image but 0.5 % in one category
    fig5.main()
    assert "more than 99 % of the test images in one category" in written["text"]
    # a reused evaluation from before category_usage existed: the NMI, said so
    del metrics["category_usage"]
    fig5.main()
    assert "(by NMI < 0.01: its evaluation has no category shares)" in written["text"]


def test_table1_says_where_the_parzen_bandwidth_was_chosen_from_the_evaluation_itself(experiments_on_path):

    import table1

    on_val = {"parzen_bandwidth_split": "val", "parzen_n_valid": 1000, "parzen_val_size": 5000}
    assert table1.parzen_split(on_val) == "1,000 of the 5,000 validation images the model never trained on"
    assert (
        table1.parzen_split({**on_val, "parzen_n_valid": 5000})
        == "the 5,000 validation images the model never trained on"
    )
    on_train = {"parzen_bandwidth_split": "train", "parzen_n_valid": 2000}
    assert table1.parzen_split(on_train) == "2,000 of the 60,000 training images"


@pytest.mark.parametrize(
    "path",
    [
        "/logs/experiments/table1_catvae_e600/checkpoints/last.ckpt",  # as it is: earlier evaluations still match
        "/logs/multirun/model.K=5,seed=1/checkpoints/last.ckpt",  # a multirun job's folder
        "/my logs/it's here/run",
        "/odd\\name\\",
        "/home/me/runs~1/#2!/a&b;c",  # characters Hydra's grammar does not take unquoted
    ],
)
def test_the_scripts_paths_reach_hydra_as_they_are(path, experiments_on_path):
    """``common.path_override`` quotes a path only where Hydra's override grammar would split or interpret it."""

    import common
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = common.path_override("ckpt_path", path)
    assert OverridesParser.create().parse_override(override).value() == path
    assert (override == f"ckpt_path={path}") == path.startswith("/logs/experiments")


def test_the_scripts_take_log_dir_as_absolute_and_state_the_seeds_they_used(tmp_path, monkeypatch, experiments_on_path):
    """A relative ``--log-dir`` is resolved where the script starts (its training and evaluation run in the
    repository root); the setup lines give the runs' training seed and the evaluation's, as recorded."""
    import common

    monkeypatch.chdir(tmp_path)
    args = common.parser("").parse_args(["--log-dir", "rel", "--epochs", "5"])
    assert args.log_dir == str(tmp_path / "rel")
    assert common.result_name("table1_aae", args, "_samples.png") == "table1_aae_e5_samples.png"
    config = tmp_path / "rel" / "experiments" / "x_e5" / ".hydra"
    config.mkdir(parents=True)
    (config / "config.yaml").write_text("seed: 3\n")
    lines = "\n".join(common.setup_lines(args, 60.0, ["x_e5"], {"seed": 7}))
    assert "- seed: 3 (config `seed`), evaluation seed 7" in lines
