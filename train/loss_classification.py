"""``--loss classification``: rebalanced colour classification (Zhang et al. 2016 style).

The UV plane is quantized into bins of ``grid`` (0.05 U/V units by default) kept
only where the training photos have colour; each target pixel (area-downsampled
to the head's logit resolution) becomes a soft distribution over its ``k``
nearest bins (Gaussian, ``sigma``); the loss is the cross-entropy of the
predicted distribution against it, weighted per pixel by the rebalancing weight
of the pixel's nearest bin, so rare saturated colours are not drowned by the
common browns and grays.

Options (``--loss-option KEY=VALUE``):
    grid=0.05      bin size in U/V units
    sigma=0.025    soft-encoding Gaussian width (half a bin)
    k=5            nearest bins per target
    lam=0.8        share of the uniform distribution mixed into the prior (the loss
                   comparison's winner, docs/training.md; Zhang et al. used 0.5);
                   1.0 = no rebalancing, 0.0 = full inverse frequency
    warmup=0       steps trained without rebalancing, then weights ramp in linearly
                   over the same number of steps
    reg=0.0        weight of an added Huber term on the T = 1 annealed-mean UV
                   (the "combined classification + regression" variant)
    temperature=0.2  annealed-mean T the model decodes with (and so the exported graph;
                   the comparison's choice for lam=0.8)
    stride=4       logit resolution divisor
    teacher=0.5    with ``cli.py train --teacher MODEL``: share of the teacher's colour
                   distribution (its members' mean, T = 1) in each pixel's target; the
                   rest is the soft-encoded true colour (distillation)
    samples=1000000  pixels sampled from the training set to estimate the prior
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.core import color
from engine.net import chroma_bins
from train.losses import Loss, LossConfigError, register_loss


@register_loss("classification")
class ClassificationLoss(Loss):
    accepts_teacher = True

    def __init__(
        self,
        grid: float = chroma_bins.DEFAULT_GRID,
        sigma: float = 0.025,
        k: int = 5,
        lam: float = 0.8,
        warmup: int = 0,
        reg: float = 0.0,
        temperature: float = 0.2,
        stride: int = 4,
        samples: int = 1_000_000,
        teacher: float = 0.5,
    ) -> None:
        checks = {"grid": grid > 0, "sigma": sigma > 0, "k": k >= 1, "lam": 0 <= lam <= 1, "warmup": warmup >= 0,
                  "reg": reg >= 0, "temperature": temperature > 0, "stride": stride >= 1, "samples": samples >= 1000,
                  "teacher": 0 <= teacher <= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise LossConfigError(f"classification: invalid option(s) {bad}: got {locals()[bad[0]]!r}")
        super().__init__(grid=grid, sigma=sigma, k=k, lam=lam, warmup=warmup, reg=reg,
                         temperature=temperature, stride=stride, samples=samples, teacher=teacher)
        self.grid, self.sigma, self.k, self.lam = float(grid), float(sigma), int(k), float(lam)
        self.warmup, self.reg, self.temperature, self.stride = int(warmup), float(reg), float(temperature), int(stride)
        self.samples, self.teacher = int(samples), float(teacher)
        self.register_buffer("centres", torch.zeros(0, 2), persistent=False)
        self.register_buffer("weights", torch.zeros(0), persistent=False)
        self.step = 0

    # ------------------------------------------------------------------ preparation
    def prepare(self, train_set: Any) -> None:
        pixels = np.asarray(train_set.sample_pixels(self.samples, seed=0), dtype=np.uint8).reshape(-1, 3)
        uv = color.rgb_u8_to_yuv(pixels)[:, 1:]
        centres, counts = chroma_bins.bins_from_samples(uv, self.grid)
        weights = chroma_bins.rebalance_weights(counts, self.lam, centres=centres, grid=self.grid)
        self.load_prepared_state({"centres": centres, "counts": counts, "weights": weights})

    def prepared_state(self) -> dict[str, Any]:
        counts = getattr(self, "_counts", None)  # tensors, not arrays: checkpoints load weights_only
        return {"centres": self.centres.cpu().clone(), "weights": self.weights.cpu().clone(),
                "counts": None if counts is None else torch.as_tensor(np.asarray(counts))}

    def load_prepared_state(self, state: dict[str, Any]) -> None:
        self.centres = torch.as_tensor(np.asarray(state["centres"]), dtype=torch.float32)
        self.weights = torch.as_tensor(np.asarray(state["weights"]), dtype=torch.float32)
        self._counts = state.get("counts")

    def head_config(self) -> tuple[str, dict[str, Any]]:
        if self.centres.numel() == 0:
            raise LossConfigError("classification: head_config() needs prepare() or load_prepared_state() first")
        return "classification", {"centres": self.centres.cpu().tolist(), "temperature": self.temperature,
                                  "stride": self.stride}

    def set_step(self, step: int) -> None:
        """Called by the trainer before each step (drives the rebalancing warm-up)."""
        self.step = int(step)

    def rebalance_share(self) -> float:
        """0 during the warm-up, then a linear ramp to 1 over ``warmup`` more steps."""
        if self.warmup == 0:
            return 1.0
        return float(np.clip((self.step - self.warmup) / self.warmup, 0.0, 1.0))

    # ------------------------------------------------------------------ loss
    def forward(self, outputs: dict[str, torch.Tensor], target_uv: torch.Tensor) -> torch.Tensor:
        logits = outputs.get("logits")
        if logits is None:
            raise LossConfigError("classification: the model has no classification head (no 'logits' output)")
        logits = logits.float()
        target = F.interpolate(target_uv.float(), size=logits.shape[-2:], mode="area")
        soft = chroma_bins.soft_encode(target, self.centres, self.sigma, self.k)
        nearest = soft.argmax(dim=1)  # the true colour's bin decides the rebalancing weight
        teacher = outputs.get("teacher_probs")
        if teacher is not None:
            if teacher.shape != logits.shape:
                raise LossConfigError(f"classification: teacher distribution of shape {tuple(teacher.shape)} does not "
                                      f"match the logits' {tuple(logits.shape)}")
            soft = (1.0 - self.teacher) * soft + self.teacher * teacher.float()
        ce = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1)  # (N, h, w)
        share = self.rebalance_share()
        if share > 0:
            w = self.weights[nearest]
            ce = ce * (1.0 + share * (w - 1.0))
        loss = ce.mean()
        if self.reg > 0:
            loss = loss + self.reg * F.huber_loss(outputs["uv"].float(), target_uv.float(), delta=0.1)
        return loss
