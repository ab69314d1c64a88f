"""The run folder (``--out RUN_DIR``) of a training: checks, lock, metrics file, RNG states.

Layout::

    RUN_DIR/last.pt          latest checkpoint (every validation and at the end)
    RUN_DIR/best.pt          checkpoint with the best validation PSNR so far
    RUN_DIR/metrics.jsonl    one JSON object per validation
    RUN_DIR/train_files.txt  the training split, one absolute path per line
    RUN_DIR/val_files.txt    the validation split (``cli.py evaluate`` accepts it)
    RUN_DIR/cache/           decoded photos (unless ``--cache DIR``)
    RUN_DIR/.lock            held (flock) while a training runs here
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core import files
from engine.core.errors import ColorizerError


class OutputError(ColorizerError):
    """The run folder cannot be used."""


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written there, before any training."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"--out {out}: run folder is not writable ({e.strerror or e})") from e


def lock(out: Path) -> int | None:
    """Take ``out/.lock`` (released by the OS even on kill -9); refuse a second training in ``out``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise OutputError(f"--out {out}: another training is using this run folder") from e
    return fd


def remove_stale_temps(out: Path) -> None:
    """Delete temp files a kill left behind during a save, whose process is gone (call while holding the lock)."""
    for stale in out.glob(".*.tmp-*"):
        parsed = files.parse_temp_name(stale.name)
        if parsed is not None and files.owner_gone(parsed[1]):
            stale.unlink(missing_ok=True)


DONE = "DONE"  # written in a run folder once training reached its last step; what score-runs looks for


def mark_done(out: Path, step: int, steps: int) -> None:
    """Record that the run in ``out`` finished (``step == steps``): a small JSON file named ``DONE``."""
    files.write_json_atomic(out / DONE, {"step": step, "steps": steps, "checkpoint": "last.pt"})


def write_file_list(path: Path, paths: list[Path]) -> None:
    files.write_text_atomic(path, "".join(f"{p.resolve()}\n" for p in paths))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def trim_metrics(path: Path, step: int) -> None:
    """Drop lines for steps after ``step`` (and any torn line) left by an interrupted run."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    files.write_text_atomic(path, "".join(k + "\n" for k in keep))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def get_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}  # plain types: checkpoints load weights_only
    rng = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any]) -> None:
    if "python" in rng:
        random.setstate(rng["python"])
    if "numpy" in rng:
        n = rng["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
