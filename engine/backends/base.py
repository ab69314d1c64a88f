"""The runner interface every backend implements (Polygraphy style), and small shared helpers.

    with OrtRunner("model.onnx") as runner:          # activate() ... deactivate()
        out = runner.infer(gray)                       # gray: uint8 (N, 1, H, W)
        out["rgb"]  # uint8 (N, 3, H, W)
        out["uv"]   # float32 (N, 2, H, W)

Nothing here imports a heavy package; backends import theirs in ``activate()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from engine.core import contract
from engine.core.errors import ColorizerError


class BackendError(ColorizerError):
    """A backend was given something it cannot run, or inference failed."""


class Runner(ABC):
    """One model on one device. Not thread-safe: one thread calls ``infer``.

    On a CPU, ``infer`` runs a large batch as consecutive calls of at most
    ``cpu_pixels_per_call`` pixels (at least one image): a CNN's activations for a
    whole batch spill out of the CPU caches, so calls of about one image give more
    images/s, for PyTorch and ONNX Runtime alike (see docs/decisions/008-pipeline-limits.md).
    Batches stay whole on a GPU. ``None`` disables it.

    ``size_multiple``: H and W the artifact takes must be multiples of it (sidecar,
    ``engine.core.contract.size_multiple``); ``infer`` pads other sizes at the bottom and
    right by repeating the edge, runs, and crops the outputs back.
    """

    name = "base"
    cpu_pixels_per_call: int | None = 1 << 16  # 65,536 pixels: one image of 224-256 px, four of 128 px
    size_multiple: int = 1

    def __init__(self) -> None:
        self.is_active = False

    # -- lifecycle
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.is_active = False
            self._deactivate()

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # -- inference
    def infer(self, gray: np.ndarray, outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """uint8 ``(N, 1, H, W)`` -> ``{"rgb": uint8 (N,3,H,W), "uv": float32 (N,2,H,W)}`` on the host.

        ``outputs``: the names wanted (default both); a backend may skip fetching the others.
        """
        if not self.is_active:
            raise BackendError(f"{self.name}: infer() called before activate()")
        wanted = tuple(outputs) if outputs else (contract.OUTPUT_RGB, contract.OUTPUT_UV)
        unknown = set(wanted) - {contract.OUTPUT_RGB, contract.OUTPUT_UV}
        if unknown:
            raise BackendError(f"{self.name}: outputs: expected 'rgb' and/or 'uv', found {sorted(unknown)}")
        gray = check_input(gray)
        shape = gray.shape
        m = self.size_multiple
        pad_h, pad_w = -shape[2] % m, -shape[3] % m
        if pad_h or pad_w:
            gray = np.pad(gray, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
        n, _, h, w = gray.shape
        step = self.images_per_call(h, w) or n
        if n <= step:
            out = self._infer(gray, wanted)
        else:
            chunks = [gray[i : i + step] for i in range(0, n, step)]
            parts = [check_output(part, chunk.shape, self.name, wanted)
                     for part, chunk in zip(self._infer_chunks(chunks, wanted), chunks)]
            out = {k: np.concatenate([part[k] for part in parts]) for k in wanted}
        if pad_h or pad_w:
            out = check_output(out, gray.shape, self.name, wanted)
            out = {k: np.ascontiguousarray(v[:, :, : shape[2], : shape[3]]) for k, v in out.items()}
        return check_output(out, shape, self.name, wanted)

    def images_per_call(self, height: int, width: int) -> int | None:
        """How many ``height x width`` images one model call takes at most here; None: a whole batch (GPU)."""
        if not self.cpu_pixels_per_call or self.on_gpu:
            return None
        m = self.size_multiple
        return max(1, self.cpu_pixels_per_call // max(1, contract.round_up(height, m) * contract.round_up(width, m)))

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, gray: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]: ...

    def _infer_chunks(self, chunks: list[np.ndarray], outputs: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
        """The calls of one CPU batch, results in order; one after another here (ONNX Runtime runs them side by side)."""
        return [self._infer(chunk, outputs) for chunk in chunks]

    def describe(self) -> str:
        """One line: backend, what really runs (provider / device), model file."""
        return self.name

    @property
    def on_gpu(self) -> bool:
        """Whether inference runs on a GPU (decides how many I/O threads the pipeline uses)."""
        return False

    @property
    def max_batch(self) -> int | None:
        """Largest batch the artifact accepts (a TensorRT profile), None when unlimited."""
        return None


def check_input(gray: np.ndarray) -> np.ndarray:
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 4 or gray.shape[1] != 1:
        raise BackendError(f"input {contract.INPUT_NAME!r}: expected uint8 (N, 1, H, W), found {gray.dtype} {gray.shape}")
    return np.ascontiguousarray(gray)


def check_output(
    out: dict[str, np.ndarray], in_shape: tuple[int, ...], who: str, wanted: tuple[str, ...]
) -> dict[str, np.ndarray]:
    n, _, h, w = in_shape
    spec = {contract.OUTPUT_RGB: ((n, 3, h, w), np.uint8), contract.OUTPUT_UV: ((n, 2, h, w), np.float32)}
    for key in wanted:
        shape, dtype = spec[key]
        a = out.get(key)
        if a is None or tuple(a.shape) != shape or a.dtype != dtype:
            found = "nothing" if a is None else f"{a.dtype} {tuple(a.shape)}"
            raise BackendError(f"{who}: output {key!r}: expected {np.dtype(dtype)} {shape}, found {found}")
    return {k: out[k] for k in wanted}


def check_sidecar_io(meta: dict[str, Any], artifact: Any) -> None:
    """When the sidecar records I/O names/dtypes, they must be the contract's."""
    inputs, outputs = meta.get("inputs"), meta.get("outputs")
    names_in = _names(inputs)
    names_out = _names(outputs)
    if names_in is not None and contract.INPUT_NAME not in names_in:
        raise BackendError(f"{artifact}: sidecar inputs: expected {contract.INPUT_NAME!r}, found {sorted(names_in)}")
    if names_out is not None:
        missing = {contract.OUTPUT_RGB, contract.OUTPUT_UV} - set(names_out)
        if missing:
            raise BackendError(
                f"{artifact}: sidecar outputs: expected 'rgb' and 'uv', found {sorted(names_out)}; re-export the model"
            )


def _names(spec: Any) -> set[str] | None:
    if isinstance(spec, dict):
        return set(spec)
    if isinstance(spec, list):
        return {s.get("name") if isinstance(s, dict) else str(s) for s in spec}
    return None
