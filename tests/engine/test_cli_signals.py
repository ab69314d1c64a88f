"""SIGTERM and SIGINT stop ``cli.py colorize-dir`` / ``colorize`` cleanly: real subprocesses, real signals.

The runs are made slow from the test side: a wrapper patches the subprocess's ``os.fsync``
(called by the atomic write while the temp file exists) or its model loading to wait, then
runs ``cli.py`` as ``__main__``. Nothing in the product knows about it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from engine import tree
from tests.conftest import ROOT
from tests.engine.corpus import write_photos

WRAPPER = """
import os, runpy, sys, time
import engine.api

write_delay = float(os.environ.get("TEST_WRITE_DELAY", "0"))
if write_delay:
    real_fsync = os.fsync
    def slow_fsync(fd):  # the atomic write's temp file exists while this waits
        time.sleep(write_delay)
        return real_fsync(fd)
    os.fsync = slow_fsync
if os.environ.get("TEST_HANG_IN_MODEL_LOAD"):
    def hanging_open_runner(*args, **kwargs):
        sys.stderr.write("test: loading the model\\n")
        sys.stderr.flush()
        time.sleep(120)
    engine.api.open_runner = hanging_open_runner
sys.argv = ["cli.py", *sys.argv[1:]]
runpy.run_path("cli.py", run_name="__main__")
"""


def start(args: list, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if tree.parse_temp_name(p.name)]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_stops_cleanly_and_a_rerun_finishes(tiny_onnx, tmp_path, sig, code):
    src, dst, fails = tmp_path / "in", tmp_path / "out", tmp_path / "failed.txt"
    n = 30
    write_photos(src, n)
    (src / "a-bad.jpg").write_text("not an image\n")  # read first: fails before the signal
    report = tmp_path / "summary.json"
    args = ["colorize-dir", src, dst, "--model", tiny_onnx, "--size", 32, "--batch-size", 1,
            "--io-threads", 1, 1, "--fail-list", fails, "--summary-json", report]
    proc = start(args, {"TEST_WRITE_DELAY": "0.3"})
    try:
        wait_for(lambda: dst.is_dir() and len(list(dst.rglob("*.jpg"))) >= 2 and temp_files(dst), proc,
                 "two outputs and a write in flight")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(sig).name}: no new photo started" in err
    done = sorted(dst.rglob("*.jpg"))
    last = out.splitlines()[-1]
    assert last.startswith(f"{len(done)} colorized, 0 skipped, 1 failed in "), (out, err)
    assert 2 <= len(done) < n
    assert temp_files(dst) == []  # the write in flight was finished (renamed), not left behind
    for p in done:
        with Image.open(p) as im:
            im.load()
    assert fails.read_text() == f"{src / 'a-bad.jpg'}\n"
    summary = json.loads(report.read_text())  # a job scheduler learns how the run ended
    assert (summary["exit_code"], summary["stopped"], summary["colorized"], summary["failed"]) == (code, True, len(done), 1)

    rerun = subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 1, rerun.stderr  # the bad file fails again; everything else is done
    assert rerun.stdout.splitlines()[-1].startswith(f"{n - len(done)} colorized, {len(done)} skipped, 1 failed")
    assert len(list(dst.rglob("*.jpg"))) == n and temp_files(dst) == []


def test_sigterm_during_start_up_exits_143_before_anything_is_written(tiny_onnx, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    write_photos(src, 3)
    proc = start(["colorize-dir", src, dst, "--model", tiny_onnx, "--size", 32], {"TEST_HANG_IN_MODEL_LOAD": "1"})
    try:
        err_lines: list[str] = []

        def loading() -> bool:
            err_lines.append(proc.stderr.readline())
            return err_lines[-1].startswith("test: loading the model")

        wait_for(loading, proc, "the model load")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 143, err
    assert err.strip() == "stopped by SIGTERM during start-up: nothing written"
    assert out == "" and not dst.exists()



def test_sigterm_while_waiting_for_stdin(tiny_onnx, tmp_path):
    """colorize - FILE reads stdin whole before the run: a signal while it waits ends the command at once."""
    out = tmp_path / "colour.png"
    proc = subprocess.Popen([sys.executable, "cli.py", "colorize", "-", str(out), "--model", str(tiny_onnx),
                             "--size", "32"], cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith("backend: ")  # the model is loaded; stdin is read next
        proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=60)  # closes stdin only after the signal
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 143, err
    assert err.strip() == "stopped by SIGTERM during start-up: nothing written" and stdout == ""
    assert list(tmp_path.iterdir()) == []
