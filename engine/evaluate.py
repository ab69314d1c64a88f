"""Evaluate a model on colour photos: gray them, colorize through the engine, compare.

Each photo is resized (short side to ``size``, area filter) and centre-cropped to
``size x size``, grayed with the colour spec's luma, colorized by the same
``Colorizer`` that ``colorize-dir`` uses, and compared with the original. The gray
baseline is the input itself (zero chroma). Reported per image and as means:
PSNR and SSIM against ground truth, Hasler–Süsstrunk colourfulness of the
prediction and of the ground truth, and their ratio (mean pred / mean GT).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.core import color, files, metrics
from engine.core.errors import ColorizerError, OutputError

log = logging.getLogger(__name__)

# Photo suffixes for training and evaluation (colorize-dir accepts more, see engine/images.py).
IMAGE_SUFFIXES = files.PHOTO_SUFFIXES


@dataclass
class ImageScore:
    path: str
    psnr: float
    ssim: float
    colourfulness: float
    gt_colourfulness: float
    gray_psnr: float
    gray_ssim: float


@dataclass
class EvalReport:
    images: int
    size: int
    model: dict[str, float | None]
    gray_baseline: dict[str, float | None]
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} per photo not scored
    per_image: list[ImageScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report without per-image rows, as strict JSON values: a non-finite number becomes None."""
        d = asdict(self)
        d.pop("per_image")
        return _finite(d)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


SIZE_RANGE = (16, 4096)  # evaluation crop in pixels
MAX_PIXELS = 100_000_000  # a larger photo is one failed line, as in colorize-dir's default --max-pixels


def check_size(size: int) -> int:
    """``size`` within ``SIZE_RANGE``, else ``ColorizerError`` naming the parameter."""
    lo, hi = SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise ColorizerError(f"size: expected an integer in {lo}..{hi}, found {size!r}")
    return size


def list_images(source: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Photos to evaluate, and entries that cannot be photos (path, reason).

    A folder is walked with ``colorize-dir``'s rules (``engine.tree.walk``: sorted, hidden names
    ignored, directory symlinks not followed, dangling links and special files reported). A ``.txt``
    list holds one path per line (relative paths are relative to the list's folder), e.g. the
    ``val_files.txt`` a training run writes, or a ``--fail-list`` (its quoted lines are read back
    with ``engine.core.files.read_path_line``); a listed path that is missing or not a regular file
    is reported, never opened (a FIFO would hang the run).
    """
    from engine import tree

    source = Path(source)
    found: list[Path] = []
    odd: list[tuple[str, str]] = []
    if source.is_file() and source.suffix == ".txt":
        for raw in source.read_bytes().splitlines():
            if not raw.strip():
                continue
            path = Path(os.fsdecode(files.read_path_line(raw.strip(b"\r"))))
            path = path if path.is_absolute() else source.parent / path
            try:
                mode = path.stat().st_mode
            except OSError as e:
                odd.append((str(path), f"cannot read ({e.strerror or e})"))
                continue
            if stat.S_ISREG(mode):
                found.append(path)
            else:
                odd.append((str(path), f"not a regular file ({files.file_kind(mode)})"))
    elif source.is_dir():
        for task in tree.walk(source):
            if task.error is not None:
                odd.append((str(task.src), task.error))
            else:
                found.append(task.src)
    else:
        raise ColorizerError(f"{source}: expected a folder of photos or a .txt list of paths, found neither")
    if not found and not odd:
        raise ColorizerError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return found, odd


def load_square_rgb(path: Path, size: int, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` as RGB uint8 (``images.read_rgb``), short side to ``size``, centre crop ``size x size``.

    Raises ``images.ImageError`` with the reason (unreadable, too large, truncated...).
    """
    import cv2

    from engine import images

    rgb = images.read_rgb(path, max_pixels=max_pixels)
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def score(pred: np.ndarray, gt: np.ndarray, gray_rgb: np.ndarray, path: str) -> ImageScore:
    return ImageScore(
        path=path,
        psnr=metrics.psnr(pred, gt),
        ssim=metrics.ssim(pred, gt),
        colourfulness=metrics.colourfulness(pred),
        gt_colourfulness=metrics.colourfulness(gt),
        gray_psnr=metrics.psnr(gray_rgb, gt),
        gray_ssim=metrics.ssim(gray_rgb, gt),
    )


def summarize(scores: list[ImageScore], size: int, failed: list[dict[str, str]]) -> EvalReport:
    if not scores:
        raise ColorizerError("evaluate: no image could be evaluated")

    def mean(key: str) -> float:
        vals = [getattr(s, key) for s in scores]
        finite = [v for v in vals if math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("inf")

    gt_c = mean("gt_colourfulness")
    model = {
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "colourfulness": mean("colourfulness"),
        "gt_colourfulness": gt_c,
        "colourfulness_ratio": mean("colourfulness") / gt_c if gt_c > 0 else float("nan"),
    }
    gray = {"psnr": mean("gray_psnr"), "ssim": mean("gray_ssim"), "colourfulness": 0.0, "colourfulness_ratio": 0.0}
    return EvalReport(images=len(scores), size=size, model=model, gray_baseline=gray, failed=failed, per_image=scores)


def evaluate_folder(
    colorize: Callable[[np.ndarray], np.ndarray],
    folder: Path,
    *,
    size: int = 256,
    grid: Path | None = None,
    grid_rows: int = 8,
    progress: Callable[[int, int], None] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> EvalReport:
    """Score ``colorize`` (uint8 gray ``(H, W)`` -> uint8 RGB ``(H, W, 3)``) on every photo in ``folder``.

    A photo that cannot be read is one ``path: reason`` warning and one entry in ``failed``;
    the rest go on. ``max_pixels``: larger photos fail before any pixel is decoded.
    """
    from engine.images import ImageError

    check_size(size)
    paths, odd = list_images(Path(folder))
    scores: list[ImageScore] = []
    failed: list[dict[str, str]] = []

    def fail(path: str, reason: str) -> None:
        log.warning("%s", files.printable(f"{path}: {reason}"))
        failed.append({"path": path, "reason": reason})

    for path, reason in odd:
        fail(path, reason)
    rows: list[np.ndarray] = []
    for i, path in enumerate(paths):
        try:
            gt = load_square_rgb(path, size, max_pixels=max_pixels)
        except ImageError as e:
            fail(str(path), str(e))
            continue
        gray = color.rgb_u8_to_luma_u8(gt)
        pred = colorize(gray)
        gray_rgb = np.repeat(gray[..., None], 3, axis=-1)
        scores.append(score(pred, gt, gray_rgb, str(path)))
        if grid is not None and len(rows) < grid_rows:
            rows.append(np.concatenate([gray_rgb, pred, gt], axis=1))
        if progress is not None:
            progress(i + 1, len(paths))
    if grid is not None and rows:
        write_grid(rows, grid)
    return summarize(scores, size, failed)


def write_grid(rows: list[np.ndarray], out: Path) -> None:
    """Stack rows of (input | output | ground truth) into one PNG, written atomically."""
    import cv2

    img = np.concatenate(rows, axis=0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
    if not ok:
        raise ColorizerError(f"{out}: PNG encoding failed")
    try:
        files.write_bytes_atomic(out, buf.tobytes())
    except OSError as e:
        raise OutputError(f"grid {out}: cannot write ({e.strerror or e})") from e


def write_csv(report: EvalReport, out: Path) -> None:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(asdict(report.per_image[0]).keys()))
    writer.writeheader()
    for s in report.per_image:
        writer.writerow(asdict(s))
    files.write_bytes_atomic(Path(out), buf.getvalue().encode("utf-8", "surrogateescape"))
