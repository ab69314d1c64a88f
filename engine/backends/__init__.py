"""Backends behind one runner interface, and the choice of backend and model file.

    ort    exported .onnx + sidecar, ONNX Runtime (TensorRT / CUDA / CPU execution provider)
    trt    TensorRT engine .plan + sidecar, one NVIDIA GPU
    torch  training checkpoint .pt, PyTorch eager (the baseline)

``--backend auto``: the model file's kind decides (.onnx -> ort, .plan -> trt,
.pt -> torch); an .onnx with a ``.plan`` beside it runs on TensorRT when a GPU
and TensorRT are here. With no model, the bundled ``models/colorizer.*`` are
tried in that order (plan with a GPU, onnx, pt). The bundled ONNX is the FP32
``colorizer.onnx`` on every device; ``colorizer-int8.onnx`` ships beside it as a faster
choice on a CPU (``--model``), less colourful with the bundled model
(docs/decisions/010-fp32-default-on-cpu.md).

Importing this package imports no backend library; each runner imports its
own in ``activate()``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from engine.backends.base import BackendError, Runner
from engine.core.hardware import parse_device
from engine.core.errors import ArtifactError, BackendUnavailable, ColorizerError

log = logging.getLogger(__name__)

MODELS_ENV = "COLORIZER_MODELS"


def models_dir() -> Path:
    """Where the bundled models are: ``$COLORIZER_MODELS``, else the checkout's ``models/``, else the
    installed package's copy (``engine/models``, package data of the wheel)."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    checkout = here.parents[2] / "models"
    return checkout if checkout.is_dir() else here.parents[1] / "models"


MODELS = models_dir()
# by backend (the INT8 export, models/colorizer-int8.onnx, is only run when asked for: the module docstring)
BUNDLED = {"ort": MODELS / "colorizer.onnx", "torch": MODELS / "colorizer.pt", "trt": MODELS / "colorizer.plan"}
BACKENDS = ("auto", "ort", "trt", "torch")
SUFFIXES = {
    ".onnx": "ort",
    ".plan": "trt",
    ".engine": "trt",
    ".trt": "trt",
    ".pt": "torch",
    ".pth": "torch",
    ".ckpt": "torch",
}
_EXPECTS = {"ort": "an .onnx file", "trt": "a TensorRT .plan file", "torch": "a .pt checkpoint"}

__all__ = ["BACKENDS", "BackendError", "Runner", "create_runner", "open_runner", "resolve_model"]


def backend_for_file(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BackendError(f"--model: expected .onnx, .plan or .pt, found {path.name}")
    return kind


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _gpu_wanted(device: str | None) -> bool:
    return parse_device(device)[0] == "cuda" or device is None


def _trt_ready() -> bool:
    from engine.backends.trt import trt_available

    return trt_available()


def bundled_onnx(device: str | None) -> Path:
    """The bundled ONNX model for ``device``: the FP32 export on every device (see the module docstring)."""
    return BUNDLED["ort"]


def resolve_model(model: str | os.PathLike[str] | None, backend: str = "auto", device: str | None = None) -> tuple[str, Path]:
    """(backend, model path) for the given options; clear errors naming what was expected and found."""
    if backend not in BACKENDS:
        raise BackendError(f"--backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")
    parse_device(device)  # validate early
    if model is not None:
        path = Path(model).expanduser()
        kind = backend_for_file(path)
        if not path.is_file():
            raise ArtifactError(f"--model {path}: file not found")
        if backend == "auto":
            plan = path.with_suffix(".plan")
            if kind == "ort" and _gpu_wanted(device) and plan.is_file() and _trt_ready():
                return "trt", plan
            return kind, path
        if backend != kind:
            raise BackendError(f"--backend {backend}: expected {_EXPECTS[backend]}, found --model {path.name}")
        return backend, path
    if backend == "auto":
        if BUNDLED["trt"].is_file() and _gpu_wanted(device) and _trt_ready():
            return "trt", BUNDLED["trt"]
        if BUNDLED["ort"].is_file() and _has("onnxruntime"):
            return "ort", bundled_onnx(device)
        if BUNDLED["torch"].is_file() and _has("torch"):
            return "torch", BUNDLED["torch"]
        raise ArtifactError(
            f"no model: the bundled model {BUNDLED['ort']} does not exist; export one there "
            f"(cli.py export CHECKPOINT --out {BUNDLED['ort']}) or pass --model PATH (.onnx, .plan or .pt)"
        )
    path = BUNDLED[backend]
    if backend == "ort" and path.is_file():
        path = bundled_onnx(device)
    if not path.is_file():
        hint = "build one with cli.py build-engine and pass --model X.plan" if backend == "trt" else "or pass --model PATH"
        raise ArtifactError(f"no model: --backend {backend} uses the bundled {path}, which does not exist; {hint}")
    return backend, path


def create_runner(
    backend: str,
    model: Path,
    *,
    device: str | None = None,
    size: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
) -> Runner:
    """An inactive runner of ``backend`` for ``model``."""
    if backend == "ort":
        from engine.backends.ort import OrtRunner

        return OrtRunner(model, device=device, threads=threads, size=size, batch_size=batch_size)
    if backend == "trt":
        from engine.backends.trt import TrtRunner

        return TrtRunner(model, device=device)
    if backend == "torch":
        from engine.backends.torch_eager import TorchRunner

        return TorchRunner(model, device=device, threads=threads)
    raise BackendError(f"backend: expected ort, trt or torch, found {backend!r}")


def open_runner(
    model: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    *,
    device: str | None = None,
    size: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
) -> Runner:
    """Resolve, create and activate a runner. With ``auto``, a TensorRT engine that fails to load falls back to ONNX."""
    chosen, path = resolve_model(model, backend, device)
    runner = create_runner(chosen, path, device=device, size=size, batch_size=batch_size, threads=threads)
    try:
        return runner.activate()
    except ColorizerError as e:
        onnx = path.with_suffix(".onnx")
        if backend != "auto" or chosen != "trt" or not onnx.is_file():
            raise
        if not isinstance(e, (BackendUnavailable, ArtifactError, BackendError)):
            raise
        log.warning("auto: TensorRT engine %s unusable (%s); using ONNX Runtime with %s", path, e, onnx)
        return create_runner("ort", onnx, device=device, size=size, batch_size=batch_size, threads=threads).activate()
