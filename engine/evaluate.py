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
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.core import color, files, metrics
from engine.core.errors import ColorizerError

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
    model: dict[str, float]
    gray_baseline: dict[str, float]
    failed: list[str] = field(default_factory=list)
    per_image: list[ImageScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_image")
        return d


def list_images(source: Path) -> list[Path]:
    """Photos to evaluate: every image under a folder, or the paths listed in a ``.txt`` file.

    A list file holds one path per line (relative paths are relative to the list's
    folder), e.g. the ``val_files.txt`` a training run writes for its validation split.
    """
    source = Path(source)
    if source.is_file() and source.suffix == ".txt":
        lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines()]
        files = [p if p.is_absolute() else source.parent / p for p in map(Path, filter(None, lines))]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    else:
        raise ColorizerError(f"{source}: expected a folder of photos or a .txt list of paths, found neither")
    if not files:
        raise ColorizerError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


def load_square_rgb(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` as RGB uint8, short side to ``size``, centre crop ``size x size``."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError("not a decodable image")
    h, w = bgr.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(bgr[top : top + size, left : left + size, ::-1])


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


def summarize(scores: list[ImageScore], size: int, failed: list[str]) -> EvalReport:
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
) -> EvalReport:
    """Score ``colorize`` (uint8 gray ``(H, W)`` -> uint8 RGB ``(H, W, 3)``) on every photo in ``folder``."""
    files = list_images(Path(folder))
    scores: list[ImageScore] = []
    failed: list[str] = []
    rows: list[np.ndarray] = []
    for i, path in enumerate(files):
        try:
            gt = load_square_rgb(path, size)
        except (ValueError, OSError) as e:
            log.warning("%s: %s", path, e)
            failed.append(str(path))
            continue
        gray = color.rgb_u8_to_luma_u8(gt)
        pred = colorize(gray)
        gray_rgb = np.repeat(gray[..., None], 3, axis=-1)
        scores.append(score(pred, gt, gray_rgb, str(path)))
        if grid is not None and len(rows) < grid_rows:
            rows.append(np.concatenate([gray_rgb, pred, gt], axis=1))
        if progress is not None:
            progress(i + 1, len(files))
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
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(out)


def write_csv(report: EvalReport, out: Path) -> None:
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(report.per_image[0]).keys()))
        writer.writeheader()
        for s in report.per_image:
            writer.writerow(asdict(s))
    tmp.replace(out)
