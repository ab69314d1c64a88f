"""Model-only throughput through the engine's runners, backends interleaved round by round.

What one number means: images per second of ``runner.infer(gray)`` on a uint8
``(batch, 1, size, size)`` batch of natural-looking photos, asking for the chroma
output as the folder pipeline does (the graph still computes both outputs), i.e.
uint8 gray in, colour out, the exported graph the engine runs. Warm-up calls
(session/graph initialisation, TensorRT tactic caches) are excluded.

Noise: in every round each backend runs for about ``round_seconds`` (at least one
call), in a rotating order, so a burst of load from other processes hits all
backends alike. The result is the median over rounds with min and max; the
speed-up versus PyTorch is the median of the per-round ratios (same round, same
load), which is far steadier than a ratio of medians on a busy machine.
Each backend runs in its own process (``benchmarks.isolated``): in a shared one,
one backend's allocations moved another's speed by up to 25 %.
``speedup_vs_torch`` is always against the ``torch`` backend (the engine's eager
runner, channels-last on the CPU); when ``torch-nchw`` (plain NCHW eager, the
prototype's baseline) ran in the same configuration, rows also carry
``speedup_vs_torch_nchw``, computed the same way.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any


from benchmarks.common import TORCH_BASELINE, TORCH_NCHW, BackendSpec, BenchmarkError, spread
from benchmarks.contender import Contender
from engine.core.errors import ColorizerError

log = logging.getLogger(__name__)



def measure_config(contenders: list[Contender], size: int, batch: int, *, rounds: int, round_seconds: float,
                   warmup: int = 2, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Interleaved rounds for one (size, batch): ``{backend: {"rates": [...], "calls": k}}``."""
    live = [c for c in contenders if c.live]
    calls = {c.key: c.calibrate(size, batch, seed, round_seconds, warmup) for c in live}
    rates: dict[str, list[float]] = {c.key: [] for c in live}
    for r in range(rounds):
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for c in order:
            k = calls[c.key]
            rates[c.key].append(batch * k / c.timed_round(size, batch, seed, k))
        log.debug("size %d batch %d round %d: %s", size, batch, r, {k: round(v[-1], 2) for k, v in rates.items()})
    return {k: {"rates": v, "calls": calls[k]} for k, v in rates.items()}


def results_for(contenders: list[Contender], size: int, batch: int,
                measured: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON rows for one (size, batch), with the speed-up vs PyTorch of the same device (per-round ratios).

    ``speedup_vs_torch``: against the ``torch`` backend only (None without it, never against ``torch-nchw``);
    ``speedup_vs_torch_nchw`` (with min and max): only on rows whose device also has a ``torch-nchw`` result.
    """

    def baseline(name: str, device: str) -> list[float] | None:
        return next((measured[t.key]["rates"] for t in contenders
                     if t.key == name and t.device == device and t.key in measured), None)

    rows = []
    for c in contenders:
        if c.key not in measured:
            continue
        rates = measured[c.key]["rates"]
        s = spread(rates)
        torch_rates = baseline(TORCH_BASELINE, c.device)
        nchw_rates = baseline(TORCH_NCHW, c.device)
        row: dict[str, Any] = {
            "backend": c.key,
            "engine_backend": c.spec.engine_backend,
            "precision": c.spec.precision,
            "device": c.device,
            "size": size,
            "batch_size": batch,
            "images_per_s": round(s["median"], 3),
            "images_per_s_min": round(s["min"], 3),
            "images_per_s_max": round(s["max"], 3),
            "rounds": len(rates),
            "calls_per_round": measured[c.key]["calls"],
            "speedup_vs_torch": None,  # no PyTorch result on this device to compare with
            "cpu_pixels_per_call": c.info.get("cpu_pixels_per_call"),
        }
        if torch_rates is not None:
            row.update(_speedup("speedup_vs_torch", rates, torch_rates))
        if nchw_rates is not None:
            row.update(_speedup("speedup_vs_torch_nchw", rates, nchw_rates))
        if c.info.get("precision_info"):
            row["export_quality"] = c.info["precision_info"]
        if c.info.get("memory"):
            row["process_memory_mib"] = c.info["memory"]  # RSS and huge pages of the process that ran it
        rows.append(row)
    return rows


def _speedup(key: str, rates: list[float], base: list[float]) -> dict[str, float]:
    """``{key: median, key_min, key_max}`` of the per-round ratios ``rates[i] / base[i]``."""
    rs = spread([a / b for a, b in zip(rates, base) if b > 0 and math.isfinite(a / b)])
    return {key: round(rs["median"], 3), f"{key}_min": round(rs["min"], 3), f"{key}_max": round(rs["max"], 3)}


def close_all(contenders: list[Contender]) -> None:
    for c in contenders:
        if c.runner is not None:
            c.runner.deactivate()
            c.runner = None
        if c.worker is not None:
            c.worker.close()
            c.worker = None


def open_isolated(spec: BackendSpec, model: Path, device: str, threads: int | None,
                  whole_batches: bool = False) -> Contender:
    """``open_contender`` in a child process of its own (``benchmarks.isolated``)."""
    from benchmarks.isolated import Worker

    c = Contender(spec, device, model)
    worker = Worker(spec, model, device, threads, whole_batches)
    c.skipped, c.info = worker.skipped, worker.info
    if c.skipped:
        worker.close()
    else:
        c.worker = worker
    return c


def run_throughput(checkpoint: Path, specs: list[BackendSpec], sizes: list[int], batches: list[int], *,
                   device: str = "cpu", rounds: int = 5, round_seconds: float = 1.0, threads: int | None = None,
                   cache_dir: Path, onnx: dict[str, Path] | None = None,
                   whole_batches: bool = False) -> tuple[list[dict], list[dict]]:
    """Measure every backend at every (size, batch); returns (results rows, skipped backends with reasons)."""
    from benchmarks.common import artifact_for, artifact_precision_info, device_for

    if rounds < 1 or not round_seconds > 0:
        raise BenchmarkError(f"--rounds: expected >= 1 (and round seconds > 0), found {rounds}, {round_seconds}")
    contenders: list[Contender] = []
    try:
        for spec in specs:
            dev = device_for(spec, device)
            try:
                model = artifact_for(spec, checkpoint, cache_dir, onnx or {}, sizes, batches)
            except ColorizerError as e:
                contenders.append(Contender(spec, dev, skipped=str(e)))
                continue
            c = open_isolated(spec, model, dev, threads, whole_batches)
            contenders.append(c)
            if spec.artifact == "onnx":
                c.info["precision_info"] = artifact_precision_info(model)
            if c.skipped:
                log.warning("%s skipped: %s", spec.name, c.skipped)
        if not any(c.live for c in contenders):
            raise BenchmarkError("no backend can run here: " + "; ".join(f"{c.key}: {c.skipped}" for c in contenders))
        rows: list[dict[str, Any]] = []
        for size in sizes:
            for batch in batches:
                measured = measure_config(contenders, size, batch, rounds=rounds, round_seconds=round_seconds)
                for c in contenders:
                    if c.worker is not None:
                        c.info["memory"] = c.worker.memory()
                rows += results_for(contenders, size, batch, measured)
    finally:
        close_all(contenders)
    skipped = [{"backend": c.key, "precision": c.spec.precision, "device": c.device, "reason": c.skipped}
               for c in contenders if c.skipped]
    return rows, skipped

