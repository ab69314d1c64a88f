"""Deterministic, natural-looking grayscale test photos: smooth light, gradients, shapes, blur and grain.

Photo ``i`` of seed ``s`` is always the same pixels, so two machines (or two runs)
benchmark the same folder. About 20-40 ms per 1080p photo plus the JPEG encode.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from benchmarks.common import BenchmarkError


def natural_gray(index: int, width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """uint8 ``(height, width)``: low-frequency light field + a linear gradient + flat shapes, blurred, with grain."""
    rng = np.random.default_rng([seed, index])
    light = cv2.resize(rng.uniform(0, 1, (6, 10)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(0, 1, width, dtype=np.float32) * np.float32(np.cos(angle))
    ys = np.linspace(0, 1, height, dtype=np.float32) * np.float32(np.sin(angle))
    img = np.float32(90) + np.float32(80) * light
    img += np.float32(40) * (xs[None, :] + ys[:, None])
    scale = min(width, height) / 1080
    for _ in range(int(rng.integers(6, 14))):
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        ax, ay = max(2, int(rng.uniform(30, 300) * scale)), max(2, int(rng.uniform(30, 300) * scale))
        level = float(rng.uniform(25, 230))
        if rng.random() < 0.5:
            cv2.ellipse(img, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, level, -1)
        else:
            cv2.rectangle(img, (cx, cy), (cx + ax, cy + ay), level, -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.2 * max(scale, 0.25))
    img += rng.standard_normal((height, width), dtype=np.float32) * np.float32(5.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def model_batch(batch: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 ``(batch, 1, H, W)`` of natural-looking photos (the model input of a benchmark).

    ``size``: H = W, or ``(H, W)``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    return np.stack([natural_gray(i, w, h, seed) for i in range(batch)])[:, None]


def jpeg_bytes(gray: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo_folder(root: Path, count: int, width: int = 1920, height: int = 1080, seed: int = 0) -> Path:
    """A folder of ``count`` grayscale JPEGs under ``root`` (made once, then reused).

    The photos are written to ``root/pool-WxH-sS`` (as many as the largest count asked so
    far) and each count gets ``root/WxH-sS-nN`` with hard links (copies where links fail).
    """
    if count < 1:
        raise BenchmarkError(f"--files: expected counts >= 1, found {count}")
    pool = root / f"pool-{width}x{height}-s{seed}"
    folder = root / f"{width}x{height}-s{seed}-n{count}"
    names = [f"photo-{i:05d}.jpg" for i in range(count)]
    if folder.is_dir() and sorted(os.listdir(folder)) == names:
        return folder
    pool.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        target = pool / name
        if not target.is_file():
            tmp = pool / f".{name}.tmp-{os.getpid()}"
            tmp.write_bytes(jpeg_bytes(natural_gray(i, width, height, seed)))
            os.replace(tmp, target)
    if folder.exists():
        shutil.rmtree(folder)
    tmp_folder = root / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_folder, ignore_errors=True)
    tmp_folder.mkdir(parents=True)
    for name in names:
        try:
            os.link(pool / name, tmp_folder / name)
        except OSError:
            shutil.copy2(pool / name, tmp_folder / name)
    os.replace(tmp_folder, folder)
    return folder
