"""Training losses: a small registry of pluggable ``Loss`` classes.

A loss is an ``nn.Module`` whose ``forward(outputs, target_uv)`` takes the dict
of one member returned by ``ColorizerNet.forward_train`` (always ``"uv"``, plus head-specific
tensors such as ``"logits"``) and the target chroma ``(N, 2, H, W)`` in colour-spec
units, and returns a scalar tensor. Around that, the trainer calls, in order:

1. ``build_loss(name, options)`` -> an instance (``options`` come from
   ``--loss-option KEY=VALUE`` and are stored in the train config);
2. on a fresh run ``loss.prepare(train_set)`` (a ``train.data.TrainSet``: ``len()``,
   ``image(i)``, ``sample_pixels(n, seed)``), e.g. to compute a chroma-bin prior;
   on ``--resume`` instead ``loss.load_prepared_state(checkpoint["loss_state"])``
   with what ``prepared_state()`` returned before (plain Python / numpy / tensors);
3. ``loss.head_config()`` -> ``(head_name, head_options)`` for ``ModelConfig``,
   so a loss declares the model head it needs (``"regression"`` by default);
4. ``loss.to(device)``, then every step ``loss.set_step(step)`` (0-based; a
   function of the step only, so resumed runs match) and ``loss(outputs, target_uv)``.

Register a new loss with ``@register_loss("name")`` on a ``Loss`` subclass; a
loss living in its own module is listed in ``PLUGINS`` so that it is imported
(and registered) before the registry is read.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.errors import ColorizerError


class LossConfigError(ColorizerError, ValueError):
    """Unknown loss name or bad loss options."""


class Loss(nn.Module):
    """Base class: regression head, nothing to prepare; subclasses implement ``forward``."""

    name: str = ""
    # True when ``forward`` uses ``outputs["teacher_probs"]`` (``cli.py train --teacher``)
    accepts_teacher: bool = False

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = dict(options)

    def prepare(self, train_set: Any) -> None:
        """Compute data-dependent state (e.g. a class prior) from the training set. Default: nothing."""

    def prepared_state(self) -> dict[str, Any]:
        """What ``prepare`` computed, stored in checkpoints so ``--resume`` need not redo it."""
        return {}

    def load_prepared_state(self, state: dict[str, Any]) -> None:
        """Restore what ``prepared_state`` returned."""

    def head_config(self) -> tuple[str, dict[str, Any]]:
        """The model head this loss trains: ``(ModelConfig.head, ModelConfig.head_options)``."""
        return "regression", {}

    def set_step(self, step: int) -> None:
        """Called before every training step with its 0-based index (e.g. for loss schedules)."""

    def forward(self, outputs: dict[str, torch.Tensor], target_uv: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


LOSSES: dict[str, type[Loss]] = {}
PLUGINS = ("train.loss_classification",)


def register_loss(name: str) -> Callable[[type[Loss]], type[Loss]]:
    def deco(cls: type[Loss]) -> type[Loss]:
        cls.name = name
        LOSSES[name] = cls
        return cls

    return deco


def _load_plugins() -> None:
    for module in PLUGINS:
        importlib.import_module(module)


def available_losses() -> list[str]:
    _load_plugins()
    return sorted(LOSSES)


def build_loss(name: str, options: dict[str, Any] | None = None) -> Loss:
    _load_plugins()
    if name not in LOSSES:
        raise LossConfigError(f"--loss: expected one of {available_losses()}, found {name!r}")
    try:
        return LOSSES[name](**(options or {}))
    except TypeError as e:
        raise LossConfigError(f"--loss {name}: bad options {options} ({e})") from e


def parse_loss_options(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["delta=0.05", "mode=x"]`` -> ``{"delta": 0.05, "mode": "x"}`` (int, float, bool or string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LossConfigError(f"--loss-option: expected KEY=VALUE, found {item!r}")
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        out[key.strip()] = value
    return out


def _uv(outputs: dict[str, torch.Tensor], target_uv: torch.Tensor) -> torch.Tensor:
    uv = outputs["uv"]
    if uv.shape != target_uv.shape:
        raise ValueError(f"loss: prediction {tuple(uv.shape)} and target {tuple(target_uv.shape)} differ in shape")
    return uv.float()


@register_loss("huber")
class HuberLoss(Loss):
    """Huber (smooth L1) on U and V, mean over pixels: quadratic below ``delta``, linear above.

    ``delta`` is in colour-spec chroma units (U within ±0.436, V within ±0.615);
    the default 0.1 keeps small errors quadratic and stops large ones (an object
    whose colour is ambiguous) from dominating the gradient.
    """

    def __init__(self, delta: float = 0.1) -> None:
        if not delta > 0:
            raise LossConfigError(f"huber: delta must be > 0, found {delta}")
        super().__init__(delta=float(delta))
        self.delta = float(delta)

    def forward(self, outputs: dict[str, torch.Tensor], target_uv: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(_uv(outputs, target_uv), target_uv.float(), delta=self.delta)


@register_loss("mse")
class MSELoss(Loss):
    """Mean squared error on U and V (the classic regression loss; tends to mute colours)."""

    def forward(self, outputs: dict[str, torch.Tensor], target_uv: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(_uv(outputs, target_uv), target_uv.float())
