"""What a folder run reports: per-event ``Progress``, the final ``RunSummary``, and how they are shown.

    Tally          events ("total", "skipped", "colorized", "failed", notes) -> RunSummary, log lines,
                   the fail list and the progress callback; one implementation for the local
                   pipeline (``engine.pipeline``) and the Ray driver (``engine.ray_io``)
    reporter_for   the progress callback ``cli.py colorize-dir`` passes in: a tqdm bar on a
                   terminal (BarReporter), else a timestamped line every ``every`` seconds
                   (LineReporter: a timer, so a slow file still gets its lines)
    summary_record the run's outcome as strict JSON data (``--summary-json``)

The reporters never pick a stream themselves: the caller (``cli.py``, the only place that
prints) hands them the stream the bar draws on and the function that writes a line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from engine.core.errors import OutputError
from engine.core.files import path_line, printable, write_text_atomic
from engine.tree import UsageError

MAX_FAILURES_KEPT = 10_000
LINE_EVERY_S = 10.0  # seconds between two plain progress lines

_log = logging.getLogger(__name__)


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
    """The outcome of one folder run: counts, time, backend, the first failures, per-stage times."""

    colorized: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    backend: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), the first MAX_FAILURES_KEPT
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # engine.stages.StageTimes.as_dict()
    stopped: bool = False  # the caller asked the run to stop before every file was done

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


# ----------------------------------------------------------------------------- the tally


class Tally:
    """Folds a run's events into its ``RunSummary``; used in one thread (the one that drives the run).

    Per event: the counts; for a failure a ``path: reason`` warning, the reason kept (the first
    ``MAX_FAILURES_KEPT``) and the path appended to the fail list; then the progress callback.
    Notes are logged once per distinct text and are not events. ``log`` is the caller's logger,
    so log records keep their module's name. Opens the fail list (``UsageError`` when it cannot
    be written); use as a context manager, or call ``close``.
    """

    def __init__(
        self,
        backend: str,
        *,
        fail_list: Path | None = None,
        progress: Callable[[Progress], None] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.t0 = time.perf_counter()
        self.summary = RunSummary(backend=backend)
        self.total: int | None = None
        self.progress = progress
        self.log = log or _log
        self._notes: set[str] = set()
        self._fail_path = fail_list
        try:
            self._fail_file: IO[bytes] | None = (
                open(fail_list, "wb") if fail_list is not None else None  # noqa: SIM115
            )
        except OSError as e:
            raise UsageError(f"--fail-list {fail_list}: cannot write ({e.strerror or e})") from e

    def note(self, text: str) -> None:
        """Log ``text`` once per run, however many files it applies to."""
        if text not in self._notes:
            self._notes.add(text)
            self.log.info("note: %s", printable(text))

    def set_total(self, total: int) -> None:
        """The number of files in this run is known: report it (a ``"total"`` event)."""
        self.total = total
        self._report("total", None)

    def event(self, kind: str, path: str, reason: str | None = None) -> None:
        """One file is done: ``kind`` is "colorized", "skipped" or "failed" (with its ``reason``)."""
        s = self.summary
        if kind == "skipped":
            s.skipped += 1
        elif kind == "colorized":
            s.colorized += 1
        elif kind == "failed":
            s.failed += 1
            self.log.warning("%s", printable(f"{path}: {reason}"))
            if len(s.failures) < MAX_FAILURES_KEPT:
                s.failures.append((path, reason))
            if self._fail_file is not None:
                try:
                    self._fail_file.write(path_line(path) + b"\n")
                    self._fail_file.flush()
                except OSError as e:  # a full disk: the list would be silently incomplete, so the run stops
                    f, self._fail_file = self._fail_file, None
                    with contextlib.suppress(OSError):  # its buffer cannot be written either; said once
                        f.close()
                    raise OutputError(f"--fail-list {self._fail_path}: cannot write ({e.strerror or e}); "
                                      f"stopping (the outputs written so far are complete)") from e
        self._report(kind, path)

    def _report(self, kind: str, path: str | None) -> None:
        if self.progress is not None:
            s = self.summary
            self.progress(Progress(kind, path, s.colorized, s.skipped, s.failed, self.total,
                                   time.perf_counter() - self.t0))

    def finish(self) -> RunSummary:
        """The summary, with the run's wall time."""
        self.summary.seconds = time.perf_counter() - self.t0
        return self.summary

    def close(self) -> None:
        if self._fail_file is not None:
            f, self._fail_file = self._fail_file, None
            try:
                f.close()
            except OSError as e:
                raise OutputError(f"--fail-list {self._fail_path}: cannot write ({e.strerror or e})") from e

    def __enter__(self) -> "Tally":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- reporters


def progress_line(p: Progress) -> str:
    """``done/total files: N colorized, N skipped, N failed, R img/s`` (total ``?`` until counted)."""
    rate = p.colorized / p.elapsed if p.elapsed > 0 else 0.0
    total = p.total if p.total is not None else "?"
    return f"{p.done}/{total} files: {p.colorized} colorized, {p.skipped} skipped, {p.failed} failed, {rate:.2f} img/s"


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def utc_stamp(when: _dt.datetime) -> str:
    """``2026-01-31T12:00:00Z``: ISO 8601, UTC, whole seconds."""
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_fields(*, utc: _dt.datetime, done: int, total: int | None, failed: int, current: float, mean: float,
                  eta_s: float | None) -> dict[str, Any]:
    """The fields of one progress line (and of the summary JSON): rates in img/s, ETA in seconds or None."""
    return {"utc": utc_stamp(utc), "done": done, "total": total, "failed": failed,
            "current_img_per_s": round(current, 3), "mean_img_per_s": round(mean, 3),
            "eta_s": None if eta_s is None else round(eta_s, 1)}


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def log_line(f: dict[str, Any], unit: str = "img") -> str:
    """``UTC done/total done, F failed, C img/s now, M img/s mean, ETA H:MM:SS`` (``?`` where unknown).

    ``unit``: what is counted, ``img`` (files) or ``frames`` (a video: then no failed count)."""
    total = f["total"] if f["total"] is not None else "?"
    failed = f" {f['failed']} failed," if unit == "img" else ""
    return (f"{f['utc']} {f['done']}/{total} {'done' if unit == 'img' else unit},{failed} "
            f"{f['current_img_per_s']:.2f} {unit}/s now, {f['mean_img_per_s']:.2f} {unit}/s mean, "
            f"ETA {format_eta(f['eta_s'])}")


def check_interval(seconds: float) -> float:
    """A ``--log-every`` value: a finite number of seconds > 0 (``UsageError`` otherwise)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise UsageError(f"--log-every: expected a number of seconds > 0, found {seconds!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--log-every: expected a number of seconds > 0, found {seconds!r}")
    return value


class LineReporter:
    """Progress without a terminal (logs, Slurm): a ``log_line`` through ``write`` every ``every`` seconds.

    A timer thread writes the lines, so they keep coming while one slow file (or the model's first
    batch) is in flight; events only record the latest counts. The first line comes ``every``
    seconds after the reporter is made, so short runs print none. "now" is the img/s since the
    previous line, "mean" since the start; the ETA is the files left at the mean files/s.
    ``clock`` and ``now`` are injectable and ``timer=False`` leaves the timing to ``tick()`` (tests).
    ``unit``: ``img`` (files) or ``frames`` (one video, its frames as ``colorized``).
    """

    def __init__(self, write: Callable[[str], None], every: float = LINE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, *, now: Callable[[], _dt.datetime] = utc_now,
                 timer: bool = True, unit: str = "img") -> None:
        self.write, self.every, self.clock, self.now = write, check_interval(every), clock, now
        self.unit = unit
        self.t0 = self.last = clock()
        self._last_colorized = 0
        self.latest: Progress | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if timer:
            self._thread = threading.Thread(target=self._run, name="progress-lines", daemon=True)
            self._thread.start()

    def __call__(self, p: Progress) -> None:
        with self._lock:
            self.latest = p
        self.tick()

    def _run(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            self.tick()

    def tick(self) -> None:
        """Write a line if ``every`` seconds have passed since the previous one."""
        with self._lock:
            t = self.clock()
            if t - self.last < self.every:
                return
            self.write(log_line(self._fields(t), self.unit))
            self.last = t
            self._last_colorized = self.latest.colorized if self.latest else 0

    def _fields(self, t: float) -> dict[str, Any]:
        p = self.latest
        colorized, done, failed, total = (p.colorized, p.done, p.failed, p.total) if p else (0, 0, 0, None)
        elapsed, since = t - self.t0, t - self.last
        mean = colorized / elapsed if elapsed > 0 else 0.0
        current = (colorized - self._last_colorized) / since if since > 0 else 0.0
        eta = None
        if total is not None and done > 0 and elapsed > 0:
            eta = max(0, total - done) / (done / elapsed)
        return status_fields(utc=self.now(), done=done, total=total, failed=failed, current=current, mean=mean,
                             eta_s=eta)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "LineReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_record(summary: RunSummary, *, total: int | None = None, exit_code: int | None = None,
                   now: Callable[[], _dt.datetime] = utc_now) -> dict[str, Any]:
    """``--summary-json``: the progress line's fields at the end, the counts, the time, the exit code and the
    failures (path shown with ``printable``: undecodable name bytes as ``\\xHH``, never a crash)."""
    s = summary
    mean = s.images_per_second
    seconds = s.seconds if math.isfinite(s.seconds) else 0.0
    return {
        **status_fields(utc=now(), done=s.done, total=s.done if total is None else total, failed=s.failed,
                        current=mean, mean=mean, eta_s=0.0),
        "colorized": s.colorized,
        "skipped": s.skipped,
        "seconds": round(seconds, 3),
        "exit_code": s.exit_code if exit_code is None else exit_code,
        "stopped": s.stopped,
        "backend": printable(s.backend),
        "failures": [{"path": printable(str(path)), "reason": printable(str(reason))} for path, reason in s.failures],
        "failures_listed": len(s.failures),
    }


def write_summary_json(path: str | Path, summary: RunSummary, *, total: int | None = None,
                       exit_code: int | None = None, now: Callable[[], _dt.datetime] = utc_now) -> dict[str, Any]:
    """Write ``summary_record`` as strict JSON (no NaN/Infinity) atomically; ``OutputError`` when it cannot."""
    return write_record_json(path, summary_record(summary, total=total, exit_code=exit_code, now=now))


def write_record_json(path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """``--summary-json``: ``record`` as strict, sorted JSON, written atomically; ``OutputError`` when it cannot."""
    import json

    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise OutputError(f"--summary-json {printable(str(path))}: cannot write ({e.strerror or e})") from e
    return record


class BarReporter:
    """Progress on a terminal: a tqdm bar on ``stream`` (files done of the total, ok/skip/fail counts).

    Inside ``with``, log records go through tqdm so that they print above the bar; leaving
    the block closes the bar.
    """

    def __init__(self, stream: IO[str], unit: str = "img") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit=unit, dynamic_ncols=True, file=stream)
        self.unit = unit
        self._redirect: Any = None

    def __call__(self, p: Progress) -> None:
        bar = self.bar
        if p.total is not None and bar.total != p.total:
            bar.total = p.total
            bar.refresh()
        if p.event != "total":
            bar.update(p.done - bar.n)  # one file per event; a batch of frames for a video
            if self.unit == "img":
                bar.set_postfix(ok=p.colorized, skip=p.skipped, fail=p.failed, refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "BarReporter":
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            redirect = logging_redirect_tqdm()
            redirect.__enter__()
        except BaseException:
            self.close()
            raise
        self._redirect = redirect
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._redirect is not None:
                self._redirect.__exit__(*exc)
                self._redirect = None
        finally:
            self.close()


def reporter_for(stream: IO[str], write_line: Callable[[str], None], every: float = LINE_EVERY_S, *,
                 unit: str = "img") -> BarReporter | LineReporter:
    """A ``BarReporter`` on ``stream`` when it is a terminal, else a ``LineReporter`` writing with ``write_line``."""
    every = check_interval(every)
    return BarReporter(stream, unit) if stream.isatty() else LineReporter(write_line, every, unit=unit)
