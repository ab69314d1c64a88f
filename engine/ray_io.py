"""``cli.py colorize-dir --ray``: a folder colorized on a Ray cluster, with the local run's rules and summary.

    from engine.ray_io import RayColorizer

    with RayColorizer("models/colorizer.onnx", address="auto", num_workers=8) as rc:
        print(rc.describe())
        summary = rc.colorize_dir("/shared/gray", "/shared/colour")     # the same RunSummary as Colorizer

The driver lists the tree with ``engine.tree.walk`` (same shards, skip-existing,
mirrored names, stale temp files removed) and builds a Ray Dataset of the paths
to do. Ray tasks decode (``engine.stages.read_photo``); an actor pool runs the
model (``engine.ray_data.InferActor``); Ray tasks compose, encode and write each
output with ``engine.stages.write_photo`` (temp file + fsync + rename), the local
pipeline's own functions, so outputs are the same files.
Per-file problems come back as rows and are reported ``path: reason``; a full or
read-only output disk stops the run (``RunStopped``), as in the local pipeline.
Input and output folders (and the model) must be visible at the same paths on
every node (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine import images, stages, tree
from engine.api import DEFAULT_MAX_PIXELS, check_fail_list, check_options
from engine.core.errors import ColorizerError
from engine.pipeline import FATAL_ERRNOS, RunStopped, alpha_note
from engine.progress import Progress, RunSummary, Tally
from engine.ray_data import (
    ALPHA, BACKEND, CRASH_ENV, CROP_H, CROP_W, DEFAULT_MAX_WORKER_DEATHS, EMPTY, ERROR, KEY, LUMA, UV, X,
    RayRunError, _check_options, _ragged, check_model, guarded, import_ray, report_times, infer_stage, make_ledger, plan_workers,
)
from engine.tree import Shard, UsageError

log = logging.getLogger(__name__)

__all__ = ["RayColorizer"]


# ----------------------------------------------------------------------------- stages (run in Ray tasks)


def _decode_files(batch: dict[str, np.ndarray], *, size: int, max_pixels: int | None, ledger: Any,
                  max_deaths: int) -> dict[str, np.ndarray]:
    keys = [str(k) for k in batch[KEY]]
    n = len(keys)
    times = stages.StageTimes()
    lumas, alphas, exifs = [EMPTY] * n, [EMPTY] * n, [b""] * n
    xs, hs, ws, errors = np.zeros((n, size, size), np.uint8), [0] * n, [0] * n, [""] * n

    def run(rows: list[int]) -> None:
        for i in rows:
            try:
                d, xs[i], (hs[i], ws[i]) = stages.read_photo(Path(keys[i]), size, max_pixels, times)
            except ColorizerError as e:
                errors[i] = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - one odd file must not end a run over millions
                errors[i] = f"internal error while reading ({type(e).__name__}: {e})"
                continue
            lumas[i], alphas[i], exifs[i] = d.luma, EMPTY if d.alpha is None else d.alpha, d.exif or b""

    def fail(i: int, reason: str) -> None:
        errors[i] = reason

    guarded(ledger, "decode", keys, run, fail, max_deaths)
    report_times(ledger, times)
    out = dict(batch)
    out.update({ERROR: np.array(errors, dtype=object), LUMA: _ragged(lumas), ALPHA: _ragged(alphas),
                "exif": np.array(exifs, dtype=object), X: xs, CROP_H: np.array(hs), CROP_W: np.array(ws)})
    return out


def _write_one(batch: dict[str, np.ndarray], i: int, saturation: float, quality: int,
               times: stages.StageTimes) -> tuple[str, str, str]:
    """(status, reason, note) after ``stages.write_photo`` (compose, encode, temp file + rename) of row ``i``."""
    src, dst, fmt = Path(str(batch[KEY][i])), Path(str(batch["dst"][i])), str(batch["fmt"][i])
    alpha = batch[ALPHA][i]
    note = alpha_note(str(batch["path"][i])) if fmt == "JPEG" and alpha.size else ""
    task = tree.Task(rel=str(batch["path"][i]), src=src, dst=dst, fmt=fmt, skip=False)
    decoded = images.Decoded(luma=batch[LUMA][i], alpha=alpha if alpha.size else None,
                             exif=bytes(batch["exif"][i]) or None, source="")
    h, w = int(batch[CROP_H][i]), int(batch[CROP_W][i])
    try:
        stages.write_photo(task, decoded, np.ascontiguousarray(batch[UV][i][:, :h, :w]), saturation=saturation,
                           jpeg_quality=quality, times=times)
    except (images.WriteError, OSError) as e:
        if getattr(e, "errno", None) in FATAL_ERRNOS:
            return "fatal", f"{e}; stopping (the outputs written so far are complete)", ""
        return "failed", str(e), ""
    except ColorizerError as e:
        return "failed", str(e), ""
    except Exception as e:  # noqa: BLE001 - as in _decode_files
        return "failed", f"internal error while writing ({type(e).__name__}: {e})", ""
    return "colorized", "", note


def _write_files(batch: dict[str, np.ndarray], *, saturation: float, quality: int, ledger: Any,
                 max_deaths: int) -> dict[str, np.ndarray]:
    n = len(batch[KEY])
    reasons = [str(e) for e in batch[ERROR]]
    status = ["failed" if r else "" for r in reasons]
    notes = [""] * n
    ok = [i for i in range(n) if not reasons[i]]
    times = stages.StageTimes()

    def run(rows: list[int]) -> None:
        for r in rows:
            i = ok[r]
            status[i], reasons[i], notes[i] = _write_one(batch, i, saturation, quality, times)

    def fail(r: int, reason: str) -> None:
        status[ok[r]], reasons[ok[r]] = "failed", reason

    guarded(ledger, "write", [str(batch[KEY][i]) for i in ok], run, fail, max_deaths)
    report_times(ledger, times)
    return {"path": batch["path"], "status": np.array(status, dtype=object), "reason": np.array(reasons, dtype=object),
            "note": np.array(notes, dtype=object), BACKEND: batch[BACKEND]}


# ----------------------------------------------------------------------------- driver


class RayColorizer:
    """``Colorizer`` for a Ray cluster: same options and ``colorize_dir`` contract, workers instead of threads.

    address: None starts a local Ray instance (or uses the one this process already has), "auto"
    joins the cluster of this node (``ray start``), "HOST:PORT" a cluster's head.
    num_workers / gpus_per_worker / cpus_per_worker: the actor pool (defaults: ``plan_workers``).
    max_worker_deaths: a file in flight in this many worker deaths (per stage) fails instead of being retried.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        size: int = 256,
        batch_size: int = 8,
        saturation: float = 1.0,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        address: str | None = None,
        num_workers: int | None = None,
        gpus_per_worker: float | None = None,
        cpus_per_worker: float | None = None,
        max_worker_deaths: int = DEFAULT_MAX_WORKER_DEATHS,
        crash_on: str | None = None,
    ) -> None:
        ray = import_ray()
        _check_options(size, batch_size, saturation, max_worker_deaths)
        if max_pixels is not None and max_pixels < 1:
            raise UsageError(f"max_pixels: expected >= 1, found {max_pixels!r}")
        self.model = check_model(model, backend)  # each worker then resolves its own backend (TensorRT on GPUs)
        self.backend, self.size, self.batch_size, self.saturation = backend, size, batch_size, float(saturation)
        self.max_pixels, self.threads, self.max_deaths = max_pixels, threads, max_worker_deaths
        self.crash_on = crash_on or os.environ.get(CRASH_ENV) or None
        self._started = False
        if ray.is_initialized():
            self.where = "this process's Ray instance"
        else:
            try:
                if address is None:
                    ray.init(include_dashboard=False, logging_level=logging.WARNING)
                else:
                    ray.init(address=address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RayRunError(f"--ray-address {address or '(local)'}: cannot start or join Ray ({e})") from e
            self._started = True
            self.where = "a local Ray instance" if address is None else f"the cluster at {address}"
        try:
            self.plan = plan_workers(num_workers, gpus_per_worker, cpus_per_worker, strict=address is None)
        except ColorizerError:
            self.close()
            raise
        self.ray_version = ray.__version__

    def describe(self) -> str:
        model = self.model or "the bundled model"
        return f"ray {self.ray_version} on {self.where}: {self.plan.describe()}; {self.backend} backend, {model}"

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> "RayColorizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def colorize_dir(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        shard: Shard | str | None = None,
        jpeg_quality: int = 95,
        fail_list: str | os.PathLike[str] | None = None,
        progress: Callable[[Progress], None] | None = None,
        out_format: str = "same",
        stop: threading.Event | None = None,
    ) -> RunSummary:
        """As ``Colorizer.colorize_dir``: mirrored tree, skip-existing, shards, ``fail_list``, ``out_format``,
        ``RunSummary``. ``stop``: once set, no more results are taken and the workers are shut down with
        Ray (a photo a worker was writing leaves at most a temp file, removed by the next run)."""
        src_p, dst_p = tree.check_folders(src, dst)
        if isinstance(shard, str):
            shard = Shard.parse(shard)
        check_options(jpeg_quality, out_format)
        fail_path = check_fail_list(src_p, fail_list)
        dst_p.mkdir(parents=True, exist_ok=True)
        with Tally(self.describe(), fail_list=fail_path, progress=progress, log=log) as tally:
            _Run(self, tally, stop).go(src_p, dst_p, shard, overwrite, int(jpeg_quality), out_format)
        return tally.finish()


class _Run:
    """One ``colorize_dir`` call: the listing and the dataset, their events folded by the shared ``Tally``."""

    def __init__(self, rc: RayColorizer, tally: Tally, stop: threading.Event | None = None):
        self.rc, self.tally, self.summary, self.stop = rc, tally, tally.summary, stop

    def go(self, src: Path, dst: Path, shard: Shard | None, overwrite: bool, quality: int,
           out_format: str = "same") -> None:
        src_abs, dst_abs = src.absolute(), dst.absolute()
        items: list[dict[str, str]] = []  # the files to do (freed once handed to Ray)
        png_exts: set[str] = set()
        total = 0
        for task in tree.walk(src_abs, dst_abs, shard=shard, overwrite=overwrite, out_format=out_format):
            total += 1
            shown = str(src / Path(task.src).relative_to(src_abs))  # the path as the user gave it, as the local run
            if task.error is not None:
                self.tally.event("failed", shown, task.error)
            elif task.skip:
                self.tally.event("skipped", shown)
            else:
                ext = task.src.suffix.lower()
                if out_format == "same" and task.fmt == "PNG" and ext != ".png" and ext not in png_exts:
                    png_exts.add(ext)
                    self.tally.note(f"{ext} inputs are written as PNG, which holds full colour (e.g. {task.dst.name})")
                items.append({KEY: str(task.src), "dst": str(task.dst), "fmt": task.fmt, "path": shown})
        self.tally.set_total(total)
        if items:
            self._colorize(items, quality)

    def _colorize(self, items: list[dict[str, str]], quality: int) -> None:
        ray = import_ray()
        rc = self.rc
        ledger = make_ledger()
        step = rc.batch_size
        # Blocks of one batch each, built here (no Ray task): decode tasks spread over the cluster from the start.
        ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // step))
        items.clear()  # the blocks are in Ray's object store now
        ds.context.enable_progress_bars = False
        ds.context.print_on_execution_start = False
        ds = ds.map_batches(_decode_files, batch_size=step, batch_format="numpy",
                            fn_kwargs=dict(size=rc.size, max_pixels=rc.max_pixels, ledger=ledger,
                                           max_deaths=rc.max_deaths))
        ds = infer_stage(ds, rc.plan, model=rc.model, backend=rc.backend, size=rc.size, batch_size=step,
                         threads=rc.threads, ledger=ledger, max_deaths=rc.max_deaths, crash_on=rc.crash_on)
        ds = ds.map_batches(_write_files, batch_size=step, batch_format="numpy",
                            fn_kwargs=dict(saturation=rc.saturation, quality=quality, ledger=ledger,
                                           max_deaths=rc.max_deaths))
        backends: set[str] = set()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if self.stop is not None and self.stop.is_set():
                    self.summary.stopped = True
                    break
                for path, status, reason, note, name in zip(batch["path"], batch["status"], batch["reason"],
                                                            batch["note"], batch[BACKEND]):
                    if status == "fatal":
                        raise RunStopped(str(reason))
                    if note:
                        self.tally.note(str(note))
                    if name:
                        backends.add(str(name))
                    self.tally.event(str(status), str(path), str(reason))
        except ray.exceptions.RayError as e:
            raise RayRunError(_ray_error_message(e)) from e
        finally:
            if backends:
                self.summary.backend = f"{rc.describe()}; workers ran {'; '.join(sorted(backends))}"
            try:
                got = ray.get(ledger.stage_times.remote(), timeout=10)
                zero = {"seconds": 0.0, "cpu_seconds": 0.0, "photos": 0}
                self.summary.stages = {st: got.get(st, dict(zero)) for st in stages.STAGES}
                ray.kill(ledger)
            except ray.exceptions.RayError:
                pass


def _ray_error_message(e: Exception) -> str:
    """One line for a Ray failure: the worker's own ``ColorizerError`` when there is one."""
    cause: BaseException | None = e
    for _ in range(10):  # a bounded walk down the chain of causes
        if cause is None:
            break
        if isinstance(cause, ColorizerError) and not type(cause).__module__.startswith("ray"):
            return f"a Ray worker failed: {cause}"
        cause = getattr(cause, "cause", None) or cause.__cause__
    # An actor that failed in __init__ comes back as ActorDiedError with the traceback as text only.
    found = re.findall(r"^engine\.[\w.]+?: (.+)$", str(getattr(e, "error_msg", "") or e), re.MULTILINE)
    if found:
        return f"a Ray worker failed: {found[-1]}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"the Ray run failed ({type(e).__name__}: {first})"

