"""INT8 for CPUs: static QDQ quantization with ONNX Runtime, calibrated on real photos, quality-gated.

* Calibration data: the images of a folder (``--calib``, default ``samples/``),
  grayed with the colour spec's luma (``engine.core.color.rgb_u8_to_luma_u8``), short
  side resized to ``CALIB_SIZE`` and centre-cropped square.
* Hold-out: every third image (index 2, 5, ...) is NOT used for calibration but
  for the quality gate. Folders with fewer than 3 images calibrate on all of
  them and are judged on generated 1/f-spectrum images (natural-image statistics).
* Quantization: ``quantize_static`` in QDQ format, per-channel symmetric int8
  weights, uint8 activations, MinMax calibration. The colour pre/post nodes
  (``export.fp16.colour_nodes``) are excluded, so uint8 I/O and the YUV -> RGB
  math stay exact FP32; only the network body is quantized (a classification
  head up to its logits: ``float_head_nodes``).
* The first convolution's input is not calibrated (``luma_quantization``): its uint8 range
  spans exactly the values the pre-processing gives gray 0 and 255. Y = gray/255 (VGG):
  scale 1/255, zero point 0, lossless. EfficientNet-Lite's ``(gray - 127.5) / 128``: scale
  1/128, zero point 128, within half a level. A fixed [0, 1] range clipped the Lite stem's
  negative half (first block -1 dB SNR vs FP32, held-out PSNR 15.8 dB; now 15 dB and 41.7 dB).
* ``reduce_range`` (7-bit weights) is on unless the CPU has VNNI
  (``avx512_vnni`` / ``avx_vnni`` in /proc/cpuinfo): without VNNI, AVX2's
  u8*s8 multiply-add saturates 16-bit intermediates and 8-bit weights give broken
  outputs. A file quantized without it must only run on VNNI CPUs; the choice is
  recorded in the sidecar.
* Graph clean-up for ONNX Runtime's CPU kernels (``_shapes_read_quantized``,
  ``export.rewrites.softmax_channels_last``):
  ORT runs the quantized convolutions channels-last (NHWC) and wraps every op that
  reads an NCHW float tensor in Transposes. A ``Shape`` reading a DequantizeLinear
  output (the decoder's Resize takes N, C from it) kept a Transpose and a
  DequantizeLinear alive per decoder level; it now reads the 8-bit tensor (same
  shape). A classification head's ``Softmax`` over channels (axis 1 of NCHW) and its
  annealed-mean 1x1 conv were a costly part of the INT8 graph (ORT transposes the logits
  twice inside Softmax); they become Transpose -> Softmax over the last axis ->
  MatMul with the bin centres -> Transpose of the 2-channel result, still FP32, and
  ORT cancels the first Transpose against its own NHWC one.
  The decoder's bilinear Resize stays FP32 between DQ and Q: ORT fuses DQ -> Resize
  -> Q into a uint8 Resize only for ``mode="nearest"`` (microsoft/onnxruntime#28414),
  and a hand-made uint8 linear Resize was slower than the float one and
  truncates (biased low). The skip ``Add`` already runs as QLinearAdd.
  A classification head's 4x4 average pool becomes a depthwise 4x4 convolution before
  quantizing (``export.rewrites.pool_as_depthwise_conv``, exact for the graph's sizes,
  multiples of 8): ORT's QLinearAveragePool is a slow loop, the depthwise
  QLinearConv takes a fraction of its time.
* Gate: mean PSNR of INT8 vs FP32 ``rgb`` on the held-out images must reach
  ``export.parity.TOLERANCES["int8"]["psnr_floor_db"]``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.core import color, files
from engine.core.contract import INPUT_NAME
from engine.core.hardware import cpu_has_vnni
from export.fp16 import ExportError, colour_nodes, head_nodes, producers
from export.rewrites import pool_as_depthwise_conv, softmax_channels_last

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = files.PHOTO_SUFFIXES
CALIB_SIZE = 224
HOLDOUT_EVERY = 3  # every third image is held out from calibration when there are >= 3
SYNTHETIC_COUNT = 4
SYNTHETIC_SEED = 601
PSNR_CAP_DB = 100.0  # identical outputs: JSON has no infinity


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted). Raises ``ExportError`` when there are none."""
    if not folder.is_dir():
        raise ExportError(f"--calib: expected a folder of images, found no folder at {folder}")
    from PIL import Image, UnidentifiedImageError

    candidates = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in candidates:
        try:
            with Image.open(path):  # reads the header only
                images.append(path)
        except (OSError, UnidentifiedImageError) as e:
            log.warning("skipping %s: not a readable image (%s)", path, e)
    if not images:
        found = f"{len(candidates)} unreadable file(s)" if candidates else "none"
        raise ExportError(f"--calib {folder}: expected image files ({', '.join(IMAGE_SUFFIXES)}), found {found}")
    return images


def load_gray(path: Path, size: int = CALIB_SIZE) -> np.ndarray:
    """An image file -> uint8 (1, 1, size, size): colour-spec luma, short side resized, centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ExportError(f"{path}: not a readable image ({e})") from e
    gray = Image.fromarray(color.rgb_u8_to_luma_u8(rgb))
    scale = size / min(gray.size)
    w, h = max(size, round(gray.width * scale)), max(size, round(gray.height * scale))
    gray = gray.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(gray.crop((left, top, left + size, top + size)), dtype=np.uint8)[None, None]


def synthetic_images(count: int = SYNTHETIC_COUNT, size: int = CALIB_SIZE, seed: int = SYNTHETIC_SEED) -> list[np.ndarray]:
    """Gray images with a 1/f amplitude spectrum (like natural photos), uint8 (1, 1, size, size)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size)
    out = []
    for _ in range(count):
        phase = rng.uniform(0, 2 * np.pi, amp.shape)
        img = np.fft.irfft2(amp * np.exp(1j * phase), s=(size, size))
        img = (img - img.mean()) / (img.std() + 1e-12)
        out.append(np.clip(128 + 45 * img, 0, 255).astype(np.uint8)[None, None])
    return out


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over preloaded uint8 batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def split_images(images: list[Path]) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out): every ``HOLDOUT_EVERY``-th image held out when there are enough."""
    if len(images) < HOLDOUT_EVERY:
        return list(images), []
    held = [p for i, p in enumerate(images) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    return [p for p in images if p not in held], held


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    images: list[Path],
    *,
    reduce_range: bool | None = None,
    size_multiple: int = 1,
) -> dict[str, Any]:
    """Quantize the FP32 ONNX at ``fp32_path`` into ``out_path``; returns the sidecar's precision info.

    ``reduce_range=None`` picks it from the CPU (on unless VNNI). ``size_multiple``: the
    graph's (``export.rewrites.resize_fixed_scales``); pools whose window divides it become
    depthwise convolutions first (``export.rewrites.pool_as_depthwise_conv``). The held-out
    images (or synthetic ones) are returned in the info under ``"_eval"`` as arrays
    for ``quality_check`` (removed before the sidecar is written).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    vnni = cpu_has_vnni()
    auto = reduce_range is None
    if auto:
        reduce_range = not vnni
    calib_paths, held_paths = split_images(images)
    calib = _load_all(calib_paths)
    if held_paths:
        held = _load_all(held_paths)
        held_names = [p.name for p in held_paths]
    else:
        held = synthetic_images()
        held_names = [f"synthetic-1/f-{i}" for i in range(len(held))]

    with tempfile.TemporaryDirectory(prefix="colorizer-int8-") as work:
        pre = Path(work) / "pre.onnx"
        source = onnx.load(str(fp32_path))
        pools = pool_as_depthwise_conv(source, size_multiple)
        if pools:
            fp32_path = Path(work) / "fp32-pools.onnx"
            onnx.save_model(source, str(fp32_path), save_as_external_data=False)
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - ORT's optimizer raises many types
            raise ExportError(f"INT8 pre-processing failed ({type(e).__name__}: {e})") from e
        pre_model = onnx.load(str(pre))
        head = head_nodes(pre_model)
        head_float = float_head_nodes(pre_model, head)
        nodes = {**colour_nodes(pre_model), "head": head_float}
        exclude = nodes["pre"] + nodes["post"] + nodes["head"]
        luma = _luma_tensor(pre_model, set(nodes["pre"]))
        # The first convolution's input is fixed by the 256 gray levels, not by calibration.
        luma_q = luma_quantization(pre_model, luma) if luma else None
        overrides = {luma: [{"scale": luma_q.pop("_scale"), "zero_point": luma_q.pop("_zero_point")}]} if luma_q else {}
        try:
            quantize_static(
                str(pre),
                str(out_path),
                _Reader(calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"TensorQuantOverrides": overrides} if overrides else None,
            )
        except Exception as e:  # noqa: BLE001 - ORT's calibrator raises many types
            raise ExportError(f"INT8 quantization failed ({type(e).__name__}: {e})") from e
        quantized = onnx.load(str(out_path))
        rewired = _float_inputs_for(quantized, set(nodes["post"]))
        shapes = _shapes_read_quantized(quantized)
        softmax = softmax_channels_last(quantized, set(nodes["head"]))
        head_out: list[str] = []  # the sidecar names the float head nodes of the written graph
        for name in nodes["head"]:
            head_out += [m for m in softmax.get(name, [name]) if m not in head_out]
        nodes["head"] = head_out
        onnx.save_model(quantized, str(out_path), save_as_external_data=False)

    log.info(
        "int8: calibrated on %d image(s) at %dpx, reduce_range=%s (%s)",
        len(calib),
        CALIB_SIZE,
        reduce_range,
        "set by caller" if not auto else ("CPU has VNNI" if vnni else "CPU has no VNNI" if vnni is False else "CPU flags unknown"),
    )
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "quant_format": "QDQ",
        "weights": "int8 symmetric per-channel",
        "activations": "uint8 asymmetric per-tensor",
        "reduce_range": bool(reduce_range),
        "reduce_range_reason": "caller" if not auto else ("cpu_vnni" if vnni else "no_vnni" if vnni is False else "unknown_cpu"),
        "cpu_vnni": vnni,
        "runs_on": "any x86-64 CPU" if reduce_range else "CPUs with VNNI only (avx512_vnni/avx_vnni)",
        "calibration": {
            "method": "MinMax",
            "size": CALIB_SIZE,
            "images": [p.name for p in calib_paths],
            "held_out": held_names,
            "preprocess": "colour-spec luma, short side resized, centre crop",
        },
        "fp32_nodes": nodes,
        "head_quantized": [n for n in head if n not in set(head_float)],
        "luma_quantization": luma_q,
        "post_inputs_rewired_to_float": rewired,
        "graph_rewrites": {"shape_reads_quantized": shapes, "softmax_channels_last": sorted(softmax),
                           "pool_as_depthwise_conv": pools},
        "_eval": held,
        "_eval_names": held_names,
    }


def float_head_nodes(model: Any, head: list[str]) -> list[str]:
    """The part of the UV head that stays FP32 under INT8.

    A regression head (conv -> tanh -> scale) stays float entirely: quantizing it
    would put ``uv`` itself through 8 bits. A classification head is quantized up
    to its logits (pooling, convolutions: the costly part, slow when left in float)
    and keeps the Softmax and everything after it (annealed mean over the bin
    centres, upsampling) in float.
    """
    names = set(head)
    in_head = [n for n in model.graph.node if n.name in names]
    softmax = [n for n in in_head if n.op_type == "Softmax"]
    if len(softmax) != 1:
        return list(head)
    keep = {softmax[0].name}
    reached = set(softmax[0].output)
    for node in in_head:  # graph order is topological
        if any(i in reached for i in node.input):
            keep.add(node.name)
            reached.update(node.output)
    return [n for n in head if n in keep]


def _luma_tensor(model: Any, pre: set[str]) -> str | None:
    """The float Y tensor: produced by the pre-processing, read by the first convolution."""
    prod = producers(model.graph)
    found = {
        i for n in model.graph.node if n.op_type == "Conv" and n.name not in pre
        for i in n.input[:1] if i in prod and prod[i].name in pre
    }
    return found.pop() if len(found) == 1 else None


def luma_quantization(model: Any, tensor: str) -> dict[str, Any] | None:
    """The sidecar's record of ``tensor``'s uint8 range (its values for gray 0..255, and zero) plus
    ``_scale``/``_zero_point`` for the quantizer; None (calibrated then) if ``gray`` alone cannot give it."""
    import onnx
    import onnxruntime as ort

    prod = producers(model.graph)
    needed, stack = set(), [tensor]  # the nodes between gray and the tensor
    while stack:
        node = prod.get(stack.pop())
        if node is not None and node.output[0] not in needed:
            needed.add(node.output[0])
            stack.extend(node.input)
    nodes = [n for n in model.graph.node if n.output and n.output[0] in needed]
    names = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(nodes, "luma",
        [i for i in model.graph.input if i.name == INPUT_NAME], [onnx.helper.make_empty_tensor_value_info(tensor)],
        [i for i in model.graph.initializer if i.name in names])
    try:
        sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ramp = np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 256)
        values = session.run([tensor], {INPUT_NAME: ramp})[0].astype(np.float64).ravel()
    except Exception as e:  # noqa: BLE001 - ORT and onnx raise many types
        log.warning("int8: %s is not computable from %s alone (%s: %s); its range is calibrated",
                    tensor, INPUT_NAME, type(e).__name__, e)
        return None
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if not hi > lo or not np.isfinite([lo, hi]).all():
        raise ExportError(f"INT8: expected the first convolution's input {tensor!r} to vary with the gray "
                          f"level, found values in [{lo:.4g}, {hi:.4g}]")
    scale = np.float32((hi - lo) / 255.0)
    zero_point = int(np.clip(np.round(-lo / float(scale)), 0, 255))
    steps = values / float(scale) + zero_point
    return {"tensor": tensor, "range": [round(lo, 6), round(hi, 6)], "scale": float(scale), "zero_point": zero_point,
            "max_error_steps": round(float(np.abs(steps - np.clip(np.round(steps), 0, 255)).max()), 4),
            "_scale": np.array(scale, np.float32), "_zero_point": np.array(zero_point, np.uint8)}


def _float_inputs_for(model: Any, names: set[str]) -> list[str]:
    """Make the named nodes read float tensors, not DequantizeLinear(QuantizeLinear(x)) of them.

    The quantizer puts one Q/DQ pair on a tensor shared by a quantized and an
    excluded consumer (the luma feeds both the first conv and the YUV concat);
    the excluded colour nodes must see the exact float value.
    """
    prod = producers(model.graph)
    rewired = []
    for node in model.graph.node:
        if node.name not in names:
            continue
        for k, inp in enumerate(node.input):
            dq = prod.get(inp)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                rewired.append(f"{node.name}:{k}")
    return rewired


def _shapes_read_quantized(model: Any) -> list[str]:
    """Make ``Shape`` nodes that read a DequantizeLinear output read its 8-bit input (same shape).

    The decoder's Resize takes its output's N and C from ``Shape`` of its input; on the
    float tensor that Shape kept an NHWC -> NCHW Transpose and a DequantizeLinear
    running for nothing. Returns the names of the rewired Shape nodes.
    """
    prod = producers(model.graph)
    rewired = []
    for node in model.graph.node:
        dq = prod.get(node.input[0]) if node.op_type == "Shape" else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            node.input[0] = dq.input[0]
            rewired.append(node.name)
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]:
        model.graph.node.remove(dq)  # it only fed Shapes
    return rewired


def _load_all(paths: list[Path]) -> list[np.ndarray]:
    return [load_gray(p) for p in paths]


def quality_check(session: Any, graph: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Mean PSNR of the INT8 session's ``rgb`` vs the FP32 torch graph's on the held-out images."""
    from export.parity import ort_run, psnr_u8, torch_reference

    held = info.pop("_eval")
    names = info.pop("_eval_names")
    per_image = []
    for name, gray in zip(names, held):
        rgb, _ = ort_run(session, gray)
        ref, _ = torch_reference(graph, gray)
        per_image.append({"image": name, "psnr_db": round(float(min(psnr_u8(rgb, ref), PSNR_CAP_DB)), 3)})
    mean = float(np.mean([p["psnr_db"] for p in per_image]))
    return {"psnr_db": round(mean, 3), "psnr_images": per_image, "psnr_size": CALIB_SIZE}
