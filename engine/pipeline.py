"""The folder pipeline: walk -> read (decode, luma, fit) -> batch + infer -> compose + encode + write.

    walker thread ──tasks──► reader threads ──items──► inference (caller's thread) ──► writer threads
         │ (skips)                │ (failures)                                            │ (done, failures)
         └──────────────────────────────── events ──► caller's thread: logging, progress, summary

    _walk_stage, _count_stage   list the tree (and count it for the progress total)
    _read_stage                 decode + fit each photo (``stages.read_photo``), within the memory budget
    _infer_stage                batch photos and run the model (``stages.infer_chroma``)
    _write_stage                compose + encode + write each photo (``stages.write_photo``)
    _Events                     folds the stages' events into the run's ``engine.progress.Tally``
    run                         wires them together: threads, queues, stop and clean-up

The per-photo work lives in ``engine.stages`` (JPEG outputs are encoded straight
from Y/Cb/Cr planes); ``RunSummary.stages`` has the time spent in each stage.
Every queue is bounded, so at most a few batches of photos are in memory
whatever the size of the folder. The inference thread never decodes or
encodes: on a GPU it only waits for the device while readers and writers keep
the CPU cores busy. Per-file problems become events (``path: reason``), never
exceptions; only a failing backend, a full or read-only output disk (or Ctrl-C) stops the run.

Stopping on request (``run(stop=EVENT)``; ``cli.py`` sets the event on SIGTERM or SIGINT):
inference checks the event between batches and the run takes the shutdown path that a
full disk takes: no new photo is read, inferred or written, the writers finish the photo
in hand (each output is written whole, or not at all) and the summary comes back with
``stopped`` set.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine import images, tree
from engine.backends.base import Runner
from engine.core.hardware import allowed_cpus
from engine.core.errors import ColorizerError
from engine.flow import Budget as _Budget
from engine.flow import Stopping as _Stop
from engine.flow import get as _get
from engine.flow import lower_priority
from engine.flow import put as _put
from engine.progress import Progress, RunSummary, Tally
from engine.stages import StageTimes, infer_chroma, read_photo, write_photo

log = logging.getLogger(__name__)

FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
_DONE = object()


class RunStopped(ColorizerError):
    """The run stopped early: the output disk is full, over quota or read-only, or the walk broke."""


class _Halt(Exception):
    """The caller asked the run to stop (``run(stop=...)``): wind down and return the summary so far."""


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

    On a CPU two writers from 2 cores up: a writer spends part of each photo waiting for fsync,
    so a single writer falls behind the model at the end of small runs.
    """
    cpus = allowed_cpus()
    if not on_gpu:
        return 1, max(1, min(2, cpus))
    readers = max(1, min(8, cpus // 3))
    return readers, max(1, min(16, cpus - readers - 1))


PADDINGS = ("auto", "square", "tight")


def resolve_padding(padding: str, on_gpu: bool) -> str:
    """``"square"`` or ``"tight"`` for ``padding`` in ``PADDINGS``; auto: tight on a CPU, square on a GPU.

    A CPU runs one photo or two per model call, so a photo that is not square costs less
    padded only to the size multiple (a 16:9 photo at 224 px runs at 224x128). A GPU wants
    whole batches of one shape; tight inputs there split a batch into one call per shape.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding: expected one of {', '.join(PADDINGS)}, found {padding!r}")
    if padding == "auto":
        return "square" if on_gpu else "tight"
    return padding


def default_io_nice(on_gpu: bool) -> int:
    """Nice increment of reader/writer threads: 0 (off) for now; see benchmarks/pipeline.py --io-nice."""
    return 0


def batch_ready(n: int, *, batch_size: int, per_call: int, more_ready: bool) -> bool:
    """Whether ``n`` collected photos go to the model now: a whole batch, or one call's worth with none waiting.

    ``per_call``: photos one model call takes (``Runner.images_per_call``; the batch on a GPU).
    A CPU runner splits batches into calls of about one image, so when no more photos are
    ready, waiting for a whole batch only leaves the cores idle (the first photos of a run,
    slow reads). While photos queue up, batches fill as before.
    """
    return n >= batch_size or (n >= min(batch_size, per_call) and not more_ready)


# ----------------------------------------------------------------------------- what the stages share


@dataclass
class _Shared:
    """What the threads of one run share: settings, the stop flag, the bounded queues, budget, timers.

    ``events`` carries ``(kind, task, info)`` to the caller's thread (``_Events``); ``fatal``
    holds why the run must stop (a full or read-only output disk, a broken walk).
    """

    s: Settings
    halt: threading.Event | None = None  # the caller's stop request (checked by the inference thread)
    stop: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    fatal: list[str] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)
    tasks: queue.Queue = field(init=False)  # walker -> readers
    ready: queue.Queue = field(init=False)  # readers -> inference
    to_write: queue.Queue = field(init=False)  # inference -> writers
    budget: _Budget = field(init=False)  # bytes of photos between decode and write

    def __post_init__(self) -> None:
        s = self.s
        self.tasks = queue.Queue(maxsize=2 * s.readers)
        self.ready = queue.Queue(maxsize=2 * s.batch_size)
        self.to_write = queue.Queue(maxsize=max(2 * s.writers, s.batch_size))
        self.budget = _Budget(s.inflight_bytes)

    def check_halt(self) -> None:
        """Raise ``_Halt`` when the caller asked the run to stop."""
        if self.halt is not None and self.halt.is_set():
            raise _Halt

    def send_done(self, q: queue.Queue, n: int) -> None:
        """Tell ``n`` consumers of ``q`` that no more items come (gives up quietly when stopping)."""
        for _ in range(n):
            try:
                _put(q, _DONE, self.stop)
            except _Stop:
                break


# ----------------------------------------------------------------------------- stages (one function per thread)


def _walk_stage(sh: _Shared, src: Path, dst: Path, shard: tree.Shard | None, overwrite: bool,
                out_format: str = "same") -> None:
    """Walker thread: list the tree; skips and unreadable entries become events, the rest go to the readers.

    Notes once per input extension that is written as PNG. A walk that breaks stops the run.
    """
    png_exts: set[str] = set()
    try:
        for task in tree.walk(src, dst, shard=shard, overwrite=overwrite, out_format=out_format):
            if task.error is not None:
                sh.events.put(("failed", task, task.error))
                continue
            if task.skip:
                sh.events.put(("skipped", task, None))
                continue
            ext = task.src.suffix.lower()
            if out_format == "same" and task.fmt == "PNG" and ext != ".png" and ext not in png_exts:
                png_exts.add(ext)
                note = f"{ext} inputs are written as PNG, which holds full colour (e.g. {task.dst.name})"
                sh.events.put(("note", task, note))
            _put(sh.tasks, task, sh.stop)
    except _Stop:
        return
    except Exception as e:  # noqa: BLE001 - a bug must not pass for a finished run
        log.debug("walker failed", exc_info=True)
        sh.fatal.append(f"listing {src} failed ({type(e).__name__}: {e})")
    finally:
        sh.send_done(sh.tasks, sh.s.readers)


def _count_stage(sh: _Shared, src: Path, shard: tree.Shard | None) -> None:
    """Counter thread: the number of files in this run (shard), the progress total."""
    sh.events.put(("total", None, tree.count(src, shard)))


def _read_stage(sh: _Shared) -> None:
    """Reader thread: decode and fit each task, charge its bytes to the budget, hand it to inference.

    An unreadable file becomes a ``failed`` event; the thread ends on ``_DONE`` or on stop.
    """
    s = sh.s
    lower_priority(s.io_nice)
    try:
        while True:
            task = _get(sh.tasks, sh.stop)
            if task is _DONE:
                break
            try:
                decoded, x, crop = read_photo(task.src, s.size, s.max_pixels, sh.times, multiple=s.multiple)
            except ColorizerError as e:
                sh.events.put(("failed", task, str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - one odd file must not end a run over millions
                log.debug("%s: internal error while reading", task.src, exc_info=True)
                sh.events.put(("failed", task, f"internal error while reading ({type(e).__name__}: {e})"))
                continue
            if decoded.warning is not None:
                sh.events.put(("note", task, f"{task.src}: decoded with a warning ({decoded.warning})"))
            cost = decoded.luma.size * BYTES_PER_PIXEL
            sh.budget.acquire(cost, sh.stop)
            _put(sh.ready, _Item(task, decoded, x, crop, cost), sh.stop)
    except _Stop:
        return
    finally:
        try:
            _put(sh.ready, _DONE, sh.stop)
        except _Stop:
            pass


def _infer_stage(runner: Runner, sh: _Shared, drain: Callable[[], None]) -> None:
    """Inference, in the caller's thread: batch items from the readers, run the model, hand chroma to the writers.

    A batch goes when ``batch_ready`` says so, when the readers are done, or when the memory
    budget is exhausted (it cannot grow until writers free memory). ``drain`` runs whenever
    this thread would otherwise wait, so progress keeps flowing. Raises ``Stopping`` when a
    writer stopped the run, ``_Halt`` when the caller asked it to stop (checked before each batch).
    """
    s, ready, budget = sh.s, sh.ready, sh.budget
    readers_left = s.readers
    batch: list[_Item] = []
    while readers_left or batch:
        sh.check_halt()
        item = None
        if readers_left:
            try:
                item = ready.get(timeout=0.05)
            except queue.Empty:
                drain()
                if sh.stop.is_set():  # a writer hit a full or read-only disk
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
            sh.check_halt()  # a stop request may have come while the batch filled: no new work
            t = sh.times.now()
            crops = infer_chroma(runner, [it.model_input for it in batch], [it.crop for it in batch])
            sh.times.lap("infer", t, photos=len(batch))
            for it, chroma in zip(batch, crops):
                _hand_to_writers(sh, (it, chroma), drain)
            batch = []
            drain()


def _hand_to_writers(sh: _Shared, job: tuple, drain: Callable[[], None]) -> None:
    """Queue ``job`` for the writers; while the queue is full, report events and watch for a stop."""
    while True:
        sh.check_halt()
        if sh.stop.is_set():
            raise _Stop
        try:
            sh.to_write.put(job, timeout=0.1)
            return
        except queue.Full:
            drain()


def _write_stage(sh: _Shared) -> None:
    """Writer thread: compose, encode and write each photo, then free its bytes in the budget.

    Ends on ``_DONE``, on stop, or after a full or read-only output disk (which stops the run).
    """
    lower_priority(sh.s.io_nice)
    try:
        while True:
            job = _get(sh.to_write, sh.stop)
            if job is _DONE:
                break
            item, uv = job
            try:
                event = _write_one(sh, item, uv)
            finally:
                sh.budget.release(item.cost)
            if event is None:  # a full or read-only disk: the run stops
                return
            sh.events.put(event)
    except _Stop:
        return


def _write_one(sh: _Shared, item: _Item, uv: np.ndarray) -> tuple | None:
    """The event for one written photo (``colorized`` or ``failed``); None when the disk stops the run."""
    task, d, s = item.task, item.decoded, sh.s
    try:
        if task.fmt == "JPEG" and d.alpha is not None:
            sh.events.put(("note", task, alpha_note(task.src)))
        write_photo(task, d, uv, saturation=s.saturation, jpeg_quality=s.jpeg_quality, times=sh.times)
    except (images.WriteError, OSError) as e:
        if getattr(e, "errno", None) in FATAL_ERRNOS:
            sh.fatal.append(f"{e}; stopping (the outputs written so far are complete)")
            sh.stop.set()
            return None
        return ("failed", task, str(e))
    except ColorizerError as e:
        return ("failed", task, str(e))
    except Exception as e:  # noqa: BLE001 - as in _read_stage
        log.debug("%s: internal error while writing", task.src, exc_info=True)
        return ("failed", task, f"internal error while writing ({type(e).__name__}: {e})")
    return ("colorized", task, None)


def alpha_note(path: Path | str) -> str:
    """The note for an input with alpha written as JPEG (the one output format without alpha)."""
    return f"{path}: alpha dropped (JPEG cannot hold it)"


class _Events:
    """The caller's side of ``_Shared.events``: each call folds the events queued so far into ``tally``."""

    def __init__(self, events: queue.SimpleQueue, tally: Tally) -> None:
        self.events, self.tally = events, tally

    def __call__(self) -> None:
        while True:
            try:
                kind, task, info = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "total":
                self.tally.set_total(info)
            elif kind == "note":
                self.tally.note(info)
            else:
                self.tally.event(kind, str(task.src), info)


# ----------------------------------------------------------------------------- the run


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
    out_format: str = "same",
    stop: threading.Event | None = None,
    tally: Tally | None = None,
) -> RunSummary:
    """Colorize every image under ``src`` into ``dst``; folders already checked by the caller.

    ``tally``: count into this open ``Tally`` (its fail list and progress; ``fail_list`` and
    ``progress`` unused) and leave it open, so that the caller can add events of its own.

    Starts the walker, counter, reader and writer threads, runs inference in this thread and
    reports their events here. ``out_format``: ``tree.FORMAT_CHOICES`` (names planned by
    ``tree.plan_folder``). ``stop``: once set, the run winds down (see the module docstring)
    and returns its summary with ``stopped`` set. Raises ``RunStopped`` (full or read-only
    disk, broken walk); any other exception (a failing backend, Ctrl-C) stops the threads and
    propagates.
    """
    sh = _Shared(settings, halt=stop)
    stopped = False
    own = tally is None
    if tally is None:
        tally = Tally(runner.describe(), fail_list=fail_list, progress=progress, log=log)
    with tally if own else contextlib.nullcontext(tally):
        drain = _Events(sh.events, tally)
        threads = [threading.Thread(target=_walk_stage, args=(sh, src, dst, shard, overwrite, out_format),
                                    name="walker", daemon=True)]
        threads += [threading.Thread(target=_read_stage, args=(sh,), name=f"reader-{i}", daemon=True)
                    for i in range(settings.readers)]
        writers = [threading.Thread(target=_write_stage, args=(sh,), name=f"writer-{i}", daemon=True)
                   for i in range(settings.writers)]
        threading.Thread(target=_count_stage, args=(sh, src, shard), name="counter", daemon=True).start()
        for t in threads + writers:
            t.start()
        try:
            _infer_stage(runner, sh, drain)
            _finish_writers(sh, writers, drain)
            if sh.fatal:
                raise RunStopped(sh.fatal[0])
        except _Halt:
            stopped = True
            sh.stop.set()  # the shutdown path: readers and the walker leave, writers drop what is queued
            for t in writers:  # each finishes the photo in hand: its output is complete, its event counted
                while t.is_alive():
                    t.join(timeout=0.1)
                    drain()
            drain()
            if sh.fatal:  # a full disk on the way down still says so
                raise RunStopped(sh.fatal[0]) from None
        except _Stop:
            drain()
            raise RunStopped(sh.fatal[0] if sh.fatal else "stopped") from None
        finally:
            sh.stop.set()
            for t in threads + writers:
                t.join(timeout=5)
    summary = tally.finish()
    summary.stages = sh.times.as_dict()
    summary.stopped = stopped
    return summary


def _finish_writers(sh: _Shared, writers: list[threading.Thread], drain: Callable[[], None]) -> None:
    """After the last batch: tell the writers to finish, and report their events until they have.

    Raises ``_Halt`` when the caller asks the run to stop meanwhile (the writers then drop what is queued).
    """
    for _ in writers:
        _put(sh.to_write, _DONE, sh.stop)
    for t in writers:
        while t.is_alive():
            t.join(timeout=0.1)
            drain()
            sh.check_halt()
    drain()
