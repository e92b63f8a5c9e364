"""What this machine's CPU can do, read once: its instruction-set flags, whether it computes bf16
natively, and the training precision ``trainer=cpu`` picks from that (the ``cpu_precision`` resolver);
whether it has an NVIDIA driver at all (``skip_nvml_check_without_driver``); and the C library's allocator
settings for a training process (``keep_freed_memory``). ``tune_process`` makes both.

bf16 autocast on a CPU without AMX or AVX512_BF16 is emulated (converted to float32 for each
product) and runs slower than float32, so bf16 is chosen only where the CPU reports one of them.
Measured in ``experiments/results/bench.md``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path

from omegaconf import OmegaConf

# Intel AMX tiles for bf16, and AVX-512's bf16 dot products (Intel Cooper Lake and later, AMD Zen 4 and later)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def _cpuinfo_field(names: tuple[str, ...], cpuinfo: str) -> str | None:
    """The value of the first line of ``cpuinfo`` whose key is one of ``names`` (None without the file or line)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (empty where there is none: macOS, Windows)."""
    return frozenset((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())  # x86, ARM


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``Intel(R) Xeon(R) Processor``), else the machine type (``x86_64``)."""
    return _cpuinfo_field(("model name",), cpuinfo) or platform.processor() or platform.machine()


def bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """Which of ``BF16_FLAGS`` the CPU reports (``flags``: this machine's by default), sorted."""
    flags = cpu_flags() if flags is None else flags
    return sorted(f for f in BF16_FLAGS if f in flags)


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes bf16 products natively (AMX or AVX512_BF16; Apple and other ARM: no)."""
    return platform.machine() in ("x86_64", "AMD64") and bool(bf16_flags(flags))


def cpu_precision() -> str:
    """``bf16-mixed`` on a CPU with native bf16, else ``32-true``: what ``conf/trainer/cpu.yaml`` resolves to."""
    return "bf16-mixed" if native_bf16() else "32-true"


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_nvml_check_without_driver() -> bool:
    """Stop torch from looking for NVML in every optimiser step where there is no NVIDIA driver; True if it did.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, and torch's optimisers call
    ``torch.cuda.is_available()`` in every ``step``. With that variable, and before CUDA is initialised (a
    CPU run), each call tries to load ``libnvidia-ml.so.1``; without a driver the load fails every time and
    torch falls back to ``cudaGetDeviceCount``, which answers at once. On a CUDA build of torch (the default
    wheels) without a driver that is 0.45 to 0.6 ms an optimiser step on the 2-core AMD EPYC: 1.4 to 1.9 ms
    of a 22 ms AAE batch, three steps (``experiments/results/bench.md``). The library is part of the
    driver, so where it cannot load, no GPU can run, the variable's purpose (not initialising CUDA before a
    fork) has nothing to protect, and torch's answer is the same without it: it is set to 0. Left alone
    where the library loads or the variable is not 1."""
    if os.environ.get(NVML_CHECK) != "1":
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        os.environ[NVML_CHECK] = "0"
        return True
    return False


# glibc's mallopt parameters (malloc.h) and the environment variables by which a user sets them at start
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the ceiling of glibc's own adaptive threshold
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before any is given back
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse the memory of freed tensors instead of returning it to the OS; True if set.

    glibc serves an allocation above its mmap threshold (128 KiB, raised only past the size of a freed
    block) with fresh pages from the OS and unmaps it when freed, and gives back the top of the heap once
    more than twice that threshold is free. A training step allocates and frees the same tensors every
    step, so wherever glibc's threshold has not grown past them the kernel maps and zeroes them again in
    every step. Whether it has depends on what the process freed before: at batch 128 (4 MiB tensors) it
    mostly had in our Lightning runs (5 InfoCatVAE epochs: 700K to 860K page faults, 235K with this
    setting, the same wall time within noise); at batch 512 (16 MiB) it had not: a run of 60 batches took
    25.0 and 25.2 s (the whole process) against 19.0 and 21.3 s with it, 1.4 million page faults against
    236K (the 2-core AMD EPYC, ``experiments/results/bench.md``). Set here with ``mallopt`` because a
    faster allocator (jemalloc, tcmalloc: PyTorch's CPU tuning guide) has to be preloaded before the
    process starts. Linux with glibc only, and left to the user when one of ``MALLOC_ENV`` is set; the
    process keeps its peak heap."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or any(k in os.environ for k in MALLOC_ENV):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune_process() -> dict[str, bool]:
    """The process-wide settings of a training process, each True where it was made: ``infocatvae.train`` logs
    them and the bench makes the same ones (in its ``machine`` record), so that its timed loops run as training."""
    return {"nvml_check_skipped": skip_nvml_check_without_driver(), "malloc_keeps_freed_memory": keep_freed_memory()}


OmegaConf.register_new_resolver("cpu_precision", cpu_precision, replace=True)
