"""The independent reader of generated samples (``infocatvae.reader``) on real MNIST: its accuracy, its
cache, and its three metrics on inputs whose answer is known. The reader is trained once per session
(about 45 s on one CPU core) into a temporary cache folder."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from infocatvae import reader as R
from infocatvae.data import load_split
from tests.helpers import make_cfg

SETTINGS = R.ReaderSettings.from_config(make_cfg([], "unused", name="eval").reader)  # conf/eval.yaml's
TINY = replace(SETTINGS, epochs=1, train_size=500)  # for the cache and seeding checks: well under a second


@pytest.fixture(scope="session")
def reader_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("reader_cache")


@pytest.fixture(scope="session")
def mnist_reader(reader_cache, data_dir) -> R.Reader:
    return R.load_or_train(data_dir, "mnist", SETTINGS, cache_dir=reader_cache)


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return load_split(data_dir, "mnist", train=False)


class _Images:
    """A stand-in for a model with K = 10 categories: ``sample(c)`` hands out, for each c, the next of
    the images given for category c."""

    device = torch.device("cpu")

    def __init__(self, per_category: list[torch.Tensor]) -> None:
        self.per_category, self.K = per_category, len(per_category)
        self.next = [0] * self.K

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        out = []
        for k in c.tolist():
            out.append(self.per_category[k][self.next[k]])
            self.next[k] += 1
        x = torch.stack(out)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        return x.reshape(len(c), 1, 28, 28)


def test_reader_reaches_98_percent_on_mnist(mnist_reader, mnist_test):
    x, y = mnist_test
    assert not mnist_reader.cached and mnist_reader.path.is_file()
    assert mnist_reader.test_acc >= 0.98
    # the reported accuracy is the accuracy on the 10K test images
    assert R.accuracy(mnist_reader.net, x, y) == pytest.approx(mnist_reader.test_acc, abs=1e-6)


def test_the_cache_is_reused_not_retrained(mnist_reader, reader_cache, data_dir, monkeypatch):
    mtime = mnist_reader.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the reader was trained again")

    monkeypatch.setattr(R, "train_reader", no_training)
    again = R.load_or_train(data_dir, "mnist", SETTINGS, cache_dir=reader_cache)
    assert again.cached and again.path == mnist_reader.path
    assert again.test_acc == mnist_reader.test_acc and mnist_reader.path.stat().st_mtime_ns == mtime
    for (k, a), b in zip(mnist_reader.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(a, b), k
    # another data set, other settings or another version: another file, so training (here: refused)
    for other in (
        R.cache_path(reader_cache, "fashion_mnist", SETTINGS),
        R.cache_path(reader_cache, "mnist", replace(SETTINGS, epochs=3)),
        R.cache_path(reader_cache, "mnist", replace(SETTINGS, seed=1)),
    ):
        assert other != mnist_reader.path
    with pytest.raises(AssertionError, match="trained again"):
        R.load_or_train(data_dir, "mnist", replace(SETTINGS, epochs=3), cache_dir=reader_cache)
    monkeypatch.setattr(R, "READER_VERSION", R.READER_VERSION + 1)
    assert R.cache_path(reader_cache, "mnist", SETTINGS) != mnist_reader.path
    with pytest.raises(AssertionError, match="trained again"):
        R.load_or_train(data_dir, "mnist", SETTINGS, cache_dir=reader_cache)


def test_an_unreadable_cache_file_is_replaced(tmp_path, data_dir):
    path = R.cache_path(tmp_path, "mnist", TINY)
    path.write_bytes(b"not a checkpoint")
    r = R.load_or_train(data_dir, "mnist", TINY, cache_dir=tmp_path)
    assert not r.cached and r.path == path
    assert R.load_or_train(data_dir, "mnist", TINY, cache_dir=tmp_path).cached


def test_real_digits_grouped_by_label(mnist_reader, mnist_test):
    """Test images of digit k as the samples of category k: every category has its own label, and the
    agreement is the reader's accuracy on those very images."""
    x, y = mnist_test
    n = 200
    groups = [x[y == k][:n] for k in range(10)]
    m = R.read_samples(mnist_reader.net, _Images(groups), n, batch_size=300)
    assert m["gen_distinct"] == 10 and m["gen_majority_labels"] == list(range(10))
    acc = R.accuracy(mnist_reader.net, torch.cat(groups), torch.arange(10).repeat_interleave(n))
    assert m["gen_agreement"] == pytest.approx(acc, abs=1e-6) and acc >= 0.97
    assert m["gen_confidence"] > 0.95 and m["gen_n_per_category"] == n


def test_one_image_for_every_category(mnist_reader, mnist_test):
    x, y = mnist_test
    same = [x[:1].expand(50, 28, 28)] * 10
    m = R.read_samples(mnist_reader.net, _Images(same), 50)
    assert m["gen_distinct"] == 1 and m["gen_majority_labels"] == [int(y[0])] * 10
    assert m["gen_agreement"] == 1.0
    assert m["gen_confidence"] == pytest.approx(float(R.predict_proba(mnist_reader.net, x[:1]).max()), abs=1e-5)


def test_sparse_noise_is_read_with_low_confidence(mnist_reader, mnist_test):
    """Scattered pixels (10 % on) are no digit: the reader's confidence falls (measured 0.66) well below
    its confidence on real digits (0.99). Dense uniform noise, by contrast, it reads as an 8 with
    confidence ~0.9: a CNN is overconfident away from its training images, so gen_confidence is read
    together with gen_distinct, never alone."""
    g = torch.Generator().manual_seed(0)
    noise = [(torch.rand(200, 28, 28, generator=g) < 0.1).float() for _ in range(10)]
    m = R.read_samples(mnist_reader.net, _Images(noise), 200)
    real = float(R.predict_proba(mnist_reader.net, mnist_test[0][:2000]).max(-1).values.mean())
    assert m["gen_confidence"] < 0.8 and real > 0.97


def test_sample_metrics_on_known_probabilities():
    # K = 3 categories, 4 samples each, 4 labels
    labels = torch.tensor(
        [
            [2, 2, 2, 1],  # majority 2, share 3/4
            [0, 3, 3, 0],  # tie between 0 and 3: the smaller label, 0; share 2/4
            [2, 2, 2, 2],
        ]
    )  # majority 2, share 1
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    probs = torch.zeros(3, 4, 4)
    probs.scatter_(-1, labels[..., None], conf[..., None])
    probs += (1 - probs.sum(-1, keepdim=True)) * (probs == 0) / 3  # the rest spread over the other labels
    m = R.sample_metrics(probs)
    assert m["gen_confidence"] == pytest.approx(float(conf.mean()))
    assert m["gen_agreement"] == pytest.approx((3 / 4 + 2 / 4 + 1) / 3)
    assert m["gen_majority_labels"] == [2, 0, 2] and m["gen_distinct"] == 2
    with pytest.raises(ValueError):
        R.sample_metrics(probs[0])


def test_reader_takes_any_image_view(mnist_reader, mnist_test):
    """Static (N, 1, 28, 28), row-sequential (N, 28, 28), flat (N, 784) and uint8 inputs read the same."""
    x = mnist_test[0][:64]
    ref = R.predict_proba(mnist_reader.net, x.float().div(255).unsqueeze(1))
    for view in (x, x.float().div(255), x.float().div(255).reshape(64, 784)):
        assert torch.allclose(R.predict_proba(mnist_reader.net, view), ref, atol=1e-6)


def test_training_is_seeded_and_leaves_the_global_rng_alone(data_dir):
    x, y = load_split(data_dir, "mnist", train=True)
    x, y = x[:500], y[:500]
    state = torch.get_rng_state()
    a = R.train_reader(x, y, TINY)
    assert torch.equal(torch.get_rng_state(), state)
    b = R.train_reader(x, y, TINY)
    c = R.train_reader(x, y, replace(TINY, seed=1))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head[-1].weight, c.head[-1].weight)
