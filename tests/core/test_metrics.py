import math

import numpy as np
import pytest

from engine.core import metrics


def test_psnr_identical_is_inf_and_known_value():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert metrics.psnr(a, a) == math.inf
    b = a.copy()
    b[..., 0] = 110  # MSE = 100 / 3
    assert metrics.psnr(b, a) == pytest.approx(10 * math.log10(255**2 / (100 / 3)))


def test_ssim_identical_is_one_and_drops_with_noise(rng):
    ramp = np.linspace(40, 200, 32)
    a = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 120.0), axis=-1).astype(np.uint8)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(noisy, a) < 0.5


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5, 3), np.uint8))


def test_colourfulness_gray_is_zero_and_grows_with_saturation():
    gray = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=-1)
    assert metrics.colourfulness(gray) == 0.0
    dull = np.zeros((8, 8, 3), np.uint8)
    dull[:4] = (140, 120, 120)
    dull[4:] = (120, 120, 140)
    vivid = np.zeros((8, 8, 3), np.uint8)
    vivid[:4] = (250, 20, 20)
    vivid[4:] = (20, 20, 250)
    assert 0 < metrics.colourfulness(dull) < metrics.colourfulness(vivid)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
