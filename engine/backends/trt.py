"""TensorRT backend: a serialized engine (``.plan`` + ``.plan.json`` sidecar) on one NVIDIA GPU.

Current TensorRT API only (10.x / 11.x): ``Runtime.deserialize_cuda_engine``,
``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``,
``set_input_shape`` per batch within optimization profile 0 (a batch above its
maximum is split, one below its minimum padded with blank images),
``set_tensor_address`` and ``execute_async_v3`` on our own CUDA stream.
The runner's device is made current in every call (``cudaSetDevice`` is per
host thread, and ``infer`` may run in another thread than ``activate``).

Memory: device buffers from ``cudaMalloc`` and page-locked host buffers from
``cudaMallocHost`` (cuda-python), grown on demand and reused batch after batch;
host<->device copies are ``cudaMemcpyAsync`` on the same stream, one
``cudaStreamSynchronize`` per batch. Decode and encode run in other threads
meanwhile (the CUDA and TensorRT calls release the GIL).

Without a sidecar: a plan is accepted when its own I/O tensors (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_dtype``, ``get_tensor_shape``) are the contract's
(``engine.core.contract.engine_io_problems``), with a note; the size multiple then comes
from the ONNX file of the same name when there is one (its sidecar or stamped contract), else 1.

Safety: a CUDA device is looked for through the driver *before* ``tensorrt``
is imported (its runtime can crash a process that has no GPU).

This is the project's only TensorRT execution path: ``build-engine`` verifies a
freshly built plan with ``TrtRunner.from_plan`` (no file, no sidecar) before it
writes it (``export.trt_build.verify_engine``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.core import contract
from engine.backends.base import BackendError, Runner, check_sidecar_io
from engine.core import hardware
from engine.core.hardware import parse_device
from engine.core.errors import ArtifactError, BackendUnavailable

log = logging.getLogger(__name__)

PLAN_SUFFIXES = (".plan", ".engine", ".trt")
INSTALL_TRT = "install TensorRT 10 or later and cuda-python on the GPU server: pip install tensorrt cuda-python (docs/gpu-servers.md)"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"trt backend: cuda-python is not installed; {INSTALL_TRT}") from e
    return cudart


def _tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"trt backend: the tensorrt package is not installed; {INSTALL_TRT}") from e
    return tensorrt


def trt_available() -> bool:
    """A CUDA device and an importable TensorRT (checked in that order)."""
    if hardware.cuda_device_count() == 0:
        return False
    try:
        _cudart()
        _tensorrt()
    except BackendUnavailable:
        return False
    return True


def engine_tensors(trt: Any, engine: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, NumPy dtype name, shape with -1 for dynamic dims) of each I/O tensor of a deserialized engine."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dt = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(dt)).name
        except TypeError:  # bf16 / fp8 / int4 have no NumPy type
            dtype = str(dt)
        out.append((name, dtype, tuple(int(d) for d in engine.get_tensor_shape(name))))
    return out


class _Buffer:
    """A device buffer and its page-locked host mirror, grown on demand."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.capacity = 0
        self.device = 0
        self.host = 0
        self.view: np.ndarray | None = None

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.capacity:
            return
        self.free()
        self.device = _check(self.cudart, self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        self.host = _check(self.cudart, self.cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        self.view = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(int(self.host)), dtype=np.uint8)
        self.capacity = nbytes

    def free(self) -> None:
        if self.capacity:
            self.view = None
            self.cudart.cudaFree(self.device)
            self.cudart.cudaFreeHost(self.host)
            self.capacity = 0


def _check(cudart: Any, result: Any, what: str) -> Any:
    err = result[0] if isinstance(result, tuple) else result
    if err != cudart.cudaError_t.cudaSuccess:
        msg = cudart.cudaGetErrorString(err)[1]
        raise BackendError(f"trt: {what} failed: {msg.decode() if isinstance(msg, bytes) else msg}")
    if isinstance(result, tuple) and len(result) > 1:
        return result[1]
    return None


class TrtRunner(Runner):
    name = "trt"

    def __init__(self, model: str | os.PathLike[str], *, device: str | None = None) -> None:
        super().__init__()
        self.model = Path(model)
        self.device = device or "cuda:0"
        self.meta: dict[str, Any] = {}
        self._profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
        self._trt: Any = None
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._gpu = ""
        self._index = 0
        self._plan: bytes | None = None  # set by from_plan: run these bytes, read no file and no sidecar

    @classmethod
    def from_plan(cls, plan: bytes, *, device: str | None = None, size_multiple: int = 1,
                  label: str = "the engine just built") -> TrtRunner:
        """A runner (not yet active) on a serialized engine held in memory, with no file and no sidecar.

        build-engine verifies a plan this way before writing it; ``label`` names it in messages,
        ``size_multiple`` is the source ONNX's (sidecar ``size_multiple``).
        """
        runner = cls(label, device=device)
        runner._plan = bytes(plan)
        runner.size_multiple = size_multiple
        return runner

    def _activate(self) -> None:
        if self._plan is None and self.model.suffix.lower() not in PLAN_SUFFIXES:
            raise BackendError(f"trt backend: expected a TensorRT engine (.plan), found {self.model.name}")
        kind, index = parse_device(self.device)
        if kind != "cuda":
            raise BackendError(f"trt backend runs on a GPU: expected --device cuda[:K], found {self.device!r}")
        self._no_sidecar = False
        if self._plan is None:
            if not self.model.is_file():
                raise ArtifactError(f"{self.model}: model file not found")
            if contract.sidecar_path(self.model).is_file():
                self.meta = contract.read_sidecar(self.model)
                check_sidecar_io(self.meta, self.model)
                self.size_multiple = contract.size_multiple(self.meta, self.model)
            else:
                self._no_sidecar = True  # the engine's own I/O is checked once it is deserialized
        n = hardware.cuda_device_count()
        if n == 0:
            raise BackendUnavailable(
                "trt backend: no CUDA device here (the NVIDIA driver reports none); use --backend ort or torch"
            )
        if index >= n:
            raise BackendUnavailable(f"trt backend: --device cuda:{index}, but only {n} CUDA device(s) are visible")
        cudart = self._cudart = _cudart()
        trt = self._trt = _tensorrt()
        self._index = index
        _check(cudart, cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self._plan if self._plan is not None else self.model.read_bytes())
        if engine is None and self._plan is not None:
            raise ArtifactError(f"{self.model}: TensorRT {trt.__version__} cannot deserialize this engine")
        if engine is None:
            gpu = self.meta.get("gpu")
            gpu = gpu.get("name", gpu) if isinstance(gpu, dict) else gpu
            raise ArtifactError(
                f"{self.model}: TensorRT {trt.__version__} cannot deserialize this engine (built with TensorRT "
                f"{self.meta.get('tensorrt', '?')} on {gpu or '?'}); engines are tied to a TensorRT version and "
                f"GPU model: rebuild it here with build-engine"
            )
        self._engine = engine
        if self._no_sidecar:
            self._accept_without_sidecar(trt, engine)
        self._check_io(trt, engine)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"{self.model}: TensorRT could not create an execution context (GPU memory?)")
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        props = cudart.cudaGetDeviceProperties(index)
        if props[0] == cudart.cudaError_t.cudaSuccess:
            name = props[1].name
            self._gpu = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def _accept_without_sidecar(self, trt: Any, engine: Any) -> None:
        """No sidecar: the engine's own I/O tensors must be the contract's (ArtifactError otherwise)."""
        tensors = engine_tensors(trt, engine)
        problems = contract.engine_io_problems(tensors)
        side = contract.sidecar_path(self.model).name
        if problems:
            raise ArtifactError(f"{self.model}: no sidecar {side}, and the engine's I/O is not the contract's "
                                f"({'; '.join(problems)}); rebuild it with build-engine")
        onnx = self.model.with_suffix(".onnx")
        source = "1 (no ONNX file of the same name)"
        if onnx.is_file():
            try:
                meta = contract.read_contract(onnx, verify_sha256=False)
                self.size_multiple = contract.size_multiple(meta, onnx)
                source = f"{self.size_multiple} from {onnx.name}"
            except ArtifactError as e:
                source = f"1 ({onnx.name}: {e})"
        log.info("note: %s has no sidecar %s; its I/O tensors match the contract (%s); size multiple %s",
                 self.model, side, ", ".join(f"{n} {d} {list(s)}" for n, d, s in tensors), source)

    def _check_io(self, trt: Any, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [t for t in names if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT]
        outs = [t for t in names if engine.get_tensor_mode(t) == trt.TensorIOMode.OUTPUT]
        if ins != [contract.INPUT_NAME]:
            raise BackendError(f"{self.model}: engine inputs: expected ['gray'], found {ins}")
        missing = {contract.OUTPUT_RGB, contract.OUTPUT_UV} - set(outs)
        if missing:
            raise BackendError(f"{self.model}: engine outputs: expected 'rgb' and 'uv', found {outs}")
        try:
            self._dtypes = {t: np.dtype(trt.nptype(engine.get_tensor_dtype(t))) for t in names}
        except TypeError as e:  # bf16 / fp8 / int4 have no NumPy type
            raise BackendError(f"{self.model}: engine I/O types: {e}; expected uint8 'gray', 'rgb' and float 'uv'") from e
        allowed = {contract.INPUT_NAME: ("uint8",), contract.OUTPUT_RGB: ("uint8",), contract.OUTPUT_UV: ("float32", "float16")}
        for t, ok in allowed.items():
            if self._dtypes[t].name not in ok:
                raise BackendError(f"{self.model}: tensor {t!r}: expected {' or '.join(ok)}, found {self._dtypes[t].name}")
        shapes = engine.get_tensor_profile_shape(contract.INPUT_NAME, 0)
        self._profile = tuple(tuple(int(d) for d in s) for s in shapes)  # type: ignore[assignment]

    def _deactivate(self) -> None:
        cudart = self._cudart
        if self._stream is not None and cudart is not None:
            cudart.cudaSetDevice(self._index)
            cudart.cudaStreamSynchronize(self._stream)
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        if self._stream is not None and cudart is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._stream = None
        self._context = None
        self._engine = None

    @property
    def on_gpu(self) -> bool:
        return True

    @property
    def max_batch(self) -> int | None:
        return self._profile[2][0] if self._profile else None

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if self._profile is None:
            return
        lo, _, hi = self._profile
        for axis, what in ((2, "height"), (3, "width")):
            if not lo[axis] <= shape[axis] <= hi[axis]:
                raise BackendError(
                    f"{self.model}: {what} {shape[axis]} is outside the engine's profile "
                    f"({lo[axis]}..{hi[axis]}); use --size within it or rebuild the engine"
                )

    def _infer(self, gray: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        self._check_shape(gray.shape)
        limit = self.max_batch or gray.shape[0]
        if gray.shape[0] > limit:  # split a batch larger than the profile allows
            parts = [self._run(gray[i : i + limit], outputs) for i in range(0, gray.shape[0], limit)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._run(gray, outputs)

    def _run(self, gray: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        n, low = gray.shape[0], self._profile[0][0] if self._profile else 1
        if n < low:  # below the profile's minimum batch: pad with blank images, drop their outputs
            pad = np.zeros((low - n, *gray.shape[1:]), dtype=gray.dtype)
            return {k: v[:n] for k, v in self._run(np.concatenate([gray, pad]), outputs).items()}
        cudart, ctx, stream = self._cudart, self._context, self._stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        wanted = outputs
        _check(cudart, cudart.cudaSetDevice(self._index), f"cudaSetDevice({self._index})")  # per host thread
        if not ctx.set_input_shape(contract.INPUT_NAME, tuple(gray.shape)):
            raise BackendError(f"trt: input shape {gray.shape} rejected by the engine's profile {self._profile}")
        src = self._buffer(contract.INPUT_NAME, gray.nbytes)
        src.view[: gray.nbytes] = gray.reshape(-1).view(np.uint8)
        _check(cudart, cudart.cudaMemcpyAsync(src.device, src.host, gray.nbytes, h2d, stream), "cudaMemcpyAsync H2D")
        self._address(contract.INPUT_NAME, src)
        shapes: dict[str, tuple[int, ...]] = {}
        for name in (contract.OUTPUT_RGB, contract.OUTPUT_UV):  # every output needs an address
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            shapes[name] = shape
            self._address(name, self._buffer(name, int(np.prod(shape)) * self._dtypes[name].itemsize))
        if not ctx.execute_async_v3(int(stream)):
            raise BackendError(f"trt: execute_async_v3 failed on a batch {gray.shape}")
        for name in wanted:
            buf = self._buffers[name]
            nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
            _check(cudart, cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, d2h, stream), "cudaMemcpyAsync D2H")
        _check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        result = {}
        for name in wanted:
            nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
            arr = self._buffers[name].view[:nbytes].view(self._dtypes[name]).reshape(shapes[name])
            result[name] = arr.astype(np.float32) if name == contract.OUTPUT_UV else arr.copy()  # own the data
        return result

    def _address(self, name: str, buf: _Buffer) -> None:
        if not self._context.set_tensor_address(name, int(buf.device)):
            raise BackendError(f"trt: set_tensor_address({name!r}) failed (misaligned or unknown tensor)")

    def _buffer(self, name: str, nbytes: int) -> _Buffer:
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = _Buffer(self._cudart)
        buf.ensure(max(1, nbytes))
        return buf

    def describe(self) -> str:
        gpu = f", {self._gpu}" if self._gpu else ""
        version = getattr(self._trt, "__version__", "?")
        return f"trt (TensorRT {version}, {self.device}{gpu}) {self.model}"
