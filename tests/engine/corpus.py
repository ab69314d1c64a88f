"""Test images for the engine tests: every input kind the engine accepts, generated with Pillow / OpenCV.

Contents are mid-tone (levels ~40..210) and smooth with some texture, so a
low ``saturation`` keeps composed colours inside the RGB cube and the luma
check is exact up to rounding.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.core import color


def pattern(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """uint8 mid-tone image (H, W, C): gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = []
    for c in range(channels):
        g = 0.5 + 0.3 * np.sin(xx / (7 + 3 * c) + c) * np.cos(yy / (9 + 2 * c))
        g += rng.normal(0, 0.02, (h, w))
        base.append(g)
    a = np.clip(np.stack(base, -1), 0.16, 0.82)
    return (a * 255 + 0.5).astype(np.uint8)


def alpha_ramp(h: int, w: int) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


@dataclass
class Kind:
    name: str  # file name written
    out: str  # expected output name
    size: tuple[int, int]  # expected output (W, H)
    luma: np.ndarray  # expected luma (H, W), oriented
    alpha: np.ndarray | None  # expected alpha, or None
    lossless: bool  # output format is lossless (PNG, BMP, TIFF)
    in_gamut: bool = True  # False for pure black/white content: any chroma clips there and moves the luma


def write_kinds(folder: Path) -> list[Kind]:
    """Write one file of every supported input kind into ``folder``; return what each must become."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds: list[Kind] = []
    h, w = 45, 67  # odd sizes on purpose

    def add(name: str, img: Image.Image | None, luma: np.ndarray, alpha=None, out=None, size=None, in_gamut=True, **save):
        if img is not None:
            img.save(folder / name, **save)
        fmt_lossless = (out or name).lower().endswith((".png", ".bmp", ".tif", ".tiff"))
        kinds.append(Kind(name, out or name, size or (luma.shape[1], luma.shape[0]), luma, alpha, fmt_lossless, in_gamut))

    rgb = pattern(h, w, 1)
    gray = pattern(h, w, 2, 1)[..., 0]
    alpha = alpha_ramp(h, w)
    spec_luma = color.rgb_u8_to_luma_u8(rgb)

    add("gray.jpg", Image.fromarray(gray), _decoded_luma_jpeg(gray), quality=98)
    add("rgb.png", Image.fromarray(rgb), spec_luma)
    add("rgba.png", Image.fromarray(np.dstack([rgb, alpha])), spec_luma, alpha)
    add("la.png", Image.fromarray(np.dstack([gray, alpha]), "LA"), gray, alpha)
    pal = Image.fromarray(rgb).quantize(64)
    add("palette.png", pal, color.rgb_u8_to_luma_u8(np.asarray(pal.convert("RGB"))))
    pal_t = Image.fromarray(rgb).quantize(64)
    pal_t.info["transparency"] = 0
    pal_rgba = np.asarray(pal_t.convert("RGBA"))
    add("palette_t.png", pal_t, color.rgb_u8_to_luma_u8(pal_rgba[..., :3]), pal_rgba[..., 3], transparency=0)
    g16 = gray.astype(np.uint16) * 257 + 100
    add("gray16.png", Image.fromarray(g16), _u16(g16))
    cv2.imwrite(str(folder / "gray16.tif"), g16)
    add("gray16.tif", None, _u16(g16))
    rgb16 = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(folder / "rgb16.png"), rgb16[..., ::-1])
    add("rgb16.png", None, spec_luma)  # rgb16 = rgb * 257: the high byte is rgb
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(folder / "cmyk.jpg", quality=98)
    add("cmyk.jpg", None, color.rgb_u8_to_luma_u8(np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB"))))
    add("rgb.webp", Image.fromarray(rgb), spec_luma, lossless=True, exact=True)
    add("rgba.webp", Image.fromarray(np.dstack([rgb, alpha])), spec_luma, alpha, lossless=True, exact=True)
    add("rgb.bmp", Image.fromarray(rgb), spec_luma)
    add("rgb.tiff", Image.fromarray(rgb), spec_luma)
    bilevel = Image.fromarray(gray).convert("1")
    add("bilevel.png", bilevel, np.asarray(bilevel.convert("L")), in_gamut=False)
    add("gray.pgm", Image.fromarray(gray), gray, out="gray.png")
    # EXIF orientation 6: stored landscape (w x h), displayed rotated 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(folder / "rotated.jpg", quality=98, exif=exif.tobytes())
    stored = np.asarray(Image.open(folder / "rotated.jpg").convert("RGB"))
    add("rotated.jpg", None, color.rgb_u8_to_luma_u8(np.rot90(stored, k=-1)), size=(h, w))
    return kinds


def _u16(a: np.ndarray) -> np.ndarray:
    return color.to_u8(a.astype(np.float32) / 65535.0)


def _decoded_luma_jpeg(gray: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=98)
    return np.asarray(Image.open(buf))


def write_photos(folder: Path, n: int, size: tuple[int, int] = (96, 64), *, ext: str = ".jpg", seed: int = 0) -> list[Path]:
    """``n`` gray photos of ``size`` (W, H), a few in sub-folders."""
    paths = []
    for i in range(n):
        sub = folder / (f"d{i % 3}" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:04d}{ext}"
        Image.fromarray(pattern(size[1], size[0], seed + i, 1)[..., 0]).save(p)
        paths.append(p)
    return paths


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (and mode, size) of every file and folder under ``folder``."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            p = Path(root, d)
            out[str(p.relative_to(folder)) + "/"] = oct(p.stat().st_mode)
        for f in files:
            p = Path(root, f)
            st = p.stat()
            out[str(p.relative_to(folder))] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {st.st_size} {st.st_mtime_ns}"
    return out


def output_luma(path: Path) -> tuple[np.ndarray, np.ndarray | None, Image.Image]:
    im = Image.open(path)
    im.load()
    arr = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
    return color.rgb_u8_to_luma_u8(arr[..., :3]), (arr[..., 3] if arr.shape[2] == 4 else None), im


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels but carries almost no data (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
