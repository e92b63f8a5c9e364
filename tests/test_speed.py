"""Properties of the fast path that the CPU can check: no per-step reads from the device,
one batched decoder call for the K categories, mixed precision."""

from __future__ import annotations

import collections
import contextlib
import sys

import hydra.utils
import lightning as L
import pytest
import torch

from infocatvae.config import instantiate_all
from tests.helpers import DATA_DIR, TINY, make_cfg


class _Window(L.Callback):
    """Marks the training epoch, where reads are counted."""

    active = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _Window.active = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _Window.active = False


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model=infocatvae", "model=aae model.K=10"])
def test_training_steps_read_nothing_back_from_the_device(model, tmp_path, monkeypatch):
    """Every ``.item()``/``.tolist()``/``bool()`` of a tensor during a training epoch, except torch.optim's
    own CPU step counters: on a GPU each would be a host synchronisation. With the GPU settings
    (finite-loss check every 30 steps here, logs every 20 steps) 60 steps may read only on the
    3 logging steps (one value per loss term) and the 3 checks, never once per step."""
    steps, log_every, check_every = 60, 20, 30
    cfg = make_cfg(
        [
            *model.split(),
            "trainer.accelerator=cpu",
            f"trainer.log_every_n_steps={log_every}",
            f"callbacks.finite_loss.check_every_n_steps={check_every}",
        ],
        tmp_path,
    )
    reads: collections.Counter = collections.Counter()
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if _Window.active:
                caller = sys._getframe(1).f_code.co_filename
                if "torch/optim" not in caller:
                    reads[(_name, caller.rsplit("site-packages/", 1)[-1])] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    datamodule = hydra.utils.instantiate(cfg.data)
    m = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_all(cfg.callbacks) + [_Window()]
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=instantiate_all(cfg.logger),
    )
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(m, datamodule=datamodule)
    n_terms = len(m.losses(torch.rand(2, 1, 28, 28)))  # one value read per term on each logging step
    allowed = (steps // log_every) * n_terms + steps // check_every + 2  # + the epoch-end check, the loader
    assert sum(reads.values()) <= allowed, reads


def test_all_categories_go_through_the_decoder_in_one_call(tmp_path):
    cfg = make_cfg(["model=infocatvae"], tmp_path)
    m = hydra.utils.instantiate(cfg.model)
    shapes = []
    m.decoder.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape)))
    m.losses(torch.rand(16, 1, 28, 28))
    # the marginal reconstruction: one call on B·K codes; then the info term on B prior samples
    assert shapes == [(16 * 10, 20), (16, 20)]


@pytest.mark.slow
def test_bf16_mixed_precision_trains_with_float32_loss_terms(tmp_path):
    from infocatvae.train import train

    metrics = train(make_cfg([*TINY, "trainer.precision=bf16-mixed"], tmp_path))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["train/kl_cat"] >= 0 and metrics["val/kl_cat"] >= 0  # log K − H(q) in float32


@pytest.mark.parametrize(
    "model", ["model=infocatvae", "model=aae model.K=10", "model=infocatvae net=gru data=seq_mnist"]
)
def test_bf16_autocast_on_the_cpu_gives_the_float32_loss_terms(model, tmp_path):
    """Under CPU bf16 autocast (``trainer.precision=bf16-mixed`` on the CPU) every loss term is float32
    and within 1 % of the float32 computation on real MNIST: the KL terms, the logits loss and the
    info cross-entropy run in float32, only the matrix products in bf16."""
    from infocatvae.data import load_split
    from tests.helpers import DATA_DIR

    x = load_split(DATA_DIR, "mnist", train=False)[0][:256].float().div(255)
    m = hydra.utils.instantiate(make_cfg(model.split(), tmp_path).model).eval()
    torch.manual_seed(0)
    ref = m.losses(x)
    linear_dtypes = set()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_hook(lambda mod, inp, out: linear_dtypes.add(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        low = m.losses(x)
    assert linear_dtypes == {torch.bfloat16}  # the products did run in bf16
    for k in ref:
        assert low[k].dtype == torch.float32, k
        torch.testing.assert_close(low[k], ref[k], rtol=1e-2, atol=1e-3, msg=k)


@pytest.mark.parametrize("model", ["model=catvae", "model=catvae model.recon=soft", "model=aae model.K=10"])
def test_bf16_autocast_on_the_cpu_keeps_the_category_gradient(model, tmp_path):
    """Under CPU bf16 autocast the gradient that reaches q(c|x)'s logits is the float32 one within bf16's
    rounding: the softmax runs in float32 (CPU autocast leaves it in bf16, where the backward of
    sum_c q_c · recon_c, recon_c ~ 200 nats, rounds away the differences between categories that carry the
    clustering signal). Real MNIST, the model's own loss, its gradient on the category logits."""
    from infocatvae.data import load_split
    from tests.helpers import DATA_DIR

    x = load_split(DATA_DIR, "mnist", train=False)[0][:256].float().div(255)
    m = hydra.utils.instantiate(make_cfg(model.split(), tmp_path).model).eval()
    layer = m.heads.classifier if hasattr(m, "heads") else m.to_y
    grads = []

    def keep_grad(mod, inp, out):  # returns None: the output is left as it is
        if out.requires_grad:
            out.register_hook(lambda g: grads.append(g.float()))

    layer.register_forward_hook(keep_grad)

    def logits_grad(autocast: bool) -> torch.Tensor:
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            terms = m.losses(x)
        (terms["recon"] + terms.get("kl_cont", 0)).backward()
        return grads.pop()

    ref, low = logits_grad(False), logits_grad(True)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), low.flatten(), dim=0)
    assert cos > 0.99 and (low - ref).norm() / ref.norm() < 0.1, (cos, (low - ref).norm() / ref.norm())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model=infocatvae", "model=aae model.K=10"])
def test_compiled_losses_equal_eager(model, tmp_path):
    """``torch.compile`` of the model's loss functions (what ``compile=true`` compiles: InfoCatVAE's ``losses``,
    the bench's compile record; the AAE's three phase losses) gives the eager loss terms on real MNIST, in
    training mode (dropout on), with the same random draws (the dropout masks through ``nets.dropout_scale`` in
    both; inductor's ``fallback_random`` for the reparameterisation, the info term's categories and the AAE's
    prior draws: torch's generator, as eager)."""
    import torch._inductor.config as inductor_config

    from infocatvae.data import load_split
    from tests.helpers import DATA_DIR, skip_without_cpp_compiler

    skip_without_cpp_compiler()
    x = load_split(DATA_DIR, "mnist", train=False)[0][:64].float().div(255)
    m = hydra.utils.instantiate(make_cfg(model.split(), tmp_path).model)
    m.train()
    torch.manual_seed(0)
    ref = m.losses(x)
    with inductor_config.patch(fallback_random=True):
        m.compile_losses()  # what compile=true does
        torch.manual_seed(0)
        got = m.losses(x)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4, msg=k)


@pytest.mark.parametrize("model", ["model=infocatvae", "model=aae model.K=10"])
def test_configured_adam_is_fused_and_steps_as_torchs_default_adam(model, tmp_path):
    """Every optimiser of the configured models is one fused Adam (conf/model); a few of its steps on real
    MNIST gradients move the parameters as torch's default (per-tensor) Adam does, within float tolerance."""
    import copy

    from infocatvae.data import load_split
    from tests.helpers import DATA_DIR

    x = load_split(DATA_DIR, "mnist", train=False)[0][:128].float().div(255)
    torch.manual_seed(0)
    fused = hydra.utils.instantiate(make_cfg(model.split(), tmp_path).model).eval()  # eval: no dropout draws
    plain = copy.deepcopy(fused)
    plain.optimizer_cfg = {**plain.optimizer_cfg, "fused": None}
    opts = {}
    for name, m in (("fused", fused), ("plain", plain)):
        o = m.configure_optimizers()
        opts[name] = list(o) if isinstance(o, tuple) else [o]
    assert all(o.defaults["fused"] is True for o in opts["fused"])
    assert all(not o.defaults["fused"] for o in opts["plain"])
    start = copy.deepcopy(fused.state_dict())
    for _ in range(3):
        for name, m in (("fused", fused), ("plain", plain)):
            opt = opts[name][0]  # the reconstruction phase's for the AAE: it holds the encoder and the decoder
            opt.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same draws (reparameterisation, the info term's samples) for both
            m.losses(x)["loss"].backward()
            opt.step()
    for (k, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(fused.decoder.state_dict()["net.3.weight"], start["decoder.net.3.weight"])


def test_the_default_profiler_lets_every_hook_through_as_lightnings_pass_through(tmp_path):
    """conf/trainer's ``NoProfiler`` saves Lightning's per-hook context manager and nothing else: a tiny AAE fit
    (manual optimisation: three optimiser steps a batch) calls the same hooks of a callback, in the same order,
    as with Lightning's own ``PassThroughProfiler``; a real profiler is still one override away."""
    from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

    from infocatvae.profiler import NoProfiler

    hooks = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
    hooks += ("on_train_batch_end", "on_validation_batch_end", "on_train_epoch_end")

    class Recorder(L.Callback):
        def __init__(self) -> None:
            self.calls: list[str] = []
            for name in hooks:
                setattr(self, name, lambda *args, _name=name, **kwargs: self.calls.append(_name))

    cfg = make_cfg([*TINY, "model=aae"], tmp_path)
    assert isinstance(hydra.utils.instantiate(cfg.trainer.profiler), NoProfiler)
    simple = hydra.utils.instantiate(make_cfg(["trainer.profiler=simple"], tmp_path).trainer)
    assert isinstance(simple.profiler, SimpleProfiler)
    calls = {}
    for name, profiler in (("none", NoProfiler()), ("lightning", PassThroughProfiler())):
        recorder = Recorder()
        trainer = hydra.utils.instantiate(
            cfg.trainer, profiler=profiler, callbacks=[recorder], logger=False, enable_checkpointing=False
        )
        with contextlib.redirect_stdout(sys.stderr):
            trainer.fit(hydra.utils.instantiate(cfg.model), datamodule=hydra.utils.instantiate(cfg.data))
        calls[name] = recorder.calls
    assert calls["none"] == calls["lightning"]
    assert collections.Counter(calls["none"])["on_before_optimizer_step"] == 3 * cfg.trainer.limit_train_batches


def test_lightnings_hook_name_is_written_without_nn_modules_checks(tmp_path, monkeypatch):
    """Lightning writes the running hook's name to ``_current_fx_name`` around every hook (54 times per AAE
    batch): on our models that write skips nn.Module.__setattr__'s parameter, buffer and submodule checks
    (models/base.py). Callbacks still read the hook's name there, the fit logs as before, and every other
    attribute still goes through nn.Module (a submodule assigned later is registered)."""
    from torch import nn

    writes = collections.Counter()
    module_setattr = nn.Module.__setattr__

    def counting(self, name, value):
        writes[name] += 1
        module_setattr(self, name, value)

    monkeypatch.setattr(nn.Module, "__setattr__", counting)
    seen = []

    class HookNames(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            seen.append(pl_module._current_fx_name)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(pl_module._current_fx_name)

    cfg = make_cfg([*TINY, "model=aae"], tmp_path)
    model = hydra.utils.instantiate(cfg.model)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[HookNames()], logger=False, enable_checkpointing=False)
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert writes["_current_fx_name"] == 0
    assert seen == (["on_before_backward"] * 3 + ["on_train_batch_end"]) * cfg.trainer.limit_train_batches
    assert {"train/recon_epoch", "val/loss"} <= set(trainer.callback_metrics)
    model.extra = nn.Linear(2, 2)
    assert writes["extra"] == 1 and dict(model.named_children())["extra"] is model.extra


@pytest.mark.parametrize("model", ["catvae", "infocatvae", "catvae_free", "aae model.K=10"])
def test_models_train_and_validate_in_lightnings_barebones_trainer(model, tmp_path):
    """Lightning's ``Trainer(barebones=True)`` (its mode for timing the Trainer, where ``self.log`` raises) trains
    and validates every model: the models then sum and log nothing (the bench's ``floor`` record), and in a
    normal trainer they log as before."""
    cfg = make_cfg([*TINY, *f"model={model}".split()], tmp_path)
    for barebones in (True, False):
        model_ = hydra.utils.instantiate(cfg.model)
        trainer = L.Trainer(
            barebones=barebones,
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
        )
        trainer.fit(model_, datamodule=hydra.utils.instantiate(cfg.data))
        assert trainer.global_step > 0
        logged = set(trainer.callback_metrics)
        if barebones:
            assert not logged and not model_._term_sums
        else:
            assert {"train/recon_epoch", "val/loss"} <= logged


def test_the_bench_times_lightnings_floor_in_a_barebones_trainer(tmp_path):
    """``experiments.bench.lightning_vs_bare(..., barebones=True)`` builds the shipped trainer's settings as a
    ``Trainer(barebones=True)`` (which refuses a profiler, a logger or a logging interval) with no callback but
    its timer, and times it against the bare loop."""
    from experiments import bench

    cfg = bench.compose_cfg("aae", "mlp", str(tmp_path), DATA_DIR, "cpu")
    res = bench.lightning_vs_bare(cfg, steps=3, device=torch.device("cpu"), repeats=1, barebones=True)
    trainer = res["trainer"]
    assert trainer.barebones and trainer.loggers == []
    assert [type(cb).__name__ for cb in trainer.callbacks] == ["EpochTimer"]
    assert trainer.global_step == 2 * 3 * 3  # two epochs (warm-up and one round) of 3 batches, 3 optimiser steps each
    # one round: the median of its ratios is Lightning's throughput over the bare loop's (not the other way)
    assert res["ratio"] == pytest.approx(res["light"] / res["bare"])


def test_the_bench_compiles_first_so_that_its_first_compile_is_cold(monkeypatch, capsys):
    """``make bench`` runs the compile record before the baseline record (which compiles the same graph):
    inductor's in-memory caches outlive ``torch._dynamo.reset()``, so a compile after it was not cold."""
    import sys

    from experiments import bench

    order: list[str] = []
    for name in ("compile", "baseline", "training", "floor", "overhead", "profile", "sweep", "kde"):
        monkeypatch.setattr(bench, f"bench_{name}", lambda *a, _n=name, **k: order.append(_n))
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cpu"])
    bench.main()
    assert order.index("compile") < order.index("baseline")
    assert order.count("compile") == 1
    order.clear()
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cpu", "--baseline"])  # the baseline record alone
    bench.main()
    assert order == ["baseline"]
