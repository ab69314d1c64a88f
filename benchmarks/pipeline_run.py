"""End-to-end ``colorize-dir`` benchmark: one run per subprocess, model-only measured in the same process.

A run (``worker``) opens ``engine.api.Colorizer`` (the code the CLI runs), then:

1. model only: ``runner.infer`` on natural-looking batches of the batch size and the
   input shape colorize-dir gives the model for these photos (``Colorizer.input_shape``:
   224x128 for 1080p at 224 px with tight padding), for about ``model_seconds`` after a
   warm-up; with tight padding also at ``size x size``, throughput.py's input;
2. ``Colorizer.colorize_dir(folder, temp output, overwrite=True)`` over the generated
   1080p JPEGs: images/s from its ``RunSummary``, and time per stage
   (``RunSummary.stages``: decode, resize, infer, compose, encode, write);
3. model only again; steps 2-3 ``repeats`` times (folder runs interleaved with
   model-only phases, as the throughput benchmark interleaves backends);

and reports the pipeline's share of the model-only images/s (each folder run over the
mean of the model-only phases around it; the median run when repeated), what the cores
allow from the CPU time a photo costs (``cpu_limit``), how busy the cores and each kind of
thread were (``busy``), the process's peak RSS (``resource.getrusage``; each run is its own process so runs do not
contaminate each other), plus the RSS sampled during the folder run (psutil).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError, process_memory, shown_paths
from engine.core.hardware import allowed_cpus

MIB = 2**20


class _RssSampler:
    """RSS of this process sampled every ``period`` seconds in a thread (psutil): max overall and per half.

    A leak shows as a second half whose maximum keeps climbing above the first half's;
    queues filling up show as a first-half rise that then stays flat.
    """

    def __init__(self, period: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._period = period
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self.samples = [(0.0, self._proc.memory_info().rss)]
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.samples.append((time.perf_counter() - self._t0, self._proc.memory_info().rss))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._t0, self._proc.memory_info().rss))
        half = self.samples[-1][0] / 2
        first = [r for t, r in self.samples if t <= half]
        second = [r for t, r in self.samples if t > half] or first
        return {"start_mib": self.samples[0][1] / MIB, "max_mib": max(r for _, r in self.samples) / MIB,
                "end_mib": self.samples[-1][1] / MIB, "first_half_max_mib": max(first) / MIB,
                "second_half_max_mib": max(second) / MIB}


def _model_only(runner: Any, batch: int, shape: tuple[int, int], seconds: float, warmup: int) -> dict[str, float]:
    from benchmarks.contender import OUTPUTS
    from benchmarks.photos import model_batch

    x = model_batch(batch, shape, seed=1)
    for _ in range(warmup):
        runner.infer(x, outputs=OUTPUTS)
    rates, t_start, cpu_start = [], time.perf_counter(), time.process_time()
    while not rates or time.perf_counter() - t_start < seconds:
        t = time.perf_counter()
        runner.infer(x, outputs=OUTPUTS)
        rates.append(batch / (time.perf_counter() - t))
    elapsed = time.perf_counter() - t_start
    return {"images": batch * len(rates), "seconds": elapsed, "batches": len(rates),
            "cpu_seconds": time.process_time() - cpu_start}  # all of the process's threads


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One benchmark run in this process (see the module docstring). ``cfg`` comes from ``run_config``."""
    from engine.api import Colorizer

    io_threads = tuple(cfg["io_threads"]) if cfg.get("io_threads") else None
    repeats = max(1, int(cfg.get("repeats", 1)))
    out_dir = Path(tempfile.mkdtemp(prefix="colorizer-bench-out-", dir=cfg.get("out_root")))
    phases: list[dict[str, float]] = []  # model only at the shape colorize-dir feeds the model
    square: list[dict[str, float]] = []  # model only at size x size (throughput.py's input), when that differs
    runs, run_cpu = [], []
    size, batch, seconds = cfg["size"], cfg["batch_size"], cfg["model_seconds"]
    try:
        with Colorizer(cfg["model"], backend=cfg["engine_backend"], size=size, batch_size=batch,
                       device=cfg["device"], threads=cfg.get("threads"), io_threads=io_threads,
                       io_nice=cfg.get("io_nice"), padding=cfg.get("padding", "auto")) as c:
            shape = c.input_shape(*cfg["photo_shape"])

            def model_only(warmup: int) -> None:
                if shape != (size, size):
                    square.append(_model_only(c.runner, batch, (size, size), seconds, warmup))
                phases.append(_model_only(c.runner, batch, shape, seconds, warmup))

            model_only(warmup=2)
            for _ in range(repeats):  # model only, folder, model only, folder, ..., model only
                sampler, cpu0 = _RssSampler(), time.process_time()
                summary = c.colorize_dir(cfg["folder"], out_dir, overwrite=True)
                run_cpu.append(time.process_time() - cpu0)  # every thread of the process during the folder run
                runs.append((summary, sampler.stop()))
                model_only(warmup=0)
            describe, (readers, writers), io_nice, padding = shown_paths(c.describe()), c.io_threads, c.io_nice, c.padding
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    for summary, _ in runs:
        if summary.failed or summary.colorized != cfg["files"]:
            raise BenchmarkError(f"colorize-dir: {summary.line()}; first failures: {summary.failures[:3]}")
    model_ips, rates = _rates(phases)
    square_ips, square_rates = _rates(square or phases)
    shares = [_share(summary.images_per_second, rates, i) for i, (summary, _) in enumerate(runs)]
    order = sorted(range(len(runs)), key=lambda i: shares[i])
    median = order[len(order) // 2]
    summary, rss = runs[median]  # the median run's numbers
    stages = {
        name: {
            "ms_per_photo": 1000 * st["seconds"] / max(1, st["photos"]),
            "cpu_ms_per_photo": 1000 * st["cpu_seconds"] / max(1, st["photos"]),
        }
        for name, st in summary.stages.items()
    }
    return {
        "backend": cfg["backend"],
        "precision": cfg["precision"],
        "device": cfg["device"],
        "size": size,
        "batch_size": batch,
        "files": summary.colorized,
        "runner": describe,
        "io_threads": [readers, writers],
        "io_nice": io_nice,
        "padding": padding,
        "model_input": list(shape),
        "repeats": repeats,
        "images_per_s": summary.images_per_second,
        "images_per_s_all": [r.images_per_second for r, _ in runs],
        "seconds": summary.seconds,
        "model_only_images_per_s": model_ips,
        "model_only_images_per_s_min": min(rates),
        "model_only_images_per_s_max": max(rates),
        "share_of_model_only": shares[median],
        "share_of_model_only_min": min(shares),
        "share_of_model_only_max": max(shares),
        "square_model_only_images_per_s": square_ips,
        "share_of_square_model_only": _share(summary.images_per_second, square_rates, median),
        "stages": stages,
        "busy": busy(summary.stages, summary.seconds, (readers, writers)),
        **cpu_limit(phases, stages, summary.images_per_second, model_ips),
        "cpu_busy": run_cpu[median] / (allowed_cpus() * max(summary.seconds, 1e-9)),
        "run_cpu_ms_per_photo": 1000 * run_cpu[median] / max(1, summary.colorized),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "pipeline_rss_mib": rss,
        "process_memory_mib": process_memory(),  # at the end: RSS and transparent huge pages
    }


def cpu_limit(phases: list[dict[str, float]], stages: dict[str, dict[str, float]], images_per_s: float,
              model_ips: float) -> dict[str, Any]:
    """What the machine's cores allow, from the CPU time one photo costs.

    The model's CPU per photo is the process's CPU time over the model-only phases (every
    runtime thread; a GPU runtime's host side), the I/O's the reader and writer stages'
    thread CPU time in the folder run. With ``cpus`` cores the pipeline cannot beat
    ``cpus / (model + I/O)`` photos/s, nor the model-only rate: ``attainable`` is the
    smaller, and ``share_of_attainable`` how close colorize-dir gets to it. On 2 cores the
    model and the JPEG work share the same cores; on a GPU server the first term is the
    CPU's decode/encode capacity.
    """
    cpus = allowed_cpus()
    model_ms = 1000 * sum(p["cpu_seconds"] for p in phases) / sum(p["images"] for p in phases)
    io_ms = sum(st["cpu_ms_per_photo"] for name, st in stages.items() if name != "infer")
    cores_allow = cpus * 1000 / (model_ms + io_ms)
    attainable = min(model_ips, cores_allow)
    return {"cpu_ms_per_photo": {"model": model_ms, "io": io_ms}, "cpus": cpus,
            "cores_allow_images_per_s": cores_allow, "attainable_images_per_s": attainable,
            "share_of_attainable": images_per_s / attainable}


def busy(stages: dict[str, dict[str, float]], seconds: float, io_threads: tuple[int, int]) -> dict[str, float]:
    """The share of a folder run's wall time each kind of thread spent working (``RunSummary.stages``).

    ``inference``: the one inference thread inside model calls (on a GPU: about how busy the GPU
    was kept, copies and the wait included); ``readers``: decode + resize over all reader
    threads; ``writers``: compose + encode + write over all writer threads. The stage that is
    near 1 is the one that limits the run; none near 1 means the stages wait on each other.
    """
    readers, writers = io_threads
    spent = {name: st["seconds"] for name, st in stages.items()}
    seconds = max(seconds, 1e-9)
    return {
        "inference": spent.get("infer", 0.0) / seconds,
        "readers": (spent.get("decode", 0.0) + spent.get("resize", 0.0)) / (max(1, readers) * seconds),
        "writers": sum(spent.get(k, 0.0) for k in ("compose", "encode", "write")) / (max(1, writers) * seconds),
    }


def busy_text(b: dict[str, float]) -> str:
    """``inference 97% / readers 41% / writers 63%``."""
    return " / ".join(f"{k} {v:.0%}" for k, v in b.items())


def busy_checks(runs: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """On a GPU: the pipeline keeps its limiting stage busy (>= ``target`` of the run).

    Either the inference thread (so the GPU) is busy, or the CPU side is (readers or
    writers: then more ``--io-threads``, not a faster model, would help). Every stage
    below the target means the stages wait on each other (a stall, the GIL, a sync).
    """
    checks = []
    for r in runs:
        if not str(r["device"]).startswith("cuda") or "busy" not in r:
            continue
        stage, value = max(r["busy"].items(), key=lambda kv: kv[1])
        limit = "the GPU" if stage == "inference" else f"the CPU ({stage}; more --io-threads would help)"
        checks.append(_check(f"{r['backend']} {r['size']}px batch {r['batch_size']}, {r['files']} files: the limiting "
                             f"stage busy >= {target:.0%} of the run ({busy_text(r['busy'])}; limit: {limit})",
                             value, target))
    return checks


def _rates(phases: list[dict[str, float]]) -> tuple[float, list[float]]:
    """Model-only images/s over all ``phases`` together, and per phase."""
    total = sum(p["images"] for p in phases) / sum(p["seconds"] for p in phases)
    return total, [p["images"] / p["seconds"] for p in phases]


def _share(images_per_s: float, rates: list[float], i: int) -> float:
    """Folder run ``i`` over the model-only phases just before and after it (same machine load)."""
    return images_per_s / ((rates[i] + rates[i + 1]) / 2)


def run_config(cfg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``worker(cfg)`` in a fresh Python process; returns its result (raises ``BenchmarkError`` on failure)."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.pipeline", "--worker", json.dumps(cfg)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchmarkError(f"pipeline run {cfg['backend']} {cfg['size']}px x{cfg['files']} timed out") from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BenchmarkError(f"pipeline run {cfg['backend']} {cfg['size']}px x{cfg['files']} failed "
                             f"(exit {proc.returncode}): {' | '.join(tail)}")
    return json.loads(lines[-1])


def memory_checks(runs: list[dict[str, Any]], rss_target_gib: float, flat_tolerance: float) -> list[dict[str, Any]]:
    """Peak RSS at 512 px batch 8 under the target; flat memory within the largest run (second half vs first)
    and from the smallest to the largest file count."""
    checks = []
    for r in runs:
        if r["size"] == 512 and r["batch_size"] == 8:
            gib = r["peak_rss_mib"] / 1024
            checks.append({"target": f"{r['backend']} 512px batch 8, {r['files']} files: peak RSS < {rss_target_gib} GiB",
                           "value": gib, "threshold": rss_target_gib,
                           "status": "PASS" if gib < rss_target_gib else "FAIL"})
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["backend"], r["device"], r["size"], r["batch_size"]), []).append(r)
    for (backend, _, size, batch), rs in groups.items():
        large = max(rs, key=lambda r: r["files"])
        m = large["pipeline_rss_mib"]
        limit = m["first_half_max_mib"] * (1 + flat_tolerance / 2) + 32
        checks.append({
            "target": f"{backend} {size}px batch {batch}, {large['files']} files: RSS flat during the run "
                      f"(max {m['first_half_max_mib']:.0f} MiB in the first half, {m['second_half_max_mib']:.0f} in the second)",
            "value": m["second_half_max_mib"] / m["first_half_max_mib"], "threshold": 1 + flat_tolerance / 2,
            "status": "PASS" if m["second_half_max_mib"] <= limit else "FAIL"})
        if len({r["files"] for r in rs}) < 2:
            continue
        small = min(rs, key=lambda r: r["files"])
        limit = small["peak_rss_mib"] * (1 + flat_tolerance) + 64
        checks.append({
            "target": f"{backend} {size}px batch {batch}: peak RSS flat from {small['files']} to {large['files']} files "
                      f"({small['peak_rss_mib']:.0f} -> {large['peak_rss_mib']:.0f} MiB)",
            "value": large["peak_rss_mib"] / small["peak_rss_mib"], "threshold": 1 + flat_tolerance,
            "status": "PASS" if large["peak_rss_mib"] <= limit else "FAIL"})
    return checks


def share_checks(runs: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """colorize-dir at >= ``target`` of model-only images/s (checked on every CPU run at 224 px batch 8).

    Two checks per run when colorize-dir feeds the model tight inputs (224x128 for a 16:9 photo):
    against the model at those same inputs (what the I/O costs), and against the model at
    224x224 (the throughput table's number, what a user compares with). Then, on those runs
    and on every GPU run, the share of what the cores allow (``cpu_limit``): whether the
    pipeline loses anything beyond the CPU time its work costs.
    """
    checks = []
    for r in runs:
        cpu_run = r["size"] == 224 and r["batch_size"] == 8 and r["device"] == "cpu"
        if cpu_run:
            checks += _model_share_checks(r, target)
        if "share_of_attainable" in r and (cpu_run or str(r["device"]).startswith("cuda")):
            cpu = r["cpu_ms_per_photo"]
            checks.append(_check(
                f"{r['backend']} {r['size']}px batch {r['batch_size']}, {r['files']} files: colorize-dir >= "
                f"{target:.0%} of what the cores allow (the smaller of model-only {r['model_only_images_per_s']:.1f} "
                f"img/s and {r['cpus']} cores / ({cpu['model']:.1f} ms model + {cpu['io']:.1f} ms I/O CPU per photo)"
                f" = {r['cores_allow_images_per_s']:.1f} img/s)", r["share_of_attainable"], target))
    return checks


def _model_share_checks(r: dict[str, Any], target: float) -> list[dict[str, Any]]:
    h, w = r.get("model_input") or (r["size"], r["size"])
    name = f"{r['backend']} 224px batch 8, {r['files']} files: colorize-dir >= {target:.0%} of model-only"
    checks = [_check(f"{name} at its own input ({w}x{h})", r["share_of_model_only"], target)]
    if (h, w) != (r["size"], r["size"]) and "share_of_square_model_only" in r:
        checks.append(_check(f"{name} at {r['size']}x{r['size']} (throughput.py's input)",
                             r["share_of_square_model_only"], target))
    return checks


def _check(target: str, value: float, threshold: float) -> dict[str, Any]:
    return {"target": target, "value": value, "threshold": threshold, "status": "PASS" if value >= threshold else "FAIL"}
