"""ONNX -> TensorRT engine (``MODEL.plan`` + ``MODEL.plan.json``), for GPU servers.

FP16 engines come from an FP16 ONNX graph (``export.fp16``; an FP32 export is
converted first, colour nodes kept FP32) parsed into a strongly typed network:
TensorRT 10 needs the ``STRONGLY_TYPED`` creation flag, TensorRT 11 makes every
network strongly typed (the flag is deprecated and ignored, so it is not passed).
One optimization profile covers batch and square spatial sizes of input ``gray``.
TF32 is switched off (TensorRT enables it by default): FP32 layers, the colour
nodes of an FP16 engine included, stay FP32.

TensorRT takes a uint8 network input only straight into a Cast and gives a uint8
output only straight out of one: ``Shape`` nodes reading ``gray`` are rewired to
its Cast before parsing (``uint8_io_for_tensorrt``), and AveragePool without pads
gets ``count_include_pad=0``, the same result in ONNX, unambiguous in TensorRT
(``ceil_avgpool_for_tensorrt``).

Engine cache: if ``out`` exists and its sidecar's ``cache_key`` (source ONNX
sha256, precision, profile, TensorRT version, GPU name, compute capability, TF32 off)
matches, and the plan's sha256 matches, it is reused unless ``force``. Any other existing
plan or plan sidecar is replaced only with ``force`` (or ``overwrite``), else ``ExportError``.

Verification runs the built plan through the engine's own TensorRT runner
(``engine.backends.trt.TrtRunner.from_plan``, cuda-python buffers and stream) and
compares it with ONNX Runtime on the source ONNX before anything is written; without
cuda-python it is skipped with a warning. Export imports the runtime, never the reverse.

Without a CUDA device or without ``tensorrt`` this raises ``BackendUnavailable``.
The device count is read (from the driver, engine.core.hardware) BEFORE tensorrt is imported:
its wheels can import on a GPU-less machine and then crash the process.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.contract import (
    INPUT_NAME,
    OUTPUT_RGB,
    OUTPUT_UV,
    SIZE_MULTIPLE,
    read_contract,
    read_sidecar,
    sha256_file,
    sidecar_path,
    size_multiple,
)
from engine.core.files import write_json_atomic
from engine.backends.base import BackendError
from engine.backends.trt import INSTALL_TRT as INSTALL_HINT
from engine.backends.trt import TrtRunner
from engine.core import files, hardware
from engine.core.errors import ArtifactError, BackendUnavailable, ColorizerError
from export.fp16 import ExportError, producers

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
DEFAULT_BATCH = (1, 8, 16)
DEFAULT_SIZE = (64, 512, 1024)
PLAN_KIND = "tensorrt-plan"


def parse_range(text: str, name: str) -> tuple[int, int, int]:
    """``"1:8:16"`` -> (1, 8, 16); a single ``"8"`` -> (8, 8, 8). Requires 1 <= min <= opt <= max."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ExportError(f"--{name}: expected MIN:OPT:MAX integers with 1 <= MIN <= OPT <= MAX, found {text!r}")
    return values[0], values[1], values[2]


def profile_shapes(batch: tuple[int, int, int], size: tuple[int, int, int]) -> dict[str, list[int]]:
    return {k: [batch[i], 1, size[i], size[i]] for i, k in enumerate(("min", "opt", "max"))}


# ----------------------------------------------------------------------------- environment


def require_gpu_stack() -> None:
    """Raise ``BackendUnavailable`` (one line, with the fix) unless a CUDA device and tensorrt are present."""
    count, how = hardware.cuda_devices()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    missing = []
    if count == 0:
        missing.append(f"a CUDA device (found none; {how})")
    if not has_trt:
        missing.append("the tensorrt package (not installed)")
    if missing:
        raise BackendUnavailable(f"build-engine needs {' and '.join(missing)}; {INSTALL_HINT}")


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of a CUDA device (cuda-python, else torch)."""
    try:
        from cuda.bindings import runtime as cudart

        err, prop = cudart.cudaGetDeviceProperties(device)
        if err == cudart.cudaError_t.cudaSuccess:
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            return {"name": name.rstrip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}"}
    except ImportError:
        pass
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def _import_tensorrt() -> Any:
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"build-engine needs TensorRT >= 10, found {trt.__version__}; {INSTALL_HINT}")
    return trt


def network_flags(trt: Any) -> int:
    """Strongly typed network: an explicit flag on TensorRT 10, always on (flag deprecated) from 11."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


# ----------------------------------------------------------------------------- build


def build_engine(
    onnx_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    size: tuple[int, int, int] = DEFAULT_SIZE,
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike[str] | None = None,
    force: bool = False,
    verify: bool = True,
    overwrite: bool | None = None,
) -> dict[str, Any]:
    """Build (or reuse) a TensorRT engine for ``onnx_path``; returns the engine sidecar dict.

    ``force``: rebuild even when ``out`` matches, and replace it. ``overwrite`` (default: ``force``):
    replace an ``out`` that does not match; otherwise such a file is an ``ExportError``.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    overwrite = force if overwrite is None else overwrite
    if precision not in PRECISIONS:
        raise ExportError(f"--precision: expected one of {list(PRECISIONS)}, found {precision!r}")
    if not workspace_gb > 0:
        raise ExportError(f"--workspace-gb: expected > 0, found {workspace_gb}")
    meta = read_contract(onnx_path)  # sidecar or stamped contract; ArtifactError if missing or changed since export
    src_precision = meta.get("precision")
    if src_precision not in ("fp32", "fp16") or (precision == "fp32" and src_precision != "fp32"):
        raise ExportError(
            f"{onnx_path}: a {precision} engine needs an fp32{' or fp16' if precision == 'fp16' else ''} export, "
            f"found {src_precision!r}; re-export with --precision fp32"
        )
    multiple = size_multiple(meta, onnx_path)
    if any(s % multiple for s in size):
        raise ExportError(
            f"--size: {onnx_path.name} takes heights and widths that are multiples of {multiple} "
            f"(its sidecar's {SIZE_MULTIPLE}), found {':'.join(map(str, size))}"
        )
    require_gpu_stack()
    trt = _import_tensorrt()
    gpu = gpu_info()
    profile = profile_shapes(batch, size)
    key = {
        "onnx_sha256": meta["sha256"],
        "precision": precision,
        "profile": profile,
        "tensorrt": trt.__version__,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "tf32": False,
    }
    if not force:
        cached = _cached(out, key)
        if cached is not None:
            log.info("reusing %s: same ONNX, precision, profile, TensorRT and GPU (--force rebuilds)", out)
            return cached
    if not overwrite:
        existing = [p for p in (out, sidecar_path(out)) if os.path.lexists(p)]
        if existing:
            raise ExportError(f"--out: {' and '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''} "
                              f"and {'does' if len(existing) == 1 else 'do'} not match this build; pass --force to overwrite")

    with tempfile.TemporaryDirectory(prefix="colorizer-trt-") as work:
        source, conversion = _source_onnx(onnx_path, src_precision, precision, Path(work))
        source, rewired = _tensorrt_onnx(source, Path(work))
        conversion = {**conversion, "tensorrt_rewrites": rewired}
        plan = _build(trt, source, profile, workspace_gb, Path(timing_cache) if timing_cache else None)
    check = verify_engine(plan, onnx_path, batch, size, multiple) if verify else {"skipped": "verify=False"}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes_atomic(out, plan)
    except OSError as e:
        raise ExportError(f"cannot write {out} ({e.strerror or e})") from e
    data = {
        "format": meta["format"],
        "artifact": {"file": out.name, "kind": PLAN_KIND},
        "sha256": sha256_file(out),
        "cache_key": key,
        "precision": precision,
        "source_onnx": {"file": onnx_path.name, "sha256": meta["sha256"], "precision": src_precision, **conversion},
        "model_config": meta.get("model_config"),
        "inputs": meta.get("inputs"),
        "outputs": meta.get("outputs"),
        "colour_spec": meta.get("colour_spec"),
        "profile": {"input": INPUT_NAME, **profile},
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "workspace_gb": workspace_gb,
        "parity": check,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(sidecar_path(out), data)
    log.info("wrote %s (%s, TensorRT %s, %s sm_%s)", out, precision, trt.__version__, gpu["name"], gpu["compute_capability"])
    return data


def _cached(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if not out.is_file() or not sidecar_path(out).is_file():
        return None
    try:
        meta = read_sidecar(out)
    except ColorizerError as e:  # a stale or broken plan is rebuilt, not an error
        log.info("rebuilding %s: %s", out, e)
        return None
    return meta if meta.get("cache_key") == key else None


def _source_onnx(onnx_path: Path, src: str, want: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX file to parse: as is, or FP32 -> FP16 converted and parity-checked in ORT."""
    if src == want:
        return onnx_path, {"converted": False}
    import onnx

    from export import parity
    from export.fp16 import convert_to_fp16

    model, info = convert_to_fp16(onnx.load(str(onnx_path)))
    path = work / "fp16.onnx"
    onnx.save_model(model, str(path), save_as_external_data=False)
    ref, new = parity.ort_session(onnx_path), parity.ort_session(path)
    diffs = _diff_sessions(ref, new, parity.parity_inputs())
    bad = parity.violations(diffs, parity.TOLERANCES["fp16"])
    if bad:
        raise ExportError(f"FP16 conversion of {onnx_path} failed its parity check vs FP32 ({'; '.join(bad)})")
    log.info("converted %s to FP16: uv max |diff| %.3g, rgb %d levels", onnx_path.name, diffs["uv_max_abs"], diffs["rgb_max_levels"])
    return path, {"converted": True, "conversion_parity": diffs, "fp32_nodes": info["fp32_nodes"]}


def _diff_sessions(ref: Any, new: Any, inputs: list[np.ndarray]) -> dict[str, Any]:
    from export.parity import ort_run

    uv_d, rgb_d = 0.0, 0
    for gray in inputs:
        (r0, u0), (r1, u1) = ort_run(ref, gray), ort_run(new, gray)
        uv_d = max(uv_d, float(np.abs(u0 - u1).max()))
        rgb_d = max(rgb_d, int(np.abs(r0.astype(np.int16) - r1.astype(np.int16)).max()))
    return {"uv_max_abs": uv_d, "rgb_max_levels": rgb_d}


_UINT8, _FLOAT, _FLOAT16 = 2, 1, 10  # onnx.TensorProto data types


def uint8_io_for_tensorrt(model: Any) -> list[str]:
    """Make the uint8 I/O of an ONNX ``model`` acceptable to TensorRT (in place); returns what was changed.

    TensorRT supports uint8 only as a network input feeding a Cast to float/half, or as a
    network output produced by such a Cast; no other layer takes uint8, not even Shape
    (NVIDIA/TensorRT#3985; ``DataType.UINT8`` in the TensorRT Python API docs). Our
    exports read ``gray`` with a Cast and two ``Shape`` nodes (H and W for the final
    resize): a Shape is rewired to the Cast's output, which has the same shape. Any other
    uint8 use raises ``ExportError``.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    nodes = list(graph.node)

    def cast_to(node: Any) -> Any:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)

    changes: list[str] = []
    first: list[Any] = []  # Casts to move to the front, before the nodes now reading them
    for inp in graph.input:
        if inp.type.tensor_type.elem_type != _UINT8:
            continue
        users = [n for n in nodes if inp.name in n.input]
        casts = [n for n in users if n.op_type == "Cast" and cast_to(n) in (_FLOAT, _FLOAT16)]
        others = [n for n in users if not any(n is c for c in casts)]
        bad = [f"{n.op_type} {n.name!r}" for n in others if n.op_type != "Shape"]
        if bad or (others and not casts):
            raise ExportError(
                f"TensorRT takes uint8 input {inp.name!r} only through a Cast to float; it also feeds "
                f"{', '.join(bad) or 'Shape nodes and no such Cast'}; re-export the model"
            )
        if not others:
            continue
        cast = casts[0]
        for n in others:
            n.input[:] = [cast.output[0] if x == inp.name else x for x in n.input]
            changes.append(f"{n.op_type} {n.name!r} reads {cast.output[0]!r} (Cast of {inp.name!r}) instead of {inp.name!r}")
        first.append(cast)
    outputs = {o.name for o in graph.output}
    for n in nodes:
        if n.op_type == "Cast" and cast_to(n) == _UINT8 and not set(n.output) <= outputs:
            raise ExportError(f"TensorRT has no uint8 tensors inside a network: Cast {n.name!r} to uint8 feeds other nodes")
    writers = producers(graph)
    for out in graph.output:
        if out.type.tensor_type.elem_type == _UINT8 and getattr(writers.get(out.name), "op_type", None) != "Cast":
            raise ExportError(f"TensorRT gives uint8 output {out.name!r} only straight from a Cast; re-export the model")
    if first:  # a Cast of a graph input can go first; keeps the node list topologically sorted
        order = first + [n for n in nodes if not any(n is c for c in first)]
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in order]
        del graph.node[:]
        graph.node.extend(copies)
    return changes


def ceil_avgpool_for_tensorrt(model: Any) -> list[str]:
    """``count_include_pad=0`` on AveragePool nodes without padding (in place; ``export.rewrites.pool_exclude_pad``).

    Without pads the attribute changes nothing in ONNX (AveragePool-19 counts only the
    taps inside the padded input, as PyTorch does; ONNX Runtime since opset 19), but the
    ONNX parser maps it to ``IPoolingLayer.average_count_excludes_padding`` (False for 1)
    with ``PaddingMode.EXPLICIT_ROUND_UP`` for ceil mode: whether TensorRT then counts the
    overhang of the last window in the divisor is not documented, while excluding padding
    is correct either way. Current exports already carry it (the
    exporter runs the same rewrite); older files get it here. Ceil-mode pools before
    opset 19 are left alone. Returns what changed.
    """
    from export.rewrites import pool_exclude_pad

    return [f"AveragePool {name!r}: count_include_pad=0 (no pads)" for name in pool_exclude_pad(model)]


def _tensorrt_onnx(source: Path, work: Path) -> tuple[Path, list[str]]:
    """``source`` as is, or a copy in ``work`` made acceptable to TensorRT (uint8 I/O, ceil-mode AveragePool)."""
    import onnx

    model = onnx.load(str(source))
    changes = uint8_io_for_tensorrt(model) + ceil_avgpool_for_tensorrt(model)
    if not changes:
        return source, []
    path = work / "tensorrt.onnx"
    onnx.save_model(model, str(path), save_as_external_data=False)
    log.info("for TensorRT: %s", "; ".join(changes))
    return path, changes


def _attach_timing_cache(config: Any, cache_path: Path) -> None:
    """Load ``cache_path`` into ``config``; a cache from another GPU, TensorRT version or a broken file is replaced."""
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if blob:
        log.warning("timing cache %s does not fit this GPU or TensorRT version: starting a new one (it is overwritten)",
                    cache_path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError(f"TensorRT could not create a timing cache for {cache_path}")


def _build(trt: Any, source: Path, profile: dict[str, list[int]], workspace_gb: float, cache_path: Path | None) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {source.name}: {' | '.join(errors) or 'no error reported'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)  # on by default: FP32 layers would round inputs to 10-bit mantissas
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, profile["min"], profile["opt"], profile["max"])
    if config.add_optimization_profile(opt_profile) < 0:
        raise ExportError(f"TensorRT rejected the optimization profile {profile} for input {INPUT_NAME!r}")
    if cache_path is not None:
        _attach_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {source.name} (see the TensorRT log above)")
    if cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            _write_bytes(cache_path, bytes(cache.serialize()))
    return bytes(serialized)


def _write_bytes(path: Path, blob: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes_atomic(path, blob)
    except OSError as e:
        raise ExportError(f"cannot write the timing cache {path} ({e.strerror or e})") from e


# ----------------------------------------------------------------------------- run / verify


def verify_shapes(batch: tuple[int, int, int], size: tuple[int, int, int], multiple: int = 1) -> list[tuple[int, int, int, int]]:
    """Two in-profile shapes: the minimum, and the optimum batch at a non-square size.

    The second one's height is one ``multiple`` (the ONNX's size multiple; 1: an odd
    height) below the optimum, when that is still inside the profile.
    """
    h = size[1] - multiple if size[1] - multiple >= size[0] else size[1]
    if multiple == 1 and size[1] % 2:
        h = size[1]
    return [(batch[0], 1, size[0], size[0]), (batch[1], 1, h, size[1])]


def verify_engine(plan: bytes, onnx_path: Path, batch: tuple[int, int, int], size: tuple[int, int, int],
                  multiple: int = 1) -> dict[str, Any]:
    """The built engine, run by the engine's TensorRT runner, vs ONNX Runtime on the source ONNX (FP16 tolerance).

    The plan runs on ``cuda:0`` through ``TrtRunner.from_plan`` (the backend ``colorize-dir --backend trt``
    uses), so a plan that passes here has been run by the same code that serves it.
    """
    from export import parity

    runner = TrtRunner.from_plan(plan, device="cuda:0", size_multiple=multiple)
    try:
        runner.activate()
    except BackendUnavailable as e:  # cuda-python missing: build-engine already checked the GPU and tensorrt
        log.warning("engine not verified: %s", e)
        return {"skipped": str(e)}
    except ArtifactError as e:
        raise ExportError("TensorRT could not deserialize the engine it just built") from e
    except BackendError as e:
        raise ExportError(f"TensorRT engine cannot run ({e}); nothing written") from e
    with runner:
        session = parity.ort_session(onnx_path)
        rng = np.random.default_rng(parity.PARITY_SEED)
        uv_d, rgb_d, shapes = 0.0, 0, []
        for shape in verify_shapes(batch, size, multiple):
            gray = rng.integers(0, 256, size=shape, dtype=np.uint8)
            try:
                got = runner.infer(gray)
            except BackendError as e:
                raise ExportError(f"TensorRT engine failed on a batch {shape} ({e}); nothing written") from e
            ref_rgb, ref_uv = parity.ort_run(session, gray)
            uv_d = max(uv_d, float(np.abs(got[OUTPUT_UV].astype(np.float32) - ref_uv).max()))
            rgb_d = max(rgb_d, int(np.abs(got[OUTPUT_RGB].astype(np.int16) - ref_rgb.astype(np.int16)).max()))
            shapes.append(list(shape))
    measured = {"reference": "onnxruntime cpu on the source ONNX", "uv_max_abs": uv_d, "rgb_max_levels": rgb_d, "shapes": shapes}
    bad = parity.violations(measured, parity.TOLERANCES["fp16"])
    if bad:
        raise ExportError(f"TensorRT engine failed its parity check vs ONNX Runtime ({'; '.join(bad)}); nothing written")
    log.info("engine parity vs ORT: uv max |diff| %.3g, rgb %d levels", uv_d, rgb_d)
    return measured
