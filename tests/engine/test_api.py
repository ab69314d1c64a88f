"""engine.api.Colorizer and the folder pipeline through the Python API (in-process, fast)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from engine.core import color
from engine import images
from engine.api import Colorizer, UsageError
from engine.backends.base import Runner
from engine.pipeline import Progress
from tests.engine.corpus import output_luma, pattern, tree_digest, write_kinds, write_photos


@pytest.fixture(scope="module")
def colorizer(tiny_onnx):
    with Colorizer(tiny_onnx, backend="ort", size=64, batch_size=4, saturation=0.1) as c:
        yield c


class PixelRunner(Runner):
    """A fake model whose chroma is a known function of the pixel: U = (y - 0.5) / 5, V = 0.05."""

    name = "pixel"

    def _activate(self) -> None: ...

    def _deactivate(self) -> None: ...

    def _infer(self, gray, outputs):
        y = gray.astype(np.float32) / 255.0
        uv = np.concatenate([(y - 0.5) / 5, np.full_like(y, 0.05)], axis=1)
        return {"uv": uv, "rgb": np.repeat(gray, 3, axis=1)}


def test_colorize_arrays_full_resolution(colorizer):
    gray = pattern(123, 77, 0, 1)[..., 0]
    rgb = colorizer.colorize(gray)
    assert rgb.shape == (123, 77, 3) and rgb.dtype == np.uint8
    assert np.abs(color.rgb_u8_to_luma_u8(rgb).astype(int) - gray).max() <= 1
    colour = pattern(50, 60, 1)
    out = colorizer.colorize(colour)
    assert np.abs(color.rgb_u8_to_luma_u8(out).astype(int) - color.rgb_u8_to_luma_u8(colour)).max() <= 1
    rgba = colorizer.colorize(np.dstack([colour, np.full((50, 60), 9, np.uint8)]))
    assert rgba.shape == (50, 60, 4) and (rgba[..., 3] == 9).all()
    many = colorizer.colorize_batch([gray, colour, gray[:10, :20]] * 3)  # more than one batch, mixed sizes
    assert [m.shape[:2] for m in many[:3]] == [(123, 77), (50, 60), (10, 20)]
    assert np.array_equal(many[0], rgb)


def test_chroma_is_aligned_with_the_photo(tiny_onnx):
    """With a model whose chroma follows the pixel, the upscaled chroma must follow the full-res photo."""
    c = Colorizer(tiny_onnx, backend="ort", size=64)
    c.runner = PixelRunner().activate()
    yy, xx = np.mgrid[0:300, 0:500]
    gray = (60 + 130 * (xx / 499) ** 1.5 * (0.6 + 0.4 * yy / 299)).astype(np.uint8)  # smooth, non-square
    rgb = c.colorize(gray)
    u = color.rgb_u8_to_yuv(rgb)[..., 1]
    want = (gray.astype(np.float32) / 255 - 0.5) / 5
    assert np.abs(u - want).max() < 0.012  # a misaligned crop or pad would be off by far more at the edges


def test_option_errors(tiny_onnx):
    with pytest.raises(UsageError, match="size: expected"):
        Colorizer(tiny_onnx, size=8)
    with pytest.raises(UsageError, match="batch_size"):
        Colorizer(tiny_onnx, batch_size=0)
    with pytest.raises(UsageError, match="saturation"):
        Colorizer(tiny_onnx, saturation=-1)


def test_every_input_kind_round_trips(colorizer, tmp_path):
    kinds = write_kinds(tmp_path / "in")
    before = tree_digest(tmp_path / "in")
    events: list[Progress] = []
    summary = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", progress=events.append)
    assert (summary.colorized, summary.skipped, summary.failed) == (len(kinds), 0, 0), summary.failures
    assert summary.exit_code == 0 and "ort" in summary.backend
    for k in kinds:
        luma, alpha, im = output_luma(tmp_path / "out" / k.out)
        assert im.size == k.size, k.name
        assert (alpha is not None) == (k.alpha is not None), f"{k.name}: alpha kept"
        if k.alpha is not None:
            assert np.abs(alpha.astype(int) - k.alpha).max() <= (0 if k.lossless else 2), k.name
        diff = np.abs(luma.astype(int) - k.luma.astype(int))
        if not k.in_gamut:  # 0/255 levels: chroma is clipped by compose_u8, the luma moves a little
            assert diff.mean() < 12, k.name
        elif k.lossless:
            assert diff.max() <= 2, f"{k.name}: luma off by {diff.max()}"
        else:
            assert diff.mean() < 2.0, f"{k.name}: luma off by {diff.mean():.2f} on average"
    assert Image.open(tmp_path / "out" / "gray.jpg").mode == "RGB"
    assert tree_digest(tmp_path / "in") == before  # input tree untouched
    assert events and events[-1].done == len(kinds)


def test_summary_reports_time_per_stage(colorizer, tmp_path):
    from engine.stages import STAGES

    write_photos(tmp_path / "in", 5)
    s = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out")
    assert set(s.stages) == set(STAGES)
    for name, st in s.stages.items():
        assert st["photos"] == 5, name
        assert 0 <= st["cpu_seconds"] and 0 < st["seconds"] < s.seconds * 4, name


def test_resume_skips_and_overwrite_redoes(colorizer, tmp_path):
    write_photos(tmp_path / "in", 6)
    first = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out")
    assert (first.colorized, first.skipped) == (6, 0)
    again = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out")
    assert (again.colorized, again.skipped, again.failed) == (0, 6, 0)
    redo = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", overwrite=True)
    assert (redo.colorized, redo.skipped) == (6, 0)


def test_shards_split_a_folder(colorizer, tmp_path):
    paths = write_photos(tmp_path / "in", 13)
    counts = [colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", shard=f"{i}/3").colorized for i in range(3)]
    assert sum(counts) == 13 and all(c > 0 for c in counts)
    outs = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.jpg"))
    assert outs == sorted(p.relative_to(tmp_path / "in") for p in paths)


def test_bad_inputs_are_reported_and_the_rest_done(colorizer, tmp_path, caplog):
    from tests.engine.corpus import huge_png_header

    src = tmp_path / "in"
    write_photos(src, 3)
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.jpg").write_text("not an image\n")
    (src / "huge.png").write_bytes(huge_png_header(60_000, 60_000))
    fail_list = tmp_path / "failed.txt"
    with caplog.at_level("WARNING", logger="engine"):
        s = colorizer.colorize_dir(src, tmp_path / "out", fail_list=fail_list)
    assert (s.colorized, s.failed, s.exit_code) == (3, 3, 1)
    assert sorted(fail_list.read_text().split()) == sorted(str(src / n) for n in ("zero.jpg", "text.jpg", "huge.png"))
    reasons = dict(s.failures)
    assert "empty file" in reasons[str(src / "zero.jpg")] and "too large" in reasons[str(src / "huge.png")]
    assert sum(1 for r in caplog.records if r.getMessage().startswith(str(src / "text.jpg") + ": ")) == 1


def test_folder_errors(colorizer, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(UsageError, match="inside the input folder"):
        colorizer.colorize_dir(tmp_path / "in", tmp_path / "in" / "out")
    with pytest.raises(UsageError, match="--fail-list .* is inside the input folder"):
        colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", fail_list=tmp_path / "in" / "f.txt")
    with pytest.raises(UsageError, match="--shard"):
        colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", shard="3/3")


def test_large_image_in_strips_keeps_memory_small(colorizer, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "STRIP_PIXELS", 1 << 16)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(pattern(700, 900, 3)).save(src / "big.png")
    s = colorizer.colorize_dir(src, tmp_path / "out")
    assert s.colorized == 1
    luma, _, im = output_luma(tmp_path / "out" / "big.png")
    assert im.size == (900, 700)
    assert np.abs(luma.astype(int) - color.rgb_u8_to_luma_u8(pattern(700, 900, 3))).max() <= 2


def test_unreadable_folder_is_a_failure(colorizer, tmp_path, monkeypatch):
    from engine import tree

    write_photos(tmp_path / "in", 4)
    real = tree._scan

    def scan(folder):
        if folder.name == "d1":  # as for a folder without read permission (tests may run as root)
            return [], [], {}, "cannot list folder (Permission denied)"
        return real(folder)

    monkeypatch.setattr(tree, "_scan", scan)
    s = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out")
    assert (s.colorized, s.failed) == (3, 1)
    assert s.failures == [(str(tmp_path / "in" / "d1"), "cannot list folder (Permission denied)")]


def test_full_disk_stops_the_run(colorizer, tmp_path, monkeypatch):
    import errno

    from engine import pipeline

    write_photos(tmp_path / "in", 12)
    calls = []

    def full(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise images.WriteError(f"cannot write {path} (No space left on device)", errno.ENOSPC)
        real(path, data)

    real = images.write_atomic
    monkeypatch.setattr(images, "write_atomic", full)
    with pytest.raises(pipeline.RunStopped, match=r"No space left on device\); stopping"):
        colorizer.colorize_dir(tmp_path / "in", tmp_path / "out")
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 3


def test_oversized_exif_is_dropped_not_the_photo():
    exif = Image.Exif()
    exif[0x010E] = "x" * 70_000  # ImageDescription over JPEG's 64 KB APP1 limit
    data = images.encode(pattern(20, 30, 0), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (30, 20)


@pytest.mark.parametrize("budget", [1, 3 * 96 * 64 * 6])
def test_memory_budget_never_deadlocks(colorizer, tmp_path, budget):
    """Photos over the in-flight budget go one (or a few) at a time; partial batches flush instead of waiting."""
    from engine import pipeline

    write_photos(tmp_path / "in", 11)
    settings = pipeline.Settings(size=64, batch_size=4, readers=2, writers=2, inflight_bytes=budget)
    (tmp_path / "out").mkdir()
    s = pipeline.run(colorizer.runner, tmp_path / "in", tmp_path / "out", settings)
    assert (s.colorized, s.failed) == (11, 0)


@pytest.mark.parametrize("gpu", [False, True])
def test_pipeline_batches_by_device(tmp_path, gpu):
    """A GPU gets whole batches (the last one flushed when the readers are done); a CPU runner any size up to it."""
    from engine import pipeline

    class Counting(PixelRunner):
        on_gpu = gpu

        def infer(self, gray, outputs=None):
            sizes.append(gray.shape[0])
            return super().infer(gray, outputs)

    sizes: list[int] = []
    write_photos(tmp_path / "in", 11)
    (tmp_path / "out").mkdir()
    settings = pipeline.Settings(size=64, batch_size=8, readers=2, writers=2)
    with Counting() as runner:
        s = pipeline.run(runner, tmp_path / "in", tmp_path / "out", settings)
    assert (s.colorized, s.failed) == (11, 0) and sum(sizes) == 11 and max(sizes) <= 8
    if gpu:
        assert sizes == [8, 3]


def test_gpu_pipeline_overlaps_decode_inference_and_encode(tmp_path, monkeypatch):
    """While a batch is on a GPU, readers decode the next photos and writers encode the previous ones.

    The fake GPU waits 150 ms per batch in ``time.sleep`` (which releases the GIL, as a CUDA
    stream sync does); reading and writing a photo take 30 ms more each. In sequence the run
    would take ~1.6 s with the GPU busy ~55 % of it; overlapped, ~1.0 s and ~90 %.
    """
    from engine import pipeline

    spans: dict[str, list[tuple[float, float]]] = {"read": [], "infer": [], "write": []}

    def timed(fn, key, pause):
        def wrapped(*args, **kwargs):
            t = time.perf_counter()
            time.sleep(pause)
            out = fn(*args, **kwargs)
            spans[key].append((t, time.perf_counter()))
            return out
        return wrapped

    monkeypatch.setattr(pipeline, "read_photo", timed(pipeline.read_photo, "read", 0.03))
    monkeypatch.setattr(pipeline, "write_photo", timed(pipeline.write_photo, "write", 0.03))

    class SlowGpu(PixelRunner):
        on_gpu = True

        def infer(self, gray, outputs=None):
            return timed(super().infer, "infer", 0.15)(gray, outputs)

    write_photos(tmp_path / "in", 24, size=(160, 120))
    (tmp_path / "out").mkdir()
    settings = pipeline.Settings(size=64, batch_size=4, readers=2, writers=2)
    with SlowGpu() as runner:
        s = pipeline.run(runner, tmp_path / "in", tmp_path / "out", settings)
    assert (s.colorized, s.failed) == (24, 0) and len(spans["infer"]) == 6

    def overlap(a: list, b: list) -> float:
        return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b)

    assert overlap(spans["infer"], spans["read"]) > 0.15  # reads went on during inference
    assert overlap(spans["infer"], spans["write"]) > 0.15  # and writes
    assert s.stages["infer"]["seconds"] / s.seconds > 0.75  # the GPU was kept busy (sequential: ~0.55)


def test_tight_padding_runs_smaller_inputs_same_pixels(tmp_path):
    """Tight inputs (padded to the size multiple) give a per-pixel model the square run's outputs exactly."""
    from engine import pipeline

    class Recording(PixelRunner):
        size_multiple = 8

        def infer(self, gray, outputs=None):
            shapes.add(gray.shape[2:])
            return super().infer(gray, outputs)

    write_photos(tmp_path / "in", 3, size=(96, 64))  # landscape 3:2
    write_photos(tmp_path / "in" / "tall", 2, size=(40, 90), seed=5)  # portrait
    digests = {}
    for padding, multiple in (("square", None), ("tight", 8)):
        shapes: set = set()
        (tmp_path / padding).mkdir()
        settings = pipeline.Settings(size=64, batch_size=4, multiple=multiple)
        with Recording() as runner:
            s = pipeline.run(runner, tmp_path / "in", tmp_path / padding, settings)
        assert (s.colorized, s.failed) == (5, 0)
        assert shapes == ({(64, 64)} if multiple is None else {(48, 64), (64, 32)})
        digests[padding] = {k: v.split()[0] for k, v in tree_digest(tmp_path / padding).items()}  # content only
    assert digests["tight"] == digests["square"]


def test_default_io_threads(monkeypatch):
    from engine import pipeline

    for cpus, cpu_side, gpu_side in ((1, (1, 1), (1, 1)), (2, (1, 2), (1, 1)), (16, (1, 2), (5, 10))):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert pipeline.default_io_threads(on_gpu=False) == cpu_side
        assert pipeline.default_io_threads(on_gpu=True) == gpu_side


def test_padding_follows_the_device(tiny_onnx):
    from engine import pipeline

    assert pipeline.resolve_padding("auto", on_gpu=False) == "tight"
    assert pipeline.resolve_padding("auto", on_gpu=True) == "square"
    assert pipeline.resolve_padding("square", on_gpu=False) == "square"
    with Colorizer(tiny_onnx, backend="ort", size=64) as c:
        assert c.padding == "tight" and c._multiple == c.runner.size_multiple
        m = c.runner.size_multiple
        assert c.input_shape(1080, 1920) == (-(-36 // m) * m, 64) and c.input_shape(50, 50) == (64, 64)
    with Colorizer(tiny_onnx, backend="ort", size=64, padding="square") as c:
        assert c.input_shape(1080, 1920) == (64, 64)
    with pytest.raises(UsageError, match="padding: expected one of auto, square, tight, found 'round'"):
        Colorizer(tiny_onnx, backend="ort", padding="round")


@pytest.mark.parametrize("n,queued,per_call,go", [
    (1, False, 1, True),    # CPU, nothing else ready: run the photo now
    (1, True, 1, False),    # more photos waiting: let the batch fill
    (8, True, 1, True),     # a whole batch goes anyway
    (3, False, 4, False),   # a CPU call holds 4 (small photos): wait for the fourth
    (4, False, 4, True),
    (7, False, 8, False),   # a GPU (a call = the batch) waits for whole batches
])
def test_batch_ready(n, queued, per_call, go):
    from engine import pipeline

    assert pipeline.batch_ready(n, batch_size=8, per_call=per_call, more_ready=queued) is go


def _exif(tag_text: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = tag_text  # Make
    return exif.tobytes()


@pytest.mark.parametrize("out_format,fmt,suffix", [("png", "PNG", ".png"), ("jpg", "JPEG", ".jpg"),
                                                   ("webp", "WEBP", ".webp"), ("tiff", "TIFF", ".tif")])
def test_out_format_writes_every_output_in_it(colorizer, tmp_path, caplog, out_format, fmt, suffix):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rgb = pattern(30, 40, 1)
    Image.fromarray(rgb).save(src / "photo.jpg", quality=95, exif=_exif("TestCam"))
    Image.fromarray(np.dstack([rgb, np.full((30, 40), 7, np.uint8)])).save(src / "alpha.png")
    Image.fromarray(rgb[..., 0]).save(src / "gray.pgm")
    with caplog.at_level("INFO", logger="engine"):
        s = colorizer.colorize_dir(src, dst, out_format=out_format)
    assert (s.colorized, s.failed) == (3, 0), s.failures
    outs = sorted(p.name for p in dst.iterdir())
    assert outs == sorted(f"{n}{suffix}" for n in ("alpha", "gray", "photo"))
    for p in dst.iterdir():
        with Image.open(p) as im:
            assert im.format == fmt and im.size == (40, 30), p
    with Image.open(dst / f"alpha{suffix}") as im:
        assert ("A" in im.mode) is (fmt != "JPEG")
    notes = [r.getMessage() for r in caplog.records if "alpha dropped" in r.getMessage()]
    assert notes == ([f"note: {src / 'alpha.png'}: alpha dropped (JPEG cannot hold it)"] if fmt == "JPEG" else [])
    with Image.open(dst / f"photo{suffix}") as im:
        make = im.getexif().get(0x010F)
    assert make == (None if fmt == "TIFF" else "TestCam")  # EXIF kept where the writer can hold it
    again = colorizer.colorize_dir(src, dst, out_format=out_format)
    assert (again.colorized, again.skipped) == (0, 3)  # resume keys on the planned names
    same = colorizer.colorize_dir(src, dst)  # "same" plans photo.jpg, alpha.png, gray.png
    assert (same.colorized, same.skipped) == {"PNG": (1, 2), "JPEG": (2, 1)}.get(fmt, (3, 0))


def test_out_format_clash_fails_the_input_that_gets_no_name(colorizer, tmp_path):
    src = tmp_path / "in"
    for name in ("a.jpg", "a.png", "a.jpg.png"):
        write_photos(src, 1)[0].rename(src / name)
    s = colorizer.colorize_dir(src, tmp_path / "out", out_format="png")
    assert (s.colorized, s.failed) == (2, 1)
    assert s.failures[0][0] == str(src / "a.jpg") and "output name clash" in s.failures[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg.png", "a.png"]


def test_out_format_is_checked(colorizer, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(UsageError, match="format: expected one of same, jpg, png, webp, tiff, found 'gif'"):
        colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", out_format="gif")
    assert not (tmp_path / "out").exists()


def test_stop_event_winds_a_folder_run_down(colorizer, tmp_path):
    """Set from the progress callback after two photos: no new photo starts, the summary says stopped."""
    import threading

    from engine import tree

    write_photos(tmp_path / "in", 30)
    stop = threading.Event()

    def progress(p: Progress) -> None:
        if p.colorized >= 2:
            stop.set()

    s = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out", stop=stop, progress=progress)
    outs = list((tmp_path / "out").rglob("*.jpg"))
    assert s.stopped and 2 <= s.colorized == len(outs) < 30 and s.failed == 0
    assert [p for p in (tmp_path / "out").rglob("*") if tree.parse_temp_name(p.name)] == []
    rest = colorizer.colorize_dir(tmp_path / "in", tmp_path / "out")
    assert not rest.stopped and (rest.colorized, rest.skipped) == (30 - len(outs), len(outs))


def test_colorize_file_streams_and_paths(colorizer, tmp_path):
    import threading

    src = tmp_path / "photo.jpg"
    Image.fromarray(pattern(30, 40, 1)).save(src, quality=95, exif=_exif("StreamCam"))
    out = io.BytesIO()
    s = colorizer.colorize_file(io.BytesIO(src.read_bytes()), out, out_format="webp")
    assert (s.colorized, s.failed) == (1, 0)
    with Image.open(io.BytesIO(out.getvalue())) as im:
        assert im.format == "WEBP" and im.size == (40, 30) and im.getexif().get(0x010F) == "StreamCam"
    s = colorizer.colorize_file(src, tmp_path / "o.png")
    assert s.colorized == 1 and Image.open(tmp_path / "o.png").getexif().get(0x010F) == "StreamCam"
    assert colorizer.colorize_file(src, tmp_path / "o.png").skipped == 1
    assert colorizer.colorize_file(src, tmp_path / "o.png", overwrite=True).colorized == 1
    stop = threading.Event()
    stop.set()
    s = colorizer.colorize_file(src, tmp_path / "never.png", stop=stop)
    assert s.stopped and s.done == 0 and not (tmp_path / "never.png").exists()
    with pytest.raises(UsageError, match="cannot write .gif"):
        colorizer.colorize_file(src, tmp_path / "o.gif")
