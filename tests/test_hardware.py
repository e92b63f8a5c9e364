"""The CPU's bf16 support, read from /proc/cpuinfo, and the precision that ``trainer=cpu`` picks from it."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import pytest
import torch

from infocatvae import hardware
from tests.helpers import make_cfg

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Test CPU
flags\t\t: fpu sse2 avx2 {extra}
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu sse2 avx2 {extra}
"""


@pytest.mark.parametrize(
    ("extra", "native"),
    [("amx_bf16 amx_tile avx512f", True), ("avx512f avx512_bf16", True), ("avx512f avx512_vnni", False), ("", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(extra, native, tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(extra=extra))
    flags = hardware.cpu_flags(str(info))
    assert hardware.cpu_model(str(info)) == "Intel(R) Xeon(R) Test CPU"
    assert {"fpu", "sse2", "avx2"} <= flags and "bogomips" not in flags
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert hardware.native_bf16(flags) is native
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # ARM's bf16 is not what the flags name
    assert hardware.native_bf16(flags) is False


def test_no_cpuinfo_means_no_flags(tmp_path):
    assert hardware.cpu_flags(str(tmp_path / "missing")) == frozenset()
    assert hardware.cpu_model(str(tmp_path / "missing")) == (platform.processor() or platform.machine())


@pytest.mark.parametrize(("native", "precision"), [(True, "bf16-mixed"), (False, "32-true")])
def test_trainer_cpu_picks_bf16_only_where_the_cpu_has_it(native, precision, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: native)
    assert make_cfg(["trainer=cpu"], tmp_path).trainer.precision == precision
    # the other presets and an explicit value are left alone
    assert make_cfg(["trainer=default"], tmp_path).trainer.precision == "32-true"
    assert make_cfg(["trainer=cpu", "trainer.precision=32-true"], tmp_path).trainer.precision == "32-true"


def _no_driver(name):
    raise OSError(f"{name}: cannot open shared object file: No such file or directory")


def test_nvml_check_is_skipped_only_where_the_driver_library_cannot_load(monkeypatch):
    monkeypatch.setenv(hardware.NVML_CHECK, "1")  # as importing Lightning leaves it
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a machine with the driver: left alone
    assert hardware.skip_nvml_check_without_driver() is False and os.environ[hardware.NVML_CHECK] == "1"
    monkeypatch.setattr(ctypes, "CDLL", _no_driver)
    available = torch.cuda.is_available()
    assert hardware.skip_nvml_check_without_driver() is True and os.environ[hardware.NVML_CHECK] == "0"
    assert torch.cuda.is_available() == available  # torch's answer does not change
    monkeypatch.delenv(hardware.NVML_CHECK)  # set to nothing by the user: left alone
    assert hardware.skip_nvml_check_without_driver() is False and hardware.NVML_CHECK not in os.environ


@pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="a CPU build of torch never looks for NVML")
def test_without_the_nvml_check_an_optimiser_step_no_longer_looks_for_the_driver(monkeypatch):
    """What the skip is for: torch's optimisers ask ``torch.cuda.is_available()`` in every step; with the check on
    (and CUDA not initialised: a CPU run) each asks NVML, after the skip none does."""
    if torch.cuda.is_initialized():  # then torch has cached its device count and asks nothing
        pytest.skip("CUDA is initialised in this process")
    loads = []
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: loads.append(1) or -1)  # NVML absent
    monkeypatch.setattr(ctypes, "CDLL", _no_driver)
    monkeypatch.setenv(hardware.NVML_CHECK, "1")
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], fused=True)

    def steps(n: int) -> int:
        loads.clear()
        for _ in range(n):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
        return len(loads)

    assert steps(3) >= 3
    assert hardware.skip_nvml_check_without_driver()
    assert steps(3) == 0


FAULTS_PER_STEP = """
import ctypes, resource, sys
import torch
from infocatvae import hardware
mallopt = ctypes.CDLL(None).mallopt  # glibc's start-up thresholds, held fixed: the adaptive ones depend on
mallopt(hardware.M_MMAP_THRESHOLD, 128 << 10)  # what the imports happened to free
mallopt(hardware.M_TRIM_THRESHOLD, 128 << 10)
print(hardware.keep_freed_memory() if sys.argv[1] == "keep" else None)
faults = []
for _ in range(10):  # a step's worth of large tensors, written and freed, as a training step does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(6 << 20) for _ in range(4)]  # 24 MiB each
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[5:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_freed_memory_stops_the_page_faults_of_every_step(monkeypatch):
    """Fresh processes from glibc's start-up thresholds (128 KiB): each repetition maps its 96 MiB anew
    (about 24,000 page faults of 4 KiB); after ``keep_freed_memory`` none. A user's own setting at start
    (one of ``MALLOC_ENV``) is left alone."""

    def run(mode: str) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if k not in hardware.MALLOC_ENV}
        cmd = [sys.executable, "-c", FAULTS_PER_STEP, mode]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=environ).stdout.split()

    set_, start_up_faults = run("start-up")
    assert set_ == "None" and int(start_up_faults) > 10000
    set_, kept_faults = run("keep")
    assert set_ == "True" and int(kept_faults) < 100
    for name in hardware.MALLOC_ENV:
        with monkeypatch.context() as m:
            m.setenv(name, "131072")
            assert hardware.keep_freed_memory() is False
