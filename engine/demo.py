"""``make demo``: colorize the bundled samples and lay input | output | original side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.core import color
from engine.evaluate import IMAGE_SUFFIXES, write_grid

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
OUT = ROOT / "out" / "demo"
PANEL_HEIGHT = 240


def _panel(rgb: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _is_colour(rgb: np.ndarray) -> bool:
    """True when the picture has real chroma (a colour original to compare against)."""
    yuv = color.rgb_u8_to_yuv(rgb[::4, ::4])
    return float(np.abs(yuv[..., 1:]).mean()) > 0.01


def demo_rows(samples: Path, outputs: Path, height: int = PANEL_HEIGHT) -> list[np.ndarray]:
    """One row per sample: its luma (the model's input), the colorized output, the original if in colour."""
    rows = []
    for src in sorted(p for p in samples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        out = outputs / src.name
        if not out.is_file():
            continue
        original = _load_rgb(src)
        gray = np.repeat(color.rgb_u8_to_luma_u8(original)[..., None], 3, axis=-1)
        panels = [gray, _load_rgb(out)] + ([original] if _is_colour(original) else [])
        rows.append(np.concatenate([_panel(p, height) for p in panels], axis=1))
    width = max(r.shape[1] for r in rows) if rows else 0
    return [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]


def run_demo(colorize_dir: Callable[..., Any], samples: Path = SAMPLES, out: Path = OUT) -> tuple[Any, Path]:
    """Colorize ``samples`` into ``out`` (overwriting earlier demo outputs) and write ``out/grid.png``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = colorize_dir(samples, out, overwrite=True)
    grid = out / "grid.png"
    rows = demo_rows(samples, out)
    if rows:
        write_grid(rows, grid)
    return summary, grid
