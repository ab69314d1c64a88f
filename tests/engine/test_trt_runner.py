"""TrtRunner's host side without a GPU: cuda-python and the TensorRT context replaced by fakes.

The fake CUDA stream defers every copy and kernel until ``cudaStreamSynchronize``, so
reading a host buffer before synchronizing, a copy queued on the wrong side of the
kernel, or a tensor address left unset shows up as wrong numbers.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest

from engine.backends.base import BackendError
from engine.backends.trt import TrtRunner


class FakeCudart:
    cudaError_t = SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}
        self.pending: list = []  # work queued on the stream
        self.devices: list[int] = []  # cudaSetDevice calls
        self.copies: list[tuple[str, int]] = []

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

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaSetDevice(self, index):
        self.devices.append(index)
        return (0,)

    def cudaGetErrorString(self, err):
        return 0, b"fake error"


class FakeContext:
    """Profile: batch 2..4, H and W 8..32. 'Inference': rgb = gray on 3 channels, uv = (gray/255, -gray/255)."""

    def __init__(self, cudart: FakeCudart) -> None:
        self.cudart, self.shape, self.addresses = cudart, None, {}
        self.batches: list[int] = []

    def set_input_shape(self, name, shape):
        assert name == "gray"
        if not 2 <= shape[0] <= 4:
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
        self.cudart.pending.append(lambda: self._kernel(shape, addresses))
        return True

    @staticmethod
    def _kernel(shape, addresses):
        n, _, h, w = shape

        def array(name, dtype, c):
            count = n * c * h * w * np.dtype(dtype).itemsize
            raw = (ctypes.c_uint8 * count).from_address(addresses[name])
            return np.frombuffer(raw, dtype=dtype).reshape(n, c, h, w)

        gray = array("gray", np.uint8, 1)
        array("rgb", np.uint8, 3)[:] = gray
        uv = array("uv", np.float16, 2)
        uv[:, 0], uv[:, 1] = gray[:, 0] / 255, -gray[:, 0] / 255


@pytest.fixture()
def runner(tmp_path):
    cudart = FakeCudart()
    r = TrtRunner(tmp_path / "m.plan", device="cuda:1")
    r._cudart, r._stream, r._index = cudart, 7, 1
    r._context = FakeContext(cudart)
    r._dtypes = {"gray": np.dtype(np.uint8), "rgb": np.dtype(np.uint8), "uv": np.dtype(np.float16)}
    r._profile = ((2, 1, 8, 8), (3, 1, 16, 16), (4, 1, 32, 32))
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
    modes = {"gray": "in", "rgb": "out", "uv": "out"}
    return SimpleNamespace(
        num_io_tensors=3, get_tensor_name=lambda i: ["gray", "rgb", "uv"][i], get_tensor_mode=modes.get,
        get_tensor_dtype=dtypes.get, get_tensor_profile_shape=lambda name, i: [(1, 1, 8, 8), (4, 1, 16, 16), (8, 1, 32, 32)],
    )


def _fake_trt():
    numpy_types = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}

    def nptype(t):
        if t not in numpy_types:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return numpy_types[t]

    return SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"), nptype=nptype)


def test_engine_io_checks(tmp_path):
    r = TrtRunner(tmp_path / "m.plan")
    r._check_io(_fake_trt(), _engine({"gray": "uint8", "rgb": "uint8", "uv": "float32"}))
    assert r.max_batch == 8 and r._profile[0] == (1, 1, 8, 8)
    with pytest.raises(BackendError, match="engine I/O types: Could not resolve"):
        r._check_io(_fake_trt(), _engine({"gray": "uint8", "rgb": "uint8", "uv": "bfloat16"}))
    with pytest.raises(BackendError, match="tensor 'gray': expected uint8, found float32"):
        r._check_io(_fake_trt(), _engine({"gray": "float32", "rgb": "uint8", "uv": "float32"}))
