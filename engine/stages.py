"""The per-photo work of the folder pipeline, and cheap per-stage timers.

    read_photo:   decode (luma, alpha, EXIF)  ->  resize (fit + pad: square, or to the size multiple)
    infer_chroma: one model call per input shape in a batch, chroma cropped to each photo
    encode_photo: compose (full-resolution chroma)  ->  encode (the output file's bytes)
    write_photo:  encode_photo  ->  write (temp file, fsync, rename)

JPEG outputs are encoded straight from planes: Y is the photo's own luma, Cb/Cr
are the model's chroma mapped to JPEG levels at model resolution and upscaled
(``images.compose_jpeg_chroma``): no full-resolution float or RGB pass. Every
other format goes through ``images.compose`` (RGB(A)) and ``images.encode``.

``StageTimes`` sums, per stage, the wall time of each call and the CPU time of
the thread that made it (two clock reads per stage and photo, negligible), over all
threads: ``RunSummary.stages`` reports them, ``benchmarks/pipeline.py`` prints them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.core import contract
from engine import images, tree
from engine.backends.base import Runner

STAGES = ("decode", "resize", "infer", "compose", "encode", "write")


class StageTimes:
    """Per-stage totals (wall seconds, thread CPU seconds, photos), safe to update from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wall = dict.fromkeys(STAGES, 0.0)
        self._cpu = dict.fromkeys(STAGES, 0.0)
        self._count = dict.fromkeys(STAGES, 0)

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.thread_time()

    def lap(self, stage: str, start: tuple[float, float], photos: int = 1) -> tuple[float, float]:
        """Charge the time since ``start`` (from ``now()``/a previous ``lap``) to ``stage``; returns now."""
        end = self.now()
        with self._lock:
            self._wall[stage] += end[0] - start[0]
            self._cpu[stage] += end[1] - start[1]
            self._count[stage] += photos
        return end

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{stage: {"seconds", "cpu_seconds", "photos"}}``; seconds are summed over threads."""
        with self._lock:
            return {
                s: {"seconds": self._wall[s], "cpu_seconds": self._cpu[s], "photos": self._count[s]}
                for s in STAGES
            }


def read_photo(path: Path, size: int, max_pixels: int | None, times: StageTimes, *,
               multiple: int | None = None) -> tuple[images.Decoded, np.ndarray, tuple[int, int]]:
    """Decode ``path`` and fit its luma to ``size`` (``images.fit``: square, or padded to ``multiple``).

    Raises ``ImageError`` (or anything a broken file raises).
    """
    t = times.now()
    decoded = images.read_image(path, max_pixels=max_pixels)
    t = times.lap("decode", t)
    x, crop = images.fit(decoded.luma, size, multiple=multiple)
    times.lap("resize", t)
    return decoded, x, crop


def infer_chroma(runner: Runner, inputs: Sequence[np.ndarray], crops: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The model's chroma for each fitted input: float32 ``(2, h, w)`` cropped to its content ``(h, w)``.

    Inputs of one shape go through ``runner.infer`` together (in order of first appearance);
    with tight padding a batch can hold several shapes (landscape, portrait, square).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(x.shape, []).append(i)
    out: list[np.ndarray | None] = [None] * len(inputs)
    for idx in groups.values():
        x = np.stack([inputs[i] for i in idx])[:, None]
        uv = runner.infer(x, outputs=(contract.OUTPUT_UV,))[contract.OUTPUT_UV]
        for j, i in enumerate(idx):
            h, w = crops[i]
            out[i] = np.ascontiguousarray(uv[j, :, :h, :w])
    return out  # type: ignore[return-value]


def encode_photo(fmt: str, decoded: images.Decoded, uv: np.ndarray, *, saturation: float, jpeg_quality: int,
                 times: StageTimes) -> bytes:
    """Compose and encode one output in ``fmt`` (JPEG, PNG, WEBP, BMP, TIFF): the file's bytes."""
    t = times.now()
    if fmt == "JPEG":  # JPEG holds no alpha: the caller notes that it is dropped
        cb, cr = images.compose_jpeg_chroma(decoded.luma.shape, uv, saturation=saturation)
        t = times.lap("compose", t)
        data = images.encode_jpeg_ycbcr(decoded.luma, cb, cr, quality=jpeg_quality, exif=decoded.exif)
    else:
        out = images.compose(decoded.luma, uv, saturation=saturation, alpha=decoded.alpha)
        t = times.lap("compose", t)
        data = images.encode(out, fmt, quality=jpeg_quality, exif=decoded.exif)
    times.lap("encode", t)
    return data


def write_photo(task: tree.Task, decoded: images.Decoded, uv: np.ndarray, *, saturation: float,
                jpeg_quality: int, times: StageTimes) -> None:
    """Compose, encode and atomically write one output; raises ``ImageError``/``WriteError``/``OSError``."""
    data = encode_photo(task.fmt, decoded, uv, saturation=saturation, jpeg_quality=jpeg_quality, times=times)
    t = times.now()
    task.dst.parent.mkdir(parents=True, exist_ok=True)
    images.write_atomic(task.dst, data)
    times.lap("write", t)
