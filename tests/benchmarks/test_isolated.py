"""benchmarks/isolated.py: each throughput backend in a child process of its own."""

from __future__ import annotations

import os

import numpy as np

from benchmarks import common, measure


def test_backend_runs_in_its_own_process_and_closes(tiny_checkpoint):
    spec = common.parse_backends("torch")[0]
    c = measure.open_isolated(spec, tiny_checkpoint, "cpu", threads=1)
    try:
        assert c.skipped is None and c.runner is None and c.live
        assert c.info["pid"] != os.getpid() and "torch" in c.info["describe"]
        calls = c.calibrate(32, 2, 0, 0.01, 1)
        seconds = c.timed_round(32, 2, 0, calls)
        assert calls >= 1 and np.isfinite(seconds) and seconds > 0
        process = c.worker._proc
    finally:
        measure.close_all([c])
    assert c.worker is None and not process.is_alive() and process.exitcode == 0


def test_a_backend_that_cannot_open_is_skipped_with_its_reason(tmp_path):
    spec = common.parse_backends("onnxruntime")[0]
    c = measure.open_isolated(spec, tmp_path / "missing.onnx", "cpu", threads=1)
    assert c.skipped and "missing.onnx" in c.skipped and not c.live and c.worker is None
