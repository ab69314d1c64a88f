"""`build-engine`: clear failure without TensorRT/GPU; on GPU machines, a tiny engine vs ONNX Runtime."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine import color
from engine.contract import read_sidecar, sha256_file, sidecar_path, write_json_atomic
from engine.errors import BackendUnavailable
from export import parity, trt_build
from export.fp16 import ExportError
from tests.conftest import HAS_CUDA, ROOT

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_CUDA and HAS_TRT, reason="this machine has a GPU and TensorRT")
def test_build_engine_without_gpu_stack_exits_2(tiny_onnx, tmp_path):
    plan = tmp_path / "m.plan"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "build-engine", "--onnx", str(tiny_onnx), "--out", str(plan)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: build-engine needs")
    assert "pip install tensorrt" in lines[0] and "README" in lines[0]
    assert ("CUDA device" in lines[0]) != HAS_CUDA and ("tensorrt package" in lines[0]) != HAS_TRT
    assert list(tmp_path.iterdir()) == []


def test_require_gpu_stack_messages(monkeypatch):
    monkeypatch.setattr(trt_build, "cuda_device_count", lambda: (0, "cudaGetDeviceCount: cudaErrorNoDevice"))
    monkeypatch.setattr(trt_build.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(BackendUnavailable, match=r"a CUDA device \(found none; cudaGetDeviceCount"):
        trt_build.require_gpu_stack()
    monkeypatch.setattr(trt_build, "cuda_device_count", lambda: (1, "cudaGetDeviceCount"))
    monkeypatch.setattr(trt_build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable, match="tensorrt package.*pip install tensorrt"):
        trt_build.require_gpu_stack()


def test_device_count_never_crashes():
    count, how = trt_build.cuda_device_count()
    assert count >= 0 and how
    assert (count > 0) == HAS_CUDA


def test_network_flags_per_version():
    flag_enum = SimpleNamespace(STRONGLY_TYPED=0)
    assert trt_build.network_flags(SimpleNamespace(__version__="10.7.0", NetworkDefinitionCreationFlag=flag_enum)) == 1
    assert trt_build.network_flags(SimpleNamespace(__version__="11.0.1", NetworkDefinitionCreationFlag=flag_enum)) == 0


@pytest.mark.parametrize("text, want", [("1:8:16", (1, 8, 16)), ("4", (4, 4, 4)), ("64:512:1024", (64, 512, 1024))])
def test_parse_range(text, want):
    assert trt_build.parse_range(text, "batch") == want


@pytest.mark.parametrize("text", ["0:1:2", "8:4:16", "a:b:c", "1:2", ""])
def test_parse_range_rejects(text):
    with pytest.raises(ExportError, match="--size: expected MIN:OPT:MAX"):
        trt_build.parse_range(text, "size")


def test_refuses_int8_source_before_touching_gpu(tiny_onnx, tmp_path):
    src = tmp_path / "q.onnx"
    shutil.copy(tiny_onnx, src)
    side = read_sidecar(tiny_onnx)
    write_json_atomic(sidecar_path(src), {**side, "precision": "int8"})
    with pytest.raises(ExportError, match="found 'int8'; re-export with --precision fp32"):
        trt_build.build_engine(src, tmp_path / "q.plan")


def test_engine_cache_key(tiny_onnx, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"serialized engine")
    key = {"onnx_sha256": "ab", "precision": "fp16", "profile": {}, "tensorrt": "10.7", "gpu": "X", "compute_capability": "9.0"}
    side = {"format": read_sidecar(tiny_onnx)["format"], "sha256": sha256_file(plan), "cache_key": key}
    write_json_atomic(sidecar_path(plan), side)
    assert sidecar_path(plan).name == "m.plan.json"
    assert trt_build._cached(plan, key) == side
    assert trt_build._cached(plan, {**key, "tensorrt": "11.0"}) is None
    plan.write_bytes(b"changed")
    assert trt_build._cached(plan, key) is None  # sha256 mismatch: rebuild


def test_verify_shapes_inside_profile():
    shapes = trt_build.verify_shapes((1, 4, 8), (32, 64, 128))
    assert shapes == [(1, 1, 32, 32), (4, 1, 63, 64)]


# ----------------------------------------------------------------------------- GPU


def _run_plan(plan_path, gray):
    trt = pytest.importorskip("tensorrt")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    assert engine is not None
    out = trt_build.run_engine(trt, engine, gray)
    return out["rgb"], out["uv"]


@pytest.mark.gpu
def test_build_fp16_engine_from_fp32_onnx_matches_ort(tiny_onnx, tmp_path, rng):
    pytest.importorskip("tensorrt")
    plan, cache = tmp_path / "tiny.plan", tmp_path / "timing.cache"
    side = trt_build.build_engine(tiny_onnx, plan, precision="fp16", batch=(1, 2, 4), size=(16, 64, 128),
                                  workspace_gb=1.0, timing_cache=cache)
    assert plan.is_file() and cache.is_file() and cache.stat().st_size > 0
    assert side == read_sidecar(plan)
    assert side["sha256"] == sha256_file(plan)
    assert side["source_onnx"]["sha256"] == sha256_file(tiny_onnx) and side["source_onnx"]["converted"] is True
    assert side["profile"]["min"] == [1, 1, 16, 16] and side["profile"]["max"] == [4, 1, 128, 128]
    assert side["gpu"]["name"] and side["gpu"]["compute_capability"]
    session = parity.ort_session(tiny_onnx)
    tol = parity.TOLERANCES["fp16"]
    for shape in [(1, 1, 16, 16), (3, 1, 37, 53), (4, 1, 128, 128), (2, 1, 127, 17)]:
        gray = rng.integers(0, 256, size=shape, dtype=np.uint8)
        rgb, uv = _run_plan(plan, gray)
        ref_rgb, ref_uv = parity.ort_run(session, gray)
        assert rgb.dtype == np.uint8 and rgb.shape == ref_rgb.shape
        assert np.abs(uv.astype(np.float32) - ref_uv).max() <= tol["uv_max_abs"]
        assert np.abs(rgb.astype(int) - ref_rgb.astype(int)).max() <= tol["rgb_max_levels"]
        want = color.compose_u8(gray[0, 0], uv[0].astype(np.float32).transpose(1, 2, 0))
        assert np.abs(want.astype(int) - rgb[0].transpose(1, 2, 0).astype(int)).max() <= 1


@pytest.mark.gpu
def test_engine_cache_reuse_and_force(tiny_onnx, tmp_path):
    pytest.importorskip("tensorrt")
    plan = tmp_path / "tiny.plan"
    kwargs = {"precision": "fp16", "batch": (1, 1, 2), "size": (16, 32, 64), "workspace_gb": 1.0}
    first = trt_build.build_engine(tiny_onnx, plan, **kwargs)
    stamp = plan.stat().st_mtime_ns
    time.sleep(0.05)
    again = trt_build.build_engine(tiny_onnx, plan, **kwargs)
    assert again["sha256"] == first["sha256"] and plan.stat().st_mtime_ns == stamp
    trt_build.build_engine(tiny_onnx, plan, force=True, **kwargs)
    assert plan.stat().st_mtime_ns != stamp
    other = trt_build.build_engine(tiny_onnx, plan, **{**kwargs, "size": (16, 48, 64)})
    assert other["cache_key"]["profile"] != first["cache_key"]["profile"]


@pytest.mark.gpu
def test_build_engine_cli_on_gpu(tiny_onnx, tmp_path):
    pytest.importorskip("tensorrt")
    plan = tmp_path / "cli.plan"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "build-engine", "--onnx", str(tiny_onnx), "--out", str(plan),
         "--batch", "1:1:2", "--size", "16:32:64", "--workspace-gb", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert plan.is_file() and sidecar_path(plan).is_file()
