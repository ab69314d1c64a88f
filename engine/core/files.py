"""File helpers every layer shares: image suffixes, listing photos, atomic writes, temp names.

Atomic write (``atomic_write``): the data goes to a temp file beside the target, created
exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``: a planted file or symlink is never followed or
reused) under an unpredictable name, is fsynced, then renamed over the target, so a kill at any
moment leaves the old file or the new one, never a partial one.

Temp names (``temp_name``): ``.NAME.tmp-PID-TOKEN``: hidden, so folder walks and viewers skip
them, and they name the process that owns them, so a later run removes only temp files whose
owner is gone (``owner_gone``). A name whose temp name would pass the file system's 255-byte
limit gets a short one, ``.#HASH.tmp-PID-TOKEN`` (``temp_key`` maps a target to either form).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

# Colour photos for training, evaluation and INT8 calibration (formats that hold colour).
PHOTO_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# What colorize-dir reads, and the format each is written in: formats that cannot hold colour
# (PGM/PBM) or only a palette (GIF) are written as PNG next to the original name.
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
SAME_FORMAT = {
    **{e: "JPEG" for e in JPEG_SUFFIXES},
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
TO_PNG = (".pgm", ".pbm", ".ppm", ".pnm", ".gif")
INPUT_SUFFIXES = frozenset(SAME_FORMAT) | frozenset(TO_PNG)
# What colorize-video reads and writes, and the FFmpeg container (muxer) each suffix names.
VIDEO_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}
VIDEO_SUFFIXES = frozenset(VIDEO_CONTAINERS)
# x264's speed presets, fastest first (colorize-video --preset); the default keeps the video path near the
# photo path's rate at a small file size (docs/video.md).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_X264_PRESET = "veryfast"
# --format choices (besides "same") -> the format written and the suffix a converted name gets.
OUTPUT_FORMATS = {"jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png"), "webp": ("WEBP", ".webp"), "tiff": ("TIFF", ".tif")}

NAME_MAX = 255  # bytes in one path component on common file systems
_TEMP_RE = re.compile(r"^\.(?P<key>.+)\.tmp-(?P<pid>\d+)(?:-[0-9a-f]+)?$")


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, for messages: "a regular file", "a directory", "a FIFO"..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a special file"


def is_photo(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(PHOTO_SUFFIXES)


def list_photos(folder: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``folder`` (recursive, symlinked folders followed) with a photo suffix, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath, n) for n in filenames if is_photo(n))
    return sorted(found)


# ----------------------------------------------------------------------------- paths in lists and messages

_PLAIN_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"', ord("\\"): "\\\\"}


def path_line(path: str | os.PathLike[str]) -> bytes:
    """One line of a path list (``--fail-list``), without its newline: the path's own bytes, unambiguously.

    A path is written as the file system's bytes (``os.fsencode``: names that are not UTF-8
    come out as the bytes they are), unless it holds a newline or carriage return or starts
    with a double quote: then it is written as ``"..."`` with C escapes (``\\n``, ``\\r``,
    ``\\t``, ``\\"``, ``\\\\``, ``\\xHH`` for other control bytes), as git quotes unusual paths.
    ``read_path_line`` reverses it.
    """
    raw = os.fsencode(path)
    if b"\n" not in raw and b"\r" not in raw and not raw.startswith(b'"'):
        return raw
    out = bytearray(b'"')
    for byte in raw:
        if byte in _PLAIN_ESCAPES:
            out += _PLAIN_ESCAPES[byte].encode()
        elif byte < 0x20 or byte == 0x7F:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


def read_path_line(line: bytes) -> bytes:
    """The path bytes of one ``path_line`` (its trailing newline, if any, removed first).

    A line that is not a well-formed quoted path (a hand-written list) is taken literally.
    """
    line = line.rstrip(b"\n")
    if not (line.startswith(b'"') and line.endswith(b'"') and len(line) >= 2):
        return line
    body, out, i = line[1:-1], bytearray(), 0
    simple = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord('"'): 34, ord("\\"): 92}
    while i < len(body):
        if body[i] != 92:
            out.append(body[i])
            i += 1
        elif i + 1 < len(body) and body[i + 1] in simple:
            out.append(simple[body[i + 1]])
            i += 2
        elif body[i + 1 : i + 2] == b"x" and re.fullmatch(rb"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        else:
            return line
    return bytes(out)


def printable(text: str) -> str:
    """``text`` safe for one log line: control characters and undecodable name bytes as ``\\xHH``/``\\n``.

    File names are bytes; one that is not UTF-8 reaches Python with surrogate escapes, and
    one with a newline would split a ``path: reason`` line in two.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code in _PLAIN_ESCAPES and ch not in "\"\\":
            out.append(_PLAIN_ESCAPES[code])
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


# ----------------------------------------------------------------------------- temp names


def temp_key(name: str) -> str:
    """The part of a temp name that identifies its target: the name, or ``#HASH`` for a long one."""
    if len(f".{name}.tmp-4294967295-0123456789abcdef".encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return name
    return "#" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def temp_name(name: str, pid: int | None = None, token: str | None = None) -> str:
    """``photo.jpg`` -> ``.photo.jpg.tmp-<pid>-<token>`` (short form for long names, see ``temp_key``)."""
    return f".{temp_key(name)}.tmp-{os.getpid() if pid is None else pid}-{token or secrets.token_hex(8)}"


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """``.photo.jpg.tmp-123-ab12`` -> ``("photo.jpg", 123)`` (the ``temp_key``); ``None`` for any other name."""
    m = _TEMP_RE.match(name)
    return (m.group("key"), int(m.group("pid"))) if m else None


def owner_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists (so its temp files are provably abandoned)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):  # exists under another user, or cannot tell: keep its files
        return False
    return False


# ----------------------------------------------------------------------------- atomic writes


def create_temp(path: Path) -> tuple[int, Path]:
    """A new temp file beside ``path`` (``temp_name``), created exclusively: its descriptor (write-only) and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = path.with_name(temp_name(path.name))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a unique temp file")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
                 sync_dir: bool = False) -> Iterator[IO[Any]]:
    """Open a fresh temp file beside ``path`` for writing; on a clean exit fsync it and rename it over ``path``.

    On any error the temp file is removed and ``path`` is untouched. ``sync_dir``: also fsync the folder,
    so the rename itself survives a power cut (checkpoints; not worth it per photo).
    """
    path = Path(path)
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, sync_dir: bool = False) -> None:
    with atomic_write(path, sync_dir=sync_dir) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, sync_dir: bool = False) -> None:
    with atomic_write(path, "w", encoding="utf-8", sync_dir=sync_dir) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Indented, key-sorted JSON with a final newline, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse a folder fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
