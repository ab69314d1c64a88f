"""The engine's Python API: one ``Colorizer`` for arrays and folders. ``cli.py colorize-dir`` is a thin shell over it.

    from engine.api import Colorizer

    with Colorizer("models/colorizer.onnx") as c:       # or backend="trt" / "torch", device="cuda:0"
        rgb = c.colorize(gray)                           # uint8 (H, W) or (H, W, 3) -> uint8 (H, W, 3)
        summary = c.colorize_dir("gray/", "out/")        # RunSummary: colorized, skipped, failed, ...
        c.colorize_file("photo.jpg", "colour.png")       # one photo: a file, a folder, or binary streams
        film = c.colorize_video("film.mp4", "out.mp4")   # VideoSummary: frames, scene cuts (needs av)

The library never prints: per-file problems are logged (logger ``engine``) as
``path: reason`` and counted; progress goes to an optional callback.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np

from engine.core import contract
from engine.core.errors import OutputError
from engine.core.files import DEFAULT_X264_PRESET
from engine import images, pipeline, single, tree
from engine.backends import open_runner
from engine.backends.base import Runner
from engine.pipeline import Progress, RunSummary
from engine.progress import Tally
from engine.stages import infer_chroma
from engine.tree import Shard, UsageError

log = logging.getLogger(__name__)

__all__ = ["Colorizer", "Progress", "RunSummary", "Shard", "UsageError"]

DEFAULT_MAX_PIXELS = 100_000_000


def check_fail_list(src: Path | None, fail_list: str | os.PathLike[str] | None) -> Path | None:
    """The ``--fail-list`` path, refused inside the input folder (or as the input file ``src``; None: stdin)
    or in a folder that does not exist."""
    if fail_list is None:
        return None
    fail_path = Path(fail_list).expanduser()
    if src is not None and src.is_dir() and src.resolve() in fail_path.resolve().parents:
        raise UsageError(f"--fail-list {fail_path} is inside the input folder {src}; the input is never written")
    if src is not None and not src.is_dir() and fail_path.exists() and os.path.samefile(fail_path, src):
        raise UsageError(f"--fail-list {fail_path} is the input file; the input is never written")
    if not fail_path.parent.is_dir():
        raise UsageError(f"--fail-list: folder {fail_path.parent} does not exist")
    return fail_path


def check_options(jpeg_quality: int, out_format: str) -> None:
    """The output options every run shares: ``jpeg_quality`` 1..100, ``out_format`` one of ``tree.FORMAT_CHOICES``."""
    if not 1 <= int(jpeg_quality) <= 100:
        raise UsageError(f"jpeg_quality: expected 1..100, found {jpeg_quality!r}")
    if out_format not in tree.FORMAT_CHOICES:
        raise UsageError(f"format: expected one of {', '.join(tree.FORMAT_CHOICES)}, found {out_format!r}")


class Colorizer:
    """A loaded model plus the pre/post-processing of the engine.

    model: path to .onnx / .plan / .pt, or None for the bundled model (colorizer.onnx, its
        engine with a GPU, .pt for torch: ``engine.backends.bundled_onnx``).
    backend: "auto", "ort", "trt" or "torch". device: None (best available), "cpu", "cuda" or "cuda:K".
    size: model input size (long side fitted). saturation: chroma scale (1.0 = model).
    padding: "square" pads every input to size x size, "tight" only to the model's size multiple
    (less work for photos that are not square), "auto" (default): tight on a CPU, square on a GPU.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        size: int = 256,
        batch_size: int = 8,
        device: str | None = None,
        saturation: float = 1.0,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        io_threads: tuple[int, int] | None = None,
        io_nice: int | None = None,
        padding: str = "auto",
    ) -> None:
        if not isinstance(size, int) or not 16 <= size <= 4096:
            raise UsageError(f"size: expected an integer in 16..4096, found {size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size: expected an integer >= 1, found {batch_size!r}")
        if not 0.0 <= float(saturation) <= 10.0:
            raise UsageError(f"saturation: expected a number in 0..10, found {saturation!r}")
        if max_pixels is not None and max_pixels < 1:
            raise UsageError(f"max_pixels: expected >= 1, found {max_pixels!r}")
        if io_threads is not None and (len(io_threads) != 2 or min(io_threads) < 1):
            raise UsageError(f"io_threads: expected (readers >= 1, writers >= 1), found {io_threads!r}")
        if io_nice is not None and not 0 <= io_nice <= 19:
            raise UsageError(f"io_nice: expected 0..19, found {io_nice!r}")
        if padding not in pipeline.PADDINGS:
            raise UsageError(f"padding: expected one of {', '.join(pipeline.PADDINGS)}, found {padding!r}")
        self.size = size
        self.batch_size = batch_size
        self.saturation = float(saturation)
        self.max_pixels = max_pixels
        self.runner: Runner = open_runner(
            model, backend, device=device, size=size, batch_size=batch_size, threads=threads
        )
        if self.runner.max_batch is not None and batch_size > self.runner.max_batch:
            log.info("batch size %d is above the engine's profile maximum %d: batches are split", batch_size,
                     self.runner.max_batch)
        self.io_threads = io_threads or pipeline.default_io_threads(self.runner.on_gpu)
        self.io_nice = io_nice if io_nice is not None else pipeline.default_io_nice(self.runner.on_gpu)
        self.padding = pipeline.resolve_padding(padding, self.runner.on_gpu)
        # fit()'s multiple: None pads square; tight pads to the runner's size multiple (8 for the bundled model).
        self._multiple = self.runner.size_multiple if self.padding == "tight" else None

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The model input ``(H, W)`` that a ``height x width`` photo runs at (fit, padding, the runner's multiple)."""
        _, (h, w) = images.fitted_shape(height, width, self.size, multiple=self._multiple)
        m = self.runner.size_multiple
        return contract.round_up(h, m), contract.round_up(w, m)

    # ------------------------------------------------------------------ lifecycle
    @property
    def backend(self) -> str:
        return self.runner.name

    def describe(self) -> str:
        """One line: backend, what really runs it, the model file."""
        return self.runner.describe()

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Colorizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ arrays
    def colorize(self, image: np.ndarray) -> np.ndarray:
        """Gray ``(H, W)`` or RGB ``(H, W, 3)`` uint8/uint16 -> colour uint8 ``(H, W, 3)`` at full resolution.

        A colour input is grayed with the colour spec's luma first; its luma is kept
        (the output's luma equals the input's up to rounding). RGBA / gray+alpha
        inputs return RGBA with the alpha unchanged.
        """
        return self.colorize_batch([image])[0]

    def colorize_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``colorize`` for several arrays (any sizes), run through the model ``batch_size`` at a time."""
        prepared = []
        for image in batch:
            luma, alpha = images.to_luma(image)
            x, crop = images.fit(luma, self.size, multiple=self._multiple)
            prepared.append((luma, alpha, x, crop))
        results: list[np.ndarray] = []
        for i in range(0, len(prepared), self.batch_size):
            chunk = prepared[i : i + self.batch_size]
            chroma = infer_chroma(self.runner, [p[2] for p in chunk], [p[3] for p in chunk])
            for (luma, alpha, _, _), uv in zip(chunk, chroma):
                results.append(images.compose(luma, uv, saturation=self.saturation, alpha=alpha))
        return results

    # ------------------------------------------------------------------ folders
    def colorize_video(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        temporal: float | None = None,
        crf: int | None = None,
        preset: str | None = None,
        overwrite: bool = False,
        progress: Callable[[int, int | None, float], None] | None = None,
        stop: threading.Event | None = None,
    ):
        """Colorize one video file into ``dst`` (``.mp4``, ``.mov``, ``.mkv``, ``.avi``: H.264; ``.webm``: VP9).

        ``temporal``: chroma smoothing strength across frames (0: frames independent; default
        ``engine.temporal.DEFAULT_STRENGTH``); ``crf``: the encoder's quality (lower is better, default 17);
        ``preset``: x264's speed preset (``engine.core.files.X264_PRESETS``, default ``DEFAULT_X264_PRESET``).
        Returns ``engine.video.VideoSummary``; raises ``engine.video.VideoError`` (``path: reason``) for a
        video that cannot be read or written. ``stop``: once set, the video is abandoned (nothing written,
        the summary says ``stopped``). Imports PyAV (the ``video`` extra).
        """
        from engine import video

        return video.colorize_video(self.runner, src, dst, self._video_settings(temporal, crf, preset),
                                    overwrite=overwrite,
                                    progress=progress, halt=stop)

    def colorize_dir(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        shard: Shard | str | None = None,
        jpeg_quality: int = 95,
        fail_list: str | os.PathLike[str] | None = None,
        progress: Callable[[Progress], None] | None = None,
        out_format: str = "same",
        stop: threading.Event | None = None,
        videos: bool = True,
        temporal: float | None = None,
        crf: int | None = None,
        preset: str | None = None,
    ) -> RunSummary:
        """Colorize every image under ``src`` into the mirrored tree ``dst``.

        Existing outputs are skipped unless ``overwrite`` (so re-running resumes);
        ``shard`` ("I/N" or ``Shard``) takes a stable 1/N of the files; ``fail_list``
        receives the failed input paths, one per line. ``out_format``: "same" (each
        input's own format) or "jpg", "png", "webp", "tiff": every output in that format,
        named by ``tree.plan_folder`` (``a.jpg`` -> ``a.png``). ``stop``: an event that,
        once set, winds the run down (no new photo or video started, the photos being written
        finished, a video being colorized abandoned without output) and returns the summary so
        far with ``stopped`` set. Raises ``UsageError`` for bad folders or options; per-file
        problems are counted in the summary.
        ``videos``: video files (``engine.core.files.VIDEO_SUFFIXES``) are colorized too, after the
        images, one at a time, with ``colorize_video``'s ``temporal``, ``crf`` and ``preset``, the same rules and
        the same summary (a video counts as one file; ``out_format`` applies to photos only).
        """
        src_p, dst_p = tree.check_folders(src, dst)
        if isinstance(shard, str):
            shard = Shard.parse(shard)
        check_options(jpeg_quality, out_format)
        fail_path = check_fail_list(src_p, fail_list)
        try:
            dst_p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"output folder {dst_p}: cannot create ({e.strerror or e})") from e
        settings = self._settings(jpeg_quality)
        readers, writers = self.io_threads
        log.debug("colorize_dir: %s -> %s, shard %s, %d readers, %d writers", src_p, dst_p, shard, readers, writers)
        films = list(tree.walk(src_p, dst_p, shard=shard, overwrite=overwrite, videos=True)) if videos else []
        video_settings = self._video_settings(temporal, crf, preset) if films else None
        with Tally(self.runner.describe(), fail_list=fail_path, progress=progress, log=pipeline.log) as tally:
            summary = pipeline.run(self.runner, src_p, dst_p, settings, overwrite=overwrite, shard=shard,
                                   out_format=out_format, stop=stop, tally=tally)
            if films and not summary.stopped:
                if tally.total is not None:
                    tally.set_total(tally.total + len(films))
                summary.stopped = self._colorize_films(films, tally, video_settings, stop)
            tally.finish()
        return summary

    def _settings(self, jpeg_quality: int) -> pipeline.Settings:
        readers, writers = self.io_threads
        return pipeline.Settings(
            size=self.size,
            batch_size=self.batch_size,
            saturation=self.saturation,
            max_pixels=self.max_pixels,
            jpeg_quality=int(jpeg_quality),
            readers=readers,
            writers=writers,
            io_nice=self.io_nice,
            multiple=self._multiple,
        )

    # ------------------------------------------------------------------ one file
    def colorize_file(
        self,
        src: str | os.PathLike[str] | BinaryIO,
        dst: str | os.PathLike[str] | BinaryIO,
        *,
        out_format: str = "same",
        overwrite: bool = False,
        jpeg_quality: int = 95,
        fail_list: str | os.PathLike[str] | None = None,
        stop: threading.Event | None = None,
    ) -> RunSummary:
        """Colorize one photo: ``src`` an image file or a binary stream (stdin), ``dst`` a folder (the output
        goes into it under its planned name), an output file path (its suffix names the format unless
        ``out_format`` does), or a binary stream (stdout: the encoded file, nothing else).

        The rules are ``engine.single``'s. Returns the same ``RunSummary`` as ``colorize_dir`` (one
        photo colorized, skipped or failed; ``stopped`` when ``stop`` was set before it was done).
        Raises ``UsageError`` for an input that is not a file, an output it cannot plan, bad options.
        """
        src_p = None if hasattr(src, "read") else Path(src).expanduser()  # type: ignore[arg-type]
        dst_p = None if hasattr(dst, "write") else Path(dst).expanduser()  # type: ignore[arg-type]
        check_options(jpeg_quality, out_format)
        plan = single.plan_file(src_p, dst_p, out_format, overwrite=overwrite)
        fail_path = check_fail_list(src_p, fail_list)
        return single.run_file(
            self.runner, plan, self._settings(jpeg_quality), fail_list=fail_path, stop=stop, log=log,
            stdin=src if src_p is None else None, stdout=dst if dst_p is None else None,  # type: ignore[arg-type]
        )

    def _video_settings(self, temporal: float | None, crf: int | None, preset: str | None = None):
        from engine import temporal as smoothing
        from engine import video

        return video.VideoSettings(
            size=self.size, batch_size=self.batch_size, saturation=self.saturation, multiple=self._multiple,
            temporal=smoothing.DEFAULT_STRENGTH if temporal is None else float(temporal),
            crf=video.DEFAULT_CRF if crf is None else int(crf),
            preset=DEFAULT_X264_PRESET if preset is None else preset,
        )

    def _colorize_films(self, films: list[tree.Task], tally: Tally, settings,
                        stop: threading.Event | None = None) -> bool:
        """The video files of a folder run, one after another, counted in ``tally``; True when ``stop`` ended it."""
        from engine import video

        for task in films:
            if stop is not None and stop.is_set():
                return True
            if task.error is not None:
                tally.event("failed", str(task.src), task.error)
            elif task.skip:
                tally.event("skipped", str(task.src))
            else:
                try:
                    film = video.colorize_video(self.runner, task.src, task.dst, settings, overwrite=True, halt=stop)
                except video.VideoError as e:
                    tally.event("failed", str(task.src), e.reason)
                except ModuleNotFoundError as e:
                    if e.name != "av":
                        raise
                    tally.event("failed", str(task.src), "needs PyAV to read videos, which is not installed: "
                                                         "pip install '.[video]'")
                else:
                    if film.stopped:
                        return True
                    tally.event("colorized", str(task.src))
        return False
