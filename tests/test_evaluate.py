"""``infocatvae.evaluate`` end to end on short-trained checkpoints of the four models, small sample counts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from infocatvae import evaluate as ev
from infocatvae import metrics
from infocatvae.config import CONFIG_DIR
from infocatvae.models import Encoding
from infocatvae.train import train
from tests.helpers import REPO, TINY, make_cfg, make_datamodule

RUNS = {  # a short-trained run of each model, the GRU network and the clustering AAE
    "catvae": ["model=catvae"],
    "infocatvae": ["model=infocatvae"],
    "catvae_free_gru": ["model=catvae_free", "net=gru", "data=seq_mnist", "data.batch_size=32"],
    "aae": ["model=aae"],
    "aae_k10": ["model=aae", "model.K=10"],
}
SMALL = [
    "n_test=300",
    "n_generated=200",
    "kde.fit_size=300",
    "kde.folds=2",
    "kde.cache_dir=null",
    "parzen.n_valid=200",
    "info.n_samples=200",
    "figures.pca_points=200",
    "batch_size=100",
    # a reader trained on 1,000 images for one epoch (under a second), not cached: tests/test_reader.py
    # checks the real one
    "reader.train_size=1000",
    "reader.epochs=1",
    "reader.n_per_category=20",
    "reader.cache_dir=null",
]
READER_KEYS = ("gen_confidence", "gen_agreement", "gen_distinct", "reader_test_acc")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, data_dir) -> dict[str, Path]:
    """One short-trained run folder per model (3 batches); the GRU run also gets the ``.hydra/`` folder
    Hydra would write, so that it is a run folder (evaluations go into its ``eval/``)."""
    runs = {}
    for name, overrides in RUNS.items():
        run = tmp_path_factory.mktemp(name)
        cfg = make_cfg([*overrides, *TINY], run, data_dir)
        train(cfg)
        if name == "catvae_free_gru":
            (run / ".hydra").mkdir()
            OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        runs[name] = run
    return runs


def eval_cfg(ckpt: Path, out: Path, data_dir: str, extra: list[str] = ()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "eval", overrides=[f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}", "device=cpu", *SMALL, *extra]
        )
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return cfg


def finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_evaluate_each_model(checkpoints, data_dir, tmp_path, name):
    run = checkpoints[name]
    cfg = eval_cfg(
        run / "checkpoints" / "last.ckpt", tmp_path / "eval", data_dir, [f"tensorboard_dir={tmp_path / 'tb'}"]
    )
    m = ev.evaluate(cfg)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(json.dumps(m))
    for key in ("kde_ll", "parzen_test_ll", "test_recon"):
        assert finite(m[key]), (key, m[key])
    assert m["n_generated"] == 200 and m["n_test"] == 300 and m["kde_fit_size"] == 300
    assert m["kde_bandwidth"] in cfg.kde.bandwidths and m["parzen_bandwidth"] in cfg.parzen.bandwidths
    # the Parzen bandwidth is chosen on 200 of the data module's 5K held-out validation images
    assert m["parzen_bandwidth_split"] == "val" and m["parzen_n_valid"] == 200 and m["parzen_val_size"] == 5000
    catvae_family = not name.startswith("aae")
    # an ELBO with the Bernoulli likelihood only: the GRU runs' squared error is not a log-likelihood
    assert ("test_elbo" in m) == (catvae_family and not name.endswith("_gru"))
    if "test_elbo" in m:
        assert m["test_elbo"] < 0 and finite(m["test_elbo"])
    has_categories = name != "aae"
    for key in (
        "cluster_acc",
        "nmi",
        "ari",
        "usage_perplexity",
        "category_usage",
        *("info_ce", "info_ce_on_probs", "info_acc", *READER_KEYS),
    ):
        assert (key in m) == has_categories, key
    if has_categories:  # the shares of the 300 test images per category, and what they are worth
        usage = np.array(m["category_usage"])
        counts = usage * m["n_test"]
        assert len(usage) == m["K"] and usage.sum() == pytest.approx(1.0) and np.allclose(counts, counts.round())
        assert 1 <= m["usage_perplexity"] <= m["K"]
    if has_categories:
        assert 0 < m["gen_confidence"] <= 1 and 0 < m["gen_agreement"] <= 1 and 0 < m["reader_test_acc"] <= 1
        assert isinstance(m["gen_distinct"], int) and 1 <= m["gen_distinct"] <= 10
        assert len(m["gen_majority_labels"]) == m["K"] and m["gen_n_per_category"] == 20
        assert m["gen_distinct"] == len(set(m["gen_majority_labels"])) and not m["reader_cached"]
    if has_categories:
        assert m["cluster_acc_mapping"] == "hungarian" and 0 < m["cluster_acc"] <= 1
        assert 0 <= m["info_acc"] <= 1 and m["info_ce"] > 0
        # cross-entropy on probabilities (logits in [0, 1]) lies in [log(e + K − 1) − 1, log(e + K − 1)]
        assert math.log(math.e + 9) - 1 - 1e-5 <= m["info_ce_on_probs"] <= math.log(math.e + 9) + 1e-5
    if name == "catvae_free_gru":
        assert m["sequential"] and m["likelihood"] == "gaussian"
    else:
        assert not m["sequential"]
    # the data module is rebuilt from the settings stored in the checkpoint (seq_mnist for the GRU run)
    assert m["data_source"] == "checkpoint"
    pngs = {"samples.png", "reconstructions.png", "latent_pca.png"}
    if catvae_family:
        pngs |= {"fig3_interpolation.png", "fig4_lambda.png"}
    assert set(m["figures"]) == pngs
    for png in pngs:
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same metrics and figures in TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert "eval/kde_ll" in acc.Tags()["scalars"]
    assert acc.Scalars("eval/kde_ll")[0].value == pytest.approx(m["kde_ll"], rel=1e-5)
    if has_categories:
        for key in READER_KEYS:
            assert acc.Scalars(f"eval/{key}")[0].value == pytest.approx(m[key], rel=1e-5), key
    assert {f"eval/{p.removesuffix('.png')}" for p in pngs} <= set(acc.Tags()["images"])


def test_figure_grids_follow_the_paper(checkpoints):
    """Figure 3 starts each row at decode(µ_c) and ends it at decode(µ_(c+1)); Figure 4's column λ' = 2
    is decode(µ_c) for λ = 2 (eq. 8)."""
    from infocatvae import plots
    from infocatvae.checkpoints import load_model

    model = load_model(checkpoints["infocatvae"] / "checkpoints" / "last.ckpt")
    centroids = plots.centroids_grid(model)  # one row: decode(µ_c), c = 0..K-1
    interp = plots.interpolation_grid(model)
    lam = plots.lambda_grid(model)
    assert interp.shape == lam.shape == (3, 10 * 30 + 2, 10 * 30 + 2)

    def cell(grid, row, col):
        return grid[:, 2 + row * 30 : 30 + row * 30, 2 + col * 30 : 30 + col * 30]

    for c in range(model.K):
        assert torch.allclose(cell(interp, c, 0), cell(centroids, 0, c), atol=1e-6)
        assert torch.allclose(cell(interp, c, 9), cell(centroids, 0, (c + 1) % model.K), atol=1e-6)
        assert torch.allclose(cell(lam, c, 2), cell(centroids, 0, c), atol=1e-6)
    assert not torch.allclose(cell(interp, 0, 0), cell(interp, 0, 9))


def test_each_metric_draws_the_same_samples_whatever_else_is_evaluated(checkpoints, data_dir, tmp_path):
    """The densities' generated samples do not depend on whether the info metrics ran first, nor the info
    metrics on whether the densities follow: each draw starts from the seed."""
    ckpt = checkpoints["infocatvae"] / "checkpoints" / "last.ckpt"
    fast = ["reader.enabled=false", "figures.enabled=false", "tensorboard_dir=null"]

    def run(name: str, *extra: str) -> dict:
        return ev.evaluate(eval_cfg(ckpt, tmp_path / name, data_dir, [*fast, *extra]))

    both = run("both")
    density_only = run("density_only", "info.enabled=false")
    info_only = run("info_only", "kde.enabled=false", "parzen.enabled=false")
    assert "info_ce" not in density_only and "kde_ll" not in info_only
    for key in ("kde_ll", "kde_ll_sem", "parzen_test_ll"):
        assert both[key] == density_only[key], key
    for key in ("info_ce", "info_ce_on_probs", "info_acc"):
        assert both[key] == info_only[key], key
    # nor on how many test images the test pass (which draws reparameterisation noise) went through
    fewer_test = run("fewer_test", "n_test=100")
    assert fewer_test["n_test"] != both["n_test"]
    for key in ("kde_ll", "kde_ll_sem", "parzen_test_ll", "info_ce", "info_ce_on_probs", "info_acc"):
        assert fewer_test[key] == both[key] or key == "parzen_test_ll", key  # (Parzen scores the test images)
    # and the seed still matters: another seed draws other samples
    assert run("seed1", "info.enabled=false", "seed=1")["kde_ll"] != density_only["kde_ll"]


class _StubModel(torch.nn.Module):
    """sample(c) writes c into the first pixel; encode returns fixed probabilities: 0.7 on the true
    category for even c, 0.7 on category 0 for odd c (0.3 spread evenly elsewhere)."""

    K = 4
    device = torch.device("cpu")

    def sample(self, c):
        x = torch.zeros(len(c), 1, 28, 28)
        x[:, 0, 0, 0] = c.float()
        return x

    def encode(self, x):
        c = x.reshape(len(x), -1)[:, 0].long()
        target = torch.where(c % 2 == 0, c, torch.zeros_like(c))
        q = torch.full((len(x), self.K), 0.1)
        q[torch.arange(len(x)), target] = 0.7
        return Encoding(q, None, None)


def test_info_metrics_on_a_known_classifier():
    view = lambda x: x.reshape(len(x), 1, 28, 28)  # noqa: E731
    m = metrics.info_metrics(_StubModel(), 4000, 1000, view, torch.Generator().manual_seed(0))
    # even c (half): −log 0.7; odd c: −log 0.1; accuracy: even c and c = 0 → the even half
    assert m["info_ce"] == pytest.approx(0.5 * -math.log(0.7) + 0.5 * -math.log(0.1), abs=0.05)
    assert m["info_acc"] == pytest.approx(0.5, abs=0.03)
    q_true, q_false = 0.7, 0.1
    lse = math.log(math.exp(0.7) + 3 * math.exp(0.1))
    assert m["info_ce_on_probs"] == pytest.approx(0.5 * (lse - q_true) + 0.5 * (lse - q_false), abs=0.02)


@pytest.mark.slow
def test_entry_point_writes_into_the_run_folder(checkpoints, data_dir, tmp_path):
    run = checkpoints["catvae_free_gru"]
    (run / "tensorboard").mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "infocatvae.evaluate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *SMALL,
        "kde.enabled=false",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((run / "eval" / "last" / "metrics.json").read_text())
    assert "kde_ll" not in m and finite(m["parzen_test_ll"]) and m["tensorboard_dir"] == str(run / "tensorboard")
    assert all(key in m for key in READER_KEYS) and m["data_source"] == "checkpoint" and m["sequential"]
    assert (run / "eval" / "last" / "fig3_interpolation.png").is_file()


def _rows(images: torch.Tensor) -> set[bytes]:
    """Each image (uint8, or floats k/255) as bytes: the training images are pairwise distinct."""
    u8 = images if images.dtype == torch.uint8 else images.mul(255).round().to(torch.uint8)
    return {bytes(r) for r in u8.reshape(len(u8), -1).numpy()}


@pytest.mark.slow
def test_parzen_bandwidth_is_chosen_on_the_held_out_split(checkpoints, data_dir, tmp_path, monkeypatch):
    """A checkpoint whose data module held out 4,000 images with split_seed 3: evaluate rebuilds that split
    from the settings stored in the checkpoint and chooses the Parzen bandwidth on images of its validation
    part only, none of which the data module trained on; with bandwidth_split=train, on training images;
    with infer_data=false, on the configured split instead."""
    from infocatvae import kde

    ckpt = torch.load(checkpoints["infocatvae"] / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["datamodule_hyper_parameters"].update(val_size=4000, split_seed=3)
    (tmp_path / "run").mkdir()
    torch.save(ckpt, tmp_path / "run" / "split.ckpt")
    dm = make_datamodule("data.val_size=4000", "data.split_seed=3")
    dm.setup("fit")
    train_rows, val_rows = _rows(dm.train_set.images), _rows(dm.val_set.images)
    assert len(train_rows) == 56000 and len(val_rows) == 4000

    chosen = []
    select = kde.select_bandwidth_holdout

    def spy(fit, valid, *args, **kwargs):
        chosen.append(valid)
        return select(fit, valid, *args, **kwargs)

    monkeypatch.setattr(kde, "select_bandwidth_holdout", spy)
    fast = ["kde.enabled=false", "info.enabled=false", "reader.enabled=false", "figures.enabled=false"]

    def evaluate(out: str, *extra: str) -> dict:
        extra = [*fast, "tensorboard_dir=null", *extra]
        return ev.evaluate(eval_cfg(tmp_path / "run" / "split.ckpt", tmp_path / out, data_dir, extra))

    m = evaluate("eval", "parzen.n_valid=null")
    assert m["data_source"] == "checkpoint"
    assert (m["parzen_val_size"], m["parzen_split_seed"], m["parzen_n_valid"]) == (4000, 3, 4000)
    assert _rows(chosen[-1]) == val_rows and not _rows(chosen[-1]) & train_rows

    m = evaluate("eval_config", "parzen.n_valid=null", "infer_data=false")
    assert m["data_source"] == "config" and (m["parzen_val_size"], m["parzen_split_seed"]) == (5000, 0)
    assert _rows(chosen[-1]) != val_rows  # the configured split holds out other images

    m = evaluate("eval_train", "parzen.bandwidth_split=train")
    assert m["parzen_bandwidth_split"] == "train" and "parzen_val_size" not in m
    assert len(_rows(chosen[-1]) & train_rows) > 150  # ~93 % of 200 draws from the 60K
    with pytest.raises(ValueError, match="parzen.bandwidth_split must be one of"):
        evaluate("eval_bad", "parzen.bandwidth_split=test")


def test_bad_checkpoint_and_missing_ckpt_path_are_named(data_dir, tmp_path):
    from infocatvae.checkpoints import CheckpointError

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        ev.evaluate(eval_cfg(bad, tmp_path / "out", data_dir))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.data_dir={data_dir}"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "out")
    with pytest.raises(ValueError, match="ckpt_path is required"):
        ev.evaluate(cfg)
