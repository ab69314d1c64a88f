"""Hardware probing, in one place: device strings, CUDA devices, CPU cores and flags.

Imports nothing heavy: the CUDA count asks the driver (libcuda) through ctypes, so it is safe
before importing TensorRT, whose runtime can crash a process on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from engine.core.errors import ColorizerError


class DeviceError(ColorizerError, ValueError):
    """A device string that is not ``cpu``, ``cuda`` or ``cuda:K``."""


def parse_device(device: str | None) -> tuple[str, int]:
    """``None``/``"cpu"`` -> ("cpu", 0); ``"cuda"`` -> ("cuda", 0); ``"cuda:K"`` -> ("cuda", K)."""
    if device is None or device == "" or device == "cpu":
        return "cpu", 0
    m = re.fullmatch(r"cuda(?::(\d+))?", str(device).strip())
    if not m:
        raise DeviceError(f"device: expected cpu, cuda or cuda:K, found {device!r}")
    return "cuda", int(m.group(1) or 0)


def cuda_device_count() -> int:
    """CUDA devices visible through the driver (libcuda), 0 without a driver."""
    return cuda_devices()[0]


def cuda_devices() -> tuple[int, str]:
    """(CUDA devices visible through the driver, how that was found), for messages that say why none."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            err = cuda.cuInit(0)
            if err != 0:
                return 0, f"{lib}: cuInit returned CUDA error {err}"
            n = ctypes.c_int(0)
            err = cuda.cuDeviceGetCount(ctypes.byref(n))
            if err != 0:
                return 0, f"{lib}: cuDeviceGetCount returned CUDA error {err}"
            return int(n.value), f"{lib}: cuDeviceGetCount"
        except AttributeError:
            return 0, f"{lib}: not a CUDA driver library"
    return 0, "no CUDA driver library (libcuda) found"


def allowed_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use (affinity / cgroup-limited), at least 1."""
    allowed = allowed_cpus()
    physical = None
    try:
        import psutil  # optional (dev extra)

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = _cores_from_cpuinfo()
    logical = os.cpu_count() or allowed
    if physical and logical > physical:  # SMT: count one thread per core among the allowed CPUs
        allowed = max(1, allowed * physical // logical)
    return max(1, min(allowed, physical or allowed))


def _cores_from_cpuinfo() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    cores = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        if line.startswith("physical id"):
            phys = line.split(":")[1].strip()
        elif line.startswith("core id"):
            core = line.split(":")[1].strip()
        elif not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys = core = None
    return len(cores) or None


def runtime_versions() -> dict[str, str | None]:
    """Installed versions of the runtimes (read from package metadata: nothing is imported), None if absent."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for label, dists in (("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("tensorrt", ("tensorrt", "tensorrt-cu12",
                         "tensorrt-cu13")), ("torch", ("torch",)), ("cuda-python", ("cuda-python",)), ("ray", ("ray",))):
        found[label] = None
        for dist in dists:
            try:
                found[label] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True when the CPU flags list ``avx512_vnni`` or ``avx_vnni``, False when they do not, None when they
    cannot be read (not Linux). INT8 files with 8-bit weights (``export --reduce-range off``) are correct
    only on such CPUs: without VNNI, AVX2's u8*s8 multiply-add saturates its 16-bit intermediates.
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if not flags:
        return None
    return bool({"avx512_vnni", "avx_vnni"} & flags)
