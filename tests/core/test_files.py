"""engine.core.files: atomic writes that follow no planted link, temp names that fit and name their owner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.core import files


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.jpg"
    target.write_bytes(b"old")
    files.write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "a.jpg"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_temp_names_are_unpredictable_and_a_planted_symlink_is_never_followed(tmp_path, monkeypatch):
    assert files.temp_name("a.jpg") != files.temp_name("a.jpg")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / files.temp_name("a.jpg", token="0" * 16)
    planted.symlink_to(victim)
    names = iter(["0" * 16, "1" * 16])  # the first guess collides with the planted link
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    files.write_bytes_atomic(tmp_path / "a.jpg", b"data")
    assert victim.read_text() == "precious"
    assert (tmp_path / "a.jpg").read_bytes() == b"data" and planted.is_symlink()


@pytest.mark.parametrize("length", [200, 240, 250, 255])
def test_names_up_to_255_bytes_get_a_temp_name_that_fits(tmp_path, length):
    name = "é" * ((length - 4) // 2) + "x" * ((length - 4) % 2) + ".jpg"
    assert len(name.encode()) == length
    tmp = files.temp_name(name)
    assert len(tmp.encode()) <= files.NAME_MAX
    key, pid = files.parse_temp_name(tmp)
    assert key == files.temp_key(name) and pid == os.getpid()
    files.write_bytes_atomic(tmp_path / name, b"x")
    assert (tmp_path / name).read_bytes() == b"x"


def test_owner_gone_only_for_a_dead_process():
    assert not files.owner_gone(os.getpid())
    assert not files.owner_gone(1)  # alive (init)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert files.owner_gone(p.pid)


def test_old_style_temp_names_still_parse():
    assert files.parse_temp_name(".a.b.jpg.tmp-42") == ("a.b.jpg", 42)
    assert files.parse_temp_name(".a.jpg.tmp-42-0123abcd") == ("a.jpg", 42)
    assert files.parse_temp_name("a.jpg") is None and files.parse_temp_name(".a.jpg.tmp-x") is None


@pytest.mark.parametrize("raw", [
    b"plain/name.jpg",
    b"caf\xe9/latin-1 name.jpg",  # not UTF-8: written as the bytes it is
    b"two\nlines.jpg",
    b"carriage\rreturn.png",
    b'"quoted".jpg',
    b"tab\tand \\ backslash\x01.jpg",
])
def test_path_line_round_trips_any_bytes(raw):
    line = files.path_line(os.fsdecode(raw))
    assert b"\n" not in line and b"\r" not in line  # one path per line, always
    assert files.read_path_line(line + b"\n") == raw
    if b"\n" not in raw and b"\r" not in raw and not raw.startswith(b'"'):
        assert line == raw  # the common case stays the plain bytes


@pytest.mark.parametrize("line", [b'"unterminated \\', b'"bad \\q escape"', b'"short \\x4"'])
def test_malformed_quoted_lines_are_taken_literally(line):
    assert files.read_path_line(line) == line


def test_printable_escapes_what_would_break_a_log_line():
    name = os.fsdecode(b"caf\xe9\nx.jpg")
    text = files.printable(f"{name}: cannot decode")
    assert text == "caf\\xe9\\nx.jpg: cannot decode"
    assert files.printable("plain élan.jpg") == "plain élan.jpg"


@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: p.write_bytes(b""), "a regular file"),
])
def test_file_kind(tmp_path, make, kind):
    p = tmp_path / "x"
    make(p)
    assert files.file_kind(os.lstat(p).st_mode) == kind
