"""The folder pipeline: walk -> read (decode, luma, fit) -> batch + infer -> compose + encode + write.

    walker thread ──tasks──► reader threads ──items──► inference (caller's thread) ──► writer threads
         │ (skips)                │ (failures)                                            │ (done, failures)
         └──────────────────────────────── events ──► caller's thread: logging, progress, summary

The per-photo work lives in ``engine.stages`` (JPEG outputs are encoded straight
from Y/Cb/Cr planes); ``RunSummary.stages`` has the time spent in each stage.
Every queue is bounded, so at most a few batches of photos are in memory
whatever the size of the folder. The inference thread never decodes or
encodes: on a GPU it only waits for the device while readers and writers keep
the CPU cores busy. Per-file problems become events (``path: reason``), never
exceptions; only a failing backend, a full or read-only output disk (or Ctrl-C) stops the run.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine import images, tree
from engine.backends.base import Runner, allowed_cpus
from engine.errors import ColorizerError
from engine.flow import Budget as _Budget
from engine.flow import Stopping as _Stop
from engine.flow import get as _get
from engine.flow import lower_priority
from engine.flow import put as _put
from engine.stages import StageTimes, infer_chroma, read_photo, write_photo

log = logging.getLogger(__name__)

MAX_FAILURES_KEPT = 10_000
FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
_DONE = object()


class RunStopped(ColorizerError):
    """The run stopped early: the output disk is full, over quota or read-only, or the walk broke."""


@dataclass
class Progress:
    """What the progress callback sees after every event (called in the caller's thread)."""

    event: str  # "total", "colorized", "skipped", "failed"
    path: str | None
    colorized: int
    skipped: int
    failed: int
    total: int | None  # files in this run (this shard); None until counted
    elapsed: float

    @property
    def done(self) -> int:
        return self.colorized + self.skipped + self.failed


@dataclass
class RunSummary:
    colorized: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    backend: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), the first 10,000
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # engine.stages.StageTimes.as_dict()

    @property
    def done(self) -> int:
        return self.colorized + self.skipped + self.failed

    @property
    def images_per_second(self) -> float:
        return self.colorized / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def line(self) -> str:
        return (
            f"{self.colorized} colorized, {self.skipped} skipped, {self.failed} failed "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} img/s)"
        )


@dataclass
class _Item:
    task: tree.Task
    decoded: images.Decoded
    model_input: np.ndarray  # uint8 (size, size), or (h, w) padded to the size multiple (Settings.multiple)
    crop: tuple[int, int]
    cost: int  # bytes charged to the in-flight budget


@dataclass
class Settings:
    size: int = 256
    batch_size: int = 8
    saturation: float = 1.0
    max_pixels: int | None = 100_000_000
    jpeg_quality: int = 95
    readers: int = 1
    writers: int = 1
    inflight_bytes: int = 2 << 30  # photos held between decode and write (luma, alpha, composed output)
    io_nice: int = 0  # added to the nice value of reader/writer threads (the API uses 10 with a CPU model)
    multiple: int | None = None  # None: inputs padded to size x size; else only to a multiple of this (tight)


BYTES_PER_PIXEL = 6  # luma + alpha held from decode to write, plus the composed RGB(A) in the writer


def default_io_threads(on_gpu: bool) -> tuple[int, int]:
    """(readers, writers). On a GPU the CPU does only I/O; on a CPU the model takes the cores.

    On a CPU two writers from 2 cores up: a writer spends ~7 ms of each photo waiting for fsync, so one
    writer fell behind the INT8 model at the end of small runs (50 1080p photos on 2 cores: 29.9, 29.5
    -> 38.5, 34.2 img/s; 500 photos unchanged: 34.7, 31.3 vs 34.2, 32.4; FP32 +1-3 %).
    """
    cpus = allowed_cpus()
    if not on_gpu:
        return 1, max(1, min(2, cpus))
    readers = max(1, min(8, cpus // 3))
    return readers, max(1, min(16, cpus - readers - 1))


PADDINGS = ("auto", "square", "tight")


def resolve_padding(padding: str, on_gpu: bool) -> str:
    """``"square"`` or ``"tight"`` for ``padding`` in ``PADDINGS``; auto: tight on a CPU, square on a GPU.

    A CPU runs one photo or two per model call, so a 16:9 photo padded only to the size
    multiple (224x128 at 224 px) costs 57 % of a square input. A GPU wants whole batches of
    one shape; tight inputs there split a batch into one call per shape.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding: expected one of {', '.join(PADDINGS)}, found {padding!r}")
    if padding == "auto":
        return "square" if on_gpu else "tight"
    return padding


def default_io_nice(on_gpu: bool) -> int:
    """Nice increment of reader/writer threads: 0 (off) for now; see benchmarks/pipeline.py --io-nice."""
    return 0


def run(
    runner: Runner,
    src: Path,
    dst: Path,
    settings: Settings,
    *,
    overwrite: bool = False,
    shard: tree.Shard | None = None,
    fail_list: Path | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Colorize every image under ``src`` into ``dst``; folders already checked by the caller."""
    s = settings
    stop = threading.Event()
    tasks: queue.Queue = queue.Queue(maxsize=2 * s.readers)
    ready: queue.Queue = queue.Queue(maxsize=2 * s.batch_size)
    to_write: queue.Queue = queue.Queue(maxsize=max(2 * s.writers, s.batch_size))
    events: queue.SimpleQueue = queue.SimpleQueue()
    summary = RunSummary(backend=runner.describe())
    state = {"total": None}
    t0 = time.perf_counter()
    try:
        fail_file = open(fail_list, "w", encoding="utf-8") if fail_list is not None else None  # noqa: SIM115
    except OSError as e:
        raise tree.UsageError(f"--fail-list {fail_list}: cannot write ({e.strerror or e})") from e
    fatal: list[str] = []  # a full or read-only output disk: stop instead of failing every file
    budget = _Budget(s.inflight_bytes)
    times = StageTimes()
    notes: set[str] = set()  # notes already logged (caller's thread)
    png_exts: set[str] = set()  # extensions already announced as written to PNG (walker thread)

    def walker() -> None:
        try:
            for task in tree.walk(src, dst, shard=shard, overwrite=overwrite):
                if task.error is not None:
                    events.put(("failed", task, task.error))
                    continue
                if task.skip:
                    events.put(("skipped", task, None))
                    continue
                ext = task.src.suffix.lower()
                if task.fmt == "PNG" and ext != ".png" and ext not in png_exts:
                    png_exts.add(ext)
                    note = f"{ext} inputs are written as PNG, which holds full colour (e.g. {task.dst.name})"
                    events.put(("note", task, note))
                _put(tasks, task, stop)
        except _Stop:
            return
        except Exception as e:  # noqa: BLE001 - a bug must not pass for a finished run
            log.debug("walker failed", exc_info=True)
            fatal.append(f"listing {src} failed ({type(e).__name__}: {e})")
        finally:
            for _ in range(s.readers):
                try:
                    _put(tasks, _DONE, stop)
                except _Stop:
                    break

    def counter() -> None:
        events.put(("total", None, tree.count(src, shard)))

    def reader() -> None:
        lower_priority(s.io_nice)
        try:
            while True:
                task = _get(tasks, stop)
                if task is _DONE:
                    break
                try:
                    decoded, x, crop = read_photo(task.src, s.size, s.max_pixels, times, multiple=s.multiple)
                except ColorizerError as e:
                    events.put(("failed", task, str(e)))
                    continue
                except Exception as e:  # noqa: BLE001 - one odd file must not end a run over millions
                    log.debug("%s: internal error while reading", task.src, exc_info=True)
                    events.put(("failed", task, f"internal error while reading ({type(e).__name__}: {e})"))
                    continue
                cost = decoded.luma.size * BYTES_PER_PIXEL
                budget.acquire(cost, stop)
                _put(ready, _Item(task, decoded, x, crop, cost), stop)
        except _Stop:
            return
        finally:
            try:
                _put(ready, _DONE, stop)
            except _Stop:
                pass

    def writer() -> None:
        lower_priority(s.io_nice)
        try:
            while True:
                job = _get(to_write, stop)
                if job is _DONE:
                    break
                item, uv = job
                try:
                    event = write_one(item, uv)
                finally:
                    budget.release(item.cost)
                if event is None:  # a full or read-only disk: the run stops
                    return
                events.put(event)
        except _Stop:
            return

    def write_one(item: _Item, uv: np.ndarray) -> tuple | None:
        task, d = item.task, item.decoded
        try:
            if task.fmt == "JPEG" and d.alpha is not None:
                events.put(("note", task, "JPEG cannot hold alpha: alpha dropped"))
            write_photo(task, d, uv, saturation=s.saturation, jpeg_quality=s.jpeg_quality, times=times)
        except (images.WriteError, OSError) as e:
            if getattr(e, "errno", None) in FATAL_ERRNOS:
                fatal.append(f"{e}; stopping (the outputs written so far are complete)")
                stop.set()
                return None
            return ("failed", task, str(e))
        except ColorizerError as e:
            return ("failed", task, str(e))
        except Exception as e:  # noqa: BLE001 - as in reader()
            log.debug("%s: internal error while writing", task.src, exc_info=True)
            return ("failed", task, f"internal error while writing ({type(e).__name__}: {e})")
        return ("colorized", task, None)

    def drain() -> None:
        while True:
            try:
                kind, task, info = events.get_nowait()
            except queue.Empty:
                return
            path = str(task.src) if task is not None else None
            if kind == "total":
                state["total"] = info
            elif kind == "note":
                if info not in notes:  # once per kind of note, not once per file
                    notes.add(info)
                    log.info("%s", info)
                continue
            elif kind == "skipped":
                summary.skipped += 1
            elif kind == "colorized":
                summary.colorized += 1
            elif kind == "failed":
                summary.failed += 1
                log.warning("%s: %s", path, info)
                if len(summary.failures) < MAX_FAILURES_KEPT:
                    summary.failures.append((path, info))
                if fail_file is not None:
                    fail_file.write(f"{path}\n")
                    fail_file.flush()
            if progress is not None:
                progress(
                    Progress(kind, path, summary.colorized, summary.skipped, summary.failed, state["total"],
                             time.perf_counter() - t0)
                )

    threads = [threading.Thread(target=walker, name="walker", daemon=True)]
    threads += [threading.Thread(target=reader, name=f"reader-{i}", daemon=True) for i in range(s.readers)]
    writers = [threading.Thread(target=writer, name=f"writer-{i}", daemon=True) for i in range(s.writers)]
    threading.Thread(target=counter, name="counter", daemon=True).start()
    for t in threads + writers:
        t.start()
    try:
        _infer_loop(runner, ready, to_write, s, stop, drain, budget, times)
        for _ in writers:
            _put(to_write, _DONE, stop)
        for t in writers:
            while t.is_alive():
                t.join(timeout=0.1)
                drain()
        drain()
        if fatal:
            raise RunStopped(fatal[0])
    except _Stop:
        drain()
        raise RunStopped(fatal[0] if fatal else "stopped") from None
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()
        for t in threads + writers:
            t.join(timeout=5)
        if fail_file is not None:
            fail_file.close()
    summary.seconds = time.perf_counter() - t0
    summary.stages = times.as_dict()
    return summary


def batch_ready(n: int, *, batch_size: int, per_call: int, more_ready: bool) -> bool:
    """Whether ``n`` collected photos go to the model now: a whole batch, or one call's worth with none waiting.

    ``per_call``: photos one model call takes (``Runner.images_per_call``; the batch on a GPU).
    A CPU runner splits batches into calls of about one image, so when no more photos are
    ready, waiting for a whole batch only leaves the cores idle (the first photos of a run,
    slow reads): a 16-photo folder ran 4-6 % (FP32) and 13 % (INT8) faster. While photos
    queue up, batches fill as before.
    """
    return n >= batch_size or (n >= min(batch_size, per_call) and not more_ready)


def _infer_loop(runner: Runner, ready: queue.Queue, to_write: queue.Queue, s: Settings,
                stop: threading.Event, drain: Callable[[], None], budget: _Budget, times: StageTimes) -> None:
    """Batch items from the readers, run the model, hand each photo's chroma to the writers."""
    readers_left = s.readers
    batch: list[_Item] = []
    while readers_left or batch:
        item = None
        if readers_left:
            try:
                item = ready.get(timeout=0.05)
            except queue.Empty:
                drain()
                if stop.is_set():  # a writer hit a full or read-only disk
                    raise _Stop from None
                if not (batch and budget.starved()):
                    continue
        if item is _DONE:
            readers_left -= 1
        elif item is not None:
            batch.append(item)
        starved = budget.starved() and ready.empty()  # the batch cannot grow until writers free memory
        per_call = (runner.images_per_call(*batch[0].model_input.shape) if batch else None) or s.batch_size
        full = batch_ready(len(batch), batch_size=s.batch_size, per_call=per_call, more_ready=not ready.empty())
        if batch and (full or not readers_left or starved):
            t = times.now()
            crops = infer_chroma(runner, [it.model_input for it in batch], [it.crop for it in batch])
            times.lap("infer", t, photos=len(batch))
            for it, chroma in zip(batch, crops):
                _put(to_write, (it, chroma), stop)
            batch = []
            drain()
