"""Colorize on a Ray cluster: the actor pool that runs the model, and ``colorize_dataset`` for Ray Datasets.

    import ray
    from engine.ray_data import colorize_dataset

    ds = ray.data.from_items([{"image": gray_u8}, ...])          # any Dataset with a column of image arrays
    out = colorize_dataset(ds, model="models/colorizer.onnx", column="image", num_workers=4)
    for row in out.iter_rows():
        row["colorized"]       # uint8 (H, W, 3) (RGBA for inputs with alpha), full resolution, as Colorizer.colorize
        row["colorize_error"]  # "" or the reason this row failed (its "colorized" is then an empty (0, 0, 3) array)

Stages: prepare (luma, fit: tasks) -> infer (``map_batches`` over an ``ActorPoolStrategy`` pool;
each actor loads the engine once through ``engine.backends``: TensorRT on a GPU node with a
``.plan``, else ONNX Runtime) -> compose (tasks). ``engine.ray_io`` runs folders on the same actor.

Worker deaths are retried, never forever: a ledger actor counts, per row and stage, the attempts in
flight in a process that died. After a death the batch is redone one row at a time, so only the row
that kills the worker is charged; a row charged ``max_worker_deaths`` times fails with a reason.
Ray is imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from engine.core import contract
from engine import images, stages
from engine.core.errors import BackendUnavailable, ColorizerError
from engine.tree import UsageError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[cluster]' (installs ray[data])"
DEFAULT_MAX_WORKER_DEATHS = 3
CRASH_ENV = "COLORIZER_RAY_CRASH_ON"  # test hook, see _crash_hook: "a.jpg,b.jpg!" (the infer actor exits)

# Internal columns (prefixed so they cannot clash with a user's columns).
KEY, ERROR, LUMA, ALPHA, X, CROP_H, CROP_W, UV, BACKEND = (
    "_c_key", "_c_error", "_c_luma", "_c_alpha", "_c_x", "_c_h", "_c_w", "_c_uv", "_c_backend",
)
EMPTY = np.zeros((0, 0), np.uint8)


class RayRunError(ColorizerError):
    """The Ray run could not start or stopped (no cluster at the address, a model that no worker can load, ...)."""


def import_ray(what: str = "--ray") -> Any:
    """``ray`` (with Ray Data), or ``BackendUnavailable`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"{what} needs Ray, which is not installed here: {INSTALL_HINT}") from e
    return ray


# ----------------------------------------------------------------------------- bounded retries


class _Ledger:
    """Run as a Ray actor (0 CPUs). Counts, per (stage, key), attempts that were in flight when their process died."""

    def __init__(self) -> None:
        self.inflight: set[tuple[str, str]] = set()
        self.deaths: dict[tuple[str, str], int] = {}
        self.times: dict[str, dict[str, float]] = {}  # engine.stages.StageTimes.as_dict(), summed over workers

    def begin(self, stage: str, keys: Sequence[str]) -> list[int]:
        """Mark ``keys`` in flight; a key still in flight from an earlier attempt is charged one death first."""
        out = []
        for k in keys:
            sk = (stage, str(k))
            if sk in self.inflight:
                self.deaths[sk] = self.deaths.get(sk, 0) + 1
            self.inflight.add(sk)
            out.append(self.deaths.get(sk, 0))
        return out

    def end(self, stage: str, keys: Sequence[str]) -> None:
        for k in keys:
            self.inflight.discard((stage, str(k)))

    def add_times(self, times: dict[str, dict[str, float]]) -> None:
        for stage, values in times.items():
            into = self.times.setdefault(stage, {"seconds": 0.0, "cpu_seconds": 0.0, "photos": 0})
            for k, v in values.items():
                into[k] = into.get(k, 0) + v

    def stage_times(self) -> dict[str, dict[str, float]]:
        return {stage: dict(values) for stage, values in self.times.items()}


def make_ledger() -> Any:
    ray = import_ray()
    return ray.remote(num_cpus=0)(_Ledger).remote()


def report_times(ledger: Any, times: stages.StageTimes) -> None:
    """Add a batch's per-stage times to the run's totals (``RunSummary.stages``)."""
    if ledger is not None:
        import ray

        ray.get(ledger.add_times.remote({k: v for k, v in times.as_dict().items() if v["photos"]}))


def guarded(
    ledger: Any,
    stage: str,
    keys: Sequence[str],
    run: Callable[[list[int]], None],
    fail: Callable[[int, str], None],
    max_deaths: int,
    crash: Callable[[int, int], None] | None = None,
) -> None:
    """Run ``run(rows)`` on every row, bounded against worker deaths (see the module docstring).

    ``fail(i, reason)`` records a row given up on; ``crash(i, deaths)`` is the test hook.
    """
    rows = list(range(len(keys)))
    if ledger is None or not rows:
        run(rows)
        return
    import ray

    deaths = ray.get(ledger.begin.remote(stage, list(keys)))
    if not any(deaths):
        if crash is not None:
            for i in rows:
                crash(i, 0)
        run(rows)
        ray.get(ledger.end.remote(stage, list(keys)))
        return
    # An earlier attempt of this batch died: one row at a time, so only the culprit is charged again.
    ray.get(ledger.end.remote(stage, list(keys)))
    for i in rows:
        if deaths[i] >= max_deaths:
            fail(i, f"a worker process died {deaths[i]} times while this file was in its {stage} stage "
                    f"(out of memory or a crash in a library?); not retried")
            continue
        ray.get(ledger.begin.remote(stage, [keys[i]]))
        if crash is not None:
            crash(i, deaths[i])
        run([i])
        ray.get(ledger.end.remote(stage, [keys[i]]))


def _crash_hook(spec: str | None, keys: Sequence[str]) -> Callable[[int, int], None] | None:
    """Test hook: ``"a.jpg,b.jpg!"`` exits the process on keys ending in a.jpg the first time, in b.jpg every time."""
    if not spec:
        return None
    rules = [(s.rstrip("!"), s.endswith("!")) for s in spec.split(",") if s.strip("! ")]

    def crash(i: int, deaths: int) -> None:
        for name, always in rules:
            if str(keys[i]).endswith(name) and (always or deaths == 0):
                log.debug("test hook: worker %d exits on %s", os.getpid(), keys[i])
                os._exit(17)

    return crash


# ----------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkerPlan:
    num_workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    cluster_cpus: float
    cluster_gpus: float

    def describe(self) -> str:
        res = f"{self.gpus_per_worker:g} GPU + {self.cpus_per_worker:g} CPU" if self.gpus_per_worker else \
            f"{self.cpus_per_worker:g} CPU"
        return (f"{self.num_workers} worker{'s' if self.num_workers != 1 else ''} x {res} "
                f"(cluster: {self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs)")


def plan_workers(num_workers: int | None, gpus_per_worker: float | None, cpus_per_worker: float | None,
                 *, strict: bool) -> WorkerPlan:
    """Sizes of the actor pool from the options and the cluster's resources (Ray must be initialised).

    Defaults: one GPU per worker and one worker per GPU when the cluster has GPUs; otherwise CPU
    workers on half the CPUs (the other half decodes and encodes). ``strict`` (a local instance,
    whose size is known) refuses a pool that leaves no CPU for the decode and write tasks.
    """
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    gpus_per_worker = (1.0 if gpus >= 1 else 0.0) if gpus_per_worker is None else gpus_per_worker
    cpus_per_worker = 1.0 if cpus_per_worker is None else cpus_per_worker
    if gpus_per_worker < 0 or cpus_per_worker <= 0 or (num_workers is not None and num_workers < 1):
        raise UsageError(f"workers: expected --num-workers >= 1, --gpus-per-worker >= 0, --cpus-per-worker > 0, "
                         f"found {num_workers}, {gpus_per_worker}, {cpus_per_worker}")
    if num_workers is None:
        num_workers = max(1, int(gpus // gpus_per_worker) if gpus_per_worker > 0 else int((cpus / 2) // cpus_per_worker))
    if gpus_per_worker > 0 and num_workers * gpus_per_worker > gpus:
        msg = f"{num_workers} workers x {gpus_per_worker:g} GPU need {num_workers * gpus_per_worker:g} GPUs; the cluster has {gpus:g}"
        if strict:
            raise UsageError(msg)
        log.warning("%s: workers wait for GPUs (an autoscaling cluster adds nodes)", msg)
    left = cpus - num_workers * cpus_per_worker
    if left < 1:
        msg = (f"{num_workers} workers x {cpus_per_worker:g} CPU leave {max(left, 0):g} of the cluster's {cpus:g} CPUs "
               f"for the decode and write tasks; use fewer workers or --cpus-per-worker 0.5")
        if strict:
            raise UsageError(msg)
        log.warning("%s (an autoscaling cluster may add CPUs)", msg)
    return WorkerPlan(num_workers, float(gpus_per_worker), float(cpus_per_worker), cpus, gpus)


class InferActor:
    """One per worker: loads the engine once (``engine.backends.open_runner``), then maps batches to chroma."""

    def __init__(self, model: str | None, backend: str, size: int, batch_size: int, on_gpu: bool,
                 threads: int | None, ledger: Any, max_deaths: int, crash_on: str | None) -> None:
        from engine.backends import open_runner

        self.runner = open_runner(model, backend, device=None if on_gpu else "cpu", size=size,
                                  batch_size=batch_size, threads=threads)
        self.size, self.batch_size = size, batch_size
        self.ledger, self.max_deaths, self.crash_on = ledger, max_deaths, crash_on
        self.name = self.runner.describe()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[KEY])
        errors = [str(e) for e in batch[ERROR]]
        uv = np.zeros((n, 2, self.size, self.size), np.float32)
        ok = [i for i in range(n) if not errors[i]]
        keys = [str(batch[KEY][i]) for i in ok]
        x_all, times = batch[X], stages.StageTimes()

        def run(rows: list[int]) -> None:
            idx = [ok[r] for r in rows]
            for s in range(0, len(idx), self.batch_size):
                part = idx[s : s + self.batch_size]
                t = times.now()
                x = np.ascontiguousarray(np.stack([x_all[i] for i in part]))[:, None]
                uv[part] = self.runner.infer(x, outputs=(contract.OUTPUT_UV,))[contract.OUTPUT_UV]
                times.lap("infer", t, photos=len(part))

        def fail(r: int, reason: str) -> None:
            errors[ok[r]] = reason

        crash = _crash_hook(self.crash_on or os.environ.get(CRASH_ENV), keys)
        guarded(self.ledger, "inference", keys, run, fail, self.max_deaths, crash)
        report_times(self.ledger, times)
        out = {k: v for k, v in batch.items() if k != X}
        out[UV], out[ERROR] = uv, np.array(errors, dtype=object)
        out[BACKEND] = np.array([self.name] * n, dtype=object)
        return out


def infer_stage(ds: Any, plan: WorkerPlan, *, model: str | None, backend: str, size: int, batch_size: int,
                threads: int | None, ledger: Any, max_deaths: int, crash_on: str | None = None) -> Any:
    """``ds.map_batches(InferActor)`` over a fixed pool of ``plan.num_workers`` actors."""
    ray = import_ray()
    on_gpu = plan.gpus_per_worker > 0
    if threads is None and not on_gpu:
        threads = max(1, round(plan.cpus_per_worker))
    return ds.map_batches(
        InferActor,
        fn_constructor_kwargs=dict(model=model, backend=backend, size=size, batch_size=batch_size, on_gpu=on_gpu,
                                   threads=threads, ledger=ledger, max_deaths=max_deaths, crash_on=crash_on),
        compute=ray.data.ActorPoolStrategy(size=plan.num_workers),
        batch_size=batch_size,
        num_gpus=plan.gpus_per_worker or None,
        num_cpus=plan.cpus_per_worker,
        batch_format="numpy",
    )


# ----------------------------------------------------------------------------- datasets of arrays


def _prepare_arrays(batch: dict[str, np.ndarray], *, column: str, size: int) -> dict[str, np.ndarray]:
    n = len(batch[column])
    lumas, alphas, xs, hs, ws, errors = [], [], np.zeros((n, size, size), np.uint8), [], [], []
    for i in range(n):
        try:
            luma, alpha = images.to_luma(_unpad(np.asarray(batch[column][i])))
            if luma.size == 0:
                raise images.ImageError(f"image array: empty ({luma.shape})")
            xs[i], (h, w) = images.fit(luma, size)
            lumas.append(luma), alphas.append(EMPTY if alpha is None else alpha), hs.append(h), ws.append(w)
            errors.append("")
        except Exception as e:  # noqa: BLE001 - one odd array must not end the dataset: it gets its reason
            reason = str(e) if isinstance(e, ColorizerError) else f"internal error ({type(e).__name__}: {e})"
            lumas.append(EMPTY), alphas.append(EMPTY), hs.append(0), ws.append(0), errors.append(reason)
    out = dict(batch)
    out.update({KEY: np.array([uuid.uuid4().hex for _ in range(n)], dtype=object), ERROR: np.array(errors, dtype=object),
                LUMA: _ragged(lumas), ALPHA: _ragged(alphas), X: xs, CROP_H: np.array(hs), CROP_W: np.array(ws)})
    return out


def _unpad(a: np.ndarray) -> np.ndarray:
    """Undo Ray's singleton-axis padding: a column mixing gray (H, W) and colour (H, W, C) arrays gives (1, H, W)."""
    return a[0] if a.ndim == 3 and a.shape[0] == 1 and a.shape[2] > 4 else a


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def compose_row(batch: dict[str, np.ndarray], i: int, saturation: float) -> np.ndarray:
    """Full-resolution RGB(A) of row ``i`` from its luma, alpha and the model's chroma (``images.compose``)."""
    h, w = int(batch[CROP_H][i]), int(batch[CROP_W][i])
    alpha = batch[ALPHA][i]
    uv = np.ascontiguousarray(batch[UV][i][:, :h, :w])
    return images.compose(batch[LUMA][i], uv, saturation=saturation, alpha=alpha if alpha.size else None)


def _compose_arrays(batch: dict[str, np.ndarray], *, output_column: str, saturation: float, ledger: Any,
                    max_deaths: int) -> dict[str, np.ndarray]:
    n = len(batch[KEY])
    errors = [str(e) for e in batch[ERROR]]
    results: list[np.ndarray] = [np.zeros((0, 0, 3), np.uint8)] * n
    ok = [i for i in range(n) if not errors[i]]

    def run(rows: list[int]) -> None:
        for r in rows:
            results[ok[r]] = compose_row(batch, ok[r], saturation)

    def fail(r: int, reason: str) -> None:
        errors[ok[r]] = reason

    guarded(ledger, "compose", [str(batch[KEY][i]) for i in ok], run, fail, max_deaths)
    out = {k: v for k, v in batch.items() if not k.startswith("_c_")}
    out[output_column] = _ragged(results)
    out["colorize_error"] = np.array(errors, dtype=object)
    return out


def colorize_dataset(
    ds: Any, *, model: str | os.PathLike[str] | None = None, backend: str = "auto", column: str = "image",
    output_column: str = "colorized", size: int = 256, batch_size: int = 8, saturation: float = 1.0,
    num_workers: int | None = None, gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
    threads: int | None = None, max_worker_deaths: int = DEFAULT_MAX_WORKER_DEATHS,
) -> Any:
    """A lazy ``ray.data.Dataset``: ``ds`` plus ``output_column`` (uint8 colour, full resolution) and ``colorize_error``.

    ``column`` holds gray ``(H, W)``, RGB or RGBA arrays, uint8 or uint16, any sizes (as
    ``Colorizer.colorize``; blocks holding gray and colour arrays together are beyond Ray Data's
    re-batching, docs/ray.md). A row that cannot be colorized gets an empty ``(0, 0, 3)`` array and
    its reason in ``colorize_error``; other columns pass through. Workers: see ``plan_workers``
    (Ray is initialised here if it is not yet). ``model`` must be readable at the same path on
    every node; each worker resolves it (``backend="auto"``: TensorRT on GPU nodes with a
    ``.plan`` beside the ``.onnx``, else ONNX Runtime).
    """
    ray = import_ray("colorize_dataset")
    _check_options(size, batch_size, saturation, max_worker_deaths)
    model_path = check_model(model, backend)
    if not ray.is_initialized():
        ray.init()
    plan = plan_workers(num_workers, gpus_per_worker, cpus_per_worker, strict=False)
    ledger = make_ledger()
    ds = ds.map_batches(_prepare_arrays, fn_kwargs=dict(column=column, size=size), batch_size=batch_size,
                        batch_format="numpy")
    ds = infer_stage(ds, plan, model=model_path, backend=backend, size=size, batch_size=batch_size, threads=threads,
                     ledger=ledger, max_deaths=max_worker_deaths)
    return ds.map_batches(_compose_arrays, batch_size=batch_size, batch_format="numpy",
                          fn_kwargs=dict(output_column=output_column, saturation=float(saturation), ledger=ledger,
                                         max_deaths=max_worker_deaths))


def check_model(model: str | os.PathLike[str] | None, backend: str) -> str | None:
    """The model as an absolute path (workers may run elsewhere), checked here: a missing file, a wrong
    suffix or a missing/stale sidecar is a usage error now, not a failure in every worker."""
    from engine.core import contract
    from engine.backends import resolve_model

    path = None if model is None else os.path.abspath(os.path.expanduser(os.fspath(model)))
    kind, resolved = resolve_model(path, backend, device="cpu" if backend != "trt" else None)
    if kind == "ort":
        contract.read_contract(resolved)  # the sidecar, else the contract stamped in the ONNX file
    elif kind == "trt" and contract.sidecar_path(resolved).is_file():
        contract.read_sidecar(resolved)  # without one, the engine's own I/O is checked when it loads
    return path


def _check_options(size: int, batch_size: int, saturation: float, max_worker_deaths: int) -> None:
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise UsageError(f"size: expected an integer in 16..4096, found {size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size: expected an integer >= 1, found {batch_size!r}")
    if not 0.0 <= float(saturation) <= 10.0 or math.isnan(float(saturation)):
        raise UsageError(f"saturation: expected a number in 0..10, found {saturation!r}")
    if not isinstance(max_worker_deaths, int) or max_worker_deaths < 1:
        raise UsageError(f"max_worker_deaths: expected an integer >= 1, found {max_worker_deaths!r}")
