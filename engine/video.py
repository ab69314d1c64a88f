"""Colorize a video file: decode, run the model on every frame's luma, smooth the chroma over time, encode.

Three stages on bounded queues, so memory stays flat however long the film: a decoder thread (demux,
decode, the luma plane and its model-size copy), the model in the caller's thread (batches through the
runner, then ``engine.temporal.ChromaSmoother`` in frame order) and an encoder thread (the chroma planes
at full resolution with the photo path's ``images.compose_jpeg_chroma``, H.264 or VP9 encode, mux).

Every frame's own luma plane goes to the encoder untouched (only the codec's loss changes it); the
chroma planes are the model's, upscaled. Timestamps, time base, frame rate, size, sample aspect ratio
and display rotation are the input's; audio and subtitle packets are copied, not re-encoded (other
streams are named in a note); container metadata is kept. Output is 4:2:0, or 4:4:4 for an odd width or
height. The output is written to a temp file beside the target (``engine.core.files.temp_name``) and
renamed when complete, so a killed run leaves no partial output. PyAV (``av``) is imported only here,
when a video is processed.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine import flow, images, temporal, tree
from engine.backends.base import Runner
from engine.core import color
from engine.core.errors import ColorizerError
from engine.core.files import DEFAULT_X264_PRESET, VIDEO_CONTAINERS, X264_PRESETS, create_temp, file_kind, printable
from engine.progress import utc_now, utc_stamp
from engine.stages import infer_chroma

log = logging.getLogger(__name__)

DEFAULT_CRF = 17
# 8-bit planar formats whose first plane is the luma as stored: read without any conversion.
_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p",
                "yuv411p", "yuvj411p", "yuv410p", "gray", "nv12", "nv21"}
_SPC_SMPTE170M = 6  # AVCOL_SPC_SMPTE170M: the BT.601 matrix the chroma is computed with
_RANGE_JPEG = 2  # AVCOL_RANGE_JPEG: full range


class VideoError(ColorizerError):
    """A video that cannot be read or written; ``str`` is one ``path: reason`` line."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{printable(os.fspath(path))}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass
class VideoSettings:
    size: int = 256
    batch_size: int = 8
    saturation: float = 1.0
    multiple: int | None = None  # images.fit's padding multiple (None: square)
    temporal: float = temporal.DEFAULT_STRENGTH
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_X264_PRESET  # x264 only (VP9 has its own speed setting)


@dataclass
class VideoSummary:
    frames: int = 0
    seconds: float = 0.0
    cuts: int = 0
    audio_streams: int = 0
    subtitle_streams: int = 0
    skipped: bool = False
    stopped: bool = False  # the caller's stop event was set: nothing was written

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def record(self, src: Path, dst: Path, *, exit_code: int, failure: str | None = None) -> dict[str, Any]:
        """``colorize-video --summary-json``: the outcome as plain JSON types (paths via ``printable``)."""
        return {"utc": utc_stamp(utc_now()), "input": printable(os.fspath(src)),
                "output": printable(os.fspath(dst)), "frames": self.frames, "seconds": round(self.seconds, 3),
                "frames_per_second": round(self.frames_per_second, 3), "scene_cuts": self.cuts,
                "audio_streams": self.audio_streams, "subtitle_streams": self.subtitle_streams,
                "skipped": self.skipped, "stopped": self.stopped, "exit_code": exit_code,
                "failure": None if failure is None else printable(failure)}

    def line(self) -> str:
        if self.skipped:
            return "0 frames colorized: the output exists (skipped)"
        audio = f", {self.audio_streams} audio stream{'s' * (self.audio_streams != 1)} copied"
        if self.subtitle_streams:
            audio += f", {self.subtitle_streams} subtitle stream{'s' * (self.subtitle_streams != 1)} copied"
        return (f"{self.frames} frames colorized in {self.seconds:.1f} s ({self.frames_per_second:.2f} frames/s), "
                f"{self.cuts} scene cut{'s' * (self.cuts != 1)}{audio}")


@dataclass
class _Frame:
    index: int
    luma: np.ndarray  # uint8 (H, W), as stored (limited or full range)
    x: np.ndarray  # model input: full-range luma fitted to the model size
    crop: tuple[int, int]
    pts: int
    uv: np.ndarray | None = None


@dataclass
class _Probe:
    width: int
    height: int
    rate: Any
    total: int | None
    rotation: int
    full_range: bool
    audio: list[str]  # codec names of the audio streams, all copied
    subtitles: list[str]  # codec names of the subtitle streams, all copied
    left: list[str]  # the other streams (data, attachments), not copied: "#index type (codec)"
    duration: float | None  # seconds of video the header promises (None: it does not say)


TRUNCATED_SLACK_S = 0.5  # a video that ends this much before its header's duration is truncated


def _duration(c: Any, vs: Any) -> float | None:
    """The video stream's duration in seconds from the header: the stream's, its DURATION tag (Matroska), or
    the container's when no audio stream could make that longer."""
    if vs.duration and vs.time_base:
        return float(vs.duration * vs.time_base)
    tag = vs.metadata.get("DURATION") or vs.metadata.get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return None
    if c.duration and not c.streams.audio:
        return c.duration / 1_000_000
    return None


def _av() -> Any:
    import av  # the video extra; cli.py names it when missing

    return av


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


def check_paths(src: Path, dst: Path) -> None:
    """Usage checks before a model is loaded: the output's container from its suffix, the input not the output."""
    if dst.suffix.lower() not in VIDEO_CONTAINERS:
        raise tree.UsageError(f"output {dst}: expected a name ending in {', '.join(sorted(VIDEO_CONTAINERS))}, "
                              f"found {dst.suffix or 'no suffix'!r}")
    if src.exists() and dst.exists() and os.path.samefile(src, dst):
        raise tree.UsageError(f"output {dst} is the input; the input is never written")


def _probe(av: Any, src: Path) -> _Probe:
    """Open ``src`` once to check it and read what the output needs before its header: size, rotation, range."""
    try:
        with av.open(os.fspath(src)) as c:
            if not c.streams.video:
                kinds = ", ".join(s.type for s in c.streams) or "nothing"
                raise VideoError(src, f"no video stream (found: {kinds})")
            vs = c.streams.video[0]
            if vs.codec_context is None:
                raise VideoError(src, "unsupported video codec (no decoder for it in this FFmpeg build)")
            left = [f"#{s.index} {s.type} ({_codec_name(s)})" for s in c.streams
                    if s.type not in ("audio", "subtitle") and s is not vs]
            for frame in c.decode(vs):
                return _Probe(frame.width, frame.height, vs.average_rate or vs.guessed_rate or vs.base_rate,
                              vs.frames or None, int(frame.rotation or 0), _full_range(frame),
                              [_codec_name(a) for a in c.streams.audio],
                              [_codec_name(t) for t in c.streams.subtitles], left, _duration(c, vs))
            raise VideoError(src, "no video frame could be decoded")
    except av.error.FFmpegError as e:
        raise VideoError(src, f"cannot read as a video ({_reason(e)})") from e


def _codec_name(stream: Any) -> str:
    cc = getattr(stream, "codec_context", None)
    return cc.name if cc is not None and cc.name else getattr(stream, "codec_tag", "") or stream.type


def _pix_fmt(probe: _Probe) -> str:
    """yuv420p, the format every player takes; yuv444p for an odd width or height (4:2:0 needs even ones)."""
    return "yuv444p" if probe.width % 2 or probe.height % 2 else "yuv420p"


def _full_range(frame: Any) -> bool:
    name = frame.format.name
    return name.startswith("yuvj") or name == "gray" or int(frame.color_range) == _RANGE_JPEG


def _luma_plane(frame: Any) -> np.ndarray:
    """The frame's stored 8-bit luma ``(H, W)``: the first plane as is, or a conversion to yuv420p for others."""
    if frame.format.name not in _PLANAR_8BIT:
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    a = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
    return a.copy()


# ----------------------------------------------------------------------------- stages


def _decode_stage(av: Any, src: Path, probe: _Probe, settings: VideoSettings, out_q: queue.Queue,
                  stop: threading.Event) -> None:
    index = 0
    first = last = None  # presentation times (seconds) of the first and the last frame
    with av.open(os.fspath(src)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        step = float(1 / probe.rate) if probe.rate else 0.0
        for packet in c.demux(vs, *c.streams.audio, *c.streams.subtitles):
            if packet.stream.type in ("audio", "subtitle"):
                if packet.dts is not None:  # (the stream object dies with this container: its index travels)
                    flow.put(out_q, (packet.stream.index, packet), stop)
                continue
            for frame in packet.decode():
                if (frame.width, frame.height) != (probe.width, probe.height):
                    raise VideoError(src, f"frame {index}: size changed from {probe.width}x{probe.height} to "
                                          f"{frame.width}x{frame.height} (one size per file expected)")
                luma = _luma_plane(frame)
                full = luma if probe.full_range else color.limited_luma_to_full_u8(luma)
                x, crop = images.fit(full, settings.size, multiple=settings.multiple)
                pts = frame.pts if frame.pts is not None else round(index * step / float(vs.time_base))
                at = float(pts * vs.time_base)
                first, last = at if first is None else min(first, at), at if last is None else max(last, at)
                flow.put(out_q, _Frame(index, luma, x, crop, pts), stop)
                index += 1
    # Edit lists and rounding can drop a frame or two of what a header counts: only a clear shortfall fails.
    if probe.total is not None and index < probe.total - max(2, round(TRUNCATED_SLACK_S / step if step else 2)):
        raise VideoError(src, f"truncated: {index} of {probe.total} frames could be decoded")
    if probe.duration is not None and first is not None and last is not None:
        length = last - first + step
        if length < probe.duration - TRUNCATED_SLACK_S:
            raise VideoError(src, f"truncated: the video ends after {length:.2f} s of {probe.duration:.2f} s "
                                  f"({index} frames decoded)")
    flow.put(out_q, None, stop)  # the end: after the checks, so that a truncated video never completes


def _open_output(av: Any, src_c: Any, fileobj: Any, dst: Path, probe: _Probe, settings: VideoSettings) -> tuple:
    fmt = VIDEO_CONTAINERS[dst.suffix.lower()]
    out = av.open(fileobj, "w", format=fmt)
    vin = src_c.streams.video[0]
    codec = "libvpx-vp9" if fmt == "webm" else "libx264"
    vs = out.add_stream(codec, rate=probe.rate)
    vs.width, vs.height, vs.pix_fmt = probe.width, probe.height, _pix_fmt(probe)
    vs.time_base = vin.time_base
    cc = vs.codec_context
    cc.time_base = vin.time_base
    cc.colorspace = _SPC_SMPTE170M
    cc.color_range = _RANGE_JPEG if probe.full_range else 1
    if vin.codec_context.color_primaries:
        cc.color_primaries = vin.codec_context.color_primaries
    if vin.codec_context.color_trc:
        cc.color_trc = vin.codec_context.color_trc
    if vin.sample_aspect_ratio:
        cc.sample_aspect_ratio = vin.sample_aspect_ratio
    cc.options = {"crf": str(settings.crf), "preset": settings.preset}  # speed against file size: docs/video.md
    if codec == "libvpx-vp9":
        cc.bit_rate = 0
        cc.options = {"crf": str(settings.crf), "b": "0", "row-mt": "1", "cpu-used": "4"}
    if probe.rotation:
        vs.set_display_rotation(probe.rotation)
    keep = {k: v for k, v in src_c.metadata.items() if k not in ("encoder", "major_brand", "minor_version",
                                                                 "compatible_brands")}
    out.metadata.update(keep)
    vs.metadata.update({k: v for k, v in vin.metadata.items() if k in ("language", "title", "handler_name")})
    copied = {}  # input stream index -> output stream, for the audio and subtitle packets
    for a in (*src_c.streams.audio, *src_c.streams.subtitles):
        o = out.add_stream_from_template(a)
        o.metadata.update(a.metadata)
        o.disposition = a.disposition
        copied[a.index] = o
    return out, vs, copied


def _encode_stage(av: Any, src: Path, dst: Path, fileobj: Any, probe: _Probe, settings: VideoSettings,
                  in_q: queue.Queue, stop: threading.Event) -> None:
    with av.open(os.fspath(src)) as src_c:  # stream templates for the output (nothing is decoded from it)
        out, vs, copied = _open_output(av, src_c, fileobj, dst, probe, settings)
        try:
            _encode_loop(av, out, vs, copied, probe, settings, in_q, stop)
        finally:
            out.close()


def _encode_loop(av: Any, out: Any, vs: Any, copied: dict, probe: _Probe, settings: VideoSettings,
                 in_q: queue.Queue, stop: threading.Event) -> None:
    h, w = probe.height, probe.width
    subsampled = _pix_fmt(probe) == "yuv420p"
    while True:
        item = flow.get(in_q, stop)
        if item is None:
            break
        if not isinstance(item, _Frame):  # an audio or subtitle packet, copied
            index, packet = item
            packet.stream = copied[index]
            out.mux(packet)
            continue
        cb, cr = images.compose_jpeg_chroma((h, w), item.uv, saturation=settings.saturation,
                                            limited=not probe.full_range, subsampled=subsampled)
        if subsampled:
            planes = np.concatenate([item.luma.reshape(-1), cb.reshape(-1), cr.reshape(-1)])
            frame = av.VideoFrame.from_ndarray(planes.reshape(h * 3 // 2, w), format="yuv420p")
        else:
            frame = av.VideoFrame.from_ndarray(np.stack([item.luma, cb, cr]), format="yuv444p", channel_last=False)
        frame.pts = item.pts
        frame.time_base = vs.codec_context.time_base
        out.mux(vs.encode(frame))
    out.mux(vs.encode(None))


# ----------------------------------------------------------------------------- the run


def colorize_video(runner: Runner, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                   settings: VideoSettings, *, overwrite: bool = False,
                   progress: Callable[[int, int | None, float], None] | None = None,
                   halt: threading.Event | None = None) -> VideoSummary:
    """Colorize the video ``src`` into ``dst`` (container from its suffix); see the module docstring.

    An existing ``dst`` is skipped unless ``overwrite``. Raises ``UsageError`` for bad paths or settings and
    ``VideoError`` (one ``path: reason``) for a video that cannot be read or written; ``progress(frames done,
    frames expected or None, seconds)`` is called in the caller's thread after every batch. ``halt``: once
    set (SIGTERM), the video is abandoned after the batch in hand: its temp file is removed, nothing is
    written, and the summary says ``stopped``.
    """
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    check_paths(src_p, dst_p)
    if not 0.0 <= settings.temporal <= temporal.MAX_STRENGTH:
        raise tree.UsageError(f"temporal: expected 0..{temporal.MAX_STRENGTH}, found {settings.temporal!r}")
    if not 0 <= settings.crf <= 63:
        raise tree.UsageError(f"crf: expected 0..63, found {settings.crf!r}")
    if settings.preset not in X264_PRESETS:
        raise tree.UsageError(f"preset: expected one of {', '.join(X264_PRESETS)}, found {settings.preset!r}")
    if not src_p.exists():
        raise VideoError(src_p, "does not exist")
    if not src_p.is_file():
        raise VideoError(src_p, f"not a regular file ({file_kind(src_p.stat().st_mode)})")
    if dst_p.exists() or dst_p.is_symlink():
        if not dst_p.is_file() or dst_p.is_symlink():
            raise VideoError(dst_p, f"the output path is {file_kind(dst_p.lstat().st_mode)}, not a regular file")
        if not overwrite:
            log.info("%s exists: skipped (--overwrite redoes it)", printable(os.fspath(dst_p)))
            return VideoSummary(skipped=True)
    av = _av()
    probe = _probe(av, src_p)
    with av.open(io.BytesIO(), "w", format=VIDEO_CONTAINERS[dst_p.suffix.lower()]) as sample:
        for kind, names in (("audio", probe.audio), ("subtitles", probe.subtitles)):
            refused = sorted({name for name in names if name not in sample.supported_codecs})
            if refused:
                raise VideoError(src_p, f"its {kind} ({', '.join(refused)}) {'is' if kind == 'audio' else 'are'} "
                                        f"copied, not re-encoded, and {dst_p.suffix} cannot hold "
                                        f"{'it' if kind == 'audio' else 'them'}: choose another output container "
                                        f"(.mkv holds nearly any)")
    shown = printable(os.fspath(src_p))
    if probe.left:
        log.warning("note: %s: %s not copied (only video, audio and subtitle streams are)", shown,
                    ", ".join(probe.left))
    if _pix_fmt(probe) != "yuv420p":
        log.warning("note: %s: %dx%d is odd-sized, which 4:2:0 cannot hold: written as 4:4:4 (%s)", shown,
                    probe.width, probe.height, "H.264 High 4:4:4" if dst_p.suffix.lower() != ".webm" else "VP9 profile 1")
    try:
        dst_p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(dst_p.parent, f"cannot create the output folder ({_reason(e)})") from e
    tree.remove_dead_temps(dst_p.parent, {dst_p.name})
    start = time.monotonic()
    try:
        fd, tmp = create_temp(dst_p)
    except OSError as e:
        raise VideoError(dst_p, f"cannot write ({_reason(e)})") from e
    try:
        with os.fdopen(fd, "wb") as fileobj:
            summary = _run(av, runner, src_p, dst_p, fileobj, probe, settings, progress, start, halt)
            if summary.stopped:
                return summary  # the temp file goes in ``finally``
            fileobj.flush()
            os.fsync(fileobj.fileno())
        os.replace(tmp, dst_p)
    except OSError as e:
        raise VideoError(dst_p, f"cannot write ({_reason(e)})") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    summary.seconds = time.monotonic() - start
    return summary


def _run(av: Any, runner: Runner, src: Path, dst: Path, fileobj: Any, probe: _Probe, settings: VideoSettings,
         progress: Callable[[int, int | None, float], None] | None, start: float,
         halt: threading.Event | None = None) -> VideoSummary:
    stop = threading.Event()
    depth = max(4, 2 * settings.batch_size)
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    composed: queue.Queue = queue.Queue(maxsize=depth)
    errors: list[BaseException] = []

    def guarded(target: Callable[..., None], *args: Any) -> Callable[[], None]:
        def body() -> None:
            try:
                target(*args)
            except flow.Stopping:
                pass
            except Exception as e:  # handed to the caller's thread, which raises it
                errors.append(e)
                stop.set()
        return body

    threads = [threading.Thread(target=guarded(_decode_stage, av, src, probe, settings, decoded, stop),
                                name="video-decode", daemon=True),
               threading.Thread(target=guarded(_encode_stage, av, src, dst, fileobj, probe, settings, composed, stop),
                                name="video-encode", daemon=True)]
    for t in threads:
        t.start()
    smoother = temporal.ChromaSmoother(settings.temporal)
    frames = 0
    # Every frame and packet is a new Python object: with the model and its libraries already in memory,
    # the collector's full passes over them cost several % of a 2-core run. Frozen objects are skipped.
    gc.freeze()
    expected = probe.total or (round(probe.duration * float(probe.rate)) if probe.duration and probe.rate else None)
    try:
        pending: list[Any] = []
        ended = False
        while not ended:
            item = flow.get(decoded, stop)
            if item is None:
                ended = True
            else:
                pending.append(item)
            batch = [p for p in pending if isinstance(p, _Frame)]
            if not ended and len(batch) < settings.batch_size:
                continue
            if batch:
                uvs = infer_chroma(runner, [f.x for f in batch], [f.crop for f in batch])
                for f, uv in zip(batch, uvs):
                    h, w = f.crop
                    f.uv = smoother(f.x[:h, :w], uv)
                    f.x = None  # type: ignore[assignment]
            for p in pending:
                flow.put(composed, p, stop)
            frames += len(batch)
            pending = []
            if progress is not None and batch:
                progress(frames, expected, time.monotonic() - start)
            if halt is not None and halt.is_set():
                stop.set()
                return VideoSummary(frames=frames, stopped=True)  # ``finally`` joins the threads first
        flow.put(composed, None, stop)
        threads[1].join()
        complete = not errors
    except flow.Stopping:
        complete = False
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()  # done, failed or interrupted: the threads leave their loops
        for t in threads:
            t.join()
        gc.unfreeze()
    if not errors and not complete:
        raise VideoError(src, "stopped before the last frame")
    if errors:
        e = errors[0]
        if isinstance(e, ColorizerError):
            raise e
        if isinstance(e, OSError) and not isinstance(e, av.error.FFmpegError) or isinstance(e, av.error.OSError):
            raise VideoError(dst, f"cannot write ({_reason(e)})") from e
        if isinstance(e, av.error.FFmpegError):
            raise VideoError(src, f"cannot decode or encode ({_reason(e)})") from e
        raise e
    return VideoSummary(frames=frames, cuts=smoother.cuts, audio_streams=len(probe.audio),
                        subtitle_streams=len(probe.subtitles))
