"""One photo: a file or a stream in, a file, a folder or a stream out (``cli.py colorize SRC DST``).

    plan_file   where the output goes and in which format, decided before the model loads
    run_file    read -> fit -> infer -> encode -> write, with the folder run's events, summary and fail list

The rules (docs/cli.md, ``colorize``):

- ``dst`` an existing folder: the output goes into it under the name ``tree.plan_folder``
  gives the input (``a.pgm`` -> ``a.png``; ``a.jpg`` -> ``a.png`` with ``out_format="png"``).
- ``dst`` anything else: the output file itself. Its format is the one its suffix names, unless
  ``out_format`` names one (then that format is written whatever the suffix, with a note when
  the suffix says otherwise); a suffix we cannot write is a ``UsageError``.
- A stream in (``src`` a binary file object: stdin) has no name: the output is a file path or a
  stream, and ``out_format="same"`` writes the format the input's bytes are in (PNG for a
  format that cannot hold colour).
- A stream out gets the whole encoded file in one write once it is complete; nothing else is
  written to it.

An existing output file is skipped unless ``overwrite``, as in a folder run, and the input file
is never written (an output path that is the input is refused).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from engine import images, tree
from engine.backends.base import Runner
from engine.core.errors import ColorizerError, OutputError
from engine.core.files import OUTPUT_FORMATS, SAME_FORMAT, file_kind
from engine.pipeline import FATAL_ERRNOS, RunStopped, Settings, alpha_note
from engine.progress import RunSummary, Tally
from engine.stages import StageTimes, encode_photo, infer_chroma
from engine.tree import UsageError

STDIN_NAME = "<stdin>"
# Formats Pillow reports for a stream in -> the format written back with out_format "same".
_WRITABLE = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "BMP": "BMP", "TIFF": "TIFF"}


@dataclass
class FilePlan:
    """Where one photo comes from and goes: paths, or None for the streams the caller hands ``run_file``."""

    src: Path | None  # None: the input stream
    dst: Path | None  # None: the output stream
    fmt: str | None  # format written; None: the input stream's own (decided once its bytes are read)
    skip: bool = False  # the output file exists (and overwrite is off)
    error: str | None = None  # the output path exists as something other than a file: the photo fails
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The input as messages and the fail list show it."""
        return STDIN_NAME if self.src is None else str(self.src)


def plan_file(src: Path | None, dst: Path | None, out_format: str = "same", *, overwrite: bool = False) -> FilePlan:
    """The output of one photo (see the module docstring). ``src``/``dst`` None: a stream.

    Raises ``UsageError`` for an input that is not a file, a stream in with a folder out, an output
    suffix that cannot be written, and an output path that is the input itself.
    """
    if out_format not in tree.FORMAT_CHOICES:
        raise UsageError(f"format: expected one of {', '.join(tree.FORMAT_CHOICES)}, found {out_format!r}")
    if src is not None:
        if not src.exists():
            raise UsageError(f"input: expected an image file, a folder or -, found nothing at {src}")
        if src.is_dir():
            raise UsageError(f"input: expected an image file, found a folder: {src}")
    if dst is None:
        return FilePlan(src, None, _stream_format(src, out_format))
    if dst.is_dir():
        if src is None:
            raise UsageError(f"output {dst} is a folder, and the input from stdin has no name to give the file "
                             f"there; give the output file's path instead")
        planned = tree.plan_folder([src.name], out_format)  # [] for a name without an image suffix
        name, fmt = (planned[0][1], planned[0][2]) if planned else tree.output_format(src.name, out_format)
        plan = FilePlan(src, dst / name, fmt)
    else:
        fmt, notes = _file_format(dst, out_format)
        plan = FilePlan(src, dst, fmt, notes=notes)
    if src is not None and plan.dst.exists() and os.path.samefile(src, plan.dst):
        raise UsageError(f"output {plan.dst} is the input file; the input is never written, choose another path")
    try:
        st = plan.dst.lstat()
    except FileNotFoundError:
        return plan
    except OSError as e:
        plan.error = f"output path {plan.dst}: cannot check it ({e.strerror or e})"
        return plan
    if not plan.dst.is_file() or plan.dst.is_symlink():
        plan.error = f"output path {plan.dst} exists and is {file_kind(st.st_mode)}; remove it or choose another path"
    elif not overwrite:
        plan.skip = True
    return plan


def _stream_format(src: Path | None, out_format: str) -> str | None:
    if out_format != "same":
        return OUTPUT_FORMATS[out_format][0]
    return None if src is None else tree.output_format(src.name, "same")[1]


def _file_format(dst: Path, out_format: str) -> tuple[str, list[str]]:
    """(format, notes) for an output file path: the suffix's format, or ``out_format``'s."""
    by_suffix = SAME_FORMAT.get(dst.suffix.lower())
    if out_format == "same":
        if by_suffix is None:
            suffixes = ", ".join(sorted(SAME_FORMAT))
            raise UsageError(f"output {dst}: cannot write {dst.suffix or 'a file without a suffix'}; expected a "
                             f"suffix of {suffixes}, or --format")
        return by_suffix, []
    fmt = OUTPUT_FORMATS[out_format][0]
    if by_suffix is not None and by_suffix != fmt:
        return fmt, [f"{dst}: written as {fmt} (--format {out_format}), although its suffix says {by_suffix}"]
    return fmt, []


def run_file(
    runner: Runner,
    plan: FilePlan,
    settings: Settings,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    fail_list: Path | None = None,
    stop: threading.Event | None = None,
    log: logging.Logger | None = None,
) -> RunSummary:
    """Colorize one photo as ``plan`` says; the summary counts it as colorized, skipped or failed.

    ``stdin``/``stdout``: the streams for a ``plan.src``/``plan.dst`` of None. ``stop``: checked before
    each step; once set, no further step starts (an output being written is finished) and the
    summary comes back with ``stopped`` set. Raises ``RunStopped`` for a full or read-only disk
    and ``OutputError`` when the output stream cannot be written.
    """
    times = StageTimes()
    with Tally(runner.describe(), fail_list=fail_list, log=log) as tally:
        for note in plan.notes:
            tally.note(note)
        stopped = _run_one(runner, plan, settings, tally, times, stdin, stdout, stop)
    summary = tally.finish()
    summary.stages = times.as_dict()
    summary.stopped = stopped
    return summary


def _run_one(runner: Runner, plan: FilePlan, s: Settings, tally: Tally, times: StageTimes,
             stdin: IO[bytes] | None, stdout: IO[bytes] | None, stop: threading.Event | None) -> bool:
    """The steps of ``run_file``; True when ``stop`` cut them short."""

    def halted() -> bool:
        return stop is not None and stop.is_set()

    name = plan.name
    if plan.error is not None:
        tally.event("failed", name, plan.error)
        return False
    if plan.skip:
        tally.event("skipped", name)
        return False
    if halted():
        return True
    try:
        t = times.now()
        if plan.src is None:
            if stdin is None:
                raise UsageError("input -: no input stream was given")
            decoded = images.decode_image(stdin.read(), max_pixels=s.max_pixels)
        else:
            decoded = images.read_image(plan.src, max_pixels=s.max_pixels)
        t = times.lap("decode", t)
        if decoded.warning is not None:
            tally.note(f"{name}: decoded with a warning ({decoded.warning})")
        fmt = plan.fmt or _WRITABLE.get(decoded.source.split()[0], "PNG")
        if halted():
            return True
        x, crop = images.fit(decoded.luma, s.size, multiple=s.multiple)
        t = times.lap("resize", t)
        uv = infer_chroma(runner, [x], [crop])[0]
        times.lap("infer", t)
        if halted():
            return True
        if fmt == "JPEG" and decoded.alpha is not None:
            tally.note(alpha_note(name))
        data = encode_photo(fmt, decoded, uv, saturation=s.saturation, jpeg_quality=s.jpeg_quality, times=times)
        t = times.now()
        if plan.dst is None:
            _write_stream(stdout, data)
        else:
            plan.dst.parent.mkdir(parents=True, exist_ok=True)
            images.write_atomic(plan.dst, data)
        times.lap("write", t)
    except (images.WriteError, OSError) as e:
        if getattr(e, "errno", None) in FATAL_ERRNOS:
            raise RunStopped(f"{e}; stopping") from e
        tally.event("failed", name, str(e))
        return False
    except OutputError:
        raise
    except ColorizerError as e:
        if isinstance(e, UsageError):
            raise
        tally.event("failed", name, str(e))
        return False
    tally.event("colorized", name)
    return False


def _write_stream(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        raise UsageError("output -: no output stream was given")
    try:
        stream.write(data)
        stream.flush()
    except OSError as e:
        raise OutputError(f"output -: cannot write to stdout ({e.strerror or e})") from e
