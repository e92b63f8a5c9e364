"""The data modules on the real MNIST and FashionMNIST files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infocatvae.data import DataError, _BatchIndices, check_raw_files, ensure_dataset, sampler_seed
from tests.helpers import make_datamodule


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_raw_files_are_sound(name, data_dir):
    assert check_raw_files(data_dir, name) == []


@pytest.mark.parametrize("sequential,shape", [(False, (64, 1, 28, 28)), (True, (64, 28, 28))])
def test_batches_are_scaled_images_or_row_sequences(sequential, shape, data_dir):
    dm = make_datamodule(f"data={'seq_mnist' if sequential else 'mnist'}", "data.batch_size=64")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 55000 and len(dm.val_set) == 5000 and len(dm.test_set) == 10000
    raw = next(iter(dm.train_dataloader()))
    assert raw[0].dtype == torch.uint8  # scaled per batch, after transfer
    x, y = dm.on_after_batch_transfer(raw, 0)
    assert x.shape == shape and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert y.shape == (64,) and y.dtype == torch.long and set(y.tolist()) <= set(range(10))
    # every pixel value scaled as float32(v) / 255, whatever the kernel
    every_value = (torch.arange(784) % 256).to(torch.uint8).reshape(1, 28, 28)
    assert torch.equal(dm.scale(every_value).flatten(), every_value.flatten().to(torch.float32) / 255)


def test_split_is_fixed_and_disjoint(data_dir):
    a, b = make_datamodule(), make_datamodule()
    a.setup(), b.setup()
    assert torch.equal(a.val_set.images, b.val_set.images)
    # every training image against every validation image, by its bytes (MNIST's 60K training images are
    # pairwise distinct, so the sets lose none)
    train_rows, val_rows = ({row.tobytes() for row in s.images.flatten(1).numpy()} for s in (a.train_set, a.val_set))
    assert (len(train_rows), len(val_rows)) == (55000, 5000)
    assert len(train_rows & val_rows) == 0
    c = make_datamodule("data.split_seed=1")
    c.setup()
    assert not torch.equal(a.val_set.labels, c.val_set.labels)


def test_shuffle_depends_only_on_seed_and_epoch(data_dir):
    dm = make_datamodule("data.batch_size=32", "seed=3")
    dm.setup()
    first = [next(iter(dm.train_dataloader()))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))[1], first[0])


def test_neighbouring_seeds_do_not_share_their_epoch_orders(data_dir):
    """DistributedSampler draws epoch e from seed + e: with the shuffle seed as it is, seed 1's epoch 0 would be
    seed 0's epoch 1."""

    def order(seed: int, epoch: int) -> torch.Tensor:
        dm = make_datamodule("data.batch_size=55000", f"seed={seed}")
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    assert not torch.equal(order(1, 0), order(0, 1)) and not torch.equal(order(2, 3), order(1, 4))
    assert torch.equal(order(1, 0), order(1, 0))


def test_batches_follow_the_distributed_samplers_order_one_tensor_each(data_dir):
    """The training loader's batches are ``DistributedSampler``'s order for this process (seed, epoch), cut into
    ``batch_size`` consecutive indices, the last one shorter: the batches of torch's own BatchSampler."""
    from torch.utils.data.distributed import DistributedSampler

    dm = make_datamodule("data.batch_size=1000", "seed=3")
    dm.setup()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 55 and [len(b[1]) for b in batches[-2:]] == [1000, 55000 - 54 * 1000]
    ref = DistributedSampler(dm.train_set, num_replicas=1, rank=0, shuffle=True, seed=sampler_seed(dm.shuffle_seed))
    ref.set_epoch(2)
    order = torch.tensor(list(ref))
    assert torch.equal(torch.cat([b[1] for b in batches]), dm.train_set.labels[order])
    assert torch.equal(batches[7][0], dm.train_set.images[order[7000:8000]])
    # the two processes of a DDP job: disjoint halves of the same permutation
    ranks = [
        _BatchIndices(dm.train_set, 1000, num_replicas=2, rank=r, seed=sampler_seed(dm.shuffle_seed)) for r in (0, 1)
    ]
    halves = [torch.cat(list(b)) for b in ranks]
    assert [len(b) for b in ranks] == [28, 28] and [len(h) for h in halves] == [27500, 27500]
    assert set(halves[0].tolist()).isdisjoint(halves[1].tolist())
    assert sorted(torch.cat(halves).tolist()) == list(range(55000))


def test_missing_files_without_network_name_folder_and_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    with pytest.raises(DataError) as err:
        ensure_dataset(tmp_path, "mnist")
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "t10k-labels-idx1-ubyte" in msg and "could not be downloaded" in msg


def test_jobs_starting_together_download_once_and_never_read_a_half_written_file(tmp_path, data_dir, monkeypatch):
    """Two jobs of a local sweep on a fresh machine: the second waits for the first's download, then finds the
    files whole (it had seen them truncated mid-write and stopped, or downloaded them again)."""
    import shutil
    import threading
    import time

    from infocatvae import data

    raw = tmp_path / "MNIST" / "raw"
    downloads = []

    class SlowMNIST:  # torchvision's MNIST(download=True), writing the real files in halves
        def __init__(self, root, train, download):
            downloads.append(train)
            raw.mkdir(parents=True, exist_ok=True)
            for name, _ in data.RAW_FILES:
                if name.startswith("train" if train else "t10k"):
                    src = (Path(data_dir) / "MNIST" / "raw" / name).read_bytes()
                    with open(raw / name, "wb") as f:
                        f.write(src[: len(src) // 2])
                        f.flush()
                        time.sleep(0.2)
                        f.write(src[len(src) // 2 :])

    monkeypatch.setattr(data, "_torchvision_class", lambda dataset: SlowMNIST)
    errors = []

    def job():
        try:
            ensure_dataset(tmp_path, "mnist")
        except Exception as err:
            errors.append(err)

    first = threading.Thread(target=job)
    first.start()
    time.sleep(0.1)  # the second starts while the first writes
    job()
    first.join()
    assert not errors and downloads == [True, False]
    assert not data.check_raw_files(tmp_path, "mnist")
    shutil.rmtree(raw)


def test_truncated_file_is_named(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        data = (Path(data_dir) / "MNIST" / "raw" / name).read_bytes()
        (raw / name).write_bytes(data[: len(data) // 2] if name.startswith("t10k-images") else data)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is truncated or corrupt"):
        ensure_dataset(tmp_path, "mnist")
