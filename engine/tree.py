"""Walking the input tree: which files to colorize, where each output goes, which shard owns it.

The walk streams one directory at a time (memory does not grow with the size of
the tree) and is deterministic: directories and files are visited in sorted
order, hidden names (``.*``: dotfiles, macOS ``._*`` sidecars, our own temp
files) are ignored and directory symlinks are not followed (no loops).

Sharding hashes the relative path, so ``--shard I/N`` gives every file to
exactly one of N processes, stably across re-runs and when files are added.

Resuming and temp files: for each input directory the matching output
directory is listed once; existing outputs are marked ``skip`` and stale temp
files (``.NAME.tmp-PID`` from a killed run) whose target belongs to this run
are deleted there, before any output of that directory is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.core.errors import ColorizerError
from engine.core.files import INPUT_SUFFIXES as INPUT_EXTS
from engine.core.files import SAME_FORMAT, TO_PNG, owner_gone, parse_temp_name, temp_key, temp_name  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


class UsageError(ColorizerError):
    """Invalid folders or options (the CLI exits with code 2)."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"I/N"`` with 0 <= I < N (zero-based, like a Slurm array index)."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise UsageError(f"--shard: expected I/N such as 0/4, found {text!r}")
        index, count = int(m.group(1)), int(m.group(2))
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"--shard: expected 0 <= I < N, found {index}/{count}")
        return cls(index, count)

    def owns(self, rel: str) -> bool:
        return shard_of(rel, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(rel: str, count: int) -> int:
    """Stable shard of a relative POSIX path (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Task:
    """One input file and the output it becomes."""

    rel: str  # relative input path, POSIX separators
    src: Path
    dst: Path
    fmt: str  # output format: JPEG, PNG, WEBP, BMP, TIFF
    skip: bool  # the output exists already (and overwrite is off)
    error: str | None = None  # set for an input folder that cannot be listed (src is the folder)


def output_format(name: str) -> tuple[str, str]:
    """Input file name -> (output file name, format). PNG for formats that cannot hold colour."""
    stem, ext = os.path.splitext(name)
    ext = ext.lower()
    if ext in SAME_FORMAT:
        return name, SAME_FORMAT[ext]
    return stem + ".png", "PNG"


def check_folders(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Resolve both folders; refuse a missing input and any overlap of input and output."""
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    if not src_p.is_dir():
        what = "a file" if src_p.exists() else "missing"
        raise UsageError(f"input folder: expected a directory, found {what}: {src_p}")
    if dst_p.exists() and not dst_p.is_dir():
        raise UsageError(f"output folder: expected a directory, found a file: {dst_p}")
    rs, rd = src_p.resolve(), dst_p.resolve()
    if rd == rs or rs in rd.parents:
        raise UsageError(f"output folder {dst_p} is inside the input folder {src_p}; choose a folder outside it")
    if rd in rs.parents:
        raise UsageError(
            f"input folder {src_p} is inside the output folder {dst_p}; outputs could overwrite inputs, "
            f"choose separate folders"
        )
    return src_p, dst_p


def _scan(folder: Path) -> tuple[list[str], list[str], str | None]:
    """Sorted visible sub-directories and files of one folder (directory symlinks not followed), or an error."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        dirs.append(e.name)
                    elif e.is_file():
                        files.append(e.name)
                except OSError:
                    continue
    except OSError as err:
        return [], [], f"cannot list folder ({err.strerror or err})"
    return sorted(dirs), sorted(files), None


def _plan_folder(names: list[str]) -> list[tuple[str, str, str]]:
    """Image names of one folder -> (input name, output name, format), output names made unique."""
    chosen: list[tuple[str, str, str]] = []
    same = {n for n in names if os.path.splitext(n)[1].lower() in SAME_FORMAT}
    taken: set[str] = set(same)
    for name in names:
        ext = os.path.splitext(name)[1].lower()
        if ext not in INPUT_EXTS:
            continue
        out, fmt = output_format(name)
        if name not in same:
            if out in taken:  # photo.pgm beside photo.png: write photo.pgm.png
                out = name + ".png"
            taken.add(out)
        chosen.append((name, out, fmt))
    return chosen


def walk(
    src: Path,
    dst: Path | None = None,
    *,
    shard: Shard | None = None,
    overwrite: bool = False,
    clean_temps: bool = True,
) -> Iterator[Task]:
    """Yield a ``Task`` per image under ``src`` (sorted, this shard's only).

    A folder that cannot be listed is yielded as a ``Task`` with ``error`` set (every shard reports it).
    With ``dst``: marks tasks whose output exists (unless ``overwrite``) and deletes
    stale temp files of this shard's targets in each output folder before yielding.
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = src / rel_dir if rel_dir else src
        dirs, files, error = _scan(folder)
        if error is not None:
            yield Task(rel=rel_dir or ".", src=folder, dst=dst or folder, fmt="", skip=False, error=error)
            continue
        stack.extend(f"{rel_dir}/{d}" if rel_dir else d for d in reversed(dirs))
        plan = []
        for name, out, fmt in _plan_folder(files):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if shard is None or shard.owns(rel):
                plan.append((rel, name, out, fmt))
        if not plan:
            continue
        out_dir = (dst / rel_dir if rel_dir else dst) if dst is not None else None
        existing = _clean_and_list(out_dir, {p[2] for p in plan}, clean_temps) if out_dir is not None else set()
        for rel, name, out, fmt in plan:
            yield Task(
                rel=rel,
                src=folder / name,
                dst=(out_dir / out) if out_dir is not None else Path(out),
                fmt=fmt,
                skip=(not overwrite) and out in existing,
            )


def _clean_and_list(out_dir: Path, targets: set[str], clean: bool) -> set[str]:
    """Names present in ``out_dir``; deletes temp files left by dead runs for ``targets``."""
    present: set[str] = set()
    try:
        with os.scandir(out_dir) as it:
            entries = [(e.name, e.path) for e in it]
    except FileNotFoundError:
        return present
    except OSError as err:
        log.warning("%s: cannot list output folder (%s)", out_dir, err.strerror or err)
        return present
    keys = {temp_key(t) for t in targets}
    for name, path in entries:
        parsed = parse_temp_name(name)
        if parsed is None:
            present.add(name)
            continue
        key, pid = parsed
        if clean and key in keys and owner_gone(pid):
            try:
                os.unlink(path)
                log.debug("%s: removed a temp file left by an interrupted run", path)
            except OSError:
                pass
    return present


def count(src: Path, shard: Shard | None = None) -> int:
    """How many images ``walk`` yields for this shard (no output folder touched)."""
    return sum(1 for _ in walk(src, None, shard=shard, clean_temps=False))
