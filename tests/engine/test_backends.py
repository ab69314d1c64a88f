"""engine.backends: the runner interface, model resolution, ort vs torch parity, lazy imports, TensorRT guards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import backends
from engine.backends import base, open_runner, resolve_model
from engine.backends.base import BackendError
from engine.backends.ort import OrtRunner
from engine.core import contract, hardware
from engine.core.errors import ArtifactError, BackendUnavailable
from tests.conftest import ROOT
from tests.engine.corpus import pattern


def gray_batch(n: int = 2, size: int = 64) -> np.ndarray:
    return np.stack([pattern(size, size, i, 1)[..., 0] for i in range(n)])[:, None]


def test_ort_runner_contract(tiny_onnx):
    with open_runner(tiny_onnx, "ort", device="cpu") as r:
        assert r.is_active and r.name == "ort" and not r.on_gpu
        assert "CPUExecutionProvider" in r.describe() and str(tiny_onnx) in r.describe()
        out = r.infer(gray_batch(3, 48))
        assert out["rgb"].dtype == np.uint8 and out["rgb"].shape == (3, 3, 48, 48)
        assert out["uv"].dtype == np.float32 and out["uv"].shape == (3, 2, 48, 48)
        only = r.infer(gray_batch(1, 40), outputs=("uv",))
        assert set(only) == {"uv"}
        with pytest.raises(BackendError, match=r"expected uint8 \(N, 1, H, W\)"):
            r.infer(np.zeros((1, 3, 8, 8), np.uint8))
        with pytest.raises(BackendError, match="expected 'rgb' and/or 'uv'"):
            r.infer(gray_batch(1, 8), outputs=("logits",))
    assert not r.is_active
    with pytest.raises(BackendError, match="before activate"):
        r.infer(gray_batch(1, 8))


def test_ort_cpu_session_settings(tiny_onnx):
    with open_runner(tiny_onnx, "ort", device="cpu", threads=1) as r:
        assert r.providers == ["CPUExecutionProvider"]
        opts = r.session.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.enable_cpu_mem_arena is True


def test_ort_streams_run_a_batchs_calls_side_by_side(tiny_onnx):
    """Two one-thread sessions take the calls of a batch in turn; same outputs, same order as one session."""
    gray = gray_batch(5, 48) + np.arange(5, dtype=np.uint8)[:, None, None, None] * 20  # five different images
    with OrtRunner(tiny_onnx, device="cpu", threads=2, streams=1) as one:
        one.cpu_pixels_per_call = 48 * 48  # one image per call
        want = one.infer(gray)
        assert one._pool is None and "streams" not in one.describe()
    r = OrtRunner(tiny_onnx, device="cpu", threads=2).activate()  # streams default to the threads
    try:
        r.cpu_pixels_per_call = 48 * 48
        assert len(r._stream_sessions) == 2 and r.describe().endswith(f", 2 threads, 2 streams) {tiny_onnx}")
        assert [s.get_session_options().intra_op_num_threads for s in r._stream_sessions] == [1, 1]
        used = []
        for k, s in enumerate(r._stream_sessions):
            s.run = (lambda run, k: lambda *a, **kw: used.append(k) or run(*a, **kw))(s.run, k)
        got = r.infer(gray)
        assert sorted(used) == [0, 0, 0, 1, 1]  # chunks 0, 2, 4 on stream 0; 1, 3 on stream 1
        for name in ("rgb", "uv"):
            np.testing.assert_array_equal(got[name], want[name])
        used.clear()
        r.infer(gray[:1])  # one call: the main session, both threads
        assert used == []
    finally:
        r.deactivate()
    assert r._pool is None and r._stream_sessions == []
    with pytest.raises(BackendError, match="streams: expected an integer >= 1, found 0"):
        OrtRunner(tiny_onnx, streams=0)


def test_ort_without_gpu_provider_refuses_cuda_device(tiny_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu installed here")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        open_runner(tiny_onnx, "ort", device="cuda:0")


def test_ort_and_torch_agree(tiny_onnx, tiny_checkpoint):
    x = gray_batch(2, 72)
    with open_runner(tiny_onnx, "ort", device="cpu") as o, open_runner(tiny_checkpoint, "torch", device="cpu") as t:
        a, b = o.infer(x), t.infer(x)
        assert t.name == "torch" and "PyTorch" in t.describe()
    assert np.abs(a["uv"] - b["uv"]).max() < 1e-4
    assert np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max() <= 1


def test_torch_nchw_matches_channels_last(tiny_checkpoint):
    """TorchRunner(channels_last=False): plain NCHW weights and activations, same outputs as the default layout."""
    import torch

    from engine.backends.torch_eager import TorchRunner

    x = gray_batch(3, 72)
    default = TorchRunner(tiny_checkpoint, device="cpu")
    nchw = TorchRunner(tiny_checkpoint, device="cpu", channels_last=False)
    assert default.channels_last is None and nchw.channels_last is False
    with default as cl, nchw:
        assert "channels-last" in cl.describe() and "NCHW" in nchw.describe()
        # a 3x3 conv weight with several input channels: the layouts really differ
        name, w_cl = next((n, w) for n, w in cl._graph.named_parameters() if w.dim() == 4 and min(w.shape[1:]) > 1)
        w_nchw = dict(nchw._graph.named_parameters())[name]
        assert w_cl.is_contiguous(memory_format=torch.channels_last) and not w_cl.is_contiguous()
        assert w_nchw.is_contiguous() and not w_nchw.is_contiguous(memory_format=torch.channels_last)
        a, b = cl.infer(x), nchw.infer(x)
    assert a["uv"].shape == b["uv"].shape == (3, 2, 72, 72)
    np.testing.assert_allclose(b["uv"], a["uv"], rtol=1e-4, atol=1e-5)
    assert np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max() <= 1
    with pytest.raises(BackendError, match="channels_last"):
        TorchRunner(tiny_checkpoint, channels_last="no")  # type: ignore[arg-type]


def test_sidecar_tamper_is_refused(tiny_onnx, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes() + b"\0")
    contract.sidecar_path(model).write_text(contract.sidecar_path(tiny_onnx).read_text())
    with pytest.raises(ArtifactError, match="does not match its sidecar"):
        open_runner(model, "ort")
    contract.sidecar_path(model).unlink()
    with pytest.raises(ArtifactError, match="sidecar m.json not found"):
        open_runner(model, "ort")


def test_int8_weights_for_vnni_cpus_are_refused_on_a_cpu_without_vnni(tiny_onnx, tmp_path, monkeypatch):
    """8-bit weights (``--reduce-range off``) saturate AVX2's multiply-add: wrong colours, not a crash."""
    model = tmp_path / "m8.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    side = json.loads(contract.sidecar_path(tiny_onnx).read_text())

    def sidecar(reduce_range):
        side.update(precision="int8", precision_info={"reduce_range": reduce_range, "cpu_vnni": True})
        contract.sidecar_path(model).write_text(json.dumps(side))

    sidecar(False)
    monkeypatch.setattr(hardware, "cpu_has_vnni", lambda: False)
    with pytest.raises(BackendError, match=r"m8\.onnx: INT8 with 8-bit weights runs correctly only on CPUs with "
                                           r"VNNI, and this CPU has none.*--reduce-range on"):
        OrtRunner(model, device="cpu").activate()
    for vnni, reduce_range in ((True, False), (None, False), (False, True)):  # VNNI, flags unknown, 7-bit weights
        monkeypatch.setattr(hardware, "cpu_has_vnni", lambda v=vnni: v)
        sidecar(reduce_range)
        with open_runner(model, "ort", device="cpu") as r:
            assert r.infer(gray_batch(1, 32))["rgb"].shape == (1, 3, 32, 32)


def test_resolve_by_suffix_and_mismatch(tiny_onnx, tiny_checkpoint, tmp_path):
    assert resolve_model(tiny_onnx) == ("ort", tiny_onnx)
    assert resolve_model(tiny_checkpoint) == ("torch", tiny_checkpoint)
    with pytest.raises(BackendError, match=r"--backend trt: expected a TensorRT \.plan file, found --model tiny\.onnx"):
        resolve_model(tiny_onnx, "trt")
    with pytest.raises(BackendError, match="expected .onnx, .plan or .pt, found m.bin"):
        resolve_model(tmp_path / "m.bin")
    with pytest.raises(ArtifactError, match="file not found"):
        resolve_model(tmp_path / "missing.onnx")
    with pytest.raises(BackendError, match="--backend: expected one of"):
        resolve_model(tiny_onnx, "openvino")
    with pytest.raises(hardware.DeviceError, match="device: expected cpu, cuda or cuda:K"):
        resolve_model(tiny_onnx, device="gpu0")


def test_missing_bundled_model_names_the_path(tmp_path, monkeypatch):
    fake = {k: tmp_path / "models" / p.name for k, p in backends.BUNDLED.items()}
    monkeypatch.setattr(backends, "BUNDLED", fake)
    with pytest.raises(ArtifactError, match=str(fake["ort"]).replace(".", r"\.")):
        resolve_model(None)
    with pytest.raises(ArtifactError, match="colorizer.pt, which does not exist"):
        resolve_model(None, "torch")


def test_bundled_model_is_used(tiny_onnx, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "colorizer.onnx").write_bytes(tiny_onnx.read_bytes())
    (models / "colorizer.json").write_text(contract.sidecar_path(tiny_onnx).read_text())
    fake = {k: models / p.name for k, p in backends.BUNDLED.items()}
    monkeypatch.setattr(backends, "BUNDLED", fake)
    assert resolve_model(None) == ("ort", models / "colorizer.onnx")


@pytest.fixture
def bundled_fp32_and_int8(tiny_onnx, tmp_path, monkeypatch):
    """A fake models/ folder with both ONNX exports (the tiny model twice) and no plan or checkpoint."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("colorizer", "colorizer-int8"):
        (models / f"{name}.onnx").write_bytes(tiny_onnx.read_bytes())
        (models / f"{name}.json").write_text(contract.sidecar_path(tiny_onnx).read_text())
    monkeypatch.setattr(backends, "BUNDLED", {k: models / p.name for k, p in backends.BUNDLED.items()})
    return models


def test_bundled_fp32_on_every_device_int8_only_when_asked(bundled_fp32_and_int8, monkeypatch):
    models = bundled_fp32_and_int8
    int8, fp32 = ("ort", models / "colorizer-int8.onnx"), ("ort", models / "colorizer.onnx")
    for device in ("cpu", "cuda:1", None):
        assert resolve_model(None, device=device) == fp32
        assert resolve_model(None, "ort", device=device) == fp32
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 0)
    assert resolve_model(None) == fp32
    assert resolve_model(models / "colorizer-int8.onnx", device="cpu") == int8  # a model asked for is what runs


def test_bundled_fp32_when_no_int8_ships(bundled_fp32_and_int8):
    (bundled_fp32_and_int8 / "colorizer-int8.onnx").unlink()
    assert resolve_model(None, device="cpu") == ("ort", bundled_fp32_and_int8 / "colorizer.onnx")


def write_fake_plan(folder: Path) -> Path:
    plan = folder / "m.plan"
    plan.write_bytes(b"not really an engine")
    meta = {"format": contract.SIDECAR_FORMAT, "sha256": contract.sha256_file(plan)}
    contract.sidecar_path(plan).write_text(json.dumps(meta))
    return plan


def test_trt_without_gpu_is_unavailable_and_never_imports_tensorrt(tmp_path):
    if hardware.cuda_device_count() > 0:
        pytest.skip("a CUDA device is present")
    plan = write_fake_plan(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from engine.backends import open_runner
        from engine.core.errors import BackendUnavailable
        try:
            open_runner({str(plan)!r}, "trt")
        except BackendUnavailable as e:
            print("UNAVAILABLE", e)
        print("tensorrt" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "UNAVAILABLE trt backend: no CUDA device" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_trt_refuses_wrong_files(tmp_path, tiny_onnx):
    from engine.backends.trt import TrtRunner

    with pytest.raises(BackendError, match=r"expected a TensorRT engine \(\.plan\), found tiny\.onnx"):
        TrtRunner(tiny_onnx).activate()
    with pytest.raises(BackendError, match="runs on a GPU"):
        TrtRunner(write_fake_plan(tmp_path), device="cpu").activate()


def test_engine_and_ort_path_never_import_torch(tiny_onnx, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    from PIL import Image

    Image.fromarray(pattern(40, 50, 0)).save(src / "a.png")
    code = textwrap.dedent(f"""
        import sys

        class NoTorch:  # any attempt to import torch fails loudly
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch import attempted: " + name)
                return None

        sys.meta_path.insert(0, NoTorch())
        import engine, engine.api, engine.pipeline, engine.images, engine.tree, engine.backends.ort  # noqa
        from engine.api import Colorizer
        with Colorizer({str(tiny_onnx)!r}, backend="auto", size=32) as c:
            c.colorize(__import__("numpy").zeros((20, 30), "uint8"))
            s = c.colorize_dir({str(src)!r}, {str(tmp_path / "out")!r})
        print(c.backend, s.colorized, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ort", "1", "False"]


@pytest.mark.gpu
def test_trt_engine_matches_ort(tiny_onnx, tmp_path):
    """Build a tiny FP32 engine with the exporter's module and compare it with ONNX Runtime."""
    trt_build = pytest.importorskip("export.trt_build")
    pytest.importorskip("tensorrt")
    plan = tmp_path / "tiny.plan"
    trt_build.build_engine(tiny_onnx, plan, precision="fp32", batch=(1, 4, 8), size=(32, 64, 128))
    x = gray_batch(3, 64)
    with open_runner(plan, "trt", device="cuda:0") as t, open_runner(tiny_onnx, "ort", device="cpu") as o:
        assert t.on_gpu and t.max_batch == 8
        a, b = t.infer(x), o.infer(x)
        big = t.infer(gray_batch(11, 64))  # above the profile's max batch: split into chunks
    assert np.abs(a["uv"] - b["uv"]).max() < 2e-3
    assert np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max() <= 1
    assert big["uv"].shape == (11, 2, 64, 64)
    with pytest.raises(BackendError, match="outside the engine's profile"):
        with open_runner(plan, "trt", device="cuda:0") as t:
            t.infer(gray_batch(1, 256))


@pytest.mark.gpu
def test_trt_colorize_dir_matches_ort(tiny_onnx, tmp_path):
    """The whole pipeline on the GPU: auto picks the .plan beside the .onnx; outputs agree with ONNX Runtime."""
    trt_build = pytest.importorskip("export.trt_build")
    pytest.importorskip("tensorrt")
    from engine.api import Colorizer
    from tests.engine.corpus import write_photos

    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    contract.sidecar_path(model).write_text(contract.sidecar_path(tiny_onnx).read_text())
    trt_build.build_engine(model, model.with_suffix(".plan"), precision="fp32", batch=(1, 8, 16), size=(64, 128, 256))
    write_photos(tmp_path / "in", 20, size=(300, 200), ext=".png")
    with Colorizer(model, backend="auto", size=128, batch_size=8) as c:
        assert c.backend == "trt" and c.runner.on_gpu
        s = c.colorize_dir(tmp_path / "in", tmp_path / "gpu")
    with Colorizer(model, backend="ort", device="cpu", size=128, batch_size=8) as c:
        c.colorize_dir(tmp_path / "in", tmp_path / "cpu")
    assert s.colorized == 20
    for p in sorted((tmp_path / "cpu").rglob("*.png")):
        a = np.asarray(Image.open(p)).astype(int)
        b = np.asarray(Image.open(tmp_path / "gpu" / p.relative_to(tmp_path / "cpu"))).astype(int)
        assert np.abs(a - b).max() <= 2, p


class _Recorder(base.Runner):
    """Echoes the input as chroma; records the batch shape of every call."""

    name = "recorder"

    def __init__(self, gpu: bool = False) -> None:
        super().__init__()
        self.gpu, self.calls = gpu, []

    def _activate(self) -> None: ...

    def _deactivate(self) -> None: ...

    @property
    def on_gpu(self) -> bool:
        return self.gpu

    def _infer(self, gray, outputs):
        self.calls.append(gray.shape[0])
        uv = np.repeat(gray.astype(np.float32), 2, axis=1)
        return {"uv": uv, "rgb": np.repeat(gray, 3, axis=1)}


def test_cpu_batches_run_in_cache_sized_calls():
    gray = np.random.default_rng(0).integers(0, 256, (8, 1, 224, 224), dtype=np.uint8)
    with _Recorder() as r:
        out = r.infer(gray)
        assert r.calls == [1] * 8  # one 224 x 224 image per call on a CPU
        np.testing.assert_array_equal(out["rgb"], np.repeat(gray, 3, axis=1))  # same order, same values
        np.testing.assert_array_equal(out["uv"][:, 0], gray[:, 0].astype(np.float32))
        r.calls.clear()
        r.infer(np.zeros((9, 1, 128, 128), np.uint8), outputs=("uv",))
        assert r.calls == [4, 4, 1]
        r.cpu_pixels_per_call = None
        r.calls.clear()
        r.infer(gray)
        assert r.calls == [8]
    with _Recorder(gpu=True) as r:
        r.infer(gray)
        assert r.calls == [8]  # a GPU gets the whole batch


def test_images_per_call():
    with _Recorder() as r:
        assert (r.images_per_call(224, 224), r.images_per_call(128, 128), r.images_per_call(512, 512)) == (1, 4, 1)
        r.size_multiple = 8
        assert r.images_per_call(100, 100) == (1 << 16) // (104 * 104)  # what a padded call holds
        r.cpu_pixels_per_call = None
        assert r.images_per_call(64, 64) is None
    with _Recorder(gpu=True) as r:
        assert r.images_per_call(64, 64) is None


def test_sizes_are_padded_to_the_artifacts_multiple_and_cropped_back():
    gray = np.random.default_rng(1).integers(0, 256, (2, 1, 37, 50), dtype=np.uint8)
    with _Recorder() as r:
        r.size_multiple = 8
        shapes = []
        r._infer = lambda g, outputs: (shapes.append(g.shape), _Recorder._infer(r, g, outputs))[1]
        out = r.infer(gray)
    assert shapes == [(2, 1, 40, 56)]  # padded at the bottom and right
    assert out["rgb"].shape == (2, 3, 37, 50) and out["uv"].shape == (2, 2, 37, 50)
    np.testing.assert_array_equal(out["rgb"], np.repeat(gray, 3, axis=1))  # the crop is the original pixels
    assert out["rgb"].flags.c_contiguous and out["uv"].flags.c_contiguous


def test_ort_runner_pads_odd_sizes_like_the_torch_graph_on_the_padded_image(tiny_onnx, tiny_checkpoint):
    """The exported graph takes multiples of 8 (sidecar size_multiple): the runner edge-pads and crops."""
    x = np.random.default_rng(2).integers(0, 256, (2, 1, 37, 53), dtype=np.uint8)
    padded = np.pad(x, ((0, 0), (0, 0), (0, 3), (0, 3)), mode="edge")
    with open_runner(tiny_onnx, "ort", device="cpu") as o, open_runner(tiny_checkpoint, "torch", device="cpu") as t:
        assert o.size_multiple == 8 and t.size_multiple == 1  # the torch graph takes any size
        got, ref = o.infer(x), t.infer(padded)
    assert got["uv"].shape == (2, 2, 37, 53)
    assert np.abs(got["uv"] - ref["uv"][:, :, :37, :53]).max() < 1e-4
    assert np.abs(got["rgb"].astype(int) - ref["rgb"][:, :, :37, :53].astype(int)).max() <= 1


def test_size_multiple_from_the_sidecar(tmp_path):
    art = tmp_path / "m.onnx"
    assert contract.size_multiple({}, art) == 1  # older sidecars: any size
    assert contract.size_multiple({"inputs": [{"name": "gray", "size_multiple": 8}]}, art) == 8
    assert contract.size_multiple({"inputs": [{"name": "other", "size_multiple": 8}]}, art) == 1
    for bad in (0, -8, 2.5, "8", True):
        with pytest.raises(ArtifactError, match=r"m\.json: input size_multiple: expected an integer in 1\.\.1024"):
            contract.size_multiple({"inputs": [{"name": "gray", "size_multiple": bad}]}, art)
    assert [contract.round_up(s, 8) for s in (1, 8, 9, 224, 250)] == [8, 8, 16, 224, 256]


# ----------------------------------------------------------------------------- ONNX Runtime providers

_ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_providers_tensorrt_ep_with_fp16_and_caches(tmp_path):
    from engine.backends.ort import choose_providers

    providers, reasons = choose_providers(_ALL, device=None, cuda_devices=2, cache_dir=tmp_path)
    assert providers == [
        ("TensorrtExecutionProvider", {"device_id": "0", "trt_fp16_enable": "True",
                                       "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path),
                                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path)}),
        ("CUDAExecutionProvider", {"device_id": "0"}),
        "CPUExecutionProvider",
    ] and reasons == []
    providers, _ = choose_providers(_ALL, device="cuda:1", cuda_devices=2, cache_dir=tmp_path, fp16=False,
                                    profile={"trt_profile_min_shapes": "gray:1x1x256x256"})
    trt_opts = providers[0][1]
    assert trt_opts["device_id"] == "1" and trt_opts["trt_fp16_enable"] == "False"
    assert trt_opts["trt_profile_min_shapes"] == "gray:1x1x256x256" and providers[1] == ("CUDAExecutionProvider", {"device_id": "1"})


def test_providers_fall_back_with_reasons(tmp_path):
    from engine.backends.ort import choose_providers
    from engine.core.errors import BackendUnavailable

    cuda_cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers, reasons = choose_providers(cuda_cpu, device=None, cuda_devices=1, cache_dir=tmp_path)
    assert providers == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert reasons == ["TensorRT EP not in this onnxruntime (CUDAExecutionProvider, CPUExecutionProvider)"]
    providers, reasons = choose_providers(_ALL, device=None, cuda_devices=1, cache_dir=None)
    assert [p[0] for p in providers[:1]] == ["CUDAExecutionProvider"] and "no writable folder" in reasons[0]
    providers, reasons = choose_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"], device=None,
                                          cuda_devices=1, cache_dir=tmp_path)
    assert providers[0][0] == "TensorrtExecutionProvider" and providers[1:] == ["CPUExecutionProvider"]
    assert reasons == ["CUDA EP not in this onnxruntime (TensorrtExecutionProvider, CPUExecutionProvider)"]
    # no GPU: the CPU directly, never a GPU provider that would fail at session creation
    assert choose_providers(_ALL, device=None, cuda_devices=0, cache_dir=tmp_path) == (
        ["CPUExecutionProvider"], ["no CUDA device: running on the CPU"])
    assert choose_providers(["CPUExecutionProvider"], device=None, cuda_devices=0, cache_dir=None) == (
        ["CPUExecutionProvider"], [])
    assert choose_providers(_ALL, device="cpu", cuda_devices=4, cache_dir=tmp_path) == (["CPUExecutionProvider"], [])
    with pytest.raises(BackendUnavailable, match="--device cuda needs onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], device="cuda", cuda_devices=1, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match="--device cuda:0, but the NVIDIA driver reports no CUDA device"):
        choose_providers(_ALL, device="cuda:0", cuda_devices=0, cache_dir=tmp_path)


def test_trt_cache_folder_env_then_beside_the_model_then_user_cache(tmp_path):
    from engine.backends.ort import trt_cache_dir

    model = tmp_path / "models" / "m.onnx"
    env = {"COLORIZER_TRT_CACHE": str(tmp_path / "env-cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert trt_cache_dir(model, env) == tmp_path / "env-cache"
    env["COLORIZER_TRT_CACHE"] = ""
    assert trt_cache_dir(model, env, can_write=lambda p: True) == tmp_path / "models" / "trt-cache"
    assert trt_cache_dir(model, env, can_write=lambda p: False) == tmp_path / "xdg" / "colorizer" / "ort-trt"


def test_trt_cache_folder_is_git_ignored():
    assert "trt-cache/" in (ROOT / ".gitignore").read_text().splitlines()
