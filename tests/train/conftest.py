"""Fixtures for the trainer tests: tiny generated colour photos and a tiny-model config factory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_MODEL

CLI = [sys.executable, str(ROOT / "cli.py")]


def write_photos(folder: Path, n: int = 12, seed: int = 0, size: tuple[int, int] = (40, 52)) -> Path:
    """``n`` smooth colour photos (gradients + a coloured blob), PNG and JPEG, some in sub-folders."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / w)[..., None]
        img = c0 * (1 - t) + c1 * t
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
        img = np.where(blob, rng.uniform(0, 255, 3), img).astype(np.uint8)
        sub = folder / ("a" if i % 3 == 0 else "b/c" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        name = f"p{i:02d}.png" if i % 2 else f"p{i:02d}.jpg"
        cv2.imwrite(str(sub / name), np.ascontiguousarray(img[..., ::-1]))
    return folder


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A shared, read-only folder of 12 tiny photos."""
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture()
def tiny_cfg(photos, tmp_path):
    """Factory for a ``TrainConfig`` of the tiny model on ``photos`` (override any field)."""
    from train.trainer import TrainConfig

    def make(**kw):
        base = dict(data=str(photos), out=str(tmp_path / "run"), width=TINY_MODEL["width"],
                    width_mult=TINY_MODEL["width_mult"], image_size=32, batch_size=4, steps=6, log_every=2,
                    val_every=3, workers=1, device="cpu")
        base.update(kw)
        return TrainConfig(**base)

    return make
