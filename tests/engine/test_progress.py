"""``engine.progress``: the event tally shared by the local and Ray runs, and colorize-dir's two reporters."""

from __future__ import annotations

import io
import logging

import pytest

from engine import pipeline, progress
from engine.progress import (
    BarReporter,
    LineReporter,
    Progress,
    Tally,
    progress_line,
    reporter_for,
)
from engine.tree import UsageError


def test_tally_counts_keeps_failures_and_writes_the_fail_list(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "MAX_FAILURES_KEPT", 2)
    seen: list[Progress] = []
    fails = tmp_path / "failed.txt"
    log = logging.getLogger("engine.test_tally")
    with caplog.at_level("INFO", logger="engine"), Tally("fake", fail_list=fails, progress=seen.append, log=log) as t:
        t.event("colorized", "a.jpg")
        t.set_total(6)
        t.event("skipped", "b.jpg")
        for name in ("c.jpg", "d.jpg", "e.jpg"):
            t.event("failed", name, "cannot decode")
        t.note("JPEG cannot hold alpha: alpha dropped")
        t.note("JPEG cannot hold alpha: alpha dropped")
        t.event("colorized", "f.jpg")
    s = t.finish()
    assert (s.colorized, s.skipped, s.failed, s.done, s.exit_code) == (2, 1, 3, 6, 1)
    assert s.backend == "fake" and s.seconds > 0
    assert s.failures == [("c.jpg", "cannot decode"), ("d.jpg", "cannot decode")]  # the first MAX_FAILURES_KEPT
    assert fails.read_text() == "c.jpg\nd.jpg\ne.jpg\n"
    assert [p.event for p in seen] == ["colorized", "total", "skipped", "failed", "failed", "failed", "colorized"]
    assert [p.total for p in seen] == [None] + [6] * 6  # notes are not events
    assert (seen[-1].path, seen[-1].done, seen[-1].failed) == ("f.jpg", 6, 3)
    assert all(b.elapsed >= a.elapsed for a, b in zip(seen, seen[1:]))
    msgs = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert msgs.count(("engine.test_tally", "INFO", "note: JPEG cannot hold alpha: alpha dropped")) == 1
    assert [m for _, lvl, m in msgs if lvl == "WARNING"] == [f"{n}: cannot decode" for n in ("c.jpg", "d.jpg", "e.jpg")]


def test_tally_refuses_an_unwritable_fail_list(tmp_path):
    with pytest.raises(UsageError, match=r"--fail-list .*: cannot write"):
        Tally("fake", fail_list=tmp_path)  # a folder


def test_local_and_ray_paths_share_the_tally():
    from engine import ray_io  # Ray itself is imported only when a RayColorizer is made

    assert pipeline.Tally is progress.Tally and ray_io.Tally is progress.Tally
    assert pipeline.RunSummary is progress.RunSummary and pipeline.Progress is progress.Progress
    assert pipeline.MAX_FAILURES_KEPT == progress.MAX_FAILURES_KEPT
    assert not hasattr(ray_io._Run, "event")  # no second fold of events into a summary


def test_progress_line_and_summary_line():
    p = Progress("colorized", "x.jpg", colorized=6, skipped=2, failed=1, total=None, elapsed=2.0)
    assert progress_line(p) == "9/? files: 6 colorized, 2 skipped, 1 failed, 3.00 img/s"
    p.total, p.elapsed = 20, 0.0
    assert progress_line(p) == "9/20 files: 6 colorized, 2 skipped, 1 failed, 0.00 img/s"
    s = progress.RunSummary(colorized=6, skipped=2, failed=1, seconds=2.0)
    assert s.line() == "6 colorized, 2 skipped, 1 failed in 2.0 s (3.00 img/s)"


def test_line_reporter_writes_at_most_every_interval():
    now = [100.0]
    lines: list[str] = []
    r = LineReporter(lines.append, every=10.0, clock=lambda: now[0])
    p = Progress("colorized", "x.jpg", 1, 0, 0, 5, 1.0)
    r(p)
    now[0] = 109.9
    r(p)
    assert lines == []  # none before the first interval is over
    now[0] = 110.0
    r(p)
    now[0] = 115.0
    r(p)
    now[0] = 120.5
    r(p)
    assert lines == ["1/5 files: 1 colorized, 0 skipped, 0 failed, 1.00 img/s"] * 2


def test_bar_reporter_follows_the_events():
    stream = io.StringIO()
    with BarReporter(stream) as bar:
        bar(Progress("colorized", "a.jpg", 1, 0, 0, None, 0.1))
        bar(Progress("total", None, 1, 0, 0, 3, 0.2))
        assert bar.bar.total == 3 and bar.bar.n == 1  # the total event moves nothing
        bar(Progress("skipped", "b.jpg", 1, 1, 0, 3, 0.3))
        bar(Progress("failed", "c.jpg", 1, 1, 1, 3, 0.4))
        assert bar.bar.n == 3 and bar.bar.postfix == "fail=1, ok=1, skip=1"
    assert "3/3" in stream.getvalue()  # drawn on the stream it was given, and closed


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_reporter_follows_whether_the_stream_is_a_terminal():
    lines: list[str] = []
    r = reporter_for(_Stream(False), lines.append)
    assert isinstance(r, LineReporter) and r.write == lines.append and r.every == progress.LINE_EVERY_S
    term = _Stream(True)
    with reporter_for(term, lines.append) as r:
        assert isinstance(r, BarReporter)
        r(Progress("colorized", "a.jpg", 1, 0, 0, 1, 0.1))
    assert "1/1" in term.getvalue() and lines == []
