"""TrtRunner's host side without a GPU: cuda-python and the TensorRT runtime replaced by fakes.

The fake CUDA stream defers every copy and kernel until ``cudaStreamSynchronize``, so
reading a host buffer before synchronizing, a copy queued on the wrong side of the
kernel, or a tensor address left unset shows up as wrong numbers. The fake ``tensorrt``
module (``fake_tensorrt``) has only the names the runner calls: ``Logger``, ``Runtime``
with ``deserialize_cuda_engine``, ``TensorIOMode``, ``nptype``, and an engine whose
execution context takes ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``.
``install_fakes`` puts them behind the runner's ``activate()``; build-engine's verification
tests (tests/export/test_trt.py) use them too.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest

from engine.backends import trt as trt_backend
from engine.backends.base import BackendError
from engine.backends.trt import TrtRunner
from engine.core import hardware
from engine.core.errors import ArtifactError


class FakeCudart:
    cudaError_t = SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}
        self.pending: list = []  # work queued on the stream
        self.devices: list[int] = []  # cudaSetDevice calls
        self.copies: list[tuple[str, int]] = []
        self.streams = 0  # created and not yet destroyed

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        block = ctypes.create_string_buffer(nbytes)
        self.blocks[ctypes.addressof(block)] = block
        return 0, ctypes.addressof(block)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, ptr: int) -> tuple[int]:
        del self.blocks[ptr]
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        assert stream == 7 and dst in self.blocks and src in self.blocks
        self.copies.append((kind, count))
        self.pending.append(lambda: ctypes.memmove(dst, src, count))
        return (0,)

    def cudaStreamSynchronize(self, stream):
        for work in self.pending:
            work()
        self.pending.clear()
        return (0,)

    def cudaStreamCreate(self):
        self.streams += 1
        return 0, 7

    def cudaStreamDestroy(self, stream):
        assert stream == 7
        self.streams -= 1
        return (0,)

    def cudaGetDeviceProperties(self, index):
        return 0, SimpleNamespace(name=b"Fake GPU\x00\x00", major=9, minor=0)

    def cudaSetDevice(self, index):
        self.devices.append(index)
        return (0,)

    def cudaGetErrorString(self, err):
        return 0, b"fake error"


PROFILE = ((2, 1, 8, 8), (3, 1, 16, 16), (4, 1, 32, 32))
DTYPES = {"gray": "uint8", "rgb": "uint8", "uv": "float16"}


def mirror(gray: np.ndarray) -> dict[str, np.ndarray]:
    """The fake network: rgb = gray on 3 channels, uv = (gray/255, -gray/255)."""
    return {"rgb": np.repeat(gray, 3, axis=1), "uv": np.concatenate([gray / 255, -gray / 255], axis=1)}


class FakeContext:
    """An execution context: shapes within ``profile``, tensors read and written at their bound addresses."""

    def __init__(self, cudart: FakeCudart, profile=PROFILE, dtypes=DTYPES, kernel=mirror) -> None:
        self.cudart, self.profile, self.dtypes, self.kernel = cudart, profile, dtypes, kernel
        self.shape, self.addresses = None, {}
        self.batches: list[int] = []
        self.shapes: list[tuple[int, ...]] = []

    def set_input_shape(self, name, shape):
        assert name == "gray"
        lo, _, hi = self.profile
        if len(shape) != 4 or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n, _, h, w = self.shape
        return (n, {"rgb": 3, "uv": 2}[name], h, w)

    def set_tensor_address(self, name, ptr):
        if ptr not in self.cudart.blocks:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int) and stream_handle == 7
        shape, addresses = self.shape, dict(self.addresses)
        self.batches.append(shape[0])
        self.shapes.append(shape)
        self.cudart.pending.append(lambda: self._run(shape, addresses))
        return True

    def _run(self, shape, addresses):
        n, _, h, w = shape

        def array(name, c):
            dtype = np.dtype(self.dtypes[name])
            raw = (ctypes.c_uint8 * (n * c * h * w * dtype.itemsize)).from_address(addresses[name])
            return np.frombuffer(raw, dtype=dtype).reshape(n, c, h, w)

        out = self.kernel(array("gray", 1).copy())
        array("rgb", 3)[:] = out["rgb"]
        array("uv", 2)[:] = out["uv"]


class FakeEngine:
    """A deserialized engine: I/O tensors by name, one optimization profile, contexts as above."""

    def __init__(self, cudart: FakeCudart, profile=PROFILE, dtypes=DTYPES, kernel=mirror) -> None:
        self.cudart, self.profile, self.dtypes, self.kernel = cudart, profile, dtypes, kernel
        self.names = ["gray", "rgb", "uv"]
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "in" if name == "gray" else "out"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return (-1, {"gray": 1, "rgb": 3, "uv": 2}.get(name, 1), -1, -1)

    def get_tensor_profile_shape(self, name, index):
        assert name == "gray" and index == 0
        return [list(s) for s in self.profile]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self.cudart, self.profile, self.dtypes, self.kernel))
        return self.contexts[-1]


def fake_tensorrt(engine=None, version="10.7.0"):
    """A stand-in ``tensorrt`` module with the names the runner uses; ``deserialized`` records the plans given."""
    numpy_types = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}
    deserialized: list[bytes] = []

    def nptype(t):
        if t not in numpy_types:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return numpy_types[t]

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            assert level == "warning"

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, serialized_engine):
            deserialized.append(bytes(serialized_engine))
            return engine

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, nptype=nptype,
                           TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"), deserialized=deserialized)


def install_fakes(monkeypatch, *, engine=True, devices=1, **engine_kwargs):
    """The runner's cuda-python, tensorrt and driver device count replaced: returns (fake tensorrt, fake cudart).

    ``engine=None``: the runtime cannot deserialize the plan.
    """
    cudart = FakeCudart()
    trt = fake_tensorrt(FakeEngine(cudart, **engine_kwargs) if engine else None)
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: devices)
    monkeypatch.setattr(trt_backend, "_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "_tensorrt", lambda: trt)
    return trt, cudart


@pytest.fixture()
def runner(tmp_path):
    cudart = FakeCudart()
    r = TrtRunner(tmp_path / "m.plan", device="cuda:1")
    r._cudart, r._stream, r._index = cudart, 7, 1
    r._context = FakeContext(cudart)
    r._dtypes = {k: np.dtype(v) for k, v in DTYPES.items()}
    r._profile = PROFILE
    r.is_active = True
    yield r
    r.deactivate()
    assert cudart.blocks == {}  # every buffer freed


def _gray(n, h=12, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, h, w), dtype=np.uint8)


def _check(out, gray):
    assert out["rgb"].dtype == np.uint8 and np.array_equal(out["rgb"], np.repeat(gray, 3, axis=1))
    assert out["uv"].dtype == np.float32
    np.testing.assert_allclose(out["uv"][:, 0], gray[:, 0] / 255, atol=1e-3)
    np.testing.assert_allclose(out["uv"][:, 1], -gray[:, 0] / 255, atol=1e-3)


def test_batch_runs_on_one_stream_and_copies_back_after_sync(runner):
    gray = _gray(3)
    _check(runner.infer(gray), gray)
    cudart = runner._cudart
    assert cudart.pending == [] and cudart.devices == [1]  # the runner's device made current in the call
    assert cudart.copies == [("h2d", 3 * 12 * 20), ("d2h", 3 * 3 * 12 * 20), ("d2h", 3 * 2 * 12 * 20 * 2)]


def test_uv_only_skips_the_rgb_copy_and_outputs_own_their_memory(runner):
    first = _gray(4, seed=1)
    uv = runner.infer(first, outputs=("uv",))["uv"]
    assert [k for k, _ in runner._cudart.copies] == ["h2d", "d2h"]
    second = _gray(4, seed=2)
    runner.infer(second)  # same buffers reused
    np.testing.assert_allclose(uv[:, 0], first[:, 0] / 255, atol=1e-3)


def test_batches_are_split_above_and_padded_below_the_profile(runner):
    gray = _gray(11, 8, 32)
    _check(runner.infer(gray), gray)
    assert runner._context.batches == [4, 4, 3]
    one = _gray(1, 32, 8)
    _check(runner.infer(one), one)  # padded to the profile's minimum batch of 2
    assert runner._context.batches[-1] == 2
    grown = _gray(2, 32, 32)  # larger than every buffer so far: reallocated
    _check(runner.infer(grown), grown)


def test_sizes_outside_the_profile_are_refused(runner):
    with pytest.raises(BackendError, match=r"height 40 is outside the engine's profile \(8\.\.32\)"):
        runner.infer(_gray(2, 40, 16))


def test_refused_tensor_address_is_an_error(runner, monkeypatch):
    monkeypatch.setattr(runner._context, "set_tensor_address", lambda name, ptr: name != "uv")
    with pytest.raises(BackendError, match=r"set_tensor_address\('uv'\) failed"):
        runner.infer(_gray(2))


def _engine(dtypes):
    return FakeEngine(FakeCudart(), profile=((1, 1, 8, 8), (4, 1, 16, 16), (8, 1, 32, 32)), dtypes=dtypes)


def test_engine_io_checks(tmp_path):
    r = TrtRunner(tmp_path / "m.plan")
    r._check_io(fake_tensorrt(), _engine({"gray": "uint8", "rgb": "uint8", "uv": "float32"}))
    assert r.max_batch == 8 and r._profile[0] == (1, 1, 8, 8)
    with pytest.raises(BackendError, match="engine I/O types: Could not resolve"):
        r._check_io(fake_tensorrt(), _engine({"gray": "uint8", "rgb": "uint8", "uv": "bfloat16"}))
    with pytest.raises(BackendError, match="tensor 'gray': expected uint8, found float32"):
        r._check_io(fake_tensorrt(), _engine({"gray": "float32", "rgb": "uint8", "uv": "float32"}))


def test_in_memory_plan_runs_through_activate_infer_deactivate(monkeypatch, tmp_path):
    """from_plan: no file, no sidecar; the plan's bytes are deserialized, every I/O tensor bound, outputs by name."""
    trt, cudart = install_fakes(monkeypatch)
    runner = TrtRunner.from_plan(b"serialized plan", device="cuda:0", size_multiple=8)
    with runner:
        assert trt.deserialized == [b"serialized plan"] and cudart.devices == [0] and cudart.streams == 1
        assert runner.max_batch == 4 and runner.on_gpu
        assert runner.describe() == "trt (TensorRT 10.7.0, cuda:0, Fake GPU) the engine just built"
        gray = _gray(3, 13, 21)  # padded to multiples of 8 for the engine, outputs cropped back
        out = runner.infer(gray)
        (context,) = runner._engine.contexts
        assert context.shapes == [(3, 1, 16, 24)]
        assert set(context.addresses) == {"gray", "rgb", "uv"}
        assert all(ptr in cudart.blocks for ptr in context.addresses.values())
    _check(out, gray)
    assert out["rgb"].shape == (3, 3, 13, 21) and out["uv"].shape == (3, 2, 13, 21)
    assert cudart.blocks == {} and cudart.streams == 0  # buffers freed, stream destroyed
    assert not list(tmp_path.iterdir())


def test_in_memory_plan_that_does_not_deserialize(monkeypatch):
    trt, _ = install_fakes(monkeypatch, engine=None)
    with pytest.raises(ArtifactError, match=r"the engine just built: TensorRT 10\.7\.0 cannot deserialize this engine"):
        TrtRunner.from_plan(b"garbage").activate()
    assert trt.deserialized == [b"garbage"]


def test_in_memory_plan_with_wrong_io_is_refused(monkeypatch):
    install_fakes(monkeypatch, dtypes={"gray": "float32", "rgb": "uint8", "uv": "float32"})
    with pytest.raises(BackendError, match="tensor 'gray': expected uint8, found float32"):
        TrtRunner.from_plan(b"plan").activate()


def test_in_memory_plan_still_needs_a_gpu(monkeypatch):
    from engine.core.errors import BackendUnavailable

    install_fakes(monkeypatch, devices=0)
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        TrtRunner.from_plan(b"plan").activate()
    with pytest.raises(BackendError, match="runs on a GPU"):
        TrtRunner.from_plan(b"plan", device="cpu").activate()


def test_engine_io_problems_is_a_pure_check_of_the_contract():
    from engine.core.contract import engine_io_problems

    good = [("gray", "uint8", (-1, 1, -1, -1)), ("rgb", "uint8", (-1, 3, -1, -1)), ("uv", "float32", (-1, 2, -1, -1))]
    assert engine_io_problems(good) == []
    assert engine_io_problems([*good[:2], ("uv", "float16", (4, 2, 256, 256))]) == []  # FP16 build, static shape
    assert engine_io_problems([good[0], ("rgb", "float32", (-1, 3, -1, -1)), ("uv", "float32", (-1, 2, -1))]) == [
        "'rgb': expected uint8, found float32", "'uv': expected shape (N, 2, H, W), found (-1, 2, -1)"]
    assert engine_io_problems([good[0], ("rgb", "uint8", (-1, 1, -1, -1)), ("logits", "float32", (1,))]) == [
        "unexpected tensors ['logits']", "'rgb': expected shape (N, 3, H, W), found (-1, 1, -1, -1)", "'uv' missing"]


def test_plan_without_sidecar_runs_when_its_io_matches(monkeypatch, tmp_path, caplog):
    import json
    import logging

    install_fakes(monkeypatch)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan bytes")
    with caplog.at_level(logging.INFO, logger="engine.backends.trt"):
        with TrtRunner(plan, device="cuda:0") as runner:
            gray = _gray(2)
            _check(runner.infer(gray), gray)
            assert runner.size_multiple == 1
    assert "has no sidecar m.plan.json; its I/O tensors match the contract" in caplog.text
    # the ONNX file of the same name gives the size multiple
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "m.json").write_text(json.dumps({"format": "colorizer-artifact/1", "inputs": [
        {"name": "gray", "size_multiple": 8}]}))
    with TrtRunner(plan, device="cuda:0") as runner:
        assert runner.size_multiple == 8


def test_plan_without_sidecar_and_other_io_is_refused(monkeypatch, tmp_path):
    install_fakes(monkeypatch, dtypes={"gray": "uint8", "rgb": "float32", "uv": "float32"})
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan bytes")
    with pytest.raises(ArtifactError, match=r"no sidecar m\.plan\.json, and the engine's I/O is not the contract's "
                                            r"\('rgb': expected uint8, found float32\); rebuild it"):
        TrtRunner(plan, device="cuda:0").activate()


@pytest.mark.gpu
def test_real_plan_without_sidecar_matches_the_contract(tiny_onnx, tmp_path):
    """On a GPU: a plan from build-engine, its sidecar removed, still loads (its own I/O is the contract's)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() == 0:
        pytest.skip("no CUDA device")
    pytest.importorskip("tensorrt")
    from engine.core.contract import sidecar_path
    from export.trt_build import build_engine

    plan = tmp_path / "tiny.plan"
    build_engine(tiny_onnx, plan, batch=(1, 2, 4), size=(16, 64, 128), workspace_gb=1.0)
    sidecar_path(plan).unlink()
    with TrtRunner(plan, device="cuda:0") as runner:
        tensors = trt_backend.engine_tensors(runner._trt, runner._engine)
        assert {n for n, _, _ in tensors} == {"gray", "rgb", "uv"}
        out = runner.infer(_gray(2, 16, 16))
    assert out["rgb"].shape == (2, 3, 16, 16) and out["uv"].dtype == np.float32
