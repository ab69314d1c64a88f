"""Shared pieces of the benchmarks: the backends measured, model artifacts, machine description, statistics.

Backends (names used on the command line and in the JSON):

    torch              the training checkpoint (.pt) through the engine's PyTorch eager runner (FP32;
                       channels-last on the CPU): the baseline of ``speedup_vs_torch`` and the targets
    torch-nchw         the same runner forced to plain NCHW tensors, as the seed project's prototype
                       measured PyTorch eager (not run by default; rows get ``speedup_vs_torch_nchw``)
    onnxruntime        FP32 ONNX export, ONNX Runtime (the engine's ort runner)
    onnxruntime-int8   INT8 (static QDQ) export, ONNX Runtime
    onnxruntime-fp16   FP16 export, ONNX Runtime (meant for GPUs; very slow on a CPU)
    tensorrt           TensorRT FP16 engine built from the FP32 export (GPU only)

ONNX variants: ``--onnx PRECISION=PATH`` if given; else the exports shipped beside the
checkpoint and made from it (``models/colorizer.onnx``, ``models/colorizer-int8.onnx``:
their sidecar records the checkpoint's sha256), so the shipped artifacts are what is
measured; else an export with ``export.to_onnx.export_checkpoint`` (the same parity
checks and INT8 quality gate as ``cli.py export``) into a cache folder keyed by the
checkpoint's sha256, so a second run reuses it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.hardware import physical_cores
from engine.core.contract import read_sidecar, sha256_file
from engine.core.errors import ColorizerError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "colorizer.pt"


class BenchmarkError(ColorizerError):
    """A benchmark cannot run as asked (missing model, bad option)."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    engine_backend: str  # engine.backends: "torch", "ort" or "trt"
    precision: str  # fp32, fp16, int8
    artifact: str  # "checkpoint", "onnx" or "plan"
    channels_last: bool | None = None  # torch only: TorchRunner(channels_last=...); None = the runner's default


TORCH_BASELINE = "torch"  # speedup_vs_torch and the throughput targets are measured against this one
TORCH_NCHW = "torch-nchw"  # the prototype's baseline: speedup_vs_torch_nchw

BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", "torch", "fp32", "checkpoint"),
    "torch-nchw": BackendSpec("torch-nchw", "torch", "fp32", "checkpoint", channels_last=False),
    "onnxruntime": BackendSpec("onnxruntime", "ort", "fp32", "onnx"),
    "onnxruntime-int8": BackendSpec("onnxruntime-int8", "ort", "int8", "onnx"),
    "onnxruntime-fp16": BackendSpec("onnxruntime-fp16", "ort", "fp16", "onnx"),
    "tensorrt": BackendSpec("tensorrt", "trt", "fp16", "plan"),
}


def parse_list(text: str, what: str, cast: type = str) -> list[Any]:
    """``"a,b"`` -> ["a", "b"] (cast each); raises ``BenchmarkError`` naming the option."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise BenchmarkError(f"--{what}: expected a comma-separated list, found {text!r}")
    try:
        values = [cast(t) for t in items]
    except ValueError as e:
        raise BenchmarkError(f"--{what}: expected {cast.__name__} values, found {text!r}") from e
    if cast is int and min(values) < 1:
        raise BenchmarkError(f"--{what}: expected positive integers, found {text!r}")
    return values


def parse_backends(text: str) -> list[BackendSpec]:
    names = parse_list(text, "backends")
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise BenchmarkError(f"--backends: expected some of {', '.join(BACKENDS)}, found {', '.join(unknown)}")
    return [BACKENDS[n] for n in dict.fromkeys(names)]


def parse_onnx_overrides(items: list[str] | None) -> dict[str, Path]:
    """``["fp32=a.onnx", "int8=b.onnx"]`` -> {precision: path}; each file must exist with its sidecar."""
    out: dict[str, Path] = {}
    for item in items or []:
        precision, sep, path = item.partition("=")
        if not sep or precision not in ("fp32", "fp16", "int8"):
            raise BenchmarkError(f"--onnx: expected PRECISION=PATH with PRECISION fp32, fp16 or int8, found {item!r}")
        p = Path(path).expanduser()
        read_sidecar(p)  # ArtifactError (a ColorizerError) when missing or changed
        out[precision] = p
    return out


def check_model(model: str | os.PathLike[str] | None) -> Path:
    """The checkpoint to benchmark; a clear error when it (the default bundled one included) is missing."""
    path = Path(model).expanduser() if model is not None else DEFAULT_MODEL
    if not path.is_file():
        hint = (
            "the bundled model is not trained yet; pass --model CHECKPOINT.pt (any checkpoint, e.g. one saved with "
            "engine.net.checkpoint.save_checkpoint of ColorizerNet(ModelConfig(width_mult=0.5)))"
            if model is None
            else "pass an existing training checkpoint (.pt)"
        )
        raise BenchmarkError(f"--model {path}: checkpoint not found; {hint}")
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt"):
        raise BenchmarkError(f"--model: expected a training checkpoint (.pt), found {path.name}")
    return path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "colorizer" / "bench"


def shipped_export(checkpoint: Path, precision: str, digest: str) -> Path | None:
    """An export shipped beside the checkpoint (``colorizer.onnx``, ``colorizer-int8.onnx``, ...) made from it."""
    name = f"{checkpoint.stem}.onnx" if precision == "fp32" else f"{checkpoint.stem}-{precision}.onnx"
    path = checkpoint.with_name(name)
    try:
        meta = read_sidecar(path)
    except ColorizerError:
        return None
    source = meta.get("checkpoint") or {}
    return path if meta.get("precision") == precision and source.get("sha256") == digest else None


def onnx_for(checkpoint: Path, precision: str, cache_dir: Path, overrides: dict[str, Path]) -> Path:
    """The ONNX export of ``checkpoint`` at ``precision``: an override, the shipped export made from this
    checkpoint (e.g. ``models/colorizer-int8.onnx``), a cached export, or a new one (into the cache)."""
    if precision in overrides:
        return overrides[precision]
    digest = sha256_file(checkpoint)
    shipped = shipped_export(checkpoint, precision, digest)
    if shipped is not None:
        return shipped
    out = cache_dir / f"{checkpoint.stem}-{digest[:16]}" / f"model-{precision}.onnx"
    try:
        read_sidecar(out)
        return out
    except ColorizerError:
        pass
    from export.to_onnx import export_checkpoint  # imports torch: only when an export is needed

    log.info("exporting %s (%s) to %s", checkpoint, precision, out)
    export_checkpoint(checkpoint, out, precision=precision, force=True)  # replaces a stale cached export
    return out


def needs_checkpoint(specs: list[BackendSpec], onnx: dict[str, Path]) -> bool:
    """Whether some backend needs the training checkpoint: it runs it, or its ONNX export (the FP32 one for
    a TensorRT engine) is not given with ``--onnx``."""
    return any(s.artifact == "checkpoint" or ("fp32" if s.artifact == "plan" else s.precision) not in onnx
               for s in specs)


def device_for(spec: BackendSpec, device: str) -> str:
    """The device ``spec`` runs on when ``device`` was asked: TensorRT always on a GPU (cuda:0 unless given)."""
    return "cuda:0" if spec.engine_backend == "trt" and not device.startswith("cuda") else device


def artifact_for(spec: BackendSpec, checkpoint: Path | None, cache_dir: Path, onnx: dict[str, Path],
                 sizes: list[int], batches: list[int]) -> Path:
    """What ``spec`` runs: the checkpoint, its ONNX export, or a TensorRT engine built from the FP32 export.

    Raises ``ColorizerError`` (``BackendUnavailable`` for a missing GPU stack) saying why it cannot.
    """
    if spec.artifact == "checkpoint":
        if checkpoint is None:
            raise BenchmarkError(f"{spec.name}: needs the training checkpoint (--model)")
        return checkpoint
    if spec.artifact == "onnx":
        return onnx_for(checkpoint, spec.precision, cache_dir, onnx)
    require_tensorrt()
    return plan_for(onnx_for(checkpoint, "fp32", cache_dir, onnx), sizes, batches, cache_dir)


def require_tensorrt() -> None:
    """TensorRT needs a CUDA device and the tensorrt package; checked without importing tensorrt first."""
    from engine.backends.trt import trt_available

    if not trt_available():
        from export.trt_build import require_gpu_stack

        require_gpu_stack()  # raises BackendUnavailable with what is missing
        raise BenchmarkError("tensorrt: TensorRT or cuda-python cannot be imported here")


def plan_for(onnx_fp32: Path, sizes: list[int], batches: list[int], cache_dir: Path) -> Path:
    """A TensorRT FP16 engine of ``onnx_fp32`` whose profile covers the sizes and batch sizes.

    Built into ``cache_dir`` (not beside the export: ``models/`` stays as shipped), named by the
    export's sha256 and the profile; ``build_engine`` reuses it while its key (ONNX, profile,
    TensorRT version, GPU) matches.
    """
    from export.trt_build import build_engine

    lo, hi, top = min(sizes), max(sizes), max(batches)
    digest = read_sidecar(onnx_fp32)["sha256"]
    plan = cache_dir / "engines" / f"{onnx_fp32.stem}-{digest[:16]}-fp16-b{top}-s{lo}-{hi}.plan"
    plan.parent.mkdir(parents=True, exist_ok=True)
    build_engine(onnx_fp32, plan, precision="fp16", batch=(1, top, top), size=(lo, hi, hi), overwrite=True)
    return plan


def artifact_precision_info(path: Path) -> dict[str, Any]:
    """What the export recorded about quality (INT8 PSNR vs FP32 and its floor), for the report."""
    try:
        meta = read_sidecar(path, verify_sha256=False)
    except ColorizerError:
        return {}
    parity = meta.get("parity") or {}
    tol = meta.get("tolerance") or {}
    info = {k: parity[k] for k in ("psnr_db", "uv_max_abs", "rgb_max_levels") if k in parity}
    if tol.get("psnr_floor_db") is not None:
        info["psnr_floor_db"] = tol["psnr_floor_db"]
    return info


# ----------------------------------------------------------------------------- machine and numbers


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    from engine.core.hardware import cuda_device_count

    if cuda_device_count() == 0:
        return []
    try:
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError):
        return ["CUDA device (name unknown)"]


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, GPUs, load and library versions: the context every number needs."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gib = None
    versions = {d: _version(d) for d in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "numpy",
                                          "opencv-python-headless", "pillow")}
    versions = {k: v for k, v in versions.items() if v}
    versions["python"] = platform.python_version()
    return {
        "cpu": _cpu_model(),
        "cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": _gpus() or None,
        "load_average": load,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "memory": memory_setup(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# Environment variables that change how a process gets its memory, recorded with every result: PyTorch eager's
# speed depends on whether it gets transparent huge pages, so results say which were set.
MEMORY_ENV = ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
              "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
# --huge-pages: glibc's malloc asks for transparent huge pages (madvise) for its heaps and large blocks
# (ONNX Runtime's arena, numpy), and PyTorch's CPU allocator does for its own large tensors.
HUGE_PAGES_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "THP_MEM_ALLOC_ENABLE": "1"}


def memory_setup() -> dict[str, Any]:
    """The kernel's transparent-huge-page mode (``always``/``madvise``/``never``) and the ``MEMORY_ENV`` set here."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        thp = next((w.strip("[]") for w in text.split() if w.startswith("[")), None)
    except OSError:
        thp = None
    return {"transparent_hugepage": thp, "env": {k: os.environ[k] for k in MEMORY_ENV if k in os.environ}}


def ask_for_huge_pages() -> None:
    """Set ``HUGE_PAGES_ENV`` in this process's environment, for the processes it starts (not for itself:
    glibc reads its tunables at start-up). Keeps other glibc tunables already set."""
    for key, value in HUGE_PAGES_ENV.items():
        old = os.environ.get(key)
        if key == "GLIBC_TUNABLES" and old:
            value = old if value in old.split(":") else f"{old}:{value}"
        os.environ[key] = value


def process_memory() -> dict[str, float]:
    """This process's RSS and the part of it in transparent huge pages, MiB (Linux; empty elsewhere)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "AnonHugePages"):
                    out["rss_mib" if key == "Rss" else "anon_huge_mib"] = round(int(rest.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        return {}
    return out


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of positive finite values."""
    good = [v for v in values if math.isfinite(v) and v > 0]
    if not good:
        raise BenchmarkError(f"no valid measurement among {values}")
    return {"median": statistics.median(good), "min": min(good), "max": max(good)}


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository when it lies inside it (results are read on other machines), else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def shown_paths(text: str) -> str:
    """``text`` (a runner's description) with the repository's own folder left out of the paths in it."""
    return text.replace(f"{ROOT}{os.sep}", "")


def shown_model(checkpoint: Path | None, onnx: dict[str, Path]) -> str | dict[str, str]:
    """The JSON's ``model``: the checkpoint, or ``{precision: export}`` when only exports were given."""
    return shown_path(checkpoint) if checkpoint else {k: shown_path(v) for k, v in onnx.items()}


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot read benchmark JSON ({e})") from e
    if not isinstance(data, dict) or "machine" not in data:
        raise BenchmarkError(f"{path}: expected a benchmark JSON with 'machine', found {type(data).__name__}")
    return data
