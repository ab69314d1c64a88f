"""engine.core.hardware: CPU flags."""

from __future__ import annotations

from engine.core import hardware


def test_cpu_vnni_detection(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert hardware.cpu_has_vnni(f) is False
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert hardware.cpu_has_vnni(f) is True
    f.write_text("flags\t\t: fpu avx2 avx_vnni\n")
    assert hardware.cpu_has_vnni(f) is True
    assert hardware.cpu_has_vnni(tmp_path / "missing") is None
