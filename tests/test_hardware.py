"""The CPU's bf16 support, read from /proc/cpuinfo, and the precision that ``trainer=cpu`` picks from it."""

from __future__ import annotations

import platform

import pytest

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
