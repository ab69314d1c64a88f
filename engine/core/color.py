"""The colour spec: BT.601 analog YUV, the one place its constants live.

Trainer, exporter (the ONNX graph) and engine all import this module, so the
pixels they produce agree. Nothing here imports torch at module level: the
torch variants import it lazily, so ``engine`` stays importable without torch.

Standard: ITU-R BT.601 luma weights with analog YUV chroma scaling
(``U = 0.436 * (B - Y) / (1 - 0.114)``, ``V = 0.615 * (R - Y) / (1 - 0.299)``).

Value ranges (float):
    R, G, B in [0, 1]
    Y in [0, 1]
    U in [-U_MAX, U_MAX] = [-0.436, 0.436]
    V in [-V_MAX, V_MAX] = [-0.615, 0.615]

Layouts:
    numpy functions take channel-last arrays ``(..., 3)``;
    torch functions take channel-first tensors ``(..., 3, H, W)`` (kornia style).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SPEC_NAME = "bt601-yuv-analog"

W_R = 0.299
W_G = 0.587
W_B = 0.114
U_MAX = 0.436
V_MAX = 0.615

# Rows give Y, U, V from R, G, B. U and V rows sum to zero, so gray has no chroma.
RGB_TO_YUV = np.array(
    [
        [W_R, W_G, W_B],
        [-U_MAX * W_R / (1 - W_B), -U_MAX * W_G / (1 - W_B), U_MAX],
        [V_MAX, -V_MAX * W_G / (1 - W_R), -V_MAX * W_B / (1 - W_R)],
    ],
    dtype=np.float64,
)
# The exact inverse, so that a round trip loses nothing but float rounding.
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)

UV_MAX = (U_MAX, V_MAX)


def describe() -> dict[str, Any]:
    """The spec as plain data, written into every artifact's JSON sidecar."""
    return {
        "name": SPEC_NAME,
        "luma_weights": [W_R, W_G, W_B],
        "u_max": U_MAX,
        "v_max": V_MAX,
        "rgb_to_yuv": RGB_TO_YUV.tolist(),
        "yuv_to_rgb": YUV_TO_RGB.tolist(),
        "ranges": {"y": [0.0, 1.0], "u": [-U_MAX, U_MAX], "v": [-V_MAX, V_MAX]},
    }


# ----------------------------------------------------------------------------- numpy


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """RGB float in [0, 1], shape ``(..., 3)`` -> YUV float32 ``(..., 3)``."""
    rgb = np.asarray(rgb, dtype=np.float32)
    _check_last_dim(rgb, "rgb")
    return rgb @ RGB_TO_YUV.T.astype(np.float32)


def yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """YUV float ``(..., 3)`` -> RGB float32 ``(..., 3)``, clamped to [0, 1]."""
    yuv = np.asarray(yuv, dtype=np.float32)
    _check_last_dim(yuv, "yuv")
    return np.clip(yuv @ YUV_TO_RGB.T.astype(np.float32), 0.0, 1.0)


def rgb_u8_to_yuv(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` in [0, 255] -> YUV float32 ``(..., 3)``."""
    return rgb_to_yuv(np.asarray(rgb_u8, dtype=np.float32) / 255.0)


def rgb_u8_to_luma_u8(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> uint8 luma ``(...)``: how a colour photo is grayed."""
    y = rgb_u8_to_yuv(rgb_u8)[..., 0]
    return to_u8(y)


def yuv_to_rgb_u8(yuv: np.ndarray) -> np.ndarray:
    """YUV float ``(..., 3)`` -> uint8 RGB ``(..., 3)``: clamp, round half up, cast.

    Values outside the RGB cube clamp to 0 or 255; they never wrap around.
    """
    return to_u8(yuv_to_rgb(yuv))


def gray_u8_to_y(gray_u8: np.ndarray) -> np.ndarray:
    """uint8 gray in [0, 255], any shape -> float32 Y in [0, 1]."""
    return np.asarray(gray_u8, dtype=np.float32) * np.float32(1.0 / 255.0)


# YUV -> RGB in uint8 levels: RGB*255 = Y*255 * col0 + U * (255 col1) + V * (255 col2).
_YUV_TO_RGB_255 = (YUV_TO_RGB * np.array([1.0, 255.0, 255.0])).astype(np.float32)


def compose_u8(gray_u8: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Join uint8 luma ``(H, W)`` and float chroma ``(H, W, 2)`` -> uint8 RGB ``(H, W, 3)``.

    The same values as ``yuv_to_rgb_u8`` of the stacked YUV (clamp, round half up),
    up to float rounding, computed channel by channel in float32 in place (no
    ``(H, W, 3)`` float temporaries), so it is several times faster.
    """
    gray = np.asarray(gray_u8)
    uv = np.asarray(uv, dtype=np.float32)
    if uv.shape != gray.shape + (2,):
        raise ValueError(f"uv: expected shape {gray.shape + (2,)}, found {tuple(uv.shape)}")
    y = gray.astype(np.float32)  # Y * 255
    u, v = uv[..., 0], uv[..., 1]
    out = np.empty(gray.shape + (3,), dtype=np.uint8)
    acc = np.empty(gray.shape, dtype=np.float32)
    tmp = np.empty(gray.shape, dtype=np.float32)
    for c in range(3):
        ky, ku, kv = (float(k) for k in _YUV_TO_RGB_255[c])
        np.multiply(y, np.float32(ky), out=acc)
        for k, plane in ((ku, u), (kv, v)):
            if abs(k) > 1e-6:  # R has no U term and B no V term (up to float rounding of the inverse)
                np.multiply(plane, np.float32(k), out=tmp)
                acc += tmp
        acc += np.float32(0.5)
        np.clip(acc, np.float32(0.0), np.float32(255.5), out=acc)
        out[..., c] = acc  # float -> uint8 truncates: floor(x * 255 + 0.5) of the clamped value
    return out


# JPEG (JFIF) stores BT.601 Y'CbCr in levels: Cb = 128 + 255 * 0.5 * (B - Y) / (1 - W_B),
# Cr = 128 + 255 * 0.5 * (R - Y) / (1 - W_R), with the same luma weights as this spec.
# Since U = U_MAX * (B - Y) / (1 - W_B) and V = V_MAX * (R - Y) / (1 - W_R), chroma maps linearly:
CBCR_OFFSET = 128.0
CBCR_PER_UV = (255.0 * 0.5 / U_MAX, 255.0 * 0.5 / V_MAX)  # levels of Cb per unit U, of Cr per unit V


# Video (H.264, VP9 and most other codecs) stores the same Y'CbCr in "limited" (studio, MPEG) range unless
# tagged full range: Y = 16 + 219 * Y_full, Cb/Cr = 128 + 224 * 0.5 * (B - Y) / (1 - W_B) ...: the full-range
# levels scaled by 219/255 (luma) and 224/255 (chroma), so Cb/Cr per unit U/V is CBCR_PER_UV * 224/255.
LIMITED_Y_MIN, LIMITED_Y_SPAN = 16.0, 219.0
LIMITED_C_MIN, LIMITED_C_MAX, LIMITED_C_SPAN = 16.0, 240.0, 224.0


def limited_luma_to_full_u8(y_u8: np.ndarray) -> np.ndarray:
    """uint8 limited-range luma (16..235) -> uint8 full-range luma (0..255), clamped and rounded.

    What the model sees of a video frame: the gray level a photo of the same frame would have. A 256-entry
    table of the float formula, looked up per pixel (every video frame goes through it).
    """
    y = np.asarray(y_u8)
    if y.dtype != np.uint8:
        raise ValueError(f"y_u8: expected uint8, found {y.dtype}")
    return np.take(_LIMITED_TO_FULL, y)


def uv_to_cbcr(uv: np.ndarray, saturation: float = 1.0, *, limited: bool = False) -> np.ndarray:
    """Chroma ``(..., 2)`` (U, V) -> JPEG's (Cb, Cr) in float levels (unrounded, unclamped), float32.

    A JPEG whose Y plane is the photo's uint8 luma and whose Cb/Cr planes are these
    decodes to ``compose_u8(luma, uv)`` (the decoder clamps out-of-cube colours the
    same way), so JPEG output needs no RGB pass. ``saturation`` scales the chroma.
    ``limited``: the video range's levels instead (224 levels for JPEG's 255, around 128).
    """
    uv = np.asarray(uv, dtype=np.float32)
    if uv.ndim < 1 or uv.shape[-1] != 2:
        raise ValueError(f"uv: expected shape (..., 2), found {tuple(uv.shape)}")
    span = LIMITED_C_SPAN / 255.0 if limited else 1.0
    scale = np.array(CBCR_PER_UV, dtype=np.float32) * np.float32(saturation * span)
    return uv * scale + np.float32(CBCR_OFFSET)


def uv_to_cbcr_u8(uv: np.ndarray, saturation: float = 1.0, *, limited: bool = False) -> np.ndarray:
    """Chroma ``(..., 2)`` -> uint8 (Cb, Cr) ``(..., 2)``: ``uv_to_cbcr`` clamped to 0..255, rounded half up.

    Agrees within one level with JPEG's own RGB -> YCbCr of ``compose_u8`` for colours
    inside the RGB cube (tests/engine/test_color.py). ``limited``: video levels, clamped to 16..240.
    """
    cbcr = uv_to_cbcr(uv, saturation, limited=limited)
    lo, hi = (LIMITED_C_MIN, LIMITED_C_MAX) if limited else (0.0, 255.0)
    np.clip(cbcr, np.float32(lo), np.float32(hi), out=cbcr)
    cbcr += np.float32(0.5)
    return cbcr.astype(np.uint8)


def to_u8(x: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8, clamped and rounded (floor(x * 255 + 0.5))."""
    return np.floor(np.clip(x, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


# limited_luma_to_full_u8's table: the float formula at each of the 256 levels.
_LIMITED_TO_FULL = to_u8((np.arange(256, dtype=np.float32) - np.float32(LIMITED_Y_MIN))
                         * np.float32(1.0 / LIMITED_Y_SPAN))


def _check_last_dim(a: np.ndarray, name: str) -> None:
    if a.ndim < 1 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (..., 3), found {tuple(a.shape)}")


# ----------------------------------------------------------------------------- torch


def _apply_matrix_torch(m: np.ndarray, x: Any) -> Any:
    """Apply a 3x3 colour matrix over dim -3 of ``(..., 3, H, W)`` as a 1x1 convolution.

    A 1x1 convolution exports to one ONNX ``Conv`` node that every runtime
    (ONNX Runtime, TensorRT) runs natively, unlike ``Einsum``.
    """
    import torch

    lead = x.shape[:-3]
    flat = x.reshape((-1,) + tuple(x.shape[-3:]))
    weight = torch.as_tensor(m, dtype=x.dtype, device=x.device).reshape(3, 3, 1, 1)
    out = torch.nn.functional.conv2d(flat, weight)
    return out.reshape(tuple(lead) + tuple(out.shape[-3:]))


def rgb_to_yuv_torch(rgb: Any) -> Any:
    """RGB tensor in [0, 1], shape ``(..., 3, H, W)`` -> YUV tensor ``(..., 3, H, W)``."""
    _check_channel_dim(rgb, "rgb")
    return _apply_matrix_torch(RGB_TO_YUV, rgb)


def yuv_to_rgb_torch(yuv: Any) -> Any:
    """YUV tensor ``(..., 3, H, W)`` -> RGB tensor ``(..., 3, H, W)`` clamped to [0, 1]."""
    _check_channel_dim(yuv, "yuv")
    return _apply_matrix_torch(YUV_TO_RGB, yuv).clamp(0.0, 1.0)


def gray_u8_to_y_torch(gray_u8: Any) -> Any:
    """uint8 tensor in [0, 255] -> float32 Y in [0, 1] (same value as ``gray_u8_to_y``)."""
    import torch

    return gray_u8.to(torch.float32) * (1.0 / 255.0)


def to_u8_torch(x: Any) -> Any:
    """Float tensor in [0, 1] -> uint8 tensor, same rounding as ``to_u8``."""
    import torch

    return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def rgb_u8_to_yuv_torch(rgb_u8: Any) -> Any:
    """uint8 RGB tensor ``(..., 3, H, W)`` -> YUV float tensor."""
    import torch

    return rgb_to_yuv_torch(rgb_u8.to(torch.float32) * (1.0 / 255.0))


def yuv_to_rgb_u8_torch(yuv: Any) -> Any:
    """YUV float tensor ``(..., 3, H, W)`` -> uint8 RGB tensor, clamped and rounded."""
    return to_u8_torch(yuv_to_rgb_torch(yuv))


def _check_channel_dim(t: Any, name: str) -> None:
    if t.dim() < 3 or t.shape[-3] != 3:
        raise ValueError(f"{name}: expected shape (..., 3, H, W), found {tuple(t.shape)}")
