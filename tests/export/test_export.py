"""FP32 / FP16 export: parity, dynamic shapes, colour math in the graph, sidecar, failure leaves nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from engine.core import color
from engine.core.contract import SIDECAR_FORMAT, read_sidecar, sha256_file, sidecar_path
from export import parity
from export.fp16 import ExportError, colour_nodes
from engine.net.graph import ColorizeGraph
from export.to_onnx import export_checkpoint
from tests.conftest import TINY_MODEL
from engine.net.checkpoint import load_model, save_checkpoint
from engine.net.model import ColorizerNet, ModelConfig


@pytest.fixture(scope="module")
def tiny_graph(tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    return ColorizeGraph(model).eval()


@pytest.fixture(scope="module")
def fp16_onnx(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "tiny16.onnx"
    export_checkpoint(tiny_checkpoint, out, precision="fp16")
    return out


def _gray(rng, n, h, w):
    return rng.integers(0, 256, size=(n, 1, h, w), dtype=np.uint8)


def test_fp32_parity_within_tolerance(tiny_onnx):
    side = read_sidecar(tiny_onnx)
    tol = parity.TOLERANCES["fp32"]
    assert side["precision"] == "fp32"
    assert side["tolerance"] == tol
    assert side["parity"]["uv_max_abs"] <= tol["uv_max_abs"]
    assert side["parity"]["rgb_max_levels"] <= tol["rgb_max_levels"]
    shapes = [c["shape"] for c in side["parity"]["cases"]]
    m = side["inputs"][0]["size_multiple"]
    assert m == 8  # the decoder upsamples three times by 2 (export.rewrites.resize_fixed_scales)
    assert len({s[0] for s in shapes}) >= 2 and any(s[2] != s[3] for s in shapes)
    assert all(s[2] % m == 0 and s[3] % m == 0 for s in shapes)
    assert [s[2:] for s in shapes] == [[40, 56], [64, 48], [8, 8]]  # PARITY_CASES rounded up to the multiple


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (2, 1, 40, 56), (4, 1, 64, 48), (1, 1, 8, 200), (3, 1, 16, 24)])
def test_dynamic_shapes_match_torch(tiny_onnx, tiny_graph, shape, rng):
    session = parity.ort_session(tiny_onnx)
    gray = rng.integers(0, 256, size=shape, dtype=np.uint8)
    rgb, uv = parity.ort_run(session, gray)
    ref_rgb, ref_uv = parity.torch_reference(tiny_graph, gray)
    n, _, h, w = shape
    assert rgb.shape == (n, 3, h, w) and rgb.dtype == np.uint8
    assert uv.shape == (n, 2, h, w) and uv.dtype == np.float32
    assert np.abs(uv - ref_uv).max() <= parity.TOLERANCES["fp32"]["uv_max_abs"]
    assert np.abs(rgb.astype(int) - ref_rgb.astype(int)).max() <= 1


def test_graph_io_is_symbolic(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    io = {v.name: v.type.tensor_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io["gray"].elem_type == TensorProto.UINT8
    assert io["rgb"].elem_type == TensorProto.UINT8
    assert io["uv"].elem_type == TensorProto.FLOAT
    for name, channels in (("gray", 1), ("rgb", 3), ("uv", 2)):
        dims = io[name].shape.dim
        assert [d.dim_param for i, d in enumerate(dims) if i != 1] == ["N", "H", "W"]
        assert dims[1].dim_value == channels
    assert not any(init.data_location == TensorProto.EXTERNAL for init in model.graph.initializer)


def test_rgb_output_is_compose_u8_of_uv_output(tiny_onnx, rng):
    """The graph's colour math is the colour spec's: rgb == compose_u8(gray, uv) from its own uv."""
    session = parity.ort_session(tiny_onnx)
    gray = _gray(rng, 2, 40, 72)
    rgb, uv = parity.ort_run(session, gray)
    for i in range(gray.shape[0]):
        want = color.compose_u8(gray[i, 0], uv[i].transpose(1, 2, 0))
        got = rgb[i].transpose(1, 2, 0)
        diff = np.abs(want.astype(int) - got.astype(int))
        assert diff.max() <= 1
        assert (diff == 0).mean() > 0.999
    assert rgb.std() > 5  # real colours, not a constant image


def test_torch_graph_is_compose_u8_of_its_uv(tiny_graph, rng):
    gray = _gray(rng, 1, 30, 30)
    rgb, uv = parity.torch_reference(tiny_graph, gray)
    want = color.compose_u8(gray[0, 0], uv[0].transpose(1, 2, 0))
    assert np.abs(want.astype(int) - rgb[0].transpose(1, 2, 0).astype(int)).max() <= 1


def test_sidecar_contents(tiny_onnx, tiny_checkpoint):
    side_path = sidecar_path(tiny_onnx)
    assert side_path.name == "tiny.json"
    side = json.loads(side_path.read_text())
    assert side == read_sidecar(tiny_onnx)  # format and sha256 check out
    assert side["format"] == SIDECAR_FORMAT
    assert side["sha256"] == sha256_file(tiny_onnx)
    assert side["artifact"] == {"file": "tiny.onnx", "kind": "onnx"}
    assert side["model_config"] == ModelConfig.from_dict(TINY_MODEL).to_dict()
    assert side["colour_spec"] == json.loads(json.dumps(color.describe()))
    opset = next(o.version for o in onnx.load(str(tiny_onnx)).opset_import if o.domain in ("", "ai.onnx"))
    assert side["opset"] == opset >= 18
    assert [(i["name"], i["dtype"], i["shape"]) for i in side["inputs"]] == [("gray", "uint8", ["N", 1, "H", "W"])]
    outs = {o["name"]: o for o in side["outputs"]}
    assert outs["rgb"]["dtype"] == "uint8" and outs["rgb"]["shape"] == ["N", 3, "H", "W"]
    assert outs["uv"]["dtype"] == "float32" and outs["uv"]["range"] == [[-0.436, 0.436], [-0.615, 0.615]]
    assert side["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript"):
        assert side["exporter"][pkg]


def test_sidecar_detects_a_changed_file(tiny_onnx, tmp_path):
    from engine.core.errors import ArtifactError

    copy = tmp_path / "m.onnx"
    copy.write_bytes(tiny_onnx.read_bytes() + b"\0")
    sidecar_path(copy).write_text(sidecar_path(tiny_onnx).read_text())
    with pytest.raises(ArtifactError, match="re-export"):
        read_sidecar(copy)


def test_failed_parity_leaves_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "fail.onnx"
    strict = {"uv_max_abs": -1.0, "rgb_max_levels": 0, "psnr_floor_db": None}
    with pytest.raises(ExportError, match="parity check.*nothing written"):
        export_checkpoint(tiny_checkpoint, out, precision="fp32", tolerance=strict)
    assert list(tmp_path.iterdir()) == []


def test_fp16_parity_and_types(fp16_onnx, tiny_graph, rng):
    side = read_sidecar(fp16_onnx)
    tol = parity.TOLERANCES["fp16"]
    assert side["precision"] == "fp16" and side["tolerance"] == tol
    assert 0 < side["parity"]["uv_max_abs"] <= tol["uv_max_abs"]
    assert side["parity"]["rgb_max_levels"] <= tol["rgb_max_levels"]
    model = onnx.load(str(fp16_onnx))
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io == {"gray": TensorProto.UINT8, "rgb": TensorProto.UINT8, "uv": TensorProto.FLOAT}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    # The body runs in FP16 ...
    body_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    assert sum(inits[n.input[1]] == TensorProto.FLOAT16 for n in body_convs) >= 10
    # ... the colour nodes stay FP32: the YUV->RGB conv, the clamp and rounding.
    post = side["precision_info"]["fp32_nodes"]["post"]
    yuv_conv = [nodes[name] for name in post if nodes[name].op_type == "Conv"]
    assert len(yuv_conv) == 1
    assert {nodes[name].op_type for name in post} >= {"Conv", "Clip", "Floor", "Cast"}
    vi = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for name in post:
        for out in nodes[name].output:
            assert vi.get(out, TensorProto.FLOAT) != TensorProto.FLOAT16, f"{name} output is FP16"
    # And still the colour spec's pixels, from its own uv, at a non-square size.
    session = parity.ort_session(fp16_onnx)
    gray = _gray(rng, 3, 32, 24)
    rgb, uv = parity.ort_run(session, gray)
    for i in range(3):
        want = color.compose_u8(gray[i, 0], uv[i].transpose(1, 2, 0))
        assert np.abs(want.astype(int) - rgb[i].transpose(1, 2, 0).astype(int)).max() <= 1


def test_colour_nodes_found_structurally(tiny_onnx):
    nodes = colour_nodes(onnx.load(str(tiny_onnx)))
    model = onnx.load(str(tiny_onnx))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert [ops[n] for n in nodes["post"]].count("Conv") == 1
    assert "Cast" in {ops[n] for n in nodes["pre"]}
    assert not any(ops[n] == "Conv" for n in nodes["pre"])


CENTRES = [[u, v] for u in (-0.2, 0.0, 0.2) for v in (-0.3, 0.0, 0.3)]


def _classification_checkpoint(path, *, seed: int, width_mult: float, temperature: float, step: int):
    """A random classification-head model saved at ``path`` (9 bins, logits at stride 4)."""
    torch.manual_seed(seed)
    config = ModelConfig(width="seed", width_mult=width_mult, head="classification",
                         head_options={"centres": CENTRES, "temperature": temperature, "stride": 4})
    save_checkpoint(path, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": step})
    return path


def test_classification_head_temperature(tmp_path):
    ckpt = _classification_checkpoint(tmp_path / "cls.pt", seed=1, width_mult=0.125, temperature=0.4, step=3)
    centres = CENTRES
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "cls.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--temperature", "1.5"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"exported {out} (fp32, opset ")
    side = read_sidecar(out)
    assert side["model_config"]["head_options"]["temperature"] == 1.5
    assert side["model_config"]["head_options"]["centres"] == centres
    assert side["parity"]["uv_max_abs"] <= parity.TOLERANCES["fp32"]["uv_max_abs"]
    # The annealed mean is channels-last in the FP32 file (export.rewrites), checked by the parity gate above.
    model = onnx.load(str(out))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 1 and onnx.helper.get_attribute_value(softmax[0].attribute[0]) == -1
    readers = [n.op_type for n in model.graph.node if softmax[0].output[0] in n.input]
    assert readers == ["MatMul"]
    assert side["precision_info"]["graph_rewrites"]["softmax_channels_last"]


def test_regression_head_export_rewrites(tiny_onnx):
    """No annealed mean or pool to rewrite; the three decoder resizes get constant scales, their shape arithmetic goes."""
    rewrites = read_sidecar(tiny_onnx)["precision_info"]["graph_rewrites"]
    assert rewrites["softmax_channels_last"] == [] and rewrites["pool_exclude_pad"] == []
    assert list(rewrites["resize_fixed_scales"].values()) == [[1.0, 1.0, 2.0, 2.0]] * 3
    assert rewrites["pruned_nodes"] > 0
    model = onnx.load(str(tiny_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Resize") == 3
    assert {i for n in model.graph.node if n.op_type == "Shape" for i in n.input} == {"gray"}  # only the colour math's reshape
    inits = {i.name for i in model.graph.initializer}
    assert all(n.input[2] in inits and len(n.input) == 3 for n in model.graph.node if n.op_type == "Resize")


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (1, 1, 60, 64), (2, 1, 64, 44), (1, 1, 4, 4)])
def test_sizes_off_the_multiple_are_refused_not_misaligned(tiny_onnx, shape):
    """A size that is not a multiple of 8 makes a scaled resize miss its skip tensor: ORT refuses the run."""
    session = parity.ort_session(tiny_onnx)
    with pytest.raises(Exception, match="(?i)broadcast|shape|dimension"):
        parity.ort_run(session, np.zeros(shape, np.uint8))


def test_classification_export_pool_and_head_resize(tmp_path):
    """The head's 4x4 ceil-mode pool excludes its (empty) padding, its x4 upsampling gets constant scales,
    and ONNX Runtime's optimized graph keeps the decoder and the pool in the blocked NCHWc layout."""
    import onnxruntime as ort

    ckpt = _classification_checkpoint(tmp_path / "cls.pt", seed=3, width_mult=0.25, temperature=0.8, step=1)
    out = tmp_path / "cls.onnx"
    side = export_checkpoint(ckpt, out)
    rewrites = side["precision_info"]["graph_rewrites"]
    assert len(rewrites["pool_exclude_pad"]) == 1
    assert sorted(map(tuple, rewrites["resize_fixed_scales"].values())) == [(1.0, 1.0, 2.0, 2.0)] * 3 + [(1.0, 1.0, 4.0, 4.0)]
    pool = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "AveragePool")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["count_include_pad"] == 0 and attrs["ceil_mode"] == 1
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ops = [(n.op_type, n.domain) for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    if ("Conv", "com.microsoft.nchwc") not in ops:
        pytest.skip("this CPU gets no NCHWc kernels from ONNX Runtime")
    assert ops.count(("Upsample", "com.microsoft.nchwc")) == 3
    assert ("AveragePool", "com.microsoft.nchwc") in ops and ("AveragePool", "") not in ops


def test_pretrained_encoder_exports_in_every_precision(tmp_path):
    """The EfficientNet-Lite trunk (depthwise convs, ReLU6 as Clip, strided Pads) through FP32, FP16 and INT8:
    each passes the exporter's parity gate (INT8 also its PSNR floor against FP32), and the sidecar names the
    encoder and the size multiple of its five stride-2 levels."""
    torch.manual_seed(4)
    config = ModelConfig(width_mult=0.25, head="classification", encoder="efficientnet-lite0",
                         head_options={"centres": CENTRES, "temperature": 0.5, "stride": 4})
    ckpt = tmp_path / "lite.pt"
    save_checkpoint(ckpt, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": 1})
    for precision in ("fp32", "fp16", "int8"):
        out = tmp_path / f"lite-{precision}.onnx"
        side = export_checkpoint(ckpt, out, precision=precision)
        assert side["model_config"]["encoder"] == "efficientnet-lite0"
        assert side["inputs"][0]["size_multiple"] == 32
        gate = parity.TOLERANCES[precision]
        if gate["uv_max_abs"] is not None:
            assert side["parity"]["uv_max_abs"] <= gate["uv_max_abs"]
        else:
            assert side["parity"]["psnr_db"] >= gate["psnr_floor_db"]
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert "Clip" in ops or precision == "int8"  # ReLU6; INT8 folds it into the quantized convs
    fp16 = read_sidecar(tmp_path / "lite-fp16.onnx")["precision_info"]
    assert fp16["fp16_shared_constants"]


def test_contract_is_stamped_into_the_onnx_file(tiny_onnx):
    """The sidecar less its sha256 is in metadata_props: read by the engine's own reader and by ONNX Runtime."""
    import onnxruntime as ort

    from engine.core.contract import METADATA_KEY, contract_in_onnx, onnx_metadata

    side = read_sidecar(tiny_onnx)
    stamped = {k: v for k, v in side.items() if k != "sha256"}
    assert contract_in_onnx(tiny_onnx) == stamped
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY]) == stamped
    assert onnx_metadata(tiny_onnx) == {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}


def test_onnx_without_sidecar_runs_and_a_differing_sidecar_wins(tiny_onnx, tmp_path, caplog):
    import logging
    import shutil

    from engine.backends.ort import OrtRunner
    from engine.core.contract import read_contract
    from engine.core.errors import ArtifactError

    alone = tmp_path / "alone.onnx"
    shutil.copy(tiny_onnx, alone)
    gray = np.random.default_rng(0).integers(0, 256, (1, 1, 16, 24), dtype=np.uint8)
    with caplog.at_level(logging.INFO):
        with OrtRunner(alone, device="cpu", threads=1) as runner:
            out = runner.infer(gray)
            assert runner.size_multiple == read_sidecar(tiny_onnx)["inputs"][0]["size_multiple"]
            assert runner.meta["sha256"] == sha256_file(alone)
    assert out["rgb"].shape == (1, 3, 16, 24)
    assert "no sidecar alone.json; using the contract stamped in the ONNX file" in caplog.text

    side = read_sidecar(tiny_onnx)
    side["inputs"][0]["size_multiple"] = 16
    sidecar_path(alone).write_text(json.dumps(side))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read_contract(alone)["inputs"][0]["size_multiple"] == 16
    assert "sidecar alone.json differs from the contract stamped in the file (inputs); using the sidecar" in caplog.text

    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    bare.write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError, match="sidecar bare.json not found next to it, and the file holds no "
                                            "'colorizer.contract' metadata; re-export"):
        read_contract(bare)
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ArtifactError, match="expected an ONNX file"):
        read_contract(tmp_path / "junk.onnx")


def test_restamp_keeps_the_graph_and_updates_the_sha256(tiny_onnx, tmp_path):
    import shutil

    from engine.core.contract import contract_in_onnx
    from export.sidecar import restamp_onnx

    copy = tmp_path / "m.onnx"
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]  # an export made before stamping
    copy.write_bytes(model.SerializeToString())
    shutil.copy(sidecar_path(tiny_onnx), sidecar_path(copy))
    side = json.loads(sidecar_path(copy).read_text())
    side["sha256"] = sha256_file(copy)
    sidecar_path(copy).write_text(json.dumps(side))
    old, new = restamp_onnx(copy)
    assert old == side["sha256"] and new == sha256_file(copy) != old
    assert read_sidecar(copy)["sha256"] == new
    assert contract_in_onnx(copy) == {k: v for k, v in side.items() if k != "sha256"}
    assert onnx.load(str(copy)).graph == model.graph


def test_members_export_in_every_precision_with_their_mean_kept_out_of_int8(tmp_path):
    """Two decoder members: one encoder pass, two annealed means, their mean at the end; each precision passes
    the exporter's gates, --temperature reaches both heads, and INT8 keeps both heads' decode and the mean in float."""
    torch.manual_seed(5)
    config = ModelConfig(width_mult=0.125, head="classification", members=2,
                         head_options={"centres": CENTRES, "temperature": 0.5, "stride": 4})
    ckpt = tmp_path / "m2.pt"
    save_checkpoint(ckpt, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": 1})
    for precision in ("fp32", "fp16", "int8"):
        out = tmp_path / f"m2-{precision}.onnx"
        side = export_checkpoint(ckpt, out, precision=precision, temperature=0.8)
        assert side["model_config"]["members"] == 2 and side["model_config"]["head_options"]["temperature"] == 0.8
        gate = parity.TOLERANCES[precision]
        if gate["uv_max_abs"] is not None:
            assert side["parity"]["uv_max_abs"] <= gate["uv_max_abs"]
        else:
            assert side["parity"]["psnr_db"] >= gate["psnr_floor_db"]
        graph = onnx.load(str(out)).graph
        assert sum(n.op_type == "Softmax" for n in graph.node) == 2
        first_convs = [n for n in graph.node if n.op_type in ("Conv", "QLinearConv")
                       and any(i == "gray" or i.startswith("y") for i in n.input)]
        assert len(first_convs) <= 1  # the encoder's first conv once, not once per member
    names = {n.name: n for n in onnx.load(str(tmp_path / "m2-int8.onnx")).graph.node}
    head = read_sidecar(tmp_path / "m2-int8.onnx")["precision_info"]["fp32_nodes"]["head"]
    assert sum(names[n].op_type == "Softmax" for n in head if n in names) == 2
    prod = {o: n for n in names.values() for o in n.output}
    assert prod["uv"].op_type != "DequantizeLinear" and prod["uv"].name in head  # the mean is float
    # the torch model with T 0.8 on both members is what the file computes
    model, _ = load_model(ckpt)
    model.set_temperature(0.8)
    gray = np.random.default_rng(3).integers(0, 256, size=(1, 1, 32, 32), dtype=np.uint8)
    _, uv = parity.ort_run(parity.ort_session(tmp_path / "m2-fp32.onnx"), gray)
    _, ref = parity.torch_reference(ColorizeGraph(model).eval(), gray)
    assert np.abs(uv - ref).max() < 1e-4
