"""One backend under measurement: its runner, opened in this process (``open_contender``)
or in a child process of its own (``benchmarks.isolated``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BackendSpec, BenchmarkError
from benchmarks.photos import model_batch
from engine.backends import create_runner
from engine.backends.base import Runner
from engine.core import contract
from engine.core.errors import ColorizerError

OUTPUTS = (contract.OUTPUT_UV,)


@dataclass
class Contender:
    """One backend ready to measure: its runner (active) or why it is skipped."""

    spec: BackendSpec
    device: str
    model: Path | None = None
    runner: Runner | None = None
    skipped: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    worker: Any = None  # benchmarks.isolated.Worker: the runner lives in a child process
    _batch: tuple[tuple[int, int, int], np.ndarray] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.spec.name

    @property
    def live(self) -> bool:
        return self.runner is not None or self.worker is not None

    def calibrate(self, size: int, batch: int, seed: int, round_seconds: float, warmup: int) -> int:
        """Warm up; the number of calls on ``model_batch(batch, size, seed)`` that fill about ``round_seconds``."""
        if self.worker is not None:
            return self.worker.calibrate(size, batch, seed, round_seconds, warmup)
        return _calls_for(self.runner, self._input(size, batch, seed), round_seconds, warmup)

    def timed_round(self, size: int, batch: int, seed: int, calls: int) -> float:
        """Seconds for ``calls`` inferences of ``model_batch(batch, size, seed)``."""
        if self.worker is not None:
            return self.worker.timed_round(size, batch, seed, calls)
        x = self._input(size, batch, seed)
        t = time.perf_counter()
        for _ in range(calls):
            self.runner.infer(x, outputs=OUTPUTS)
        return time.perf_counter() - t

    def _input(self, size: int, batch: int, seed: int) -> np.ndarray:
        """The batch for this configuration, generated once (configurations come one after another)."""
        key = (size, batch, seed)
        if self._batch is None or self._batch[0] != key:
            self._batch = (key, model_batch(batch, size, seed))
        return self._batch[1]


def open_contender(spec: BackendSpec, model: Path, device: str, threads: int | None,
                   whole_batches: bool = False) -> Contender:
    """Create and activate the runner; a backend that cannot run here becomes a skipped contender.

    ``whole_batches``: no CPU micro-batching (``Runner.cpu_pixels_per_call = None``), for comparison.
    """
    c = Contender(spec, device, model)
    try:
        runner = _create_runner(spec, model, device, threads)
        if whole_batches:
            runner.cpu_pixels_per_call = None
        c.runner = runner.activate()
        c.info["describe"] = runner.describe()
        c.info["cpu_pixels_per_call"] = None if runner.on_gpu else runner.cpu_pixels_per_call
        if runner.on_gpu != device.startswith("cuda"):
            raise BenchmarkError(f"{spec.name}: asked for {device}, but it runs on {runner.describe()}")
    except ColorizerError as e:
        c.runner, c.skipped = None, str(e)
    return c


def _create_runner(spec: BackendSpec, model: Path, device: str, threads: int | None) -> Runner:
    """The engine's runner for ``spec`` (inactive); a spec with a memory layout gets a TorchRunner with it."""
    if spec.channels_last is None:
        return create_runner(spec.engine_backend, model, device=device, threads=threads)
    if spec.engine_backend != "torch":
        raise BenchmarkError(f"{spec.name}: channels_last applies to the torch backend only")
    from engine.backends.torch_eager import TorchRunner  # imports torch only in activate()

    return TorchRunner(model, device=device, threads=threads, channels_last=spec.channels_last)


def _calls_for(runner: Runner, x: np.ndarray, round_seconds: float, warmup: int) -> int:
    """Warm up, then the number of calls that fill about ``round_seconds`` (at least 1)."""
    for _ in range(max(0, warmup - 1)):
        runner.infer(x, outputs=OUTPUTS)
    t = time.perf_counter()
    runner.infer(x, outputs=OUTPUTS)
    one = max(time.perf_counter() - t, 1e-6)
    return max(1, min(1000, int(round_seconds / one)))
