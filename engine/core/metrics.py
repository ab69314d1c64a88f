"""Image-quality metrics for colorization, numpy only (shared by trainer validation and ``evaluate``).

All functions take uint8 RGB images ``(H, W, 3)`` (or batches ``(N, H, W, 3)``
where stated) with values in [0, 255].
"""

from __future__ import annotations

import numpy as np

_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # 11x11 Gaussian window (Wang et al. 2004)


def psnr(pred_u8: np.ndarray, target_u8: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; ``inf`` when identical."""
    pred, target = _same_shape(pred_u8, target_u8)
    mse = float(np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * np.log10(255.0**2 / mse)


def _gaussian_kernel() -> np.ndarray:
    x = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return k / k.sum()


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the first two axes, 'valid' region only."""
    k = _gaussian_kernel()
    n = k.size
    h, w = img.shape[:2]
    if h < n or w < n:
        raise ValueError(f"ssim: image must be at least {n}x{n}, found {h}x{w}")
    rows = sum(k[i] * img[i : h - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[:, i : w - n + 1 + i] for i in range(n))


def ssim(pred_u8: np.ndarray, target_u8: np.ndarray) -> float:
    """Mean structural similarity (Gaussian window 11, sigma 1.5), averaged over RGB channels."""
    pred, target = _same_shape(pred_u8, target_u8)
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    c1 = (_SSIM_K1 * 255.0) ** 2
    c2 = (_SSIM_K2 * 255.0) ** 2
    mu_x, mu_y = _blur(x), _blur(y)
    sxx = _blur(x * x) - mu_x**2
    syy = _blur(y * y) - mu_y**2
    sxy = _blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def colourfulness(rgb_u8: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness M = sigma_rgyb + 0.3 * mu_rgyb (0 for gray)."""
    rgb = np.asarray(rgb_u8, dtype=np.float64)
    if rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"colourfulness: expected (..., H, W, 3), found {tuple(rgb.shape)}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = np.sqrt(rg.std() ** 2 + yb.std() ** 2)
    mu = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(sigma + 0.3 * mu)


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"metric inputs must have the same shape, found {a.shape} and {b.shape}")
    return a, b
