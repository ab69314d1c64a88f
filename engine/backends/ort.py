"""ONNX Runtime backend: an exported ``.onnx`` + sidecar on CPU, CUDA or TensorRT execution providers.

Providers: with ``device=None`` the best that ``onnxruntime.get_available_providers()``
offers (TensorRT EP, then CUDA EP, then CPU); ``device="cpu"`` forces the CPU;
``device="cuda:K"`` requires a GPU provider. After the session is created,
``session.get_providers()`` says what really runs (``onnxruntime-gpu`` silently
falls back to the CPU without a usable GPU), and that is what ``describe()`` reports.

CPU settings: intra-op threads = physical cores, graph optimization ALL, sequential execution,
ONNX Runtime's CPU memory arena on. With calls of about one image (``Runner.cpu_pixels_per_call``)
the arena holds one call's activations and reuses them: without it every activation went through
malloc, large maps were faulted in on every call, and the heap grew over a long run.

Streams (CPU): the calls of one batch run side by side on ``streams`` extra sessions of one
thread each (default: one per inference thread), so the cores never meet at a barrier between
operators; a batch of one call runs on the main session with all the threads. Idle ONNX
Runtime threads sleep rather than spin: the pipeline's reader and writer threads need the
cores, and spinning wins only in model-only loops (docs/decisions).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engine.core import contract
from engine.backends.base import BackendError, Runner, check_sidecar_io
from engine.core.hardware import parse_device, physical_cores
from engine.core.errors import BackendUnavailable

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_EPS = (TRT_EP, CUDA_EP)


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(
            "ort backend: onnxruntime is not installed; pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"
        ) from e
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_ort().get_available_providers())
    except BackendUnavailable:
        return []


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "colorizer" / "ort-trt"


class OrtRunner(Runner):
    name = "ort"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | None = None,
        threads: int | None = None,
        size: int | None = None,
        batch_size: int | None = None,
        use_tensorrt_ep: bool = True,
        streams: int | None = None,
    ) -> None:
        super().__init__()
        if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
            raise BackendError(f"ort backend: streams: expected an integer >= 1, found {streams!r}")
        self.model = Path(model)
        self.device = device
        self.threads = threads
        self.size = size
        self.batch_size = batch_size
        self.use_tensorrt_ep = use_tensorrt_ep
        self.session: Any = None
        self.providers: list[str] = []
        self.meta: dict[str, Any] = {}
        self._errors: tuple[type[BaseException], ...] = ()
        self._threads = 0
        self.streams = streams
        self._stream_sessions: list[Any] = []  # CPU: one-thread sessions for the calls of a batch
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    def _activate(self) -> None:
        ort = _ort()
        if self.model.suffix.lower() != ".onnx":
            raise BackendError(f"ort backend: expected an .onnx model, found {self.model.name}")
        self.meta = contract.read_contract(self.model)  # the sidecar, else the contract stamped in the file
        check_sidecar_io(self.meta, self.model)
        self.size_multiple = contract.size_multiple(self.meta, self.model)
        kind, index = parse_device(self.device)
        available = list(ort.get_available_providers())
        providers = self._providers(kind, index, available)

        self._threads = int(self.threads or physical_cores())
        self.session = self._session(ort, providers, self._threads)
        self.providers = list(self.session.get_providers())
        self._errors = _ort_errors()
        self._check_io()
        if kind == "cuda" and not any(p in GPU_EPS for p in self.providers):
            raise BackendUnavailable(
                f"ort backend: --device {self.device} asked for a GPU but ONNX Runtime runs on {self.providers}; "
                f"check the CUDA/cuDNN libraries that onnxruntime-gpu needs"
            )
        if kind != "cuda" and self.device is None and any(p in GPU_EPS for p in available) and self.providers[0] == CPU_EP:
            log.warning("ort: a GPU provider is installed but the session fell back to the CPU (%s)", self.providers)
        streams = self.streams if self.streams is not None else self._threads
        if self.providers[0] == CPU_EP and streams > 1:
            per = max(1, self._threads // streams)
            self._stream_sessions = [self._session(ort, [CPU_EP], per) for _ in range(streams)]
            self._pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="ort-stream")

    def _session(self, ort: Any, providers: list[Any], threads: int) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = True  # see the module docstring
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # Reader/writer threads share the cores: idle ORT threads must sleep, not spin.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(str(self.model), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types (not RuntimeError)
            raise BackendError(f"{self.model}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e

    def _providers(self, kind: str, index: int, available: list[str]) -> list[Any]:
        if kind == "cpu" and self.device is not None:
            return [CPU_EP]
        chosen: list[Any] = []
        if self.use_tensorrt_ep and TRT_EP in available:
            cache = _cache_dir()
            opts: dict[str, Any] = {
                "device_id": index,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
            }
            if self.size and self.batch_size:
                s, b = contract.round_up(self.size, self.size_multiple), int(self.batch_size)
                opts["trt_profile_min_shapes"] = f"{contract.INPUT_NAME}:1x1x{s}x{s}"
                opts["trt_profile_opt_shapes"] = f"{contract.INPUT_NAME}:{b}x1x{s}x{s}"
                opts["trt_profile_max_shapes"] = f"{contract.INPUT_NAME}:{b}x1x{s}x{s}"
            try:
                cache.mkdir(parents=True, exist_ok=True)
                chosen.append((TRT_EP, opts))
            except OSError:
                log.debug("ort: no writable cache at %s, skipping the TensorRT EP", cache)
        if CUDA_EP in available:
            chosen.append((CUDA_EP, {"device_id": index}))
        if kind == "cuda" and not chosen:
            raise BackendUnavailable(
                f"ort backend: --device {self.device} needs onnxruntime-gpu (this onnxruntime offers {available}); "
                f"pip uninstall onnxruntime && pip install onnxruntime-gpu"
            )
        chosen.append(CPU_EP)
        return chosen

    def _check_io(self) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        gi = ins.get(contract.INPUT_NAME)
        if gi is None or gi.type != "tensor(uint8)" or len(gi.shape) != 4:
            found = f"{gi.type} rank {len(gi.shape)}" if gi is not None else f"inputs {sorted(ins)}"
            raise BackendError(f"{self.model}: input 'gray': expected tensor(uint8) of rank 4, found {found}")
        for name, typ in ((contract.OUTPUT_RGB, "tensor(uint8)"), (contract.OUTPUT_UV, "tensor(float)")):
            o = outs.get(name)
            if o is None or o.type != typ:
                found = o.type if o is not None else f"outputs {sorted(outs)}"
                raise BackendError(f"{self.model}: output {name!r}: expected {typ}, found {found}")

    def _deactivate(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None
        self._stream_sessions = []
        self.session = None

    # ------------------------------------------------------------------ inference
    def _infer(self, gray: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self._run(self.session, gray, outputs)

    def _infer_chunks(self, chunks: list[np.ndarray], outputs: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
        """Stream k runs chunks k, k + streams, ... on its one-thread session; results in the chunks' order."""
        if self._pool is None or len(chunks) < 2:
            return super()._infer_chunks(chunks, outputs)
        k = len(self._stream_sessions)

        def work(j: int) -> list[dict[str, np.ndarray]]:
            return [self._run(self._stream_sessions[j], c, outputs) for c in chunks[j::k]]

        done = [f.result() for f in [self._pool.submit(work, j) for j in range(min(k, len(chunks)))]]
        return [done[i % k][i // k] for i in range(len(chunks))]

    def _run(self, session: Any, gray: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        try:
            results = session.run(list(outputs), {contract.INPUT_NAME: gray})
        except self._errors as e:
            raise BackendError(f"ort: inference failed on a batch {gray.shape} ({type(e).__name__}: {e})") from e
        return dict(zip(outputs, results))

    @property
    def on_gpu(self) -> bool:
        return bool(self.providers) and self.providers[0] in GPU_EPS

    def describe(self) -> str:
        main = self.providers[0] if self.providers else "?"
        dev = ""
        if main in GPU_EPS:
            dev = f" cuda:{parse_device(self.device)[1]}"
        elif main == CPU_EP:
            dev = f", {self._threads} threads"
            if self._stream_sessions:
                dev += f", {len(self._stream_sessions)} streams"
        return f"ort ({main}{dev}) {self.model}"


def _ort_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    errs = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return errs + (RuntimeError,)
