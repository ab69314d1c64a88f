"""INT8 static QDQ export: quality gate on held-out photos, colour math kept exact, calibration helpers.

The tiny fixture model's head is scaled x20, so its tanh saturates on ~97% of pixels and
almost any quantization error vanishes. These tests rescale the head (x0.25: uv std ~0.05-0.09,
~1% saturated, the spread of a trained model's chroma) so that INT8 errors reach the output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.core import color
from engine.core.contract import read_sidecar
from engine.core.hardware import cpu_has_vnni
from export import parity, quantize
from export.fp16 import ExportError
from export.to_onnx import DEFAULT_CALIB_DIR, export_checkpoint
from engine.net.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def soft_checkpoint(tiny_checkpoint, tmp_path_factory):
    data = load_checkpoint(tiny_checkpoint)
    data.pop("format")
    data["model"] = dict(data["model"])
    data["model"]["members.0.head.conv.weight"] = data["model"]["members.0.head.conv.weight"] * 0.25
    path = tmp_path_factory.mktemp("soft") / "soft.pt"
    save_checkpoint(path, data)
    return path


@pytest.fixture(scope="module")
def int8_onnx(soft_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny8.onnx"
    export_checkpoint(soft_checkpoint, out, precision="int8")  # default calibration folder: samples/
    return out


def test_int8_quality_gate_and_sidecar(int8_onnx):
    side = read_sidecar(int8_onnx)
    info = side["precision_info"]
    floor = parity.TOLERANCES["int8"]["psnr_floor_db"]
    assert side["precision"] == "int8" and side["tolerance"]["psnr_floor_db"] == floor
    assert side["parity"]["psnr_db"] >= floor
    assert all(p["psnr_db"] < quantize.PSNR_CAP_DB for p in side["parity"]["psnr_images"])  # not identical: really int8
    calib = info["calibration"]
    assert calib["images"] and calib["held_out"]
    assert not set(calib["images"]) & set(calib["held_out"])
    assert {p["image"] for p in side["parity"]["psnr_images"]} == set(calib["held_out"])
    assert len(calib["images"]) + len(calib["held_out"]) == len(quantize.find_images(DEFAULT_CALIB_DIR))
    vnni = cpu_has_vnni()
    assert info["cpu_vnni"] == vnni
    assert info["reduce_range"] is (not vnni)
    assert "_eval" not in info


def test_int8_body_is_quantized_colour_math_is_not(int8_onnx):
    model = onnx.load(str(int8_onnx))
    side = read_sidecar(int8_onnx)
    prod = {o: n for n in model.graph.node for o in n.output}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    # Per-channel weights: some DequantizeLinear has a 1-D scale longer than 1.
    inits = {i.name: i for i in model.graph.initializer}
    assert any(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
               for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits)
    excluded = side["precision_info"]["fp32_nodes"]
    names = {n.name: n for n in model.graph.node}
    for name in excluded["post"] + excluded["head"]:
        node = names[name]
        for i in node.input:
            if i in prod:
                assert prod[i].op_type != "DequantizeLinear" or name not in excluded["post"], f"{name} reads INT8 data"
    assert prod["uv"].op_type != "DequantizeLinear"  # uv is not squeezed through 8 bits
    assert prod["rgb"].op_type == "Cast"


def test_int8_rgb_is_compose_u8_of_its_uv(int8_onnx, rng):
    session = parity.ort_session(int8_onnx)
    gray = rng.integers(0, 256, size=(2, 1, 48, 40), dtype=np.uint8)
    rgb, uv = parity.ort_run(session, gray)
    for i in range(2):
        want = color.compose_u8(gray[i, 0], uv[i].transpose(1, 2, 0))
        assert np.abs(want.astype(int) - rgb[i].transpose(1, 2, 0).astype(int)).max() <= 1


def test_int8_dynamic_shapes(int8_onnx):
    session = parity.ort_session(int8_onnx)
    for shape in [(1, 1, 8, 8), (3, 1, 40, 56)]:
        rgb, uv = parity.ort_run(session, np.zeros(shape, np.uint8))
        assert rgb.shape == (shape[0], 3, *shape[2:]) and uv.shape == (shape[0], 2, *shape[2:])


def test_int8_quality_on_real_photo_vs_fp32(int8_onnx, soft_checkpoint):
    """Independent of the exporter's own numbers: a held-out sample photo, INT8 vs FP32 torch."""
    from engine.net.graph import ColorizeGraph
    from engine.net.checkpoint import load_model

    side = read_sidecar(int8_onnx)
    held = DEFAULT_CALIB_DIR / side["precision_info"]["calibration"]["held_out"][0]
    gray = quantize.load_gray(held, size=160)
    graph = ColorizeGraph(load_model(soft_checkpoint)[0]).eval()
    ref, ref_uv = parity.torch_reference(graph, gray)
    got, uv = parity.ort_run(parity.ort_session(int8_onnx), gray)
    assert ref_uv.std() > 0.02  # the model really colours this photo
    assert parity.psnr_u8(got, ref) >= parity.TOLERANCES["int8"]["psnr_floor_db"]


def test_psnr_gate_rejects_low_quality():
    measured = {"uv_max_abs": 0.3, "rgb_max_levels": 90, "psnr_db": 21.0}
    assert parity.violations(measured, parity.TOLERANCES["int8"]) == ["mean PSNR vs fp32 21.00 dB < 35.00 dB"]
    assert parity.violations({**measured, "psnr_db": 36.0}, parity.TOLERANCES["int8"]) == []


# ----------------------------------------------------------------------------- helpers


def test_find_images_errors(tmp_path):
    with pytest.raises(ExportError, match="found no folder"):
        quantize.find_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ExportError, match="found none"):
        quantize.find_images(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ExportError, match="1 unreadable"):
        quantize.find_images(tmp_path)


def test_find_images_skips_unreadable(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"junk")
    assert [p.name for p in quantize.find_images(tmp_path)] == ["a.png"]
    gray = quantize.load_gray(tmp_path / "a.png", size=16)
    assert gray.shape == (1, 1, 16, 16) and gray.dtype == np.uint8
    assert int(gray[0, 0, 0, 0]) == int(color.rgb_u8_to_luma_u8(np.array([100, 100, 100], np.uint8)))


def test_split_and_synthetic():
    from pathlib import Path

    six = [Path(f"{i}.jpg") for i in range(6)]
    calib, held = quantize.split_images(six)
    assert [p.name for p in held] == ["2.jpg", "5.jpg"] and len(calib) == 4
    assert quantize.split_images(six[:2]) == (six[:2], [])
    imgs = quantize.synthetic_images(count=2, size=32)
    assert all(i.shape == (1, 1, 32, 32) and i.dtype == np.uint8 and i.std() > 10 for i in imgs)
    assert not np.array_equal(imgs[0], imgs[1])


def test_calibration_reader_protocol():
    from onnxruntime.quantization import CalibrationDataReader

    batches = [np.zeros((1, 1, 4, 4), np.uint8)] * 2
    reader = quantize._Reader(batches)
    assert isinstance(reader, CalibrationDataReader)
    assert reader.get_next()["gray"].shape == (1, 1, 4, 4)
    assert reader.get_next() is not None and reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_int8_classification_head_quantized_up_to_its_logits(tmp_path, temperature):
    """The logits conv runs in INT8; Softmax, the annealed mean and the upsampling stay float.

    T != 1 matters: ORT's pre-processing then rewrites the logits and drops the exporter's
    scope metadata, and the head must be found from the graph's structure.
    """
    import torch

    from engine.net.graph import ColorizeGraph
    from engine.net.checkpoint import load_model
    from engine.net.model import ColorizerNet, ModelConfig

    torch.manual_seed(2)
    centres = [[u, v] for u in (-0.2, 0.0, 0.2) for v in (-0.3, 0.0, 0.3)]
    config = ModelConfig(width="seed", width_mult=0.125, head="classification",
                         head_options={"centres": centres, "temperature": temperature, "stride": 4})
    ckpt = tmp_path / "cls.pt"
    save_checkpoint(ckpt, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": 1})
    out = tmp_path / "cls8.onnx"
    export_checkpoint(ckpt, out, precision="int8")
    info = read_sidecar(out)["precision_info"]
    model = onnx.load(str(out))
    names = {n.name: n for n in model.graph.node}
    prod = {o: n for n in model.graph.node for o in n.output}
    ops = {n: names[n].op_type for n in info["fp32_nodes"]["head"]}
    assert "Softmax" in ops.values() and "MatMul" in ops.values()  # softmax + annealed mean (over the bins) stay float
    quantized = [names[n] for n in info["head_quantized"] if n in names]  # the quantizer drops Relu (folded into Q)
    convs = [n for n in quantized if n.op_type == "Conv"]
    assert convs  # at least the 1x1 logits conv (its 3x3 conv is quantized as head or as body)
    for conv in convs:  # weights and activations come through Q/DQ
        assert all(prod[i].op_type == "DequantizeLinear" for i in conv.input[:2])
    softmax = next(names[n] for n, op in ops.items() if op == "Softmax")
    assert prod[softmax.input[0]].op_type == "DequantizeLinear"  # logits are 8-bit
    consumers = [n for n in model.graph.node if softmax.output[0] in n.input]
    assert consumers and all(n.op_type != "QuantizeLinear" for n in consumers)  # probabilities stay float
    assert prod["uv"].op_type != "DequantizeLinear"
    # Channels-last annealed mean: Softmax over the last axis of the transposed 8-bit logits, then MatMul.
    assert info["graph_rewrites"]["softmax_channels_last"]
    assert onnx.helper.get_attribute_value(softmax.attribute[0]) == -1
    to_nhwc = prod[prod[softmax.input[0]].input[0]]
    assert to_nhwc.op_type == "Transpose" and list(to_nhwc.attribute[0].ints) == [0, 2, 3, 1]
    assert [n.op_type for n in consumers] == ["MatMul"]
    # ORT cancels that Transpose against its own after the channels-last QLinearConv of the logits.
    opt = _ort_optimized(out, tmp_path / "opt.onnx")
    oprod = {o: n for n in opt.graph.node for o in n.output}
    osoftmax = next(n for n in opt.graph.node if n.op_type == "Softmax")
    assert oprod[osoftmax.input[0]].op_type == "DequantizeLinear"
    assert oprod[oprod[osoftmax.input[0]].input[0]].op_type == "QLinearConv"
    # The head's 4x4 pool runs as a depthwise QLinearConv, not as ORT's slow QLinearAveragePool.
    (pool,) = info["graph_rewrites"]["pool_as_depthwise_conv"]
    pool_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in names[pool].attribute}
    assert names[pool].op_type == "Conv" and pool_attrs["group"] > 1 and pool_attrs["kernel_shape"] == [4, 4]
    assert all(prod[i].op_type == "DequantizeLinear" for i in names[pool].input[:2])
    assert "QLinearAveragePool" not in {n.op_type for n in opt.graph.node}
    # Same numbers as the float Softmax over channels + 1x1 conv (checked against torch by the export gate too).
    graph = ColorizeGraph(load_model(ckpt)[0]).eval()
    gray = np.random.default_rng(4).integers(0, 256, size=(2, 1, 32, 40), dtype=np.uint8)
    _, uv = parity.ort_run(parity.ort_session(out), gray)
    _, ref_uv = parity.torch_reference(graph, gray)
    assert np.abs(uv - ref_uv).mean() < 0.02


def _ort_optimized(path, out):
    """The graph ONNX Runtime's CPU provider runs (ORT_ENABLE_ALL), saved to ``out`` and loaded."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def test_int8_decoder_resize_quantized_at_its_edges_by_constant_scales(int8_onnx, tmp_path):
    """Decoder: DQ -> bilinear Resize (FP32: ORT fuses only nearest) -> Q with the same parameters ->
    QLinearAdd with the skip. The Resize scales by a constant (the FP32 graph's rewrite, done before
    quantizing), so no Shape reads a decoder tensor and ORT keeps no Transpose + DQ for one."""
    model = onnx.load(str(int8_onnx))
    prod = {o: n for n in model.graph.node for o in n.output}
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    head = set(read_sidecar(int8_onnx)["precision_info"]["fp32_nodes"]["head"])
    resizes = [n for n in model.graph.node if n.op_type == "Resize" and n.name not in head]
    assert len(resizes) == 3  # one per decoder level
    for r in resizes:
        dq, (q,) = prod[r.input[0]], readers[r.output[0]]
        assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
        assert list(dq.input[1:]) == list(q.input[1:])  # same scale and zero point: 8 bits in, 8 bits out
        assert {n.op_type for n in readers[q.output[0]]} == {"DequantizeLinear"}  # -> the skip Add (QLinearAdd in ORT)
    inits = {i.name for i in model.graph.initializer}
    assert all(len(r.input) == 3 and r.input[2] in inits for r in resizes)
    assert {i for n in model.graph.node if n.op_type == "Shape" for i in n.input} == {"gray"}
    rewrites = read_sidecar(int8_onnx)["precision_info"]["graph_rewrites"]
    assert rewrites["shape_reads_quantized"] == [] and len(rewrites["resize_fixed_scales"]) == 3
    opt = _ort_optimized(int8_onnx, tmp_path / "opt.onnx")
    ops = [n.op_type for n in opt.graph.node]
    assert ops.count("QLinearAdd") == 3 and ops.count("Resize") == 3
    oprod = {o: n for n in opt.graph.node for o in n.output}
    for shape in [n for n in opt.graph.node if n.op_type == "Shape" and n.input[0] in oprod]:
        assert oprod[shape.input[0]].op_type not in ("DequantizeLinear", "Transpose"), shape.name


def test_float_head_nodes_keeps_a_regression_head_whole(int8_onnx):
    side = read_sidecar(int8_onnx)
    assert side["precision_info"]["head_quantized"] == []
    assert side["precision_info"]["fp32_nodes"]["head"]


def _lite_checkpoint(path):
    """A randomly initialised EfficientNet-Lite0 model (decoder x0.25) with trained-looking BatchNorm
    statistics (running means/variances and affine parameters spread as in a trained trunk, so the
    folded convolutions and their activations are far from identity/zero) and logits x30: a sharp
    softmax, so uv follows the input as a trained head's does (at x1 it is nearly constant and
    even a broken stem passes the gate; at x30 the [0, 1] stem override measured ~29 dB, the fix ~41)."""
    import torch

    from engine.net.model import ColorizerNet, ModelConfig

    torch.manual_seed(5)
    centres = [[u, v] for u in (-0.2, 0.0, 0.2) for v in (-0.3, 0.0, 0.3)]
    config = ModelConfig(width_mult=0.25, head="classification", encoder="efficientnet-lite0",
                         head_options={"centres": centres, "temperature": 0.5})
    net = ColorizerNet(config).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c) * 0.2)
                m.running_var.copy_(torch.rand(c) * 0.5 + 0.05)
                m.weight.copy_(torch.rand(c) * 0.8 + 0.4)
                m.bias.copy_(torch.randn(c) * 0.3)
        net.members[0].head.conv[-1].weight.mul_(30.0)
    save_checkpoint(path, {"model_config": config.to_dict(), "model": net.state_dict(), "step": 1})
    return path


def test_int8_lite_stem_input_keeps_its_negative_half(tmp_path):
    """The Lite trunk reads (gray - 127.5) / 128, in [-1, 1]: its quantization must span that range
    (a [0, 1] override, right for Y, clipped the negative half and failed the gate at ~16 dB)."""
    out = tmp_path / "lite8.onnx"
    export_checkpoint(_lite_checkpoint(tmp_path / "lite.pt"), out, precision="int8")  # raises below the gate
    side = read_sidecar(out)
    luma = side["precision_info"]["luma_quantization"]
    lo, hi = luma["range"]
    assert lo == pytest.approx(-127.5 / 128, abs=1e-5) and hi == pytest.approx(127.5 / 128, abs=1e-5)
    assert luma["scale"] == pytest.approx(1 / 128) and luma["zero_point"] in (127, 128)
    assert luma["max_error_steps"] <= 0.5 + 1e-3
    model = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == luma["tensor"]]
    assert float(inits[q.input[1]]) == pytest.approx(1 / 128) and int(inits[q.input[2]]) == luma["zero_point"]
    assert side["parity"]["psnr_db"] >= parity.TOLERANCES["int8"]["psnr_floor_db"]


def test_luma_quantization_of_y_is_lossless(int8_onnx):
    luma = read_sidecar(int8_onnx)["precision_info"]["luma_quantization"]
    assert luma["range"] == [0.0, 1.0] and luma["zero_point"] == 0
    assert luma["scale"] == pytest.approx(1 / 255) and luma["max_error_steps"] < 1e-3


@pytest.mark.parametrize("mul, sub, want_scale, want_zp, want_err", [
    (1.0, 0.0, 1 / 255, 0, 0.0),                       # Y = gray/255: lossless
    (255 / 128, 127.5 / 128, 1 / 128, 128, 0.5),       # EfficientNet-Lite: (gray - 127.5)/128, half a level off
    (1.0, -0.5, 1.5 / 255, 0, 1 / 3),                  # range not holding 0: widened to include it, as ORT does
])
def test_luma_quantization_spans_the_gray_levels(mul, sub, want_scale, want_zp, want_err):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["gray"], ["g"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["g", "k255"], ["y"]), helper.make_node("Mul", ["y", "a"], ["ya"]),
             helper.make_node("Sub", ["ya", "b"], ["x"]), helper.make_node("Neg", ["x"], ["out"])]
    inits = [onnx.numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("k255", 1 / 255), ("a", mul), ("b", sub))]
    graph = helper.make_graph(nodes, "pre", [helper.make_tensor_value_info("gray", TensorProto.UINT8, [1, 1, None, None])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = quantize.luma_quantization(model, "x")
    assert got["scale"] == pytest.approx(want_scale, rel=1e-5) and got["zero_point"] == want_zp
    assert got["max_error_steps"] == pytest.approx(want_err, abs=2e-3)
    assert float(got["_scale"]) == pytest.approx(want_scale, rel=1e-5) and got["_zero_point"].dtype == np.uint8
    flat = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["gray"], ["g"], to=TensorProto.FLOAT), helper.make_node("Mul", ["g", "z"], ["x"])],
        "flat", graph.input, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array(0, np.float32), "z")]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="expected the first convolution's input 'x' to vary"):
        quantize.luma_quantization(flat, "x")
