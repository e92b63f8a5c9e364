"""MNIST and FashionMNIST as LightningDataModules, static (B, 1, 28, 28) or row-sequential (B, 28, 28).

The IDX files are read once, through torchvision's datasets, into uint8 tensors
held in memory (47 MB for the 60K training images). Each batch is gathered by one
``index_select`` and scaled to [0, 1] after it reaches the device: no per-sample
PIL transform or collate in the training loop. With ``on_device: true`` and a
GPU trainer, the whole dataset is moved to the GPU once in ``setup``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

DATASETS = ("mnist", "fashion_mnist")
_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
RAW_FILES = (
    ("train-images-idx3-ubyte", (60000, 28, 28)),
    ("train-labels-idx1-ubyte", (60000,)),
    ("t10k-images-idx3-ubyte", (10000, 28, 28)),
    ("t10k-labels-idx1-ubyte", (10000,)),
)


class DataError(RuntimeError):
    """The data folder is missing, unreadable or holds corrupt files."""


def default_data_dir() -> str:
    """``INFOCATVAE_DATA_DIR`` when set, else ``./data`` (the default of config ``paths.data_dir``)."""
    return os.environ.get("INFOCATVAE_DATA_DIR") or "data"


def _torchvision_class(dataset: str):
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[dataset]


def raw_folder(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / _FOLDERS[dataset] / "raw"


def check_raw_files(data_dir: str | Path, dataset: str) -> list[str]:
    """Problems with the uncompressed IDX files (missing, truncated, corrupt); empty when all is well.

    torchvision's reader fails on a truncated file with an opaque reshape error,
    so the header and size are checked here first to name the file at fault.
    """
    folder = raw_folder(data_dir, dataset)
    problems = []
    for name, shape in RAW_FILES:
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        expected = 4 + 4 * len(shape) + int(torch.tensor(shape).prod())
        with open(path, "rb") as f:
            header = f.read(4 + 4 * len(shape))
        magic = int.from_bytes(header[:4], "big") if len(header) >= 4 else -1
        dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(shape)))
        size = path.stat().st_size
        if magic != 0x800 + len(shape) or dims != shape:
            problems.append(f"{path} is corrupt (header {magic:#x} {dims}, expected {0x800 + len(shape):#x} {shape})")
        elif size != expected:
            problems.append(f"{path} is truncated or corrupt ({size} bytes, expected {expected})")
    return problems


def _expected_files_message(data_dir: str | Path, dataset: str) -> str:
    folder = raw_folder(data_dir, dataset)
    names = ", ".join(n for n, _ in RAW_FILES)
    return (
        f"expected the {dataset} IDX files {names} (or their .gz archives) in {folder}; "
        f"set paths.data_dir=<folder> or INFOCATVAE_DATA_DIR to a folder in torchvision's layout"
    )


def ensure_dataset(data_dir: str | Path, dataset: str, download: bool = True) -> None:
    """Make sure the raw files are there and sound: extract the .gz files or download them when missing.

    Raises ``DataError`` naming the folder and the files expected when that fails.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: the known ones are {list(DATASETS)}")

    def only_missing(problems: list[str]) -> bool:  # nothing truncated or corrupt: a download may fetch them
        return all(p.endswith("is missing") for p in problems)

    problems = check_raw_files(data_dir, dataset)
    folder = Path(data_dir)
    # (a corrupt file in a folder this job cannot write is reported as it is, below)
    if problems and download and (only_missing(problems) or os.access(folder, os.W_OK)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # one download at a time: the jobs of a local sweep start together on a fresh machine, and a job
            # that checked while another was writing saw truncated files; the waiting job checks again
            with open(folder / f".{dataset}.download.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                problems = check_raw_files(data_dir, dataset)
                if problems and only_missing(problems):
                    _torchvision_class(dataset)(str(folder), train=True, download=True)
                    _torchvision_class(dataset)(str(folder), train=False, download=True)
        except PermissionError as err:
            raise DataError(
                f"cannot write to the data folder {folder} to download {dataset} ({err}); "
                + _expected_files_message(data_dir, dataset)
            ) from err
        except Exception as err:  # no network, a mirror down, a bad archive
            raise DataError(
                f"{dataset} is missing from {folder} and could not be downloaded ({type(err).__name__}: {err}); "
                + _expected_files_message(data_dir, dataset)
            ) from err
        problems = check_raw_files(data_dir, dataset)
    if problems:
        raise DataError("; ".join(problems) + ". " + _expected_files_message(data_dir, dataset))


def load_split(data_dir: str | Path, dataset: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images (N, 28, 28) and int64 labels (N,) of the training (60K) or test (10K) set."""
    ds = _torchvision_class(dataset)(str(data_dir), train=train, download=False)
    return ds.data, ds.targets.long()


class _InMemory(Dataset):
    """Images and labels held as tensors. An item is a whole batch: a tensor of indices (from
    ``_BatchIndices``) gathers its images and labels with one ``index_select`` each."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int | torch.Tensor):
        if isinstance(idx, int):
            return self.images[idx], self.labels[idx]
        if self.images.is_cuda:  # a pinned, asynchronous copy: a pageable one would wait for the GPU
            idx = idx.pin_memory().to(self.images.device, non_blocking=True)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


def sampler_seed(shuffle_seed: int) -> int:
    """The seed handed to ``DistributedSampler``, which draws epoch e's order from seed + e: the shuffle seed
    times a prime above any number of epochs, so that runs with neighbouring seeds (0, 1, 2) do not share their
    orders one epoch apart (seed 1's epoch 0 was seed 0's epoch 1)."""
    return shuffle_seed * 1_000_003


class _BatchIndices(DistributedSampler):
    """This process's share of the data in ``DistributedSampler``'s order, cut into batches of ``batch_size``
    indices, each one tensor (the last one shorter): the DataLoader (``batch_size=None``) hands each to
    ``_InMemory``. Written here because torch's ``BatchSampler`` builds each batch as a list of Python ints,
    which the dataset then turns back into a tensor and gathers with advanced indexing: 0.3 ms a batch on
    2 CPU cores against 0.01 ms for ``index_select`` of a tensor slice. A ``DistributedSampler``, so Lightning
    sets its epoch and leaves it in place under DDP."""

    def __init__(self, dataset: Dataset, batch_size: int, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it): see resume_at

    def resume_at(self, epoch: int, batches: int) -> None:
        """The next pass, if it is epoch ``epoch``'s, starts after its first ``batches`` batches."""
        self._resume = (epoch, batches)

    def __iter__(self):
        # A generator, so the order is drawn at the first batch, as torch's BatchSampler does: Lightning may
        # create the loader's iterator before it sets the epoch (then a resumed run would see another order).
        order = torch.tensor(list(super().__iter__()), dtype=torch.long)
        skip = 0
        if self._resume is not None:
            skip = self._resume[1] if self._resume[0] == self.epoch else 0
            self._resume = None
        yield from order.split(self.batch_size)[skip:]

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)


def _keep_batch(batch):
    return batch


class _ResumableLoader(DataLoader):
    """The training loader, resumable mid-epoch (Lightning's ``_Stateful``: ``state_dict``/``load_state_dict``, saved
    in each checkpoint): it records the epoch and how many of its batches were trained (``progress``), and a run
    resumed from a checkpoint written mid-epoch (a preemption, ``every_n_train_steps``) goes on with the epoch's
    next batch, instead of the epoch's first batches again (Lightning counts on from where it stopped, so the
    epoch's last batches would never be seen)."""

    def __init__(self, *args, progress: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        # the epoch whose order the sampler drew (Lightning sets it again, the same, on resuming)
        return {"epoch": self.sampler.epoch, "batches": self.progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches"])


class MNISTDataModule(L.LightningDataModule):
    """MNIST or FashionMNIST: 55K/5K train/validation split of the training set (fixed seed), 10K test.

    Batches are ``(x, y)`` with ``x`` float in [0, 1], shaped (B, 1, 28, 28), or (B, 28, 28) rows
    when ``sequential`` (section 11: each image a 28-step series of 28-pixel rows).
    """

    def __init__(
        self,
        *,
        name: str,
        data_dir: str | None,
        sequential: bool,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        split_seed: int,
        shuffle_seed: int,
        on_device: bool,
        download: bool,
    ) -> None:
        # No defaults here: conf/data/*.yaml holds them (README, "Layout"); data_dir None: default_data_dir().
        super().__init__()
        self.save_hyperparameters()
        self.name = name
        self.data_dir = data_dir if data_dir is not None else default_data_dir()
        self.sequential = sequential
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.on_device, self.download = on_device, download
        self.train_set = self.val_set = self.test_set = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (28, 28) if self.sequential else (1, 28, 28)

    def prepare_data(self) -> None:
        ensure_dataset(self.data_dir, self.name, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ensure_dataset(self.data_dir, self.name, download=False)
        images, labels = load_split(self.data_dir, self.name, train=True)
        test_images, test_labels = load_split(self.data_dir, self.name, train=False)
        device = torch.device("cpu")
        if self.on_device and self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            device = self.trainer.strategy.root_device
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        self.train_set = _InMemory(images[train_idx].to(device), labels[train_idx].to(device))
        self.val_set = _InMemory(images[val_idx].to(device), labels[val_idx].to(device))
        self.test_set = _InMemory(test_images.to(device), test_labels.to(device))

    def _loader(self, ds: _InMemory, batch_size: int, shuffle: bool) -> DataLoader:
        # num_workers=0: a batch is one tensor index into memory (or GPU memory);
        # worker processes would only add IPC copies.
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if self.trainer is not None and self.trainer.overfit_batches:
            # Lightning replaces any sampler but a SequentialSampler (with batch_size=None it would then hand out
            # single images): the same first batches in order, torch's own batching
            return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
        # A DistributedSampler also for one process: its permutation depends only on
        # (shuffle_seed, epoch), which Lightning sets each epoch, so a resumed run
        # sees the same batches as an uninterrupted one.
        batches = _BatchIndices(
            ds,
            batch_size,
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=sampler_seed(self.shuffle_seed),
            drop_last=False,
        )
        # Its own generator: creating an iterator otherwise draws a base seed from torch's global RNG,
        # at a point that differs between an uninterrupted and a resumed run (see callbacks.EpochSeed).
        settings = {
            "batch_size": None,  # each item of the sampler is a batch
            "sampler": batches,
            "collate_fn": _keep_batch,
            "num_workers": 0,
            "pin_memory": False,
            "generator": torch.Generator().manual_seed(self.shuffle_seed),
        }
        if shuffle:  # the training loader
            return _ResumableLoader(ds, **settings, progress=self._training_progress)
        return DataLoader(ds, **settings)

    def _training_progress(self) -> int:
        """How many batches of the running epoch have had their step, when a checkpoint is written; where Lightning
        counts on from when it resumes (a stop inside a step counts that batch as not trained)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 28, 28) → float32 in [0, 1], in this module's view: one pass (the division promotes uint8 to
        float32 as it reads it; the same values as ``images.float() / 255``)."""
        return self.as_view(images.div(255.0))

    def as_view(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values of N images, flat (N, 784) or not, in this module's view: (N, 28, 28) rows when
        ``sequential``, else (N, 1, 28, 28)."""
        return x.reshape(len(x), 28, 28) if self.sequential else x.reshape(len(x), 1, 28, 28)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return self.scale(images), labels
