"""``cli.py colorize-dir`` as users run it: subprocesses, exit codes, stderr lines, SIGKILL and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from engine import tree
from engine.core.files import temp_name
from tests.conftest import ROOT
from tests.engine.corpus import huge_png_header, pattern, tree_digest, write_photos


def cli(*args: object, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "cli.py", "colorize-dir", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_success_first_line_and_summary(tiny_onnx, tmp_path):
    write_photos(tmp_path / "in", 5)
    r = cli(tmp_path / "in", tmp_path / "out", "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("backend: ort (CPUExecutionProvider") and lines[0].endswith(", tight padding")
    assert lines[-1].startswith("5 colorized, 0 skipped, 0 failed") and "img/s" in lines[-1]
    r = cli(tmp_path / "in", tmp_path / "out", "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("0 colorized, 5 skipped, 0 failed")


def test_no_images_found_is_a_note_not_a_failure(tiny_onnx, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.txt").write_text("not a photo\n")
    (src / ".hidden.jpg").write_bytes(b"")
    r = cli(src, tmp_path / "out", "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note: no images (")]
    assert len(notes) == 1 and notes[0].endswith(f"found under {src}: nothing to do"), r.stderr
    assert ".jpg" in notes[0] and ".png" in notes[0]
    assert r.stdout.splitlines()[-1].startswith("0 colorized, 0 skipped, 0 failed")
    write_photos(src, 1)
    r = cli(src, tmp_path / "out", "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0 and "note: no images" not in r.stderr, r.stderr


def test_bad_inputs_one_line_each_exit_1(tiny_onnx, tmp_path):
    src = tmp_path / "in"
    good = write_photos(src, 3)
    Image.fromarray(pattern(400, 300, 0)).save(src / "big.jpg")  # over --max-pixels below
    (src / "zero.jpg").write_bytes(b"")
    jpeg = good[0].read_bytes()
    (src / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (src / "text.jpg").write_text("this is text\n")
    (src / "huge.png").write_bytes(huge_png_header(70_000, 70_000))
    bad = ["big.jpg", "zero.jpg", "truncated.jpg", "text.jpg", "huge.png"]
    fails = tmp_path / "failed.txt"
    r = cli(src, tmp_path / "out", "--model", tiny_onnx, "--size", 64, "--max-pixels", 100_000, "--fail-list", fails)
    assert r.returncode == 1, r.stderr
    for name in bad:
        hits = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{src / name}: ")]
        assert len(hits) == 1, (name, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stdout.splitlines()[-1].startswith("3 colorized, 0 skipped, 5 failed")
    assert sorted(fails.read_text().split()) == sorted(str(src / n) for n in bad)
    assert all((tmp_path / "out" / p.relative_to(src)).is_file() for p in good)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_inside_input_is_refused(tmp_path, where):
    src = tmp_path / "in"
    write_photos(src, 2)
    before = tree_digest(src)
    dst = src if where == "same" else src / "out"
    r = cli(src, dst)  # refused before any model is loaded
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: output folder") and "inside the input folder" in r.stderr
    assert tree_digest(src) == before


def test_usage_errors_exit_2(tiny_onnx, tmp_path):
    (tmp_path / "in").mkdir()
    r = cli(tmp_path / "in", tmp_path / "out", "--shard", "2/2", "--model", tiny_onnx)
    assert r.returncode == 2 and "--shard: expected 0 <= I < N, found 2/2" in r.stderr
    r = cli(tmp_path / "in", tmp_path / "out", "--padding", "tight", "--ray")
    assert r.returncode == 2 and "--padding tight: not with --ray" in r.stderr
    r = cli(tmp_path / "missing", tmp_path / "out")
    assert r.returncode == 2 and "input folder: expected a directory" in r.stderr
    r = cli(tmp_path / "in", tmp_path / "out", "--model", tmp_path / "m.xyz")
    assert r.returncode == 2 and "expected .onnx, .plan or .pt" in r.stderr
    if not (ROOT / "models" / "colorizer.onnx").exists():
        r = cli(tmp_path / "in", tmp_path / "out")
        assert r.returncode == 2 and str(ROOT / "models" / "colorizer.onnx") in r.stderr


def test_sigkill_then_resume(tiny_onnx, tmp_path):
    """Kill a real run mid-way; re-running the same command completes it: no partial or temp files."""
    src, dst = tmp_path / "in", tmp_path / "out"
    n = 120
    write_photos(src, n, size=(640, 480))
    before = tree_digest(src)
    args = [src, dst, "--model", tiny_onnx, "--batch-size", 1, "--size", 192, "--io-threads", 1, 1]
    proc = subprocess.Popen([sys.executable, "cli.py", "colorize-dir", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if dst.is_dir() and sum(1 for _ in dst.rglob("*.jpg")) >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: make it slower"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    first = {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}
    assert 0 < len(first) < n
    for p in first:  # whatever the kill left is complete
        with Image.open(p) as im:
            im.load()
    missing = next(p.relative_to(src) for p in sorted(src.rglob("*.jpg")) if dst / p.relative_to(src) not in first)
    stale = (dst / missing).with_name(temp_name(missing.name, 999_999))  # as a kill mid-write leaves it
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")

    r = cli(*args, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith(f"{n - len(first)} colorized, {len(first)} skipped, 0 failed")
    outs = sorted(dst.rglob("*.jpg"))
    assert len(outs) == n
    for p in outs:
        with Image.open(p) as im:
            im.load()
            assert im.size == (640, 480)
    assert [p for p in dst.rglob("*") if tree.parse_temp_name(p.name)] == []
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # first-run outputs skipped, not redone
    assert tree_digest(src) == before


def _bytes_cli(*args: object, timeout: int = 120) -> subprocess.CompletedProcess:
    """As ``cli`` but arguments may be bytes paths, output kept as bytes."""
    return subprocess.run([sys.executable.encode(), b"cli.py", b"colorize-dir",
                           *(a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args)],
                          cwd=ROOT, capture_output=True, timeout=timeout)


def test_any_file_name_bytes_reach_the_fail_list_and_the_outputs(tiny_onnx, tmp_path):
    """Names that are not UTF-8 or hold a newline: colorized, or failed one line each, and listed unambiguously."""
    from engine.core.files import read_path_line

    src = os.fsencode(tmp_path / "in")
    write_photos(tmp_path / "in", 1)
    good = os.path.join(src, b"caf\xe9 ok.jpg")  # Latin-1, not UTF-8
    Image.fromarray(pattern(40, 50, 0)).save(os.fsdecode(good))
    bad = [os.path.join(src, b"caf\xe9 broken.jpg"), os.path.join(src, b"two\nlines.jpg")]
    for p in bad:
        with open(p, "wb") as f:
            f.write(b"not a photo")
    out, fails = os.fsencode(tmp_path / "out"), os.fsencode(tmp_path / "failed.txt")
    r = _bytes_cli(src, out, b"--model", os.fsencode(tiny_onnx), b"--size", b"64", b"--fail-list", fails)
    assert r.returncode == 1, r.stderr
    assert b"Traceback" not in r.stderr
    assert r.stdout.splitlines()[-1].startswith(b"2 colorized, 0 skipped, 2 failed")
    assert os.path.isfile(os.path.join(out, b"caf\xe9 ok.jpg"))
    with open(fails, "rb") as f:
        listed = sorted(read_path_line(line) for line in f)
    assert listed == sorted(bad)
    errors = [ln for ln in r.stderr.splitlines() if b"not an image" in ln]
    assert len(errors) == 2 and any(b"two\\nlines.jpg" in ln for ln in errors)  # one line each, escaped


def test_output_path_that_is_a_folder_fails_exit_1(tiny_onnx, tmp_path):
    write_photos(tmp_path / "in", 2)
    (tmp_path / "out" / "img0000.jpg").mkdir(parents=True)
    for _ in range(2):  # and the rerun does not call it done
        r = cli(tmp_path / "in", tmp_path / "out", "--model", tiny_onnx, "--size", 64)
        assert r.returncode == 1, r.stderr
        assert f"output path {tmp_path / 'out' / 'img0000.jpg'} exists and is a directory" in r.stderr
        assert "1 failed" in r.stdout.splitlines()[-1]


def test_run_level_output_errors_are_one_error_line_exit_2(tiny_onnx, tmp_path, read_only_dir):
    write_photos(tmp_path / "in", 3)
    r = cli(tmp_path / "in", read_only_dir / "out", "--model", tiny_onnx, "--size", 64)  # cannot be created
    assert r.returncode == 2, r.stderr
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert r.stderr.strip().splitlines() == [f"error: output folder {read_only_dir / 'out'}: cannot create "
                                             f"({reason})"], r.stderr
    (tmp_path / "in" / "broken.jpg").write_bytes(b"junk")  # a failure to list, on a full disk
    r = cli(tmp_path / "in", tmp_path / "out", "--model", tiny_onnx, "--size", 64, "--fail-list", "/dev/full")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == ["error: --fail-list /dev/full: cannot write (No space left on device); "
                      "stopping (the outputs written so far are complete)"], r.stderr


def test_decoder_warning_is_a_note_and_the_photo_is_colorized(tiny_onnx, tmp_path):
    src = tmp_path / "in"
    write_photos(src, 1)
    data = (src / "img0000.jpg").read_bytes()
    sos = data.index(b"\xff\xda")
    (src / "odd.jpg").write_bytes(data[:sos] + b"\x00\x01\x02" + data[sos:])  # stray bytes before a marker
    r = cli(src, tmp_path / "out", "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "odd.jpg" in ln]
    assert notes == [f"note: {src / 'odd.jpg'}: decoded with a warning (libjpeg: Corrupt JPEG data: "
                     f"3 extraneous bytes before marker 0xda)"], r.stderr
    assert (tmp_path / "out" / "odd.jpg").is_file()


def test_hostile_folder_every_input_written_or_named_and_the_rerun_agrees(tiny_onnx, tmp_path):
    """Odd names, clashing names, special files, damaged files: each input ends written or named, twice."""
    from engine.core.files import read_path_line

    src, out = tmp_path / "in", tmp_path / "out"
    write_photos(src, 2)
    photo = (src / "img0000.jpg").read_bytes()
    raw_src = os.fsencode(src)
    written = {b"img0000.jpg": b"img0000.jpg", b"d1/img0001.jpg": b"d1/img0001.jpg"}
    for name in [b"caf\xe9.jpg", b"new\nline.jpg", b"-dash.jpg", b" space .jpg", b"photo.png", b"photo.gif.png"]:
        with open(os.path.join(raw_src, name), "wb") as f:
            f.write(photo)  # JPEG bytes under a .png name are still a photo
        written[name] = name
    Image.fromarray(pattern(30, 40, 0)).save(src / "photo.gif")  # both of its names taken: fails
    (src / "cut.jpg").write_bytes(photo[: len(photo) // 2] + b"\xff\xd9")
    os.mkfifo(src / "pipe.jpg")
    os.symlink(src / "gone.jpg", src / "dangling.jpg")
    (src / "img-dir.png").write_bytes(photo)
    (out / "img-dir.png").mkdir(parents=True)  # its output path is a folder
    failed = {b"photo.gif", b"cut.jpg", b"pipe.jpg", b"dangling.jpg", b"img-dir.png"}
    fails = tmp_path / "failed.txt"
    for run in range(2):
        r = _bytes_cli(raw_src, os.fsencode(out), b"--model", os.fsencode(tiny_onnx), b"--size", b"64",
                       b"--fail-list", os.fsencode(fails))
        assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
        with open(fails, "rb") as f:
            listed = {os.path.relpath(read_path_line(line), raw_src) for line in f}
        assert listed == failed
        for name in failed:
            shown = os.fsencode(files_printable(os.path.join(raw_src, name)))
            assert sum(ln.startswith(shown + b": ") for ln in r.stderr.splitlines()) == 1, (name, r.stderr)
        for name, target in written.items():
            assert os.path.isfile(os.path.join(os.fsencode(out), target)), name
        done = r.stdout.splitlines()[-1]
        assert done.startswith(b"8 colorized, 0 skipped, 5 failed" if run == 0 else b"0 colorized, 8 skipped, 5 failed")


def files_printable(path: bytes) -> str:
    from engine.core.files import printable

    return printable(os.fsdecode(path))


def test_log_lines_and_summary_json_without_a_terminal(tiny_onnx, tmp_path):
    import json
    import re

    src = tmp_path / "in"
    write_photos(src, 4)
    (src / "text.jpg").write_text("this is text\n")
    summary = tmp_path / "run.json"
    r = cli(src, tmp_path / "out", "--model", tiny_onnx, "--size", 64, "--log-every", "0.001",
            "--summary-json", summary)
    assert r.returncode == 1, r.stderr
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \d+/(\d+|\?) done, \d+ failed, "
                      r"\d+\.\d\d img/s now, \d+\.\d\d img/s mean, ETA (\d+:\d\d:\d\d|\?)$")
    progress_lines = [ln for ln in r.stderr.splitlines() if line.match(ln)]
    assert progress_lines, r.stderr  # stderr is a pipe here: lines, not a bar
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert {k: data[k] for k in ("done", "total", "colorized", "skipped", "failed", "exit_code")} == \
        {"done": 5, "total": 5, "colorized": 4, "skipped": 0, "failed": 1, "exit_code": 1}
    assert [f["path"] for f in data["failures"]] == [str(src / "text.jpg")] and data["failures"][0]["reason"]
    assert data["seconds"] > 0 and data["utc"].endswith("Z") and data["eta_s"] == 0.0


@pytest.mark.parametrize("bad", ["0", "-5", "nan", "inf", "soon"])
def test_bad_log_every_is_a_usage_error(tmp_path, bad):
    (tmp_path / "in").mkdir()
    r = cli(tmp_path / "in", tmp_path / "out", "--log-every", bad)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"error: --log-every: expected a number of seconds > 0, found {bad!r}", r.stderr
