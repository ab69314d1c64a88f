"""``cli.py colorize-video`` and ``Colorizer.colorize_video`` on small clips generated here with PyAV."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine import temporal
from engine.api import Colorizer
from engine.core.files import parse_temp_name
from tests.conftest import ROOT

av = pytest.importorskip("av", reason="PyAV is not installed (the video extra): pip install -e '.[video]'")


def scene(seed: int, h: int, w: int) -> np.ndarray:
    """A gray picture with blocks and a gradient (something for the model to colour)."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(30, 220, (h // 16 + 1, w // 16 + 1)), np.ones((16, 16)))[:h, :w]
    ramp = np.linspace(0, 60, w)[None, :]
    return np.clip(blocks * 0.8 + ramp, 0, 255).astype(np.uint8)


def make_clip(path: Path, frames: list[np.ndarray], *, rate: int = 25, audio: bool = True,
              rotation: int | None = None, codec: str = "libx264") -> None:
    h, w = frames[0].shape
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            vs.set_display_rotation(rotation)
        out.metadata["title"] = "test reel"
        a = out.add_stream("aac", rate=8000, layout="mono") if audio else None
        for gray in frames:
            f = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        if a is not None:
            n = int(8000 * len(frames) / rate)
            tone = (0.3 * np.sin(np.arange(n) / 5.0)).astype(np.float32)[None]
            for k in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k : k + 1024]), format="fltp",
                                                layout="mono")
                af.sample_rate = 8000
                out.mux(a.encode(af))
            out.mux(a.encode(None))


def planes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's Y ``(N, H, W)`` and chroma ``(N, 2, H/2, W/2)`` as stored (uint8 levels)."""
    ys, uvs = [], []
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            a = f.to_ndarray(format="yuv420p")
            h, w = f.height, f.width
            ys.append(a[:h])
            chroma = a[h:].reshape(2, h // 2, w // 2)
            uvs.append(chroma)
    return np.stack(ys), np.stack(uvs)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.dts is not None]


def cli(*args: object, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", "colorize-video", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def colorizer(tiny_onnx):
    with Colorizer(tiny_onnx, size=64, batch_size=4, threads=1) as c:
        yield c


def test_cli_keeps_frames_timing_size_rotation_audio_and_luma(tiny_onnx, tmp_path):
    frames = [np.roll(scene(0, 64, 96), 2 * i, axis=1) for i in range(30)]  # a pan
    src, dst = tmp_path / "reel.mp4", tmp_path / "out" / "reel.mp4"
    make_clip(src, frames, rate=24, rotation=90)
    r = cli(src, dst, "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("backend: ort")
    assert r.stdout.splitlines()[-1].startswith("30 frames colorized") and "1 audio stream copied" in r.stdout
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert vb.codec_context.name == "h264" and vb.codec_context.pix_fmt == "yuv420p"
        assert (vb.width, vb.height) == (96, 64) and vb.time_base == va.time_base
        assert vb.average_rate == va.average_rate == Fraction(24)
        pts_a = [f.pts for f in a.decode(va)]
        frames_b = list(b.decode(vb))
        assert [f.pts for f in frames_b] == pts_a and len(pts_a) == 30
        assert frames_b[0].rotation == 90
        assert b.metadata.get("title") == "test reel"
    assert audio_packets(dst) == audio_packets(src)  # copied bit for bit
    y_in, _ = planes(src)
    y_out, uv_out = planes(dst)
    assert np.abs(y_out.astype(int) - y_in.astype(int)).mean() <= 2.0
    assert np.abs(uv_out.astype(int) - 128).mean() > 1.0  # it is coloured
    assert [p.name for p in dst.parent.iterdir()] == ["reel.mp4"]  # no temp file left
    r = cli(src, dst, "--model", tiny_onnx, "--size", 64)  # the output exists: skipped
    assert r.returncode == 0 and "skipped" in r.stdout.splitlines()[-1], r.stderr


def test_webm_is_vp9_from_an_mkv(colorizer, tmp_path):
    from engine.video import VideoError

    src, dst = tmp_path / "in.mkv", tmp_path / "out.webm"
    make_clip(src, [scene(1, 64, 96)] * 6, audio=True)
    with pytest.raises(VideoError, match=r"its audio \(aac\) is copied, not re-encoded, and .webm cannot hold it"):
        colorizer.colorize_video(src, dst)  # AAC cannot go into WebM: said before anything is written
    assert list(tmp_path.iterdir()) == [src]
    make_clip(src, [scene(1, 64, 96)] * 6, audio=False)
    summary = colorizer.colorize_video(src, dst)
    assert summary.frames == 6
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        assert len(list(c.decode(c.streams.video[0]))) == 6


def _chroma_flicker(path: Path) -> float:
    _, uv = planes(path)
    return temporal.flicker(uv.astype(np.float32))


def test_smoothing_lowers_flicker_on_a_still_scene(colorizer, tmp_path):
    rng = np.random.default_rng(5)
    still = scene(2, 64, 96).astype(np.int16)
    grain = [np.clip(still + rng.integers(-30, 31, still.shape), 0, 255).astype(np.uint8) for _ in range(24)]
    src = tmp_path / "still.mp4"
    make_clip(src, grain, audio=False)
    # --crf 0 (lossless): the figure is the colorizer's own flicker, not the encoder's noise on top of it
    colorizer.colorize_video(src, tmp_path / "t0.mp4", temporal=0.0, crf=0)
    colorizer.colorize_video(src, tmp_path / "t.mp4", crf=0)
    off, on = _chroma_flicker(tmp_path / "t0.mp4"), _chroma_flicker(tmp_path / "t.mp4")
    assert off > 0.1 and on < 0.5 * off, (off, on)


def test_scene_cut_resets_the_smoothing(colorizer, tmp_path):
    a, b = scene(3, 64, 96), 255 - scene(4, 64, 96)
    src = tmp_path / "cut.mp4"
    make_clip(src, [a] * 10 + [b] * 10, audio=False)
    s0 = colorizer.colorize_video(src, tmp_path / "t0.mp4", temporal=0.0)
    s9 = colorizer.colorize_video(src, tmp_path / "t9.mp4", temporal=0.95)
    assert s0.cuts == s9.cuts == 1
    _, uv0 = planes(tmp_path / "t0.mp4")
    _, uv9 = planes(tmp_path / "t9.mp4")
    uv0, uv9 = uv0.astype(float), uv9.astype(float)
    shots_differ = np.abs(uv0[9] - uv0[10]).mean()
    after_cut = np.abs(uv9[10] - uv0[10]).mean()  # smoothed vs independent, first frame of the new shot
    assert shots_differ > 1.0 and after_cut < 0.2 * shots_differ, (shots_differ, after_cut)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_stopped_run_leaves_no_partial_output_and_reruns(tiny_onnx, tmp_path, sig):
    frames = [np.roll(scene(6, 180, 320), 3 * i, axis=1) for i in range(75)]
    src, out = tmp_path / "long.mov", tmp_path / "out"
    make_clip(src, frames)
    dst = out / "long.mov"
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "cli.py", "colorize-video", str(src), str(dst), "--model", str(tiny_onnx), "--size", "64",
           "--batch-size", "1", "--summary-json", str(summary)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None and not temps:
        temps = [p for p in out.iterdir() if parse_temp_name(p.name)] if out.is_dir() else []
        time.sleep(0.05)
    assert temps, "no temp file appeared while the run was going"
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    assert not dst.exists()  # never a partial output under the real name
    if sig == signal.SIGINT:  # Ctrl-C: exit 130, and the run removes its own temp file
        assert rc == 130 and list(out.iterdir()) == []
        record = json.loads(summary.read_text())
        assert record["stopped"] is True and record["exit_code"] == 130 and 0 < record["frames"] < 75, record
    r = cli(src, dst, "--model", tiny_onnx, "--size", 64)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["long.mov"]  # the dead run's temp file removed
    y, _ = planes(dst)
    assert len(y) == 75


def test_bad_files_one_line_each_exit_1(tiny_onnx, tmp_path):
    good = tmp_path / "good.mp4"
    make_clip(good, [scene(7, 64, 96)] * 10)
    data = good.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])  # its index (at the end) is lost
    make_clip(tmp_path / "good.mkv", [np.roll(scene(7, 64, 96), i, axis=1) for i in range(50)], audio=False)
    data = (tmp_path / "good.mkv").read_bytes()
    (bad / "truncated.mkv").write_bytes(data[: len(data) * 2 // 3])  # header intact, the last third lost
    (bad / "text.mp4").write_text("this is not a video\n")
    with av.open(str(bad / "sound.mp4"), "w") as out:  # audio only
        a = out.add_stream("aac", rate=8000, layout="mono")
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate = 8000
        out.mux(a.encode(af))
        out.mux(a.encode(None))
    for name, reason in (("truncated.mp4", "cannot read as a video"), ("truncated.mkv", "truncated: the video ends"),
                         ("text.mp4", "cannot read as a video"), ("sound.mp4", "no video stream (found: audio)"),
                         ("missing.mp4", "does not exist")):
        dst = tmp_path / "out" / name
        r = cli(bad / name, dst, "--model", tiny_onnx, "--size", 64)
        assert r.returncode == 1, (name, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"{bad / name}: {reason}"), (name, r.stderr)
        out = tmp_path / "out"
        assert not dst.exists() and (not out.exists() or not any(out.iterdir())), list(out.iterdir())


def test_usage_errors_exit_2(tmp_path):
    r = cli(tmp_path / "in.mp4", tmp_path / "out.gif")
    assert r.returncode == 2 and r.stderr.startswith("error: output") and ".webm" in r.stderr, r.stderr
    r = cli(tmp_path / "in.mp4", tmp_path / "out.mp4", "--temporal", "1.5")
    assert r.returncode == 2, r.stderr
    r = cli(tmp_path / "in.mp4", tmp_path / "out.mp4", "--preset", "warp")
    assert r.returncode == 2 and "--preset" in r.stderr, r.stderr


def test_preset_reaches_the_encoder(colorizer, tmp_path):
    from engine.tree import UsageError

    src = tmp_path / "in.mp4"
    make_clip(src, [np.roll(scene(2, 64, 96), 3 * i, axis=1) for i in range(12)], audio=False)
    cabac_off = {}
    for preset in ("ultrafast", "medium"):
        colorizer.colorize_video(src, tmp_path / f"{preset}.mp4", preset=preset)
        with av.open(str(tmp_path / f"{preset}.mp4")) as c:  # x264 writes its settings into the stream
            sei = b"".join(bytes(p) for p in c.demux(c.streams.video[0]) if p.dts is not None)
        cabac_off[preset] = "cabac=0" in sei.decode("latin-1")  # ultrafast turns CABAC off, medium keeps it
    assert cabac_off == {"ultrafast": True, "medium": False}
    with pytest.raises(UsageError, match="preset: expected one of ultrafast"):
        colorizer.colorize_video(src, tmp_path / "x.mp4", preset="warp")


def test_colorize_dir_takes_videos_with_the_folder_rules(tiny_onnx, tmp_path):
    from PIL import Image

    src, dst, fails = tmp_path / "in", tmp_path / "out", tmp_path / "failed.txt"
    (src / "reels").mkdir(parents=True)
    Image.fromarray(scene(8, 64, 96)).save(src / "photo.jpg")
    make_clip(src / "reels" / "a.mkv", [scene(9, 64, 96)] * 5)
    (src / "reels" / "broken.mp4").write_text("not a video\n")
    (src / ".hidden.mp4").write_text("ignored\n")
    args = ["cli.py", "colorize-dir", src, dst, "--model", tiny_onnx, "--size", 64, "--fail-list", fails]
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[-1].startswith("2 colorized, 0 skipped, 1 failed"), r.stdout
    bad = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{src / 'reels' / 'broken.mp4'}: ")]
    assert len(bad) == 1 and "cannot read as a video" in bad[0], r.stderr
    assert fails.read_text().split() == [str(src / "reels" / "broken.mp4")]
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == ["photo.jpg", "reels", "reels/a.mkv"]
    assert audio_packets(dst / "reels" / "a.mkv") == audio_packets(src / "reels" / "a.mkv")
    assert len(planes(dst / "reels" / "a.mkv")[0]) == 5
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout.splitlines()[-1].startswith("0 colorized, 2 skipped, 1 failed"), r.stdout


def _subtitled_mkv(path: Path, frames: list[np.ndarray], srt: Path) -> None:
    """An mkv with the frames and a SubRip track (remuxed from ``srt``), language and default flag set."""
    h, w = frames[0].shape
    with av.open(str(srt)) as s, av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        sub = out.add_stream_from_template(s.streams.subtitles[0])
        sub.metadata["language"] = "fra"
        for gray in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")))
        out.mux(vs.encode(None))
        for p in s.demux(s.streams.subtitles[0]):
            if p.dts is not None:
                p.stream = sub
                out.mux(p)


def test_subtitles_are_copied_or_the_container_is_refused(colorizer, tmp_path):
    from engine.video import VideoError

    srt = tmp_path / "cues.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,200\nBonjour\n\n2\n00:00:00,200 --> 00:00:00,400\nAu revoir\n\n")
    src = tmp_path / "film.mkv"
    _subtitled_mkv(src, [scene(3, 48, 64)] * 10, srt)
    summary = colorizer.colorize_video(src, tmp_path / "out.mkv")
    assert summary.frames == 10 and summary.subtitle_streams == 1 and "1 subtitle stream copied" in summary.line()
    with av.open(str(tmp_path / "out.mkv")) as c:
        sub = c.streams.subtitles[0]
        assert sub.metadata.get("language") == "fra"
        assert [bytes(p) for p in c.demux(sub) if p.dts is not None] == [b"Bonjour", b"Au revoir"]
    with pytest.raises(VideoError, match=r"its subtitles \(\w+\) are copied, not re-encoded, and .mp4 cannot hold"):
        colorizer.colorize_video(src, tmp_path / "out.mp4")  # SubRip cannot go into MP4: nothing written
    assert not (tmp_path / "out.mp4").exists()


def test_odd_size_is_kept_as_444(colorizer, tmp_path, caplog):
    src, dst = tmp_path / "odd.mkv", tmp_path / "out.mp4"
    frames = [np.roll(scene(4, 45, 71), i, axis=1) for i in range(8)]
    with av.open(str(src), "w") as out:  # 4:4:4 in, as odd-sized material usually is (4:2:0 cannot be)
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 71, 45, "yuv444p"
        for gray in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")))
        out.mux(vs.encode(None))
    with caplog.at_level("WARNING", logger="engine.video"):
        summary = colorizer.colorize_video(src, dst)
    assert summary.frames == 8
    assert any("71x45 is odd-sized" in r.getMessage() and "4:4:4" in r.getMessage() for r in caplog.records)
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        fa, fb = list(a.decode(video=0)), list(b.decode(video=0))
        assert len(fb) == 8 and (fb[0].width, fb[0].height) == (71, 45) and fb[0].format.name == "yuv444p"
        ya = np.stack([f.to_ndarray(format="yuv444p", channel_last=False)[0] for f in fa]).astype(int)
        yb, cb = (np.stack([f.to_ndarray(format="yuv444p", channel_last=False)[k] for f in fb]).astype(int)
                  for k in (0, 1))
    assert np.abs(yb - ya).mean() <= 2.0  # the luma kept
    assert np.abs(cb - 128).mean() > 1.0  # coloured


def test_log_lines_in_frames_and_summary_json(tiny_onnx, tmp_path):
    src, dst, summary = tmp_path / "pan.mp4", tmp_path / "out.mp4", tmp_path / "run.json"
    make_clip(src, [np.roll(scene(5, 96, 160), 2 * i, axis=1) for i in range(40)])
    r = cli(src, dst, "--model", tiny_onnx, "--size", 64, "--batch-size", 1, "--log-every", 0.05,
            "--summary-json", summary)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if " frames/s now, " in ln]
    assert lines, r.stderr  # stderr is not a terminal: timed log lines, in frames
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \d+/40 frames, [\d.]+ frames/s now, [\d.]+ frames/s mean, "
                     r"ETA \d+:\d\d:\d\d$", lines[-1]), lines[-1]
    record = json.loads(summary.read_text())
    assert record["frames"] == 40 and record["exit_code"] == 0 and record["stopped"] is False
    assert record["failure"] is None and record["audio_streams"] == 1 and record["frames_per_second"] > 0
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    r = cli(bad, tmp_path / "bad-out.mp4", "--model", tiny_onnx, "--size", 64, "--summary-json", summary)
    assert r.returncode == 1, r.stderr
    record = json.loads(summary.read_text())
    assert record["exit_code"] == 1 and record["frames"] == 0
    assert record["failure"].startswith(f"{bad}: cannot read as a video"), record
    r = cli(src, dst, "--log-every", "0")
    assert r.returncode == 2 and "--log-every" in r.stderr, r.stderr
