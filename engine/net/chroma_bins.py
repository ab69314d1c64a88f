"""Quantized chroma for the classification loss: bins, soft targets, rebalancing, annealed mean.

The UV plane (colour spec units: U in ±0.436, V in ±0.615) is cut into a square
grid of side ``grid`` (default 0.05); a bin's centre is ``(i * grid, j * grid)``.
Only bins that occur in the training data are kept, so the classifier has
no classes for colours it will never see.

Shapes: UV samples ``(M, 2)``; bin centres ``(K, 2)``; targets ``(N, 2, h, w)``;
logits and soft targets ``(N, K, h, w)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.color import U_MAX, V_MAX
from engine.core.errors import ColorizerError

DEFAULT_GRID = 0.05


def grid_index(uv: np.ndarray, grid: float = DEFAULT_GRID) -> np.ndarray:
    """Integer grid coordinates ``(..., 2)`` of the nearest bin centre for each UV value."""
    return np.rint(np.asarray(uv, dtype=np.float64) / grid).astype(np.int64)


def bins_from_samples(uv: np.ndarray, grid: float = DEFAULT_GRID, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Keep the grid bins hit by at least ``min_count`` samples.

    ``uv``: ``(M, 2)`` float samples. Returns ``(centres (K, 2) float32, counts (K,) int64)``
    sorted by (i, j). Raises ``ColorizerError`` when no bin is left.
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    idx = grid_index(uv, grid)
    keys, counts = np.unique(idx, axis=0, return_counts=True)
    keep = counts >= min_count
    if not keep.any():
        raise ColorizerError(f"chroma bins: no bin has {min_count} or more samples among {len(uv)}")
    centres = keys[keep].astype(np.float64) * grid
    centres[:, 0] = np.clip(centres[:, 0], -U_MAX, U_MAX)
    centres[:, 1] = np.clip(centres[:, 1], -V_MAX, V_MAX)
    return centres.astype(np.float32), counts[keep].astype(np.int64)


def soft_encode(target_uv: torch.Tensor, centres: torch.Tensor, sigma: float, k: int = 5) -> torch.Tensor:
    """Gaussian soft assignment of each target to its ``k`` nearest bins.

    ``target_uv``: ``(N, 2, h, w)``; ``centres``: ``(K, 2)``. Returns ``(N, K, h, w)``
    non-negative and summing to 1 over K at every pixel.
    """
    n, _, h, w = target_uv.shape
    flat = target_uv.permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = torch.cdist(flat, centres.to(flat.dtype)).pow(2)  # (P, K)
    k = min(k, centres.shape[0])
    near_d2, near_idx = d2.topk(k, dim=1, largest=False)
    wts = torch.exp(-near_d2 / (2 * sigma * sigma))
    wts = wts / wts.sum(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.zeros_like(d2)
    out.scatter_(1, near_idx, wts)
    return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def rebalance_weights(prior: np.ndarray, lam: float, smooth_sigma_bins: float = 1.0, centres: np.ndarray | None = None,
                      grid: float = DEFAULT_GRID) -> np.ndarray:
    """Class weights ``w ∝ 1 / ((1 - lam) * p~ + lam / K)``, scaled so that ``E_p[w] = 1`` under the empirical prior.

    ``prior``: empirical bin frequencies ``(K,)`` (any non-negative scale). ``p~`` is the
    prior smoothed by a Gaussian of ``smooth_sigma_bins`` grid steps over the bin
    centres (when given), then normalised. ``lam`` is the share of the uniform
    distribution mixed in (Zhang et al. 2016): ``lam = 1`` gives all weights 1 (no
    rebalancing), ``lam = 0`` full inverse frequency, ``lam = 0.5`` their choice.
    """
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or (p < 0).any() or p.sum() <= 0:
        raise ColorizerError(f"rebalance: expected a non-empty non-negative prior, found shape {p.shape}")
    if not 0.0 <= lam <= 1.0:
        raise ColorizerError(f"rebalance: lambda must be in [0, 1], found {lam}")
    p = p / p.sum()
    p_empirical = p
    if centres is not None and smooth_sigma_bins > 0:
        c = np.asarray(centres, dtype=np.float64)
        d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        kern = np.exp(-d2 / (2 * (smooth_sigma_bins * grid) ** 2))
        p = kern @ p
        p = p / p.sum()
    w = 1.0 / ((1.0 - lam) * p + lam / p.size)
    # Normalised under the empirical prior: the mean weight over training pixels is 1,
    # so the loss keeps the scale of the unweighted one.
    return (w / (p_empirical * w).sum()).astype(np.float32)


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float) -> torch.Tensor:
    """Expected UV under ``softmax(logits / T)``: ``(N, K, h, w)`` -> ``(N, 2, h, w)``.

    T = 1 is the mean of the predicted distribution; T -> 0 approaches its mode.
    Written as a softmax and a 1x1 convolution so it exports to plain ONNX ops.
    """
    if temperature <= 0:
        raise ColorizerError(f"temperature must be > 0, found {temperature}")
    probs = F.softmax(logits * (1.0 / temperature), dim=1)
    weight = centres.t().to(probs.dtype).reshape(2, -1, 1, 1)
    return F.conv2d(probs, weight)
