"""The exported graph: uint8 gray in, uint8 RGB and float UV out, colour math inside.

``ColorizeGraph(model)`` wraps a ``engine.net.model.ColorizerNet`` so that the ONNX
file (and the engine's PyTorch backend, which imports this module lazily) takes
the contract's tensors directly (``engine.core.contract``):

    gray uint8 (N, 1, H, W)  ->  rgb uint8 (N, 3, H, W), uv float32 (N, 2, H, W)

Pre-processing (uint8 -> Y float in [0, 1]) and post-processing (YUV -> RGB as a
1x1 conv, clamp to [0, 1], floor(x * 255 + 0.5), cast to uint8) use the torch
functions of ``engine.core.color``, so the graph and the numpy spec share constants.
Kept import-light on purpose: torch and the colour spec only.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.core import color


class ColorizeGraph(nn.Module):
    """``gray`` uint8 (N,1,H,W) -> (``rgb`` uint8 (N,3,H,W), ``uv`` float32 (N,2,H,W))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = color.gray_u8_to_y_torch(gray)
        uv = self.model(y)
        yuv = torch.cat([y, uv], dim=1)
        rgb = color.yuv_to_rgb_u8_torch(yuv)
        return rgb, uv
