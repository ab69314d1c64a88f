"""PyTorch eager backend: the baseline. Loads a training checkpoint (.pt) and runs the same graph as the export.

Imports torch, ``engine.net.checkpoint`` and ``engine.net.graph`` only in ``activate()``,
so the rest of the engine stays importable and runnable without torch.

A fair eager baseline: ``torch.inference_mode``, the same thread count as ONNX
Runtime (physical cores) and, on the CPU, channels-last weights and activations
(oneDNN's fast layout: more images/s than NCHW for this network on a CPU).
``channels_last`` overrides the layout: ``None`` (default) is channels-last on
the CPU and plain NCHW on CUDA, ``False`` forces NCHW everywhere (how the
prototype ran it; the benchmarks' ``torch-nchw`` baseline), ``True`` forces
channels-last on CUDA too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.core import contract
from engine.backends.base import BackendError, Runner
from engine.core.hardware import parse_device, physical_cores
from engine.core.errors import BackendUnavailable

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class TorchRunner(Runner):
    name = "torch"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | None = None,
        threads: int | None = None,
        channels_last: bool | None = None,
    ) -> None:
        """``channels_last``: memory layout of weights and activations; ``None`` (default) means channels-last
        on the CPU and NCHW on CUDA, ``False`` plain NCHW, ``True`` channels-last on any device."""
        super().__init__()
        if channels_last is not None and not isinstance(channels_last, bool):
            raise BackendError(f"torch backend: channels_last: expected True, False or None, found {channels_last!r}")
        self.model = Path(model)
        self.device = device
        self.threads = threads
        self.channels_last = channels_last
        self._torch: Any = None
        self._graph: Any = None
        self._dev: Any = None
        self._channels_last = False  # the layout in use, decided in activate()

    def _activate(self) -> None:
        if self.model.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise BackendError(f"torch backend: expected a checkpoint (.pt), found {self.model.name}")
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable("torch backend: torch is not installed; pip install torch") from e
        from engine.net.graph import ColorizeGraph
        from engine.net.checkpoint import load_model

        kind, index = parse_device(self.device)
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"torch backend: --device {self.device} but this torch has no usable CUDA "
                    f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu"
                )
            if index >= torch.cuda.device_count():
                raise BackendUnavailable(
                    f"torch backend: --device cuda:{index}, but only {torch.cuda.device_count()} CUDA device(s) are visible"
                )
            self._dev = torch.device("cuda", index)
        else:
            self._dev = torch.device("cpu")
            torch.set_num_threads(int(self.threads or physical_cores()))
        model, _ = load_model(self.model)
        self._graph = ColorizeGraph(model).eval().to(self._dev)
        self._channels_last = kind == "cpu" if self.channels_last is None else self.channels_last
        if self._channels_last:
            self._graph = self._graph.to(memory_format=torch.channels_last)
        self._torch = torch

    def _deactivate(self) -> None:
        self._graph = None

    def _infer(self, gray: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(gray).to(self._dev, non_blocking=True)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            rgb, uv = self._graph(x)
        got = {contract.OUTPUT_RGB: rgb, contract.OUTPUT_UV: uv}
        return {k: got[k].to("cpu").contiguous().numpy() for k in outputs}

    @property
    def on_gpu(self) -> bool:
        return self._dev is not None and self._dev.type == "cuda"

    def describe(self) -> str:
        dev = str(self._dev) if self._dev is not None else (self.device or "cpu")
        version = getattr(self._torch, "__version__", "?")
        layout = ("channels-last" if self._channels_last else "NCHW") if self._dev is not None else None
        where = f"{dev}, {layout}" if layout else dev
        return f"torch (PyTorch {version} eager, {where}) {self.model}"
