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

from engine.core import color
from engine.core.contract import read_sidecar, sha256_file, sidecar_path
from engine.core.files import write_json_atomic
from engine.core import hardware
from engine.core.errors import BackendUnavailable
from engine.backends.trt import TrtRunner
from export import parity, trt_build
from export.fp16 import ExportError
from tests.conftest import HAS_CUDA, ROOT
from tests.engine.test_trt_runner import install_fakes

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
# What build-engine itself sees: the CUDA driver's device count (engine.core.hardware), never tensorrt.
HAS_DEVICE = hardware.cuda_device_count() > 0


@pytest.mark.skipif(HAS_DEVICE and HAS_TRT, reason="this machine has a GPU and TensorRT")
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
    assert "pip install tensorrt" in lines[0] and "(docs/gpu-servers.md)" in lines[0]
    assert (ROOT / "docs" / "gpu-servers.md").is_file()  # the hint names a guide that exists
    assert ("CUDA device" in lines[0]) != HAS_DEVICE and ("tensorrt package" in lines[0]) != HAS_TRT
    assert list(tmp_path.iterdir()) == []


def test_require_gpu_stack_messages(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_devices", lambda: (0, "libcuda.so.1: cuInit returned CUDA error 100"))
    monkeypatch.setattr(trt_build.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(BackendUnavailable, match=r"a CUDA device \(found none; libcuda.so.1: cuInit"):
        trt_build.require_gpu_stack()
    monkeypatch.setattr(hardware, "cuda_devices", lambda: (1, "libcuda.so.1: cuDeviceGetCount"))
    monkeypatch.setattr(trt_build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable, match="tensorrt package.*pip install tensorrt"):
        trt_build.require_gpu_stack()


def test_device_count_never_crashes():
    count, how = hardware.cuda_devices()
    assert count >= 0 and how
    if HAS_CUDA:  # torch sees a GPU: so must the driver
        assert count > 0


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
    assert trt_build.verify_shapes((1, 4, 8), (32, 64, 128), 8) == [(1, 1, 32, 32), (4, 1, 56, 64)]
    assert trt_build.verify_shapes((1, 4, 8), (64, 64, 128), 8) == [(1, 1, 64, 64), (4, 1, 64, 64)]


def test_build_engine_refuses_sizes_off_the_onnx_multiple(tiny_onnx, tmp_path):
    """Checked before anything GPU-related: the profile must hold sizes the ONNX graph takes."""
    with pytest.raises(ExportError, match="multiples of 8.*found 16:60:128"):
        trt_build.build_engine(tiny_onnx, tmp_path / "m.plan", size=(16, 60, 128))


# ----------------------------------------------------------------------------- GPU


def _run_plan(plan_path, gray):
    """The plan as the engine serves it: TrtRunner, which build-engine's verification also runs."""
    pytest.importorskip("tensorrt")
    with TrtRunner(plan_path, device="cuda:0") as runner:
        out = runner.infer(gray)
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
    for shape in [(1, 1, 16, 16), (3, 1, 40, 56), (4, 1, 128, 128), (2, 1, 128, 24)]:  # multiples of 8 (size_multiple)
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
    with pytest.raises(ExportError, match="does not match this build; pass --force"):  # another profile: no silent overwrite
        trt_build.build_engine(tiny_onnx, plan, **{**kwargs, "size": (16, 48, 64)})
    other = trt_build.build_engine(tiny_onnx, plan, force=True, **{**kwargs, "size": (16, 48, 64)})
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


# ----------------------------------------------------------------------------- TensorRT preparation (no GPU)


def _uint8_graph(extra_gray_user: str | None = None, rgb_from: str = "Cast"):
    """gray uint8 -> Shape (listed before the Cast) and Cast; rgb uint8 from a Cast, uv float: our exports' I/O."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["gray"], ["hw"], name="shape_hw", start=2, end=4),
        helper.make_node("Cast", ["gray"], ["x"], name="cast_in", to=TensorProto.FLOAT),
        helper.make_node("Shape", ["x"], ["nc"], name="shape_nc", start=0, end=2),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], name="sizes", axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], name="resize", mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Concat", ["r", "r"], ["uv"], name="uv", axis=1),
        helper.make_node("Concat", ["x", "x", "x"], ["x3"], name="x3", axis=1),
    ]
    if rgb_from == "Cast":
        nodes.append(helper.make_node("Cast", ["x3"], ["rgb"], name="cast_out", to=TensorProto.UINT8))
    else:
        nodes += [helper.make_node("Cast", ["x3"], ["rgb8"], name="cast_out", to=TensorProto.UINT8),
                  helper.make_node("Identity", ["rgb8"], ["rgb"], name="ident")]
    if extra_gray_user:
        nodes.append(helper.make_node(extra_gray_user, ["gray"], ["extra"], name="extra"))
    dims = ["N", 1, "H", "W"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("gray", TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("rgb", TensorProto.UINT8, ["N", 3, "H", "W"]),
         helper.make_tensor_value_info("uv", TensorProto.FLOAT, ["N", 2, "H", "W"])]
        + ([helper.make_tensor_value_info("extra", TensorProto.UINT8, None)] if extra_gray_user else []),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def test_uint8_input_reaches_tensorrt_only_through_its_cast(tmp_path):
    import onnx

    model = _uint8_graph()
    before = onnx.load_from_string(model.SerializeToString())
    changes = trt_build.uint8_io_for_tensorrt(model)
    assert changes == ["Shape 'shape_hw' reads 'x' (Cast of 'gray') instead of 'gray'"]
    onnx.checker.check_model(model, full_check=True)  # still topologically sorted: the Cast moved first
    users = [n.op_type for n in model.graph.node if "gray" in n.input]
    assert users == ["Cast"] and model.graph.node[0].name == "cast_in"
    assert trt_build.uint8_io_for_tensorrt(model) == []  # idempotent
    gray = np.random.default_rng(0).integers(0, 256, (2, 1, 5, 7), dtype=np.uint8)
    paths = []
    for i, m in enumerate((before, model)):
        paths.append(tmp_path / f"m{i}.onnx")
        onnx.save_model(m, str(paths[-1]))
    (r0, u0), (r1, u1) = (parity.ort_run(parity.ort_session(p), gray) for p in paths)
    assert np.array_equal(r0, r1) and np.array_equal(u0, u1)


@pytest.mark.parametrize("op", ["Reshape", "Identity"])
def test_uint8_input_feeding_other_layers_is_refused(op):
    model = _uint8_graph(extra_gray_user=op)
    with pytest.raises(ExportError, match=f"only through a Cast to float; it also feeds {op} 'extra'"):
        trt_build.uint8_io_for_tensorrt(model)


def test_uint8_output_must_come_straight_from_a_cast():
    with pytest.raises(ExportError, match="Cast 'cast_out' to uint8 feeds other nodes"):
        trt_build.uint8_io_for_tensorrt(_uint8_graph(rgb_from="Identity"))


def test_exported_model_is_prepared_for_tensorrt(tiny_onnx, tmp_path):
    """Our exports read gray with Shape nodes too; the rewired copy gives ORT the very same outputs."""
    path, changes = trt_build._tensorrt_onnx(tiny_onnx, tmp_path)
    assert changes and all(c.startswith("Shape ") for c in changes) and path == tmp_path / "tensorrt.onnx"
    import onnx

    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node if "gray" in n.input] == ["Cast"]
    ref, new = parity.ort_session(tiny_onnx), parity.ort_session(path)
    for gray in parity.parity_inputs(multiple=read_sidecar(tiny_onnx)["inputs"][0]["size_multiple"])[:2]:
        (r0, u0), (r1, u1) = parity.ort_run(ref, gray), parity.ort_run(new, gray)
        assert np.array_equal(r0, r1) and np.array_equal(u0, u1)


def _fake_trt(version="10.7.0", parse_ok=True, cache_fits=True):
    """Just the TensorRT Python names `_build` uses (checked against the 10.x / 11.x bindings); records calls."""
    calls = []

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return b"timings for this gpu"

    class Config:
        cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("profile", profile.shapes))
            return 0

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.blob, ignore_mismatch))
            ok = cache_fits or cache.blob == b""
            if ok:
                self.cache = cache
            return ok

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's keyword names
            self.shapes = (name, min, opt, max)

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, i):
            return "In node 3 with name: shape_hw and operator: Shape (parseNode): UNSUPPORTED_NODE"

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized plan"

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            pass

    trt = SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"), BuilderFlag=SimpleNamespace(TF32="tf32"),
    )
    return trt, calls


PROFILE = trt_build.profile_shapes((1, 2, 4), (16, 32, 64))


def test_build_settings(tmp_path):
    trt, calls = _fake_trt()
    cache = tmp_path / "timing.cache"
    assert trt_build._build(trt, tmp_path / "m.onnx", PROFILE, 1.5, cache) == b"serialized plan"
    assert calls[:2] == [("create_network", 1), ("parse_from_file", str(tmp_path / "m.onnx"))]
    assert ("pool", "workspace", 3 << 29) in calls and ("clear_flag", "tf32") in calls  # TF32 off
    assert ("profile", ("gray", [1, 1, 16, 16], [2, 1, 32, 32], [4, 1, 64, 64])) in calls
    assert ("set_timing_cache", b"", False) in calls and cache.read_bytes() == b"timings for this gpu"
    trt11, calls11 = _fake_trt("11.1.0")
    trt_build._build(trt11, tmp_path / "m.onnx", PROFILE, 1.0, None)
    assert calls11[0] == ("create_network", 0) and not any(c[0] == "set_timing_cache" for c in calls11)


def test_timing_cache_from_another_gpu_is_replaced(tmp_path, caplog):
    trt, calls = _fake_trt(cache_fits=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"timings of another gpu")
    trt_build._build(trt, tmp_path / "m.onnx", PROFILE, 1.0, cache)
    tried = [c[1] for c in calls if c[0] == "set_timing_cache"]
    assert tried == [b"timings of another gpu", b""]
    assert "does not fit this GPU or TensorRT version" in caplog.text
    assert cache.read_bytes() == b"timings for this gpu"


def test_parse_errors_are_reported(tmp_path):
    trt, _ = _fake_trt(parse_ok=False)
    with pytest.raises(ExportError, match=r"could not parse m\.onnx: In node 3 .*operator: Shape"):
        trt_build._build(trt, tmp_path / "m.onnx", PROFILE, 1.0, None)


def test_build_engine_flow_with_fake_tensorrt(tiny_onnx, tmp_path, monkeypatch):
    """build_engine end to end on the CPU: TensorRT parses the rewired ONNX; plan, sidecar and cache key written."""
    import onnx

    trt, calls = _fake_trt()
    parsed = []

    def parse_from_file(self, path):
        parsed.append([n.op_type for n in onnx.load(path).graph.node if "gray" in n.input])
        return True

    monkeypatch.setattr(trt.OnnxParser, "parse_from_file", parse_from_file)
    monkeypatch.setattr(trt_build, "require_gpu_stack", lambda: None)
    monkeypatch.setattr(trt_build, "_import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_build, "gpu_info", lambda device=0: {"name": "Fake GPU", "compute_capability": "9.0"})
    plan = tmp_path / "m.plan"
    kwargs = {"precision": "fp32", "batch": (1, 2, 4), "size": (16, 32, 64), "verify": False}
    side = trt_build.build_engine(tiny_onnx, plan, **kwargs)
    assert parsed == [["Cast"]] and plan.read_bytes() == b"serialized plan"
    assert side["cache_key"]["tf32"] is False and side["source_onnx"]["tensorrt_rewrites"]
    assert read_sidecar(plan) == side
    assert trt_build.build_engine(tiny_onnx, plan, **kwargs) == side and len(parsed) == 1  # cached


def _verify_build(tiny_onnx, tmp_path, monkeypatch, kernel=None, **fakes):
    """build_engine with verify on: fake TensorRT builder; the runner's cuda-python and tensorrt faked (install_fakes).

    The fake engine computes its outputs with ONNX Runtime on the source ONNX, then ``kernel`` (if any) alters them.
    """
    trt, _ = _fake_trt()
    monkeypatch.setattr(trt_build, "require_gpu_stack", lambda: None)
    monkeypatch.setattr(trt_build, "_import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_build, "gpu_info", lambda device=0: {"name": "Fake GPU", "compute_capability": "9.0"})
    session = parity.ort_session(tiny_onnx)

    def network(gray):
        rgb, uv = parity.ort_run(session, gray)
        out = {"rgb": rgb, "uv": uv}
        return kernel(out) if kernel else out

    profile = ((1, 1, 16, 16), (2, 1, 32, 32), (4, 1, 64, 64))  # what build_engine asks for below
    runtime, cudart = install_fakes(monkeypatch, profile=profile, kernel=network,
                                    dtypes={"gray": "uint8", "rgb": "uint8", "uv": "float16"}, **fakes)
    plan = tmp_path / "m.plan"

    def build():
        return trt_build.build_engine(tiny_onnx, plan, precision="fp32", batch=(1, 2, 4), size=(16, 32, 64))

    return build, plan, runtime, cudart


def test_build_engine_verifies_the_plan_with_the_trt_runner(tiny_onnx, tmp_path, monkeypatch):
    """The plan the builder returned is deserialized and run by TrtRunner (cuda-python buffers, one stream)."""
    build, plan, runtime, cudart = _verify_build(tiny_onnx, tmp_path, monkeypatch)
    side = build()
    assert runtime.deserialized == [b"serialized plan"] and plan.read_bytes() == b"serialized plan"
    shapes = trt_build.verify_shapes((1, 2, 4), (16, 32, 64), read_sidecar(tiny_onnx)["inputs"][0]["size_multiple"])
    assert side["parity"]["shapes"] == [list(s) for s in shapes] == [[1, 1, 16, 16], [2, 1, 24, 32]]
    assert side["parity"]["reference"] == "onnxruntime cpu on the source ONNX"
    assert side["parity"]["rgb_max_levels"] == 0
    assert 0 < side["parity"]["uv_max_abs"] <= parity.TOLERANCES["fp16"]["uv_max_abs"]  # the engine's float16 uv
    assert [k for k, _ in cudart.copies] == ["h2d", "d2h", "d2h"] * 2  # one upload, two downloads per shape
    assert cudart.blocks == {} and cudart.streams == 0  # runner deactivated: buffers and stream released


def test_build_engine_refuses_an_engine_that_disagrees_with_ort(tiny_onnx, tmp_path, monkeypatch):
    def off_by_four(out):
        return {"rgb": np.clip(out["rgb"].astype(int) + 4, 0, 255).astype(np.uint8), "uv": out["uv"]}

    build, plan, _, cudart = _verify_build(tiny_onnx, tmp_path, monkeypatch, kernel=off_by_four)
    with pytest.raises(ExportError, match=r"failed its parity check vs ONNX Runtime \(rgb_max_levels 4 > 3\); nothing written"):
        build()
    assert not plan.exists() and not sidecar_path(plan).exists()
    assert cudart.blocks == {} and cudart.streams == 0


def test_build_engine_refuses_a_plan_that_does_not_deserialize(tiny_onnx, tmp_path, monkeypatch):
    build, plan, runtime, _ = _verify_build(tiny_onnx, tmp_path, monkeypatch, engine=None)
    with pytest.raises(ExportError, match="TensorRT could not deserialize the engine it just built"):
        build()
    assert runtime.deserialized == [b"serialized plan"] and not plan.exists()


def test_build_engine_without_cuda_python_writes_an_unverified_engine(tiny_onnx, tmp_path, monkeypatch, caplog):
    """The runner needs cuda-python; without it the engine is written, its sidecar saying why it was not verified."""
    from engine.backends import trt as trt_backend

    real_cudart = trt_backend._cudart
    build, plan, runtime, _ = _verify_build(tiny_onnx, tmp_path, monkeypatch)
    monkeypatch.setattr(trt_backend, "_cudart", real_cudart)
    monkeypatch.setitem(sys.modules, "cuda", None)  # no cuda-python, whatever is installed here
    side = build()
    assert plan.read_bytes() == b"serialized plan" and runtime.deserialized == []
    assert side["parity"]["skipped"].startswith("trt backend: cuda-python is not installed")
    assert "engine not verified: trt backend: cuda-python is not installed" in caplog.text


def test_ceil_mode_average_pool_excludes_padding_with_the_same_result(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def model(opset):
        node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[4, 4], strides=[4, 4],
                                pads=[0, 0, 0, 0], ceil_mode=1, count_include_pad=1)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)

    old = model(18)
    assert trt_build.ceil_avgpool_for_tensorrt(old) == []  # before AveragePool-19 ONNX Runtime divided by the kernel
    before, after = model(20), model(20)
    assert trt_build.ceil_avgpool_for_tensorrt(after) == ["AveragePool 'pool': count_include_pad=0 (no pads)"]
    x = np.random.default_rng(0).random((1, 1, 13, 10), dtype=np.float32)
    want = np.array([[x[0, 0, i:i + 4, j:j + 4].mean() for j in range(0, 10, 4)] for i in range(0, 13, 4)])
    for m in (before, after):
        path = tmp_path / "pool.onnx"
        onnx.save_model(m, str(path))
        (y,) = parity.ort_session(path).run(None, {"x": x})
        np.testing.assert_allclose(y[0, 0], want, rtol=1e-6)  # the last row/column: mean of the taps inside


def test_build_engine_never_overwrites_a_plan_without_force(tiny_onnx, tmp_path, monkeypatch):
    """An existing plan that is not a reusable match stays untouched: an error naming it and --force."""
    monkeypatch.setattr(trt_build, "require_gpu_stack", lambda: None)
    monkeypatch.setattr(trt_build, "_import_tensorrt", lambda: SimpleNamespace(__version__="10.7.0"))
    monkeypatch.setattr(trt_build, "gpu_info", lambda: {"name": "GPU", "compute_capability": "9.0"})
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"someone's engine")
    with pytest.raises(ExportError, match=f"{plan} already exists and does not match this build; pass --force"):
        trt_build.build_engine(tiny_onnx, plan)
    assert plan.read_bytes() == b"someone's engine" and sorted(p.name for p in tmp_path.iterdir()) == ["m.plan"]
