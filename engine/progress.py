"""What a folder run reports: per-event ``Progress``, the final ``RunSummary``, and how they are shown.

    Tally          events ("total", "skipped", "colorized", "failed", notes) -> RunSummary, log lines,
                   the fail list and the progress callback; one implementation for the local
                   pipeline (``engine.pipeline``) and the Ray driver (``engine.ray_io``)
    reporter_for   the progress callback ``cli.py colorize-dir`` passes in: a tqdm bar on a
                   terminal (BarReporter), else a plain line every 10 s (LineReporter)

The reporters never pick a stream themselves: the caller (``cli.py``, the only place that
prints) hands them the stream the bar draws on and the function that writes a line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from engine.core.errors import OutputError
from engine.core.files import path_line, printable
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
            self.log.info("%s", printable(text))

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


class LineReporter:
    """Progress without a terminal (logs, Slurm): ``progress_line`` through ``write``, at most every ``every`` s.

    The first line comes ``every`` seconds after the reporter is made, so short runs print none.
    """

    def __init__(self, write: Callable[[str], None], every: float = LINE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every, self.clock = write, every, clock
        self.last = clock()

    def __call__(self, p: Progress) -> None:
        if self.clock() - self.last >= self.every:
            self.last = self.clock()
            self.write(progress_line(p))

    def close(self) -> None:
        pass

    def __enter__(self) -> "LineReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BarReporter:
    """Progress on a terminal: a tqdm bar on ``stream`` (files done of the total, ok/skip/fail counts).

    Inside ``with``, log records go through tqdm so that they print above the bar; leaving
    the block closes the bar.
    """

    def __init__(self, stream: IO[str]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="img", dynamic_ncols=True, file=stream)
        self._redirect: Any = None

    def __call__(self, p: Progress) -> None:
        bar = self.bar
        if p.total is not None and bar.total != p.total:
            bar.total = p.total
            bar.refresh()
        if p.event != "total":
            bar.update(1)
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


def reporter_for(stream: IO[str], write_line: Callable[[str], None],
                 every: float = LINE_EVERY_S) -> BarReporter | LineReporter:
    """A ``BarReporter`` on ``stream`` when it is a terminal, else a ``LineReporter`` writing with ``write_line``."""
    return BarReporter(stream) if stream.isatty() else LineReporter(write_line, every)
