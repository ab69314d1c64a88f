"""Parity checks of an exported graph against the PyTorch ``ColorizeGraph``, and their tolerances.

TOLERANCES is the one place the export gates live. Each precision is compared
with the FP32 PyTorch graph on the same fixed uint8 inputs (``PARITY_CASES``:
two batch sizes, odd spatial sizes, and a 1x1 image) and fails above:

fp32  uv 1e-4, rgb 1 level.  ORT and torch differ by float rounding only;
      rgb may flip by one level where ``x*255+0.5`` lands on an integer
      boundary, never more.
fp16  uv 4e-3, rgb 3 levels. FP16 has an 11-bit mantissa; the gate sits well
      above what small models show, leaving headroom for deeper/wider nets.
      The worst colour-matrix gain is U->B (2.03), so 4e-3 on uv is at most
      ~2.1 levels of B, plus one level of rounding -> 3 levels.
int8  uv/rgb max differences are measured and recorded but not gated: on
      noise inputs a few pixels near tanh's knee can move far. The gate is
      image quality on held-out photos: mean PSNR of INT8 vs FP32 ``rgb`` must
      be >= 35 dB (see ``export.quantize``). On a CPU without VNNI this passes
      the 7-bit-weight model (reduce_range=True) with a margin and rejects the
      8-bit one, whose loss vs ground truth is a large share of what the model
      gains over gray (see docs/decisions/003-int8-default-on-cpu.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.core.contract import round_up

TOLERANCES: dict[str, dict[str, float | None]] = {
    "fp32": {"uv_max_abs": 1e-4, "rgb_max_levels": 1, "psnr_floor_db": None},
    "fp16": {"uv_max_abs": 4e-3, "rgb_max_levels": 3, "psnr_floor_db": None},
    "int8": {"uv_max_abs": None, "rgb_max_levels": None, "psnr_floor_db": 35.0},
}

# (batch, height, width): two batch sizes, two odd spatial sizes, and the smallest image.
PARITY_CASES: tuple[tuple[int, int, int], ...] = ((1, 37, 53), (3, 61, 45), (2, 1, 1))
PARITY_SEED = 20261125


def parity_inputs(cases: tuple[tuple[int, int, int], ...] = PARITY_CASES, *, multiple: int = 1) -> list[np.ndarray]:
    """Fixed uint8 ``(N, 1, H, W)`` inputs: smooth structure plus noise, so layers see edges and flats.

    ``multiple``: the graph's size multiple (sidecar ``size_multiple``); H and W are
    rounded up to it (37x53 -> 40x56 for 8).
    """
    rng = np.random.default_rng(PARITY_SEED)
    out = []
    for n, h, w in cases:
        h, w = round_up(h, multiple), round_up(w, multiple)
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        imgs = []
        for _ in range(n):
            fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
            base = 0.5 + 0.35 * np.sin(fx * 3.1 * xx + ph) * np.cos(fy * 3.1 * yy)
            noisy = base + rng.normal(0, 0.08, size=(h, w))
            imgs.append(np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8))
        out.append(np.stack(imgs)[:, None])
    return out


def torch_reference(graph: Any, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the PyTorch ``ColorizeGraph`` (FP32, CPU) on a uint8 batch -> (rgb, uv) numpy."""
    import torch

    with torch.inference_mode():
        rgb, uv = graph(torch.from_numpy(np.array(gray, copy=True)))
    return rgb.numpy(), uv.numpy()


def ort_session(path: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_run(session: Any, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from engine.core.contract import INPUT_NAME, OUTPUT_RGB, OUTPUT_UV

    rgb, uv = session.run([OUTPUT_RGB, OUTPUT_UV], {INPUT_NAME: gray})
    return rgb, uv


def compare(session: Any, graph: Any, inputs: list[np.ndarray]) -> dict[str, Any]:
    """Max |uv| and |rgb| (uint8 levels) differences of an ORT session vs the torch graph, per case and overall.

    Also checks output shapes and dtypes against the contract, raising ``ExportError``.
    """
    from export.fp16 import ExportError

    cases = []
    for gray in inputs:
        rgb, uv = ort_run(session, gray)
        ref_rgb, ref_uv = torch_reference(graph, gray)
        n, _, h, w = gray.shape
        for name, arr, dtype, shape in (
            ("rgb", rgb, np.uint8, (n, 3, h, w)),
            ("uv", uv, np.float32, (n, 2, h, w)),
        ):
            if arr.dtype != dtype or arr.shape != shape:
                raise ExportError(
                    f"output {name!r} for input {gray.shape}: expected {np.dtype(dtype).name} {shape}, "
                    f"found {arr.dtype} {arr.shape}"
                )
        cases.append(
            {
                "shape": list(gray.shape),
                "uv_max_abs": float(np.abs(uv - ref_uv).max()),
                "rgb_max_levels": int(np.abs(rgb.astype(np.int16) - ref_rgb.astype(np.int16)).max()),
            }
        )
    return {
        "reference": "torch ColorizeGraph fp32",
        "uv_max_abs": max(c["uv_max_abs"] for c in cases),
        "rgb_max_levels": max(c["rgb_max_levels"] for c in cases),
        "cases": cases,
    }


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (peak 255); identical arrays give +inf."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def violations(measured: dict[str, Any], tolerance: dict[str, float | None]) -> list[str]:
    """Human-readable list of gates that ``measured`` fails; empty when it passes."""
    bad = []
    for key in ("uv_max_abs", "rgb_max_levels"):
        limit = tolerance.get(key)
        if limit is not None and measured.get(key) is not None and measured[key] > limit:
            bad.append(f"{key} {measured[key]:.3g} > {limit:.3g}")
    floor = tolerance.get("psnr_floor_db")
    if floor is not None and measured.get("psnr_db") is not None and measured["psnr_db"] < floor:
        bad.append(f"mean PSNR vs fp32 {measured['psnr_db']:.2f} dB < {floor:.2f} dB")
    return bad
