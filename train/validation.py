"""Validation during training: the engine's pixels, scored with ``engine.core.metrics``.

Each fixed centre crop (uint8 RGB) is grayed with the colour spec's luma, fed to
the network as the engine would feed a gray photo (``gray_u8_to_y``), and the
predicted chroma is composed with that same luma into uint8 RGB
(``engine.core.color.compose_u8``). Reported means: PSNR against the crop, Hasler–
Süsstrunk colourfulness of the prediction and of the crop, their ratio, and the
PSNR of the gray input itself (the baseline to beat).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.core import color, metrics


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("inf")


@torch.no_grad()
def validate(net: nn.Module, crops: np.ndarray, device: torch.device, *, amp_dtype: torch.dtype | None = None,
             batch_size: int = 16) -> dict[str, Any]:
    """Score ``net`` on uint8 RGB ``crops`` ``(N, H, W, 3)``; leaves ``net`` in the mode it found it."""
    if crops is None or len(crops) == 0:
        return {}
    was_training = net.training
    net.eval()
    psnr, colourful, gt_colourful, gray_psnr = [], [], [], []
    try:
        for start in range(0, len(crops), batch_size):
            gt = crops[start : start + batch_size]
            luma = color.rgb_u8_to_luma_u8(gt)
            y = color.gray_u8_to_y_torch(torch.from_numpy(luma)[:, None]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None):
                uv = net(y.contiguous(memory_format=torch.channels_last))
            uv_np = uv.float().permute(0, 2, 3, 1).cpu().numpy()
            for i in range(len(gt)):
                pred = color.compose_u8(luma[i], uv_np[i])
                gray = np.repeat(luma[i][..., None], 3, axis=-1)
                psnr.append(metrics.psnr(pred, gt[i]))
                gray_psnr.append(metrics.psnr(gray, gt[i]))
                colourful.append(metrics.colourfulness(pred))
                gt_colourful.append(metrics.colourfulness(gt[i]))
    finally:
        net.train(was_training)
    gt_c = _mean(gt_colourful)
    return {"val_psnr": _mean(psnr), "val_colourfulness": _mean(colourful), "gt_colourfulness": gt_c,
            "colourfulness_ratio": _mean(colourful) / gt_c if gt_c > 0 else float("nan"),
            "gray_psnr": _mean(gray_psnr), "val_images": int(len(crops))}
