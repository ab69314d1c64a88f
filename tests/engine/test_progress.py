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
    assert not hasattr(ray_io._Run, "event")  # no second fold of events into a summary


def test_progress_line_and_summary_line():
    p = Progress("colorized", "x.jpg", colorized=6, skipped=2, failed=1, total=None, elapsed=2.0)
    assert progress_line(p) == "9/? files: 6 colorized, 2 skipped, 1 failed, 3.00 img/s"
    p.total, p.elapsed = 20, 0.0
    assert progress_line(p) == "9/20 files: 6 colorized, 2 skipped, 1 failed, 0.00 img/s"
    s = progress.RunSummary(colorized=6, skipped=2, failed=1, seconds=2.0)
    assert s.line() == "6 colorized, 2 skipped, 1 failed in 2.0 s (3.00 img/s)"


def _utc(second: int):
    import datetime as dt

    return dt.datetime(2026, 1, 31, 12, 0, second, tzinfo=dt.timezone.utc)


def test_line_reporter_writes_timestamped_lines_on_a_timer():
    now = [100.0]
    lines: list[str] = []
    r = LineReporter(lines.append, every=10.0, clock=lambda: now[0], now=lambda: _utc(int(now[0] - 100)),
                     timer=False)
    r(Progress("total", None, 0, 0, 0, 10, 0.0))
    r(Progress("colorized", "a.jpg", 1, 0, 0, 10, 1.0))
    now[0] = 109.9
    r.tick()
    assert lines == []  # none before the first interval is over
    now[0] = 110.0
    r.tick()  # no event since the last one: the timer still writes
    assert lines == ["2026-01-31T12:00:10Z 1/10 done, 0 failed, 0.10 img/s now, 0.10 img/s mean, ETA 0:01:30"]
    r(Progress("colorized", "b.jpg", 4, 0, 0, 10, 11.0))
    r(Progress("failed", "c.jpg", 4, 0, 1, 10, 12.0))
    now[0] = 115.0
    r.tick()
    assert len(lines) == 1
    now[0] = 120.0
    r.tick()
    assert lines[1] == "2026-01-31T12:00:20Z 5/10 done, 1 failed, 0.30 img/s now, 0.20 img/s mean, ETA 0:00:20"
    r(Progress("colorized", "d.jpg", 5, 0, 1, None, 21.0))
    now[0] = 130.0
    r.tick()
    assert lines[2].endswith("6/? done, 1 failed, 0.10 img/s now, 0.17 img/s mean, ETA ?")


def test_line_reporter_timer_thread_writes_without_events():
    import threading

    got = threading.Event()
    lines: list[str] = []

    def write(line: str) -> None:
        lines.append(line)
        got.set()

    with LineReporter(write, every=0.01) as r:
        r(Progress("total", None, 0, 0, 0, 3, 0.0))
        assert got.wait(60)  # no further event: the line comes from the timer
    assert " 0/3 done, 0 failed, " in lines[0] and lines[0].endswith("ETA ?")


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "ten", ""])
def test_log_every_must_be_a_positive_finite_number(bad):
    with pytest.raises(UsageError, match="--log-every: expected a number of seconds > 0"):
        progress.check_interval(bad)
    with pytest.raises(UsageError):
        LineReporter(print, every=bad, timer=False)
    assert progress.check_interval("2.5") == 2.5


def test_summary_json_is_strict_and_survives_undecodable_names(tmp_path):
    import json

    bad_name = b"caf\xe9\n.jpg".decode("utf-8", "surrogateescape")
    s = progress.RunSummary(colorized=3, skipped=1, failed=2, seconds=2.0, backend="ort (CPU)",
                            failures=[(f"in/{bad_name}", "cannot read"), ("in/b.png", "too large: 120 MP")])
    out = tmp_path / "summary.json"
    record = progress.write_summary_json(out, s, now=lambda: _utc(5))
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == record
    assert record == {
        "utc": "2026-01-31T12:00:05Z", "done": 6, "total": 6, "failed": 2, "current_img_per_s": 1.5,
        "mean_img_per_s": 1.5, "eta_s": 0.0, "colorized": 3, "skipped": 1, "seconds": 2.0, "exit_code": 1, "stopped": False,
        "backend": "ort (CPU)", "failures_listed": 2,
        "failures": [{"path": "in/caf\\xe9\\n.jpg", "reason": "cannot read"},
                     {"path": "in/b.png", "reason": "too large: 120 MP"}],
    }
    s.seconds = float("nan")  # never NaN in the file
    assert "NaN" not in json.dumps(progress.write_summary_json(out, s), allow_nan=False)
    assert not [p for p in tmp_path.iterdir() if p.name != "summary.json"]  # atomic: no temp left
    with pytest.raises(progress.OutputError, match="--summary-json"):
        progress.write_summary_json(tmp_path / "missing" / "s.json", s)


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
