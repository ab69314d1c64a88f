"""Image I/O for the engine: decode to luma (+ alpha), fit to the model size, compose, encode, write.

Decoding uses Pillow for every format (JPEG, PNG, WebP, BMP, TIFF, GIF, PNM):
it raises on truncated files instead of returning half-grey images, it reads
the EXIF orientation of every format (``ImageOps.exif_transpose``), and it
prints nothing on stderr. JPEGs, the common input, take a shorter road:
Pillow reads the header and EXIF (lazily, no pixels), libjpeg-turbo through
simplejpeg decodes the pixels straight into one array, faster than Pillow's own
decode, and its warnings tell a truncated file (a failure: data missing, even
when an end marker was appended) from a harmless oddity (a note). Colour inputs
are grayed with the colour spec's luma (``engine.core.color.rgb_u8_to_luma_u8``),
exactly as the trainer grays photos. Gray inputs (8- or 16-bit) are used as they are.

JPEG outputs are encoded from Y, Cb, Cr planes with 4:2:0 chroma
(``encode_jpeg_ycbcr``): no colour conversion and no chroma downsampling
inside the encoder, so encoding a JPEG is cheaper.

Large images are processed in horizontal strips (graying, chroma upscaling and
composition), so the float temporaries stay a few MB whatever the photo size.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from engine.core import color, contract
from engine.core import files
from engine.core.errors import ColorizerError

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def quiet_decoder_warnings() -> None:
    """Install the warning filters decoding relies on (done at import; again after ``warnings.resetwarnings``).

    We check ``max_pixels`` ourselves right after reading the header, so Pillow's warning between
    its limit and twice its limit would only be noise. Pillow's plugins warn on damaged metadata
    (a TIFF tag past the end of the file, corrupt EXIF): the file either decodes or fails with its
    one-line reason, and a Python warning on stderr would break that line.
    """
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


quiet_decoder_warnings()

# A PNG's compressed chunks (ICC profile, text) may expand to this much; Pillow's 1 MB default fails
# photos that carry a large ICC profile (printer and camera profiles pass 1 MB). Still bounded.
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, 16 << 20)

STRIP_PIXELS = 1 << 16  # pixels per strip in the float stages: temporaries stay in cache (faster than 1 MP strips)
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageError(ColorizerError):
    """One file cannot be read or written; the run reports it and goes on."""


class WriteError(ImageError):
    """An output cannot be written; ``errno`` tells a full or read-only disk (which stops the run) from the rest."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass
class Decoded:
    luma: np.ndarray  # uint8 (H, W), colour-spec Y, orientation applied
    alpha: np.ndarray | None  # uint8 (H, W) or None
    exif: bytes | None  # EXIF to carry to the output (orientation tag removed), or None
    source: str  # "JPEG L", "PNG RGBA", ... for logs
    warning: str | None = None  # a decoder warning on otherwise complete data (reported as a note)


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Decoded:
    """Decode a file to luma and alpha. Raises ``ImageError`` with a reason fit for ``path: reason``."""
    return _read(Path(path), max_pixels, _decode_luma)


def decode_image(data: bytes, *, max_pixels: int | None = None) -> Decoded:
    """``read_image`` for a photo held in memory (read from a pipe): the same checks and reasons."""
    if not data:
        raise ImageError("empty input (0 bytes)")
    return _open(io.BytesIO(data), max_pixels, _decode_luma)


def _decode_luma(im: Image.Image) -> Decoded:
    fast = _decode_jpeg(im)
    return fast if fast is not None else _decode(im)


def read_rgb(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a file to uint8 RGB ``(H, W, 3)``, EXIF orientation applied, under ``read_image``'s rules.

    For scoring against colour ground truth (``engine.evaluate``): the same checks (a regular
    file, the pixel limit before any pixel is decoded, one ``ImageError`` reason per problem).
    """

    def decode(im: Image.Image) -> np.ndarray:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return np.asarray(im.convert("RGB"))

    return _read(Path(path), max_pixels, decode)


def _read(path: Path, max_pixels: int | None, decode: Callable[[Image.Image], _T]) -> _T:
    """Open ``path`` with Pillow under the checks every reader shares, and ``decode`` it."""
    try:
        st = path.stat()
    except OSError as e:
        raise ImageError(f"cannot read ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"not a regular file ({files.file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    return _open(path, max_pixels, decode)


def _open(source: Path | io.BytesIO, max_pixels: int | None, decode: Callable[[Image.Image], _T]) -> _T:
    """Open ``source`` (a checked path, or bytes in memory) with Pillow and ``decode`` it; one ``ImageError`` reason."""
    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # never lower Pillow's own guard, only make room for ours
    try:
        with Image.open(source) as im:
            _check_size(im, max_pixels)
            return decode(im)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError("not an image (unrecognised content)") from e
    except Image.DecompressionBombError as e:  # over twice Pillow's guard, before our own check could run
        found = re.search(r"\((\d+) pixels\)", str(e))
        size_text = _pixels(int(found.group(1))) if found else "over Pillow's limit"
        limit = f"limit is {_pixels(max_pixels)} (--max-pixels)" if max_pixels else "Pillow's decompression-bomb guard"
        raise ImageError(f"too large: {size_text}, {limit}") from e
    except MemoryError as e:
        raise ImageError("too large to decode in the available memory") from e
    except OSError as e:
        if e.errno is not None:  # the file system said no (permissions, I/O error), not the decoder
            raise ImageError(f"cannot read ({e.strerror or e})") from e
        raise ImageError(f"cannot decode ({e})") from e
    # Decoders of untrusted files raise many types (SyntaxError for broken PNG chunks,
    # struct.error, ValueError, EOFError...); any of them means "this file is broken".
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"cannot decode ({type(e).__name__}: {e})") from e


def _pixels(n: int) -> str:
    """A pixel count for messages: ``12.0 MP``, or the exact count below 0.1 MP."""
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n} pixels"


def _check_size(im: Image.Image, max_pixels: int | None) -> None:
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"too large: {w}x{h} = {_pixels(w * h)}, limit is {_pixels(max_pixels)} (--max-pixels)")
    if w < 1 or h < 1:
        raise ImageError(f"empty image ({w}x{h})")


# libjpeg's warnings that mean image data is missing (a truncated file, with or without an end marker
# appended): the decoder fills the rest with gray, so such a file is a failure, not a photo.
_JPEG_DATA_MISSING = ("premature end",)

# EXIF orientation -> the numpy view that makes the pixels upright (what ImageOps.exif_transpose does).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.T[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _decode_jpeg(im: Image.Image) -> Decoded | None:
    """An 8-bit gray or RGB JPEG decoded by libjpeg-turbo (simplejpeg), or None to let Pillow decode it.

    Gray JPEGs decode straight into the luma plane; RGB JPEGs decode to RGB and are grayed with
    the colour spec's luma (the same pixels as Pillow's decode). The EXIF orientation is applied
    to the luma plane. libjpeg's warnings decide what a damaged file is: image data missing
    (``_JPEG_DATA_MISSING``) raises ``ImageError``; any other warning (extraneous bytes, an odd
    marker) decodes anyway and is reported in ``Decoded.warning``. None for other modes (CMYK),
    and for files libjpeg-turbo cannot decode at all: Pillow then decodes them or says why not.
    """
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return None
    gray = im.mode == "L"
    exif = im.getexif()
    orientation = exif.get(0x0112, 1)
    im.fp.seek(0)  # the file Pillow has open (Pillow's own load seeks to its data again if we fall back)
    data = im.fp.read()
    space = "GRAY" if gray else "RGB"
    warning = None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=space, strict=True)
    except ValueError as strict_error:
        message = str(strict_error)
        if any(m in message.lower() for m in _JPEG_DATA_MISSING):
            raise ImageError(f"truncated JPEG: image data missing (libjpeg: {message})") from strict_error
        warning = f"libjpeg: {message}"
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace=space, strict=False)
        except ValueError:  # libjpeg-turbo will not get past it: Pillow's more lenient decode, with the warning
            return dataclasses.replace(_decode(im), warning=warning)
    if pixels.shape[:2] != (im.size[1], im.size[0]):
        return None
    luma = pixels.reshape(pixels.shape[:2]) if gray else luma_from_rgb(pixels)
    if orientation in _ORIENT:
        luma = np.ascontiguousarray(_ORIENT[orientation](luma))
    return Decoded(luma=luma, alpha=None, exif=_exif_without_orientation(im), source=f"JPEG {im.mode}",
                   warning=warning)


def _decode(im: Image.Image) -> Decoded:
    source = f"{im.format} {im.mode}"
    im.load()
    im = ImageOps.exif_transpose(im) or im  # returns a new image without the tag, or None if upright
    exif = _exif_without_orientation(im)
    mode = im.mode
    alpha = None
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode in ("La",):
        im, mode = im.convert("LA"), "LA"
    elif mode in ("RGBa",):
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im, mode = im.convert("RGB"), "RGB"

    if mode == "L":
        luma = np.array(im, dtype=np.uint8)
    elif mode == "LA":
        la = np.asarray(im)
        luma, alpha = np.ascontiguousarray(la[..., 0]), np.ascontiguousarray(la[..., 1])
    elif mode in ("RGB", "RGBA"):
        arr = np.asarray(im)
        luma = luma_from_rgb(arr[..., :3])
        if mode == "RGBA":
            alpha = np.ascontiguousarray(arr[..., 3])
    elif mode in _SIXTEEN_BIT:
        luma = _u16_to_u8(np.asarray(im))
    elif mode == "F":
        luma = color.to_u8(np.asarray(im, dtype=np.float32))
    else:
        raise ImageError(f"unsupported pixel mode {mode!r} ({source}); expected gray, gray+alpha, palette, RGB(A) or CMYK")
    return Decoded(luma=luma, alpha=alpha, exif=exif, source=source)


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    """16-bit gray (0..65535) -> uint8, rounded."""
    a = np.clip(a.astype(np.float32), 0, 65535)
    return color.to_u8(a * np.float32(1.0 / 65535.0))


def _exif_without_orientation(im: Image.Image) -> bytes | None:
    """The file's EXIF with the orientation tag removed (we apply it), or None."""
    try:
        exif = im.getexif()
        if not exif:
            return None
        exif.pop(0x0112, None)
        return exif.tobytes() if len(exif) else None
    except Exception:  # noqa: BLE001 - malformed EXIF only costs the metadata, never the photo
        return None


def luma_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> colour-spec luma ``(H, W)`` uint8, computed in strips."""
    h, w = rgb.shape[:2]
    out = np.empty((h, w), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, w))
    for r in range(0, h, rows):
        out[r : r + rows] = color.rgb_u8_to_luma_u8(rgb[r : r + rows])
    return out


def to_luma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """An in-memory array -> (luma uint8, alpha or None). Gray (H,W)/(H,W,1), gray+alpha, RGB or RGBA; uint8 or uint16."""
    a = np.asarray(image)
    if a.dtype == np.uint16:
        scale = _u16_to_u8
    elif a.dtype == np.uint8:
        scale = np.asarray
    else:
        raise ImageError(f"image array: expected dtype uint8 or uint16, found {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.ascontiguousarray(scale(a)), None
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise ImageError(f"image array: expected (H, W), (H, W, 2), (H, W, 3) or (H, W, 4), found {a.shape}")
    if a.shape[2] == 2:
        return np.ascontiguousarray(scale(a[..., 0])), np.ascontiguousarray(scale(a[..., 1]))
    luma = luma_from_rgb(a[..., :3]) if a.dtype == np.uint8 else _luma16(a[..., :3])
    alpha = np.ascontiguousarray(scale(a[..., 3])) if a.shape[2] == 4 else None
    return luma, alpha


def _luma16(rgb16: np.ndarray) -> np.ndarray:
    y = color.rgb_to_yuv(rgb16.astype(np.float32) / np.float32(65535.0))[..., 0]
    return color.to_u8(y)


# ----------------------------------------------------------------------------- model input


def fit(luma: np.ndarray, size: int, *, multiple: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Scale so the long side is ``size`` (aspect kept), then pad by reflection at the bottom and right.

    ``multiple`` None: pad to ``size x size`` (every photo the same shape: whole batches, as a GPU
    wants). ``multiple`` m: pad each side only up to a multiple of m (the artifact's size multiple),
    so a 16:9 photo at 224 runs at 224x128 instead of 224x224, with less model work at the same
    chroma quality on the validation split (docs/decisions).
    Returns the padded uint8 array and the ``(h, w)`` of the content (top-left).
    """
    h, w = luma.shape
    (ch, cw), (ph, pw) = fitted_shape(h, w, size, multiple=multiple)
    if (ch, cw) != (h, w):
        # Area averaging, as the trainer resizes (cv2.INTER_AREA): Pillow's faster BOX filter samples pixel
        # centres instead of coverage and moved the validation PSNR of single photos. area_downscale gives
        # INTER_AREA's pixels faster for large photos.
        if max(h, w) > size:
            small = area_downscale(luma, (ch, cw))
        else:
            small = cv2.resize(luma, (cw, ch), interpolation=cv2.INTER_LINEAR)
    else:
        small = luma
    if (ch, cw) == (ph, pw):
        return np.ascontiguousarray(small), (ch, cw)
    border = cv2.BORDER_REFLECT_101 if ch > 1 and cw > 1 else cv2.BORDER_REPLICATE
    padded = cv2.copyMakeBorder(small, 0, ph - ch, 0, pw - cw, border)
    return padded, (ch, cw)


def fitted_shape(height: int, width: int, size: int, *,
                 multiple: int | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """``fit``'s shapes for a ``height x width`` photo: the content ``(h, w)`` and the padded model input."""
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise ValueError(f"multiple: expected an integer >= 1 or None, found {multiple!r}")
    scale = size / max(height, width)
    ch, cw = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    padded = (size, size) if multiple is None else (contract.round_up(ch, multiple), contract.round_up(cw, multiple))
    return (ch, cw), padded


# Input pixels per band of area_downscale. A band holds at most this many plus two rows (a band's
# rows cover whole output rows, an output row at most H // h + 2 input rows, and longer ones take cv2's
# path): at most 2 * 2**22 pixels, so the int32 integral image cannot overflow (255 * 2**23 < 2**31).
AREA_BAND_PIXELS = 1 << 22


def area_downscale(luma: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Area-average uint8 ``(H, W)`` down to ``out_shape = (h, w)``, ``h <= H`` and ``w <= W``; uint8, rounded.

    Each output pixel is the mean of the input over its cell, fractional pixels at the
    cell's edges weighted by their coverage: the definition cv2.INTER_AREA implements
    (its pixels within 1 level, where float rounding differs). Computed exactly from
    the integral image, which is bilinear inside each pixel: a cell's sum is four
    bilinear lookups at its corners. Faster than cv2's resize for large photos
    (cv2's generic path for non-integer factors is slow). Bands of
    at most ``AREA_BAND_PIXELS`` input pixels bound the memory and keep int32 sums exact.
    """
    H, W = luma.shape
    h, w = out_shape
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"area_downscale: expected an output within 1x1..{H}x{W}, found {h}x{w}")
    if (H // h + 2) * W > AREA_BAND_PIXELS:  # one output row spans more than a band: cv2's own (slower) path
        return cv2.resize(luma, (w, h), interpolation=cv2.INTER_AREA)
    ry, fy = _cell_edges(H, h)
    rx, fx = _cell_edges(W, w)
    cols = np.concatenate([rx, rx + 1])
    gx = (1.0 - fx, fx)
    out = np.empty((h, w), dtype=np.uint8)
    band = max(1, AREA_BAND_PIXELS // W * h // H)  # output rows per band
    for j0 in range(0, h, band):
        j1 = min(h, j0 + band)  # output rows j0..j1-1 need cell edges j0..j1
        y0, y1 = int(ry[j0]), int(ry[j1]) + 1
        s = cv2.integral(luma[y0:y1])  # int32 (rows + 1, W + 1): s[y, x] = sum of luma[y0:y0 + y, :x]
        r = ry[j0 : j1 + 1] - y0
        f = fy[j0 : j1 + 1, None]
        edges = s[r][:, cols] * (1.0 - f) + s[r + 1][:, cols] * f  # rows at the cell edges, at x and x+1
        grid = edges[:, : w + 1] * gx[0] + edges[:, w + 1 :] * gx[1]
        sums = np.diff(np.diff(grid, axis=0), axis=1)
        out[j0:j1] = np.clip(np.floor(sums * (h * w / (H * W)) + (0.5 + 1e-9)), 0, 255)  # halves up, as cv2
    return out


def _cell_edges(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_out + 1`` cell edges ``k * n_in / n_out`` as (whole pixel, fraction), whole pixel at most ``n_in - 1``."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    whole = np.minimum(np.floor(edges).astype(np.intp), n_in - 1)
    return whole, edges - whole


# ----------------------------------------------------------------------------- output


def compose(luma: np.ndarray, uv: np.ndarray, *, saturation: float = 1.0, alpha: np.ndarray | None = None) -> np.ndarray:
    """Full-resolution RGB(A) from the photo's own luma and the model's chroma.

    ``uv``: float32 ``(2, h, w)`` at model resolution, padding already cropped.
    The chroma is upscaled bilinearly (cv2.resize semantics, half-pixel centres)
    to the luma's size and joined to it with ``engine.core.color.compose_u8``.
    """
    H, W = luma.shape
    _, h, w = uv.shape
    # Horizontal pass once (small: h rows), vertical pass per strip of output rows.
    small = np.ascontiguousarray(np.moveaxis(uv.astype(np.float32, copy=False), 0, -1))
    if saturation != 1.0:
        small = small * np.float32(saturation)
    wide = cv2.resize(small, (W, h), interpolation=cv2.INTER_LINEAR) if w != W else small
    channels = 3 if alpha is None else 4
    out = np.empty((H, W, channels), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, W))
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        uv_strip = _vertical_linear(wide, r0, r1, H)
        out[r0:r1, :, :3] = color.compose_u8(luma[r0:r1], uv_strip)
    if alpha is not None:
        out[..., 3] = alpha
    return out


def compose_jpeg_chroma(
    shape: tuple[int, int], uv: np.ndarray, *, saturation: float = 1.0, limited: bool = False,
    subsampled: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The 4:2:0 Cb and Cr planes (uint8, ``ceil(H/2) x ceil(W/2)``) of a JPEG whose Y plane is the photo's luma.

    ``shape``: the luma's ``(H, W)``; ``uv``: float32 ``(2, h, w)`` at model resolution,
    padding already cropped. The chroma is mapped to JPEG levels at model resolution
    (``engine.core.color.uv_to_cbcr_u8``) and upscaled bilinearly (cv2.resize, half-pixel
    centres, like ``compose``) to JPEG's chroma grid, one sample per 2x2 luma pixels
    (centred, as JFIF sites them). A JPEG output so needs no full-resolution float,
    RGB or chroma pass, a fraction of the work of ``compose``.
    Decoded, it gives ``compose``'s pixels within a few levels, before JPEG's own loss.
    The same planes are a 4:2:0 video frame's chroma (``limited``: in the video range's levels);
    ``subsampled=False`` gives 4:4:4 planes, ``H x W``.
    """
    H, W = shape
    size = ((W + 1) // 2, (H + 1) // 2) if subsampled else (W, H)
    cbcr = color.uv_to_cbcr_u8(np.moveaxis(np.asarray(uv), 0, -1), saturation, limited=limited)
    planes = []
    for c in range(2):
        small = np.ascontiguousarray(cbcr[..., c])
        if small.shape != size[::-1]:
            small = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR)
        planes.append(small)
    return planes[0], planes[1]


def encode_jpeg_ycbcr(luma: np.ndarray, cb: np.ndarray, cr: np.ndarray, *, quality: int = 95,
                      exif: bytes | None = None) -> bytes:
    """JPEG bytes from a Y plane ``(H, W)`` and 4:2:0 Cb, Cr planes ``(ceil(H/2), ceil(W/2))``, uint8, JFIF levels.

    libjpeg-turbo (simplejpeg) takes the planes as they are: no colour conversion and
    no chroma downsampling. ``exif`` (``Exif\\0\\0`` + TIFF, as ``PIL.Image.Exif.tobytes``
    gives) is written as an APP1 segment; EXIF over JPEG's 64 KB segment limit is dropped.
    """
    H, W = luma.shape
    want = ((H + 1) // 2, (W + 1) // 2)
    if cb.shape != want or cr.shape != want:
        raise ImageError(f"JPEG chroma planes: expected {want} for luma {luma.shape}, found {cb.shape} and {cr.shape}")
    y = np.ascontiguousarray(luma, dtype=np.uint8)
    if H % 2 or W % 2:
        # TurboJPEG reads the Y plane of 4:2:0 as even-sized (its "plane width/height"): give it a
        # buffer of that size (edge replicated) and the visible (H, W) view with the buffer's stride,
        # or it reads a row past the array (different bytes each run, in the last 16 rows of the JPEG).
        padded = np.empty((2 * want[0], 2 * want[1]), dtype=np.uint8)
        padded[:H, :W] = y
        padded[:H, W:] = y[:, W - 1 :]
        padded[H:] = padded[H - 1]
        y = padded[:H, :W]
    data = simplejpeg.encode_jpeg_yuv_planes(
        y,
        np.ascontiguousarray(cb, dtype=np.uint8),
        np.ascontiguousarray(cr, dtype=np.uint8),
        quality=int(quality),
    )
    return _with_exif(data, exif)


def _with_exif(jpeg: bytes, exif: bytes | None) -> bytes:
    """``jpeg`` with an APP1 EXIF segment after its SOI and JFIF APP0 segments (unchanged if none fits)."""
    if not exif:
        return jpeg
    if not exif.startswith(b"Exif\x00\x00"):
        exif = b"Exif\x00\x00" + exif
    if len(exif) + 2 > 0xFFFF:
        log.debug("EXIF not carried (%d bytes: over JPEG's 64 KB APP1 limit)", len(exif))
        return jpeg
    pos = 2  # after SOI
    if jpeg[2:4] == b"\xff\xe0":  # JFIF APP0 comes first by the standard
        pos = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:pos] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[pos:]


def _png_with_exif(png: bytes, exif: bytes | None) -> bytes:
    """``png`` with an ``eXIf`` chunk (the EXIF's TIFF data) right after its IHDR chunk (PNG 1.5 places it
    before the image data); unchanged without EXIF or when the data does not fit a chunk."""
    if not exif:
        return png
    tiff = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    if not tiff or len(tiff) >= 1 << 31 or png[12:16] != b"IHDR":
        return png
    end = 8 + 12 + struct.unpack(">I", png[8:12])[0]  # signature, then IHDR: length, type, data, CRC
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    return png[:end] + chunk + png[end:]


def _vertical_linear(src: np.ndarray, r0: int, r1: int, out_h: int) -> np.ndarray:
    """Rows ``r0:r1`` of a bilinear resize of ``src`` (h, W, C) to ``out_h`` rows (half-pixel centres)."""
    h = src.shape[0]
    if h == out_h:
        return src[r0:r1]
    y = (np.arange(r0, r1, dtype=np.float64) + 0.5) * (h / out_h) - 0.5
    y = np.clip(y, 0.0, h - 1)
    y0 = np.floor(y).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    t = (y - y0).astype(np.float32)[:, None, None]
    a = src[y0]
    return a + (src[y1] - a) * t


def encode(image: np.ndarray, fmt: str, *, quality: int = 95, exif: bytes | None = None) -> bytes:
    """uint8 RGB or RGBA ``(H, W, 3|4)`` -> file bytes in ``fmt`` (JPEG, PNG, WEBP, BMP, TIFF)."""
    if fmt == "JPEG":
        if image.shape[2] == 4:
            image = image[..., :3]
        return _pil_save(image, "JPEG", exif, quality=int(quality))
    if fmt in ("PNG", "BMP"):
        code = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
        ok, data = cv2.imencode(".png" if fmt == "PNG" else ".bmp", cv2.cvtColor(image, code))
        if not ok:
            raise ImageError(f"cannot encode {fmt} ({image.shape})")
        return _png_with_exif(data.tobytes(), exif) if fmt == "PNG" else data.tobytes()
    if fmt == "WEBP":
        return _pil_save(image, "WEBP", exif, quality=int(quality), method=2)
    if fmt == "TIFF":
        return _pil_save(image, "TIFF", None, compression="tiff_lzw")
    raise ImageError(f"output format: expected JPEG, PNG, WEBP, BMP or TIFF, found {fmt!r}")


def _pil_save(image: np.ndarray | Image.Image, fmt: str, exif: bytes | None, **options: object) -> bytes:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if exif:
        buf = io.BytesIO()
        try:
            pil.save(buf, fmt, exif=exif, **options)
            return buf.getvalue()
        except (ValueError, OSError, struct.error) as e:  # e.g. EXIF over 64 KB: keep the photo, drop the metadata
            log.debug("EXIF not carried (%s)", e)
    buf = io.BytesIO()
    pil.save(buf, fmt, **options)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """``files.write_bytes_atomic``: a kill leaves no partial output; errors become ``WriteError`` with the errno."""
    try:
        files.write_bytes_atomic(path, data)
    except OSError as e:
        raise WriteError(f"cannot write {path} ({e.strerror or e})", e.errno) from e
