"""Exponential moving average of a network's weights (``cli.py train --ema DECAY``).

After every optimizer update, each floating-point parameter and buffer (BatchNorm
running statistics included) of the copy moves toward the live network's::

    ema <- d * ema + (1 - d) * live,   d = min(DECAY, (1 + n) / (10 + n))

where ``n`` counts the updates so far: the ramp keeps the copy from remembering its
random initialisation in short runs (d is 0.18 at the first update, 0.5 at the eighth,
0.99 after ~900). Integer buffers (BatchNorm's ``num_batches_tracked``) are copied.
With DECAY 0.999 the copy averages roughly the last 1,000 updates.

The copy lives on the live network's device, in eval mode, without gradients; every
DDP rank keeps its own, identical since the live weights are. Its state (decay,
update count, weights) goes into the training checkpoint, so ``--resume`` continues
it exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """A moving-average copy of ``net``; ``update(net)`` after each optimizer step."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay: expected 0 < decay < 1, found {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay used for update number ``updates`` (1-based)."""
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        live = net.state_dict()
        for name, avg in self.net.state_dict().items():  # tensors that share storage with self.net
            src = live[name].detach()
            if avg.is_floating_point():
                avg.lerp_(src.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.net.load_state_dict(state["model"])
