"""ONNX Runtime backend: an exported ``.onnx`` + sidecar on CPU, CUDA or TensorRT execution providers.

Providers (``choose_providers``, a pure function of the available providers, the device,
the CUDA device count and the cache folder): with ``device=None`` the best that
``onnxruntime.get_available_providers()`` offers, TensorRT EP, then CUDA EP, then CPU, each
skipped one logged with the reason; no CUDA device: the CPU directly; ``device="cpu"``
forces the CPU; ``device="cuda:K"`` requires a GPU provider. The TensorRT EP gets FP16
(``trt_fp16_enable``), an engine cache and a timing cache (``trt_engine_cache_*``,
``trt_timing_cache_*``) in ``trt_cache_dir``: ``$COLORIZER_TRT_CACHE``, else ``trt-cache/``
beside the model when that can be written, else the user cache folder. After the session
is created, ``session.get_providers()`` says what really runs (``onnxruntime-gpu`` falls back
when a provider cannot start; that is logged), and that is what ``describe()`` reports.

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
from typing import Any, Callable, Mapping

import numpy as np

from engine.core import contract
from engine.backends.base import BackendError, Runner, check_sidecar_io
from engine.core import hardware
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


TRT_CACHE_ENV = "COLORIZER_TRT_CACHE"
TRT_CACHE_NAME = "trt-cache"  # the folder beside the model (git-ignored)


def _user_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "colorizer" / "ort-trt"


def _can_write(folder: Path) -> bool:
    """Whether ``folder`` can be written, or made in a parent that can (nearest existing ancestor)."""
    p = folder
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def trt_cache_dir(model: Path, env: Mapping[str, str] | None = None,
                  can_write: Callable[[Path], bool] = _can_write) -> Path:
    """Engine and timing cache folder of the TensorRT EP: ``$COLORIZER_TRT_CACHE``, else ``trt-cache/``
    beside ``model`` when it can be written, else the user cache folder."""
    env = os.environ if env is None else env
    if env.get(TRT_CACHE_ENV):
        return Path(env[TRT_CACHE_ENV]).expanduser()
    beside = Path(model).resolve().parent / TRT_CACHE_NAME
    return beside if can_write(beside) else _user_cache_dir(env)


def choose_providers(
    available: list[str],
    *,
    device: str | None,
    cuda_devices: int,
    cache_dir: Path | None,
    fp16: bool = True,
    use_tensorrt_ep: bool = True,
    profile: dict[str, str] | None = None,
) -> tuple[list[Any], list[str]]:
    """The ``providers`` argument of ``InferenceSession`` and why each better provider was left out.

    ``available``: ``onnxruntime.get_available_providers()``; ``cuda_devices``: the driver's count;
    ``cache_dir``: the TensorRT EP's cache folder (None: none can be written, so no TensorRT EP);
    ``profile``: ``trt_profile_{min,opt,max}_shapes`` options. ``BackendUnavailable`` when
    ``device`` is ``cuda[:K]`` and no GPU provider can run.
    """
    kind, index = parse_device(device)  # None -> ("cpu", 0): no device asked for
    if kind == "cpu" and device is not None:
        return [CPU_EP], []
    reasons: list[str] = []
    chosen: list[Any] = []
    if kind == "cuda" and not any(p in GPU_EPS for p in available):
        raise BackendUnavailable(
            f"ort backend: --device {device} needs onnxruntime-gpu (this onnxruntime offers {available}); "
            f"pip uninstall onnxruntime && pip install onnxruntime-gpu"
        )
    if cuda_devices == 0:
        if kind == "cuda":
            raise BackendUnavailable(f"ort backend: --device {device}, but the NVIDIA driver reports no CUDA device")
        if any(p in GPU_EPS for p in available):
            reasons.append("no CUDA device: running on the CPU")
        return [CPU_EP], reasons
    if not use_tensorrt_ep:
        reasons.append("TensorRT EP not wanted")
    elif TRT_EP not in available:
        reasons.append(f"TensorRT EP not in this onnxruntime ({', '.join(available)})")
    elif cache_dir is None:
        reasons.append("TensorRT EP skipped: no writable folder for its engine cache")
    else:
        opts: dict[str, Any] = {
            "device_id": str(index),
            "trt_fp16_enable": "True" if fp16 else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache_dir),
            **(profile or {}),
        }
        chosen.append((TRT_EP, opts))
    if CUDA_EP in available:
        chosen.append((CUDA_EP, {"device_id": str(index)}))
    else:
        reasons.append(f"CUDA EP not in this onnxruntime ({', '.join(available)})")
    if kind == "cuda" and not chosen:  # only the TensorRT EP, and it has no cache folder
        raise BackendUnavailable(f"ort backend: --device {device}: no GPU provider can run ({'; '.join(reasons)})")
    chosen.append(CPU_EP)
    return chosen, reasons


def check_int8_weights_run_here(meta: Mapping[str, Any], model: Path) -> None:
    """Refuse an INT8 file with 8-bit weights (``precision_info.reduce_range`` false) on a CPU known to lack
    VNNI, where ONNX Runtime's kernels saturate and give wrong colours rather than an error. The CPU flags
    are read only for such a file; unreadable flags (``cpu_has_vnni()`` None) let it run."""
    if meta.get("precision") != "int8" or (meta.get("precision_info") or {}).get("reduce_range") is not False:
        return
    if hardware.cpu_has_vnni() is False:
        raise BackendError(f"{model}: INT8 with 8-bit weights runs correctly only on CPUs with VNNI, and this CPU "
                           f"has none (its outputs would be wrong colours); re-export it for this machine with "
                           f"`cli.py export --precision int8 --reduce-range on`, or use the FP32 model")


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
        self._asked: list[str] = []  # the providers asked for, best first

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
        providers = self._providers(available)
        if self._asked and self._asked[0] == CPU_EP:
            check_int8_weights_run_here(self.meta, self.model)

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
        if self._asked and self.providers and self._asked[0] != self.providers[0]:
            log.warning("ort: %s could not start (ONNX Runtime's log says why); running on %s", self._asked[0],
                        self.providers[0])
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

    def _providers(self, available: list[str]) -> list[Any]:
        """``choose_providers`` for this runner; the TensorRT EP's cache folder is made here."""
        cache: Path | None = None
        profile = None
        forced_cpu = self.device is not None and parse_device(self.device)[0] == "cpu"
        gpus = 0 if forced_cpu or not any(p in GPU_EPS for p in available) else hardware.cuda_device_count()
        if gpus and self.use_tensorrt_ep and TRT_EP in available:
            cache = trt_cache_dir(self.model)
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                log.info("ort: cannot make the TensorRT cache folder %s (%s)", cache, e.strerror or e)
                cache = None
            if self.size and self.batch_size:
                s, b = contract.round_up(self.size, self.size_multiple), int(self.batch_size)
                profile = {"trt_profile_min_shapes": f"{contract.INPUT_NAME}:1x1x{s}x{s}",
                           "trt_profile_opt_shapes": f"{contract.INPUT_NAME}:{b}x1x{s}x{s}",
                           "trt_profile_max_shapes": f"{contract.INPUT_NAME}:{b}x1x{s}x{s}"}
        providers, reasons = choose_providers(available, device=self.device, cuda_devices=gpus, cache_dir=cache,
                                              fp16=self.meta.get("precision") != "int8",
                                              use_tensorrt_ep=self.use_tensorrt_ep, profile=profile)
        for reason in reasons:
            log.info("ort: %s", reason)
        self._asked = [p if isinstance(p, str) else p[0] for p in providers]
        return providers

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
