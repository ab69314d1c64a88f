"""One benchmark backend per child process, driven round by round from the parent.

Why: in one process the backends share an allocator and its state. PyTorch eager's speed
depends on the page size its memory comes in (transparent huge pages, docs/decisions), and
ONNX Runtime's own allocations (its arena on or off) tipped a shared process into one mode or
the other: the speed-up then measured the neighbour, not the backend. A child per backend keeps
each one in its own process, as users run them; the parent still interleaves the rounds, so
load from elsewhere hits every backend alike.

Protocol over a ``multiprocessing`` pipe (spawn context: no inherited threads or CUDA
state): the child opens its contender and answers ``("ok", (skipped, info))``, then
serves ``calibrate``, ``round`` and ``memory`` requests until ``close``. Errors come back as
``("error", message)`` and are raised in the parent as ``BenchmarkError``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.common import BackendSpec, BenchmarkError, process_memory
from engine.core.errors import ColorizerError


class Worker:
    """A contender's runner living in a child process."""

    def __init__(self, spec: BackendSpec, model: Path, device: str, threads: int | None,
                 whole_batches: bool) -> None:
        self.name = spec.name
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, spec, model, device, threads, whole_batches),
                                 name=f"bench-{spec.name}", daemon=True)
        self._proc.start()
        child.close()
        self.skipped, self.info = self._reply()

    def calibrate(self, size: int, batch: int, seed: int, round_seconds: float, warmup: int) -> int:
        """Warm up in the child; the number of calls that fill about ``round_seconds``."""
        return self._ask(("calibrate", size, batch, seed, (round_seconds, warmup)))

    def timed_round(self, size: int, batch: int, seed: int, calls: int) -> float:
        """Seconds the child took for ``calls`` inferences (timed inside the child)."""
        return self._ask(("round", size, batch, seed, calls))

    def memory(self) -> dict[str, float]:
        """The child's RSS and transparent huge pages, MiB (``common.process_memory``)."""
        return self._ask(("memory", 0, 0, 0, None))

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("close",))
            except OSError:
                pass
            self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    def _ask(self, message: tuple) -> Any:
        try:
            self._conn.send(message)
        except OSError as e:
            raise BenchmarkError(f"{self.name}: benchmark process gone ({e})") from e
        return self._reply()

    def _reply(self) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._proc.join(timeout=5)
            raise BenchmarkError(f"{self.name}: benchmark process ended (exit code {self._proc.exitcode})") from None
        if status != "ok":
            raise BenchmarkError(value)
        return value


def _serve(conn: Connection, spec: BackendSpec, model: Path, device: str, threads: int | None,
           whole_batches: bool) -> None:
    """The child: open the contender, then answer requests until ``close`` or the parent goes."""
    from benchmarks.contender import open_contender

    c = open_contender(spec, model, device, threads, whole_batches)
    c.info["pid"] = os.getpid()
    conn.send(("ok", (c.skipped, c.info)))
    if c.runner is None:
        return
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message[0] == "close":
                return
            kind, size, batch, seed, arg = message
            try:
                if kind == "memory":
                    value = process_memory()
                elif kind == "calibrate":
                    value = c.calibrate(size, batch, seed, *arg)
                else:
                    value = c.timed_round(size, batch, seed, arg)
                conn.send(("ok", value))
            except ColorizerError as e:
                conn.send(("error", f"{spec.name}: {e}"))
    finally:
        c.runner.deactivate()
