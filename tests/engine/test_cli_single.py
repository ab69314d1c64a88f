"""``cli.py colorize SRC DST`` as users run it: files, folders, stdin and stdout, exit codes."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import ROOT
from tests.engine.corpus import pattern, write_photos


def cli(*args: object, stdin: bytes | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """The command with bytes in and out (stdout may be an image)."""
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=timeout)


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def test_stdin_to_stdout_carries_only_the_image(tiny_onnx, tmp_path):
    photo = write_photos(tmp_path, 1, size=(90, 60))[0]
    r = cli("colorize", "-", "-", "-f", "png", "--model", tiny_onnx, "--size", 32, stdin=photo.read_bytes())
    assert r.returncode == 0, r.stderr
    with Image.open(io.BytesIO(r.stdout)) as im:
        assert im.format == "PNG" and im.size == (90, 60) and im.mode == "RGB"
    assert r.stdout.endswith(b"IEND\xaeB`\x82")  # one whole PNG and nothing after it
    err = lines(r.stderr)
    assert err[0].startswith("backend: ort") and err[-1].startswith("1 colorized, 0 skipped, 0 failed")
    # "same" from stdin: the format the input's bytes are in
    r = cli("colorize", "-", "-", "--model", tiny_onnx, "--size", 32, stdin=photo.read_bytes())
    assert r.returncode == 0 and r.stdout[:2] == b"\xff\xd8", r.stderr
    buf = io.BytesIO()
    Image.fromarray(np.dstack([pattern(20, 30, 1), np.full((20, 30), 9, np.uint8)])).save(buf, "PNG")
    r = cli("colorize", "-", "-", "-f", "jpg", "--model", tiny_onnx, "--size", 32, stdin=buf.getvalue())
    assert r.returncode == 0 and r.stdout[:2] == b"\xff\xd8", r.stderr
    assert "note: <stdin>: alpha dropped (JPEG cannot hold it)" in lines(r.stderr)


def test_bad_input_is_one_line_and_exit_1(tiny_onnx, tmp_path):
    r = cli("colorize", "-", "-", "--model", tiny_onnx, "--size", 32, stdin=b"not an image\n")
    assert r.returncode == 1 and r.stdout == b""
    assert [ln for ln in lines(r.stderr) if ln.startswith("<stdin>: ")] == ["<stdin>: not an image (unrecognised content)"]
    bad, fails = tmp_path / "bad.jpg", tmp_path / "failed.txt"
    bad.write_bytes(b"")
    r = cli("colorize", bad, tmp_path / "out.png", "--model", tiny_onnx, "--size", 32, "--fail-list", fails)
    assert r.returncode == 1 and f"{bad}: empty file (0 bytes)" in lines(r.stderr)
    assert lines(r.stdout)[-1].startswith("0 colorized, 0 skipped, 1 failed")
    assert fails.read_text() == f"{bad}\n" and not (tmp_path / "out.png").exists()


def test_file_to_file_folder_and_resume(tiny_onnx, tmp_path):
    photo = write_photos(tmp_path / "in", 1)[0]
    out = tmp_path / "colour.webp"
    r = cli("colorize", photo, out, "--model", tiny_onnx, "--size", 32)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).format == "WEBP" and lines(r.stdout)[-1].startswith("1 colorized, 0 skipped")
    r = cli("colorize", photo, out, "--model", tiny_onnx, "--size", 32)
    assert r.returncode == 0 and lines(r.stdout)[-1].startswith("0 colorized, 1 skipped")
    # --format wins over the suffix, with a note
    r = cli("colorize", photo, tmp_path / "x.jpg", "-f", "png", "--model", tiny_onnx, "--size", 32)
    assert r.returncode == 0 and Image.open(tmp_path / "x.jpg").format == "PNG"
    assert f"note: {tmp_path / 'x.jpg'}: written as PNG (--format png), although its suffix says JPEG" in lines(r.stderr)
    # an existing folder: the planned name inside it
    (tmp_path / "dir").mkdir()
    r = cli("colorize", photo, tmp_path / "dir", "-f", "png", "--model", tiny_onnx, "--size", 32)
    assert r.returncode == 0 and [p.name for p in (tmp_path / "dir").iterdir()] == ["img0000.png"]
    # colorize-dir with one file: DST is the folder (made)
    r = cli("colorize-dir", photo, tmp_path / "made", "--model", tiny_onnx, "--size", 32)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "made").iterdir()] == ["img0000.jpg"]


def test_a_folder_src_runs_as_colorize_dir(tiny_onnx, tmp_path):
    write_photos(tmp_path / "in", 4)
    r = cli("colorize", tmp_path / "in", tmp_path / "out", "-f", "png", "--model", tiny_onnx, "--size", 32)
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout)[-1].startswith("4 colorized, 0 skipped, 0 failed")
    assert sorted(p.suffix for p in (tmp_path / "out").rglob("*.*")) == [".png"] * 4


def test_usage_errors_exit_2_before_the_model_loads(tmp_path):
    photo = write_photos(tmp_path / "in", 1)[0]
    missing_model = tmp_path / "none.onnx"  # the plan is refused before this would be found missing
    cases = [
        (("colorize", photo, tmp_path / "out.xyz"), "error: output " + str(tmp_path / "out.xyz") + ": cannot write .xyz"),
        (("colorize", photo, photo), "is the input file; the input is never written"),
        (("colorize", tmp_path / "in", "-"), "is a folder, which gives many files"),
        (("colorize", "-", tmp_path / "in"), "the input from stdin has no name"),
        (("colorize", photo, tmp_path / "o.png", "--shard", "0/2"), "error: --shard: only when SRC is a folder"),
        (("colorize", tmp_path / "nothing.jpg", tmp_path / "o.png"), "input: expected an image file, a folder or -"),
    ]
    for args, message in cases:
        r = cli(*args, "--model", missing_model, stdin=b"")
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr.decode() and "backend:" not in r.stdout.decode(), (args, r.stderr)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["img0000.jpg", "in"]
