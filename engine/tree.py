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

import errno
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.core.errors import ColorizerError
from engine.core.files import INPUT_SUFFIXES as INPUT_EXTS
from engine.core.files import VIDEO_SUFFIXES
from engine.core.files import OUTPUT_FORMATS, SAME_FORMAT, file_kind, owner_gone, parse_temp_name, temp_key

log = logging.getLogger(__name__)
_NAMED = INPUT_EXTS | VIDEO_SUFFIXES  # names that say "colorize me": reported when they are not readable files


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


FORMAT_CHOICES = ("same", *OUTPUT_FORMATS)


def output_format(name: str, out_format: str = "same") -> tuple[str, str]:
    """Input file name -> (preferred output file name, format written).

    ``out_format`` "same": the input's format, PNG for formats that cannot hold colour (PGM, GIF...),
    as ``photo.png``. Else one of ``OUTPUT_FORMATS``: ``photo.jpg`` -> ``photo.webp`` for "webp";
    a name already in that format keeps its name (``.jpeg`` stays ``.jpeg``).
    """
    stem, ext = os.path.splitext(name)
    ext = ext.lower()
    if out_format == "same":
        if ext in SAME_FORMAT:
            return name, SAME_FORMAT[ext]
        return stem + ".png", "PNG"
    if out_format not in OUTPUT_FORMATS:
        raise UsageError(f"format: expected one of {', '.join(FORMAT_CHOICES)}, found {out_format!r}")
    fmt, suffix = OUTPUT_FORMATS[out_format]
    if SAME_FORMAT.get(ext) == fmt:
        return name, fmt
    return stem + suffix, fmt


def check_folders(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Resolve both folders; refuse a missing input and any overlap of input and output."""
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    if not src_p.is_dir():
        what = "a file" if src_p.exists() else "missing"
        raise UsageError(f"input folder: expected a directory, found {what}: {src_p}")
    if dst_p.exists() and not dst_p.is_dir():
        raise UsageError(f"output folder: expected a directory, found a file: {dst_p}")
    rs, rd = src_p.resolve(), dst_p.resolve()
    if rd == rs or rs in rd.parents or _reaches(rd, rs):
        raise UsageError(f"output folder {dst_p} is inside the input folder {src_p}; choose a folder outside it")
    if rd in rs.parents or _reaches(rs, rd):
        raise UsageError(
            f"input folder {src_p} is inside the output folder {dst_p}; outputs could overwrite inputs, "
            f"choose separate folders"
        )
    return src_p, dst_p


def _reaches(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` (or the part of it that exists) is ``outer`` or inside it by identity (device, inode).

    Paths alone miss a bind mount or a second mount of the same file system: ``/mnt/alias/out``
    can be inside ``/data/in`` although neither path contains the other.
    """
    try:
        target = os.stat(outer)
    except OSError:
        return False
    for folder in (inner, *inner.parents):
        try:
            st = os.stat(folder)
        except OSError:
            continue  # not created yet: its parents decide
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _scan(folder: Path) -> tuple[list[str], list[str], dict[str, str], str | None]:
    """One folder: sorted visible sub-directories, files, image or video names that are not files (name -> reason),
    error.

    Directory symlinks are not followed. A name with an image suffix that is not a readable
    regular file (a dangling or looping symlink, a FIFO, a device) is reported, never dropped.
    """
    dirs, files, odd = [], [], {}
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as err:
        return [], [], {}, f"cannot list folder ({err.strerror or err})"
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                dirs.append(e.name)
                continue
            if e.is_file():
                files.append(e.name)
                continue
        except OSError:
            pass
        if os.path.splitext(e.name)[1].lower() in _NAMED:
            odd[e.name] = _not_a_file(e)
    return sorted(dirs), sorted(files), odd, None


def _not_a_file(entry: os.DirEntry) -> str:
    """Why an entry with an image name is not a file we can read."""
    try:
        st = os.stat(entry.path)
    except OSError as err:
        if entry.is_symlink():
            what = "a symbolic link loop" if err.errno == errno.ELOOP else "a dangling symbolic link"
            return f"not readable: {what} ({err.strerror or err})"
        return f"not readable ({err.strerror or err})"
    return f"not a regular file ({file_kind(st.st_mode)})"


def plan_folder(names: list[str], out_format: str = "same") -> list[tuple[str, str, str, str | None]]:
    """Image names of one folder -> ``(input name, output name, format, error)``, every output name unique.

    Decided for the whole folder before anything is written, so the result does not depend on
    which file is read first, and a rerun decides the same. The rules, in order:

    1. An input already in the output format keeps its name (``a.png`` -> ``a.png``) and owns it.
    2. Any other input gets its stem and the format's suffix (``a.gif`` -> ``a.png``) if no
       input owns that name; else its whole name plus the suffix (``a.gif`` -> ``a.gif.png``).
       Inputs are taken in sorted order.
    3. If both names are taken, the input fails with a reason naming the input that owns the
       name (``error`` set, no output name is claimed): nothing is lost in silence.
    """
    chosen: list[tuple[str, str, str, str | None]] = []
    owner: dict[str, str] = {}
    wanted = [(n, *output_format(n, out_format)) for n in sorted(names) if os.path.splitext(n)[1].lower() in INPUT_EXTS]
    for name, out, _ in wanted:
        if out == name:
            owner[name] = name
    for name, out, fmt in wanted:
        if out == name:
            chosen.append((name, out, fmt, None))
            continue
        suffix = os.path.splitext(out)[1]
        for candidate in (out, name + suffix):
            if candidate not in owner:
                owner[candidate] = name
                chosen.append((name, candidate, fmt, None))
                break
        else:
            other = owner[name + suffix]
            chosen.append((name, "", fmt,
                           f"output name clash: {out} and {name + suffix} are both taken "
                           f"(by {owner[out]} and {other}); rename one of them"))
    return chosen


def walk(
    src: Path,
    dst: Path | None = None,
    *,
    shard: Shard | None = None,
    overwrite: bool = False,
    clean_temps: bool = True,
    out_format: str = "same",
    videos: bool = False,
) -> Iterator[Task]:
    """Yield a ``Task`` per image under ``src`` (sorted, this shard's only).

    ``videos``: a ``Task`` per video file instead (``VIDEO_SUFFIXES``; the output keeps the name, ``fmt``
    "VIDEO"), with the same rules, except that folders that cannot be listed are left to the image walk.

    A folder that cannot be listed is yielded as a ``Task`` with ``error`` set (every shard
    reports it); so is an image name that is not a readable file (``_scan``) and an input whose
    output name clashes (``plan_folder``). With ``dst``: marks tasks whose output exists as a
    regular file (unless ``overwrite``), fails those whose output path exists as something else
    (a folder, a symlink...), and deletes stale temp files of this shard's targets in each output
    folder before yielding.
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = src / rel_dir if rel_dir else src
        dirs, files, odd, error = _scan(folder)
        if error is not None:
            if videos:
                continue
            yield Task(rel=rel_dir or ".", src=folder, dst=dst or folder, fmt="", skip=False, error=error)
            continue
        stack.extend(f"{rel_dir}/{d}" if rel_dir else d for d in reversed(dirs))
        if videos:
            planned = [(n, n, "VIDEO", None) for n in files if os.path.splitext(n)[1].lower() in VIDEO_SUFFIXES]
        else:
            planned = plan_folder(files, out_format)
        wanted = VIDEO_SUFFIXES if videos else INPUT_EXTS
        plan = planned + [(name, "", "", why) for name, why in odd.items()
                          if os.path.splitext(name)[1].lower() in wanted]
        plan.sort()
        mine = []
        for name, out, fmt, why in plan:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if shard is None or shard.owns(rel):
                mine.append((rel, name, out, fmt, why))
        if not mine:
            continue
        out_dir = (dst / rel_dir if rel_dir else dst) if dst is not None else None
        files_there, others = (_clean_and_list(out_dir, {m[2] for m in mine if m[2]}, clean_temps)
                               if out_dir is not None else (set(), {}))
        for rel, name, out, fmt, why in mine:
            target = (out_dir / out) if out_dir is not None else Path(out)
            if why is None and out in others:
                why = f"output path {target} exists and is {others[out]}; remove it or choose another output folder"
            yield Task(rel=rel, src=folder / name, dst=target, fmt=fmt,
                       skip=why is None and not overwrite and out in files_there, error=why)


def _clean_and_list(out_dir: Path, targets: set[str], clean: bool) -> tuple[set[str], dict[str, str]]:
    """Regular files in ``out_dir``, and the other entries (name -> what it is); deletes dead runs' temp files.

    Only temp files of ``targets`` whose owner process is provably gone are deleted.
    """
    present: set[str] = set()
    others: dict[str, str] = {}
    try:
        with os.scandir(out_dir) as it:
            entries = list(it)
    except FileNotFoundError:
        return present, others
    except OSError as err:
        log.warning("%s: cannot list output folder (%s)", out_dir, err.strerror or err)
        return present, others
    keys = {temp_key(t) for t in targets}
    for e in entries:
        parsed = parse_temp_name(e.name)
        if parsed is None:
            if e.name in targets:
                try:
                    regular = e.is_file(follow_symlinks=False)
                    kind = "" if regular else file_kind(e.stat(follow_symlinks=False).st_mode)
                except OSError as err:
                    regular, kind = False, f"unreadable ({err.strerror or err})"
                if regular:
                    present.add(e.name)
                else:
                    others[e.name] = kind
            continue
        key, pid = parsed
        if clean and key in keys and owner_gone(pid):
            try:
                os.unlink(e.path)
                log.debug("%s: removed a temp file left by an interrupted run", e.path)
            except OSError:
                pass
    return present, others


def remove_dead_temps(out_dir: Path, targets: set[str]) -> None:
    """Delete the temp files of ``targets`` in ``out_dir`` left by runs whose process is gone."""
    _clean_and_list(out_dir, targets, True)


def count(src: Path, shard: Shard | None = None) -> int:
    """How many images ``walk`` yields for this shard (no output folder touched)."""
    return sum(1 for _ in walk(src, None, shard=shard, clean_temps=False))
