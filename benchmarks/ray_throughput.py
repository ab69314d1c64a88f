"""Images/s of ``colorize-dir --ray`` with K workers against the local path, on one generated folder.

    .venv/bin/python benchmarks/ray_throughput.py --count 48 --photo 1024x768 --workers 1,2 \\
        --json benchmarks/results/ray_throughput.json

Every run colorizes the same folder of gray JPEGs into a new output folder with the same
model and options: first the local pipeline (``Colorizer.colorize_dir``), then ``RayColorizer``
with each worker count, on a local Ray instance (or the one this process has). Each result
has the run's own summary rate (model/actor start-up included, as a user sees it) and the
steady rate between the first and the last output written (start-up excluded), and the CPU
seconds per photo of this process and all its descendants (Ray's processes included): on a machine
shared with other jobs the rates move with the load, the CPU per photo much less. Ray's own
start-up (``ray.init``) is reported separately. Without ``--model``: ``models/colorizer.onnx``,
or else a randomly initialised ``seed`` model (same compute as a trained one) exported once
into the work folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.photos import photo_folder  # noqa: E402
from engine.core.errors import ColorizerError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_ONNX = ROOT / "models" / "colorizer.onnx"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=48, help="photos in the generated folder")
    p.add_argument("--photo", default="1024x768", help="photo size WxH")
    p.add_argument("--size", type=int, default=256, help="model input size (--size of colorize-dir)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    p.add_argument("--model", type=Path, default=None, help="an .onnx model (default: see above)")
    p.add_argument("--work", type=Path, default=None, help="folder for photos, model and outputs (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local instance")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "export", "engine", "ray.data"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        data = run(args)
    except ColorizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in data["results"]:
        print(f"{r['mode']:>14}: {r['images_per_second']:7.2f} img/s over the run ({r['seconds']:.1f} s), "
              f"{r['steady_images_per_second']:7.2f} img/s steady, {r['cpu_ms_per_image']:6.0f} ms CPU/image, "
              f"{r['failed']} failed")
    print(f"ray.init: {data['ray_init_seconds']:.1f} s; load average {data['machine']['load_average']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        width, height = (int(v) for v in args.photo.lower().split("x"))
        workers = [int(v) for v in args.workers.split(",") if v.strip()]
    except ValueError as e:
        raise ColorizerError(f"--photo WxH and --workers K,K,...: {e}") from e
    if args.count < 1 or not workers or min(workers) < 1:
        raise ColorizerError("--count and every --workers value must be >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="ray-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    photos = photo_folder(work / "photos", args.count, width, height)  # the shared benchmark photos
    model = args.model or (BUNDLED_ONNX if BUNDLED_ONNX.is_file() else random_model(work / "model"))
    machine = machine_state()
    results = [measure_local(model, photos, work, args)]
    ray, init_seconds = start_ray(args.ray_address)
    for k in workers:
        results.append(measure_ray(model, photos, work, args, k))
    machine["load_average_after"] = _load()
    local = results[0]
    for r in results[1:]:
        r["vs_local_run"] = _sig(r["images_per_second"] / local["images_per_second"])
        r["vs_local_steady"] = _sig(r["steady_images_per_second"] / local["steady_images_per_second"])
    return {
        "benchmark": "ray_throughput",
        "machine": machine,
        "ray_version": ray.__version__,
        "ray_init_seconds": round(init_seconds, 2),
        "config": {"count": args.count, "photo": [width, height], "size": args.size, "batch_size": args.batch_size,
                   "model": str(model), "workers": workers},
        "results": results,
    }


# ----------------------------------------------------------------------------- inputs


def random_model(folder: Path) -> Path:
    """A randomly initialised ``seed`` model exported to ONNX once (needs torch: the train extra)."""
    out = folder / "random-seed.onnx"
    if out.is_file():
        return out
    import torch

    from export.to_onnx import export_checkpoint
    from engine.net.checkpoint import save_checkpoint
    from engine.net.model import ColorizerNet, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.from_dict({"width": "seed", "width_mult": 1.0, "head": "regression", "head_options": {}})
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "random-seed.pt", {"model_config": config.to_dict(),
                                                "model": ColorizerNet(config).state_dict(), "step": 0})
    export_checkpoint(folder / "random-seed.pt", out, precision="fp32", force=True)  # a stale sidecar may remain
    return out


def machine_state() -> dict[str, Any]:
    return {"logical_cpus": os.cpu_count(), "load_average": _load(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant figures: a rate or ratio of a very slow run stays positive, not 0.0."""
    return float(f"{x:.{digits}g}")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- runs


class _TreeCPU:
    """CPU seconds (user + system) of this process and all its descendants (Ray's processes when this
    process started Ray) over a run: sampled every 0.25 s, so processes that exit during the run count too.
    A measure of the work done per photo that other jobs on the machine do not change (unlike img/s)."""

    def __init__(self) -> None:
        import threading

        self.base: dict[tuple[int, float], float] = {}
        self.last: dict[tuple[int, float], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self, into: dict[tuple[int, float], float]) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                into[(proc.pid, proc.create_time())] = t.user + t.system
            except psutil.Error:
                continue

    def _loop(self) -> None:
        while not self.stop.wait(0.25):
            self._sample(self.last)

    def __enter__(self) -> "_TreeCPU":
        self._sample(self.base)
        self.last.update(self.base)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._sample(self.last)

    @property
    def seconds(self) -> float:
        return sum(v - self.base.get(k, 0.0) for k, v in self.last.items())


class _Clock:
    """Progress callback: when the first and the last output were written."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0

    def __call__(self, p: Any) -> None:
        if p.event == "colorized":
            now = time.perf_counter()
            self.first = self.first or now
            self.last, self.count = now, self.count + 1

    def steady(self) -> float:
        if self.count < 2 or self.last is None or self.first is None or self.last <= self.first:
            return 0.0
        return (self.count - 1) / (self.last - self.first)


def _result(mode: str, summary: Any, clock: _Clock, startup: float, cpu: _TreeCPU, **extra: Any) -> dict[str, Any]:
    return {"mode": mode, **extra, "colorized": summary.colorized, "failed": summary.failed,
            "seconds": round(summary.seconds, 3), "startup_seconds": round(startup, 3),
            "images_per_second": _sig(summary.images_per_second),
            "steady_images_per_second": _sig(clock.steady()),
            "cpu_seconds": round(cpu.seconds, 2),
            "cpu_ms_per_image": round(1000 * cpu.seconds / max(1, summary.colorized), 1),
            "stages": summary.stages, "backend": summary.backend}


def measure_local(model: Path, photos: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from engine.api import Colorizer

    t0 = time.perf_counter()
    with _TreeCPU() as cpu, Colorizer(model, size=args.size, batch_size=args.batch_size) as c:
        startup = time.perf_counter() - t0
        clock = _Clock()
        summary = c.colorize_dir(photos, _fresh(work, "out-local"), progress=clock)
    return _result("local", summary, clock, startup, cpu)


def start_ray(address: str | None) -> tuple[Any, float]:
    from engine.ray_data import import_ray

    ray = import_ray("benchmarks/ray_throughput.py")
    t0 = time.perf_counter()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return ray, time.perf_counter() - t0


def measure_ray(model: Path, photos: Path, work: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    import ray

    from engine.ray_io import RayColorizer

    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_worker = max(0.25, min(1.0, (cpus - 1) / workers))  # leave one CPU to the decode and write tasks
    t0 = time.perf_counter()
    with _TreeCPU() as cpu, RayColorizer(model, size=args.size, batch_size=args.batch_size, num_workers=workers,
                                         cpus_per_worker=per_worker) as rc:
        startup = time.perf_counter() - t0
        clock = _Clock()
        summary = rc.colorize_dir(photos, _fresh(work, f"out-ray-{workers}"), progress=clock)
    return _result(f"ray-{workers}-workers", summary, clock, startup, cpu, workers=workers,
                   cpus_per_worker=per_worker)


def _fresh(work: Path, name: str) -> Path:
    return work / f"{name}-{time.time_ns()}"  # a new output folder: nothing skipped


if __name__ == "__main__":
    sys.exit(main())
