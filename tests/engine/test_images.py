"""engine.images: decoding every input kind to the colour spec's luma, fitting, composing, encoding, writing."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from engine.core import color
from engine import images
from engine.images import ImageError
from tests.engine.corpus import huge_png_header, pattern, write_kinds


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    return folder, write_kinds(folder)


def test_every_kind_decodes_to_spec_luma(kinds):
    folder, ks = kinds
    for k in ks:
        d = images.read_image(folder / k.name)
        assert d.luma.dtype == np.uint8 and d.luma.shape == k.luma.shape, k.name
        diff = np.abs(d.luma.astype(int) - k.luma.astype(int))
        assert diff.max() <= 1, f"{k.name}: luma off by {diff.max()}"
        if k.alpha is None:
            assert d.alpha is None, k.name
        else:
            assert d.alpha is not None and np.array_equal(d.alpha, k.alpha), k.name


def test_colour_luma_is_exactly_the_spec(tmp_path):
    rgb = (np.random.default_rng(0).random((33, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(images.read_image(tmp_path / "c.png").luma, color.rgb_u8_to_luma_u8(rgb))


def test_luma_strips_equal_whole(monkeypatch):
    rgb = (np.random.default_rng(1).random((101, 37, 3)) * 255).astype(np.uint8)
    monkeypatch.setattr(images, "STRIP_PIXELS", 37 * 7)
    assert np.array_equal(images.luma_from_rgb(rgb), color.rgb_u8_to_luma_u8(rgb))


def test_exif_orientation_applied(kinds):
    folder, _ = kinds
    d = images.read_image(folder / "rotated.jpg")
    assert d.luma.shape == (67, 45)  # stored 67 wide x 45 high, orientation 6
    if d.exif:  # EXIF is carried to the output without the orientation tag (already applied)
        exif = Image.Exif()
        exif.load(d.exif)
        assert 0x0112 not in exif


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"hello, I am text\n", "not an image"),
    ],
)
def test_bad_files(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        images.read_image(p)


def test_truncated_jpeg_fails(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(pattern(200, 300, 0)).save(buf, "JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated JPEG: image data missing"):
        images.read_image(p)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_truncated_jpeg_with_an_end_marker_appended_fails(tmp_path, mode):
    """libjpeg fills the missing rows with gray and Pillow accepts the file: still a failure."""
    rgb = pattern(200, 300, 0)
    img = Image.fromarray(rgb[..., 0]) if mode == "L" else Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    with Image.open(p) as im:
        im.load()  # the fallback decoder alone would not notice
    with pytest.raises(ImageError, match="truncated JPEG: image data missing"):
        images.read_image(p)


def test_jpeg_with_a_harmless_warning_decodes_with_a_note(tmp_path):
    """Bytes after the end marker make libjpeg warn; the image itself is complete: decoded, with a warning."""
    p = _gray_jpeg(tmp_path, shape=(64, 80))
    clean = images.read_image(p)
    assert clean.warning is None
    data = p.read_bytes()
    # garbage between two markers: libjpeg warns "Corrupt JPEG data: N extraneous bytes before marker"
    sos = data.index(b"\xff\xda")
    p.write_bytes(data[:sos] + b"\x00\x01\x02" + data[sos:])
    odd = images.read_image(p)
    assert odd.warning is not None and "extraneous bytes" in odd.warning
    assert np.array_equal(odd.luma, clean.luma)


def _gray_jpeg(tmp_path, name="g.jpg", shape=(123, 201), **save):
    luma = cv2.GaussianBlur(pattern(*shape, 0, 1)[..., 0], (0, 0), 1.5)
    p = tmp_path / name
    Image.fromarray(luma).save(p, "JPEG", quality=90, **save)
    return p


def test_gray_jpeg_fast_path_equals_pillow(tmp_path, monkeypatch):
    """libjpeg-turbo via simplejpeg and Pillow's decoder give the same pixels and the same EXIF."""
    exif = Image.Exif()
    exif[0x0132] = "2020:01:02 03:04:05"
    p = _gray_jpeg(tmp_path, exif=exif.tobytes())
    calls = []
    real = images.simplejpeg.decode_jpeg
    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = images.read_image(p)
    assert calls, "a plain gray JPEG should take the simplejpeg road"
    with Image.open(p) as im:
        slow = images._decode(im)
    assert fast.luma.shape == (123, 201) and fast.luma.flags["C_CONTIGUOUS"] and fast.luma.dtype == np.uint8
    assert np.array_equal(fast.luma, slow.luma) and fast.alpha is None and fast.source == slow.source == "JPEG L"
    back = Image.Exif()
    back.load(fast.exif)
    assert back.get(0x0132) == "2020:01:02 03:04:05" and fast.exif == slow.exif


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_matches_pillow(tmp_path, mode, orientation):
    """The fast path turns the pixels as ImageOps.exif_transpose does, for all eight EXIF orientations."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = pattern(37, 53, orientation)
    p = tmp_path / "o.jpg"
    (Image.fromarray(rgb[..., 1]) if mode == "L" else Image.fromarray(rgb)).save(p, "JPEG", quality=95,
                                                                               exif=exif.tobytes())
    with Image.open(p) as im:
        upright = ImageOps.exif_transpose(im)
        want = images.to_luma(np.asarray(upright))[0]
    got = images.read_image(p)
    assert got.source == f"JPEG {mode}"
    assert np.array_equal(got.luma, want)


def test_truncated_gray_jpeg_fails(tmp_path):
    p = _gray_jpeg(tmp_path, shape=(200, 300))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated JPEG"):
        images.read_image(p)


def test_too_large_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(huge_png_header(50_000, 40_000))  # 2 GP claimed, no pixel data
    with pytest.raises(ImageError, match="too large"):
        images.read_image(p, max_pixels=100_000_000)
    Image.fromarray(pattern(100, 120, 0)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"too large: 120x100"):
        images.read_image(tmp_path / "small.png", max_pixels=10_000)


def test_to_luma_arrays():
    rgb = pattern(20, 30, 0)
    luma, alpha = images.to_luma(rgb)
    assert np.array_equal(luma, color.rgb_u8_to_luma_u8(rgb)) and alpha is None
    luma, alpha = images.to_luma(np.dstack([rgb, np.full((20, 30), 7, np.uint8)]))
    assert alpha is not None and (alpha == 7).all()
    g16 = np.full((4, 5), 65535, np.uint16)
    assert (images.to_luma(g16)[0] == 255).all()
    with pytest.raises(ImageError, match="expected dtype"):
        images.to_luma(np.zeros((4, 4), np.float64))
    with pytest.raises(ImageError, match="expected"):
        images.to_luma(np.zeros((4, 4, 5), np.uint8))


@pytest.mark.parametrize("shape", [(45, 67), (67, 45), (256, 256), (1, 300), (300, 1), (10, 10), (2000, 30)])
def test_fit_pads_to_square(shape):
    luma = pattern(*shape, 0, 1)[..., 0]
    x, (h, w) = images.fit(luma, 64)
    assert x.shape == (64, 64) and x.dtype == np.uint8
    assert max(h, w) == 64 and h >= 1 and w >= 1
    assert abs(h / w - shape[0] / shape[1]) < 0.1 * max(1, shape[0] / shape[1]) or min(h, w) <= 2


@pytest.mark.parametrize("shape", [(45, 67), (67, 45), (256, 256), (1, 300), (300, 1), (1080, 1920), (2000, 30)])
def test_fit_tight_pads_only_to_the_multiple(shape):
    luma = pattern(*shape, 0, 1)[..., 0]
    square, crop = images.fit(luma, 64)
    x, (h, w) = images.fit(luma, 64, multiple=8)
    assert (h, w) == crop and x.dtype == np.uint8
    assert x.shape == (-(-h // 8) * 8, -(-w // 8) * 8) and max(x.shape) == 64
    assert np.array_equal(x[:h, :w], square[:h, :w])  # same content, less padding
    if 1 < h < x.shape[0]:
        assert np.array_equal(x[h], x[h - 2])  # reflected, as the square pad
    assert images.fit(luma, 64, multiple=1)[0].shape == (h, w)


def test_fit_rejects_a_bad_multiple():
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="multiple: expected an integer >= 1"):
            images.fit(np.zeros((10, 20), np.uint8), 64, multiple=bad)


@pytest.mark.parametrize("shape,out", [((1080, 1920), (126, 224)), ((500, 400), (250, 200)), ((672, 300), (224, 100)),
                                       ((301, 257), (37, 255)), ((7, 900), (1, 224)), ((900, 7), (224, 1)), ((9, 9), (9, 9))])
def test_area_downscale_matches_cv2_inter_area(shape, out):
    rng = np.random.default_rng(sum(shape))
    luma = rng.integers(0, 256, shape, dtype=np.uint8)
    mine = images.area_downscale(luma, out)
    ref = cv2.resize(luma, out[::-1], interpolation=cv2.INTER_AREA)
    diff = np.abs(mine.astype(int) - ref)
    assert mine.shape == out and mine.dtype == np.uint8
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # integer factors: identical (cv2 rounds halves up too)


def test_area_downscale_bands_and_extremes(monkeypatch):
    luma = pattern(480, 640, 0, 1)[..., 0]
    whole = images.area_downscale(luma, (100, 133))
    monkeypatch.setattr(images, "AREA_BAND_PIXELS", 640 * 40)  # ~9 output rows per band, edges shared
    assert np.array_equal(images.area_downscale(luma, (100, 133)), whole)
    monkeypatch.setattr(images, "AREA_BAND_PIXELS", 640 * 4)  # one output row spans more than a band: cv2's path
    assert np.array_equal(images.area_downscale(luma, (100, 133)), cv2.resize(luma, (133, 100), interpolation=cv2.INTER_AREA))
    monkeypatch.undo()
    white = np.full((2100, 2100), 255, np.uint8)  # two bands, box sums near int32's limit stay exact
    assert (images.area_downscale(white, (224, 224)) == 255).all()
    panorama = np.full((200, 50000), 255, np.uint8)  # one output row of 10 Mpixel would overflow int32
    assert (images.area_downscale(panorama, (1, 224)) == 255).all()
    with pytest.raises(ValueError, match="expected an output within 1x1..10x10, found 11x5"):
        images.area_downscale(np.zeros((10, 10), np.uint8), (11, 5))


def test_fit_downscales_by_area():
    luma = pattern(540, 960, 0, 1)[..., 0]
    x, (h, w) = images.fit(luma, 224)
    ref = cv2.resize(luma, (224, 126), interpolation=cv2.INTER_AREA)
    assert (h, w) == (126, 224) and np.abs(x[:h].astype(int) - ref).max() <= 1


def test_compose_matches_cv2_resize_and_spec(monkeypatch):
    rng = np.random.default_rng(3)
    luma = pattern(157, 233, 0, 1)[..., 0]
    uv = (rng.uniform(-0.1, 0.1, (2, 40, 60))).astype(np.float32)
    monkeypatch.setattr(images, "STRIP_PIXELS", 233 * 13)  # many strips, one partial
    out = images.compose(luma, uv)
    full = cv2.resize(np.moveaxis(uv, 0, -1), (233, 157), interpolation=cv2.INTER_LINEAR)
    ref = color.compose_u8(luma, full)
    assert out.shape == (157, 233, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    # saturation scales chroma; 0 gives exact gray with the input luma
    gray = images.compose(luma, uv, saturation=0.0)
    assert np.array_equal(gray[..., 0], luma) and np.array_equal(gray[..., 2], luma)


def test_jpeg_from_planes_matches_compose_then_encode():
    """The JPEG path (Y = luma, Cb/Cr from uv at model resolution) decodes to compose()'s pixels."""
    rng = np.random.default_rng(5)
    luma = cv2.GaussianBlur(pattern(270, 480, 0, 1)[..., 0], (0, 0), 2)
    yy, xx = np.mgrid[0:34, 0:60] / 40.0
    uv = np.stack([0.12 * np.sin(3 * xx + yy), 0.15 * np.cos(2 * yy - xx)]).astype(np.float32)
    uv += rng.normal(0, 0.004, uv.shape).astype(np.float32)
    exif = Image.Exif()
    exif[0x0132] = "2020:01:02 03:04:05"
    truth = images.compose(luma, uv, saturation=1.3).astype(int)
    ref = np.asarray(Image.open(io.BytesIO(images.encode(truth.astype(np.uint8), "JPEG", quality=95)))).astype(int)
    cb, cr = images.compose_jpeg_chroma(luma.shape, uv, saturation=1.3)
    assert cb.shape == cr.shape == (135, 240) and cb.dtype == np.uint8  # 4:2:0
    data = images.encode_jpeg_ycbcr(luma, cb, cr, quality=95, exif=exif.tobytes())
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (480, 270)
    assert im.getexif().get(0x0132) == "2020:01:02 03:04:05"
    got = np.asarray(im)
    diff = np.abs(got.astype(int) - truth)
    # as close to compose()'s pixels as Pillow's JPEG of them (RGB in, its own 4:2:0 downsampling)
    assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 5
    assert diff.mean() <= np.abs(ref - truth).mean() + 0.25
    # luma kept: the decoded output's spec luma is the input luma (up to JPEG loss)
    assert np.abs(color.rgb_u8_to_luma_u8(got).astype(int) - luma).mean() < 1.0
    # saturation 0 gives neutral chroma planes
    cb0, cr0 = images.compose_jpeg_chroma(luma.shape, uv, saturation=0.0)
    assert (cb0 == 128).all() and (cr0 == 128).all()


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (270, 481), (33, 2)])
def test_jpeg_from_planes_odd_sizes(shape):
    """Odd sizes: the chroma grid is ceil(H/2) x ceil(W/2); the JPEG has the luma's size and keeps it."""
    luma = pattern(*shape, 0, 1)[..., 0]
    uv = np.full((2, 3, 4), 0.05, np.float32)
    cb, cr = images.compose_jpeg_chroma(shape, uv)
    assert cb.shape == cr.shape == ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    im = Image.open(io.BytesIO(images.encode_jpeg_ycbcr(luma, cb, cr, quality=95)))
    assert im.size == shape[::-1] and im.mode == "RGB"
    y = np.asarray(im.convert("YCbCr"))[..., 0].astype(int)
    assert np.abs(y - luma).mean() < 3.0
    with pytest.raises(ImageError, match="chroma planes: expected"):
        wrong = (shape[0] + 2, shape[1] + 2)
        images.encode_jpeg_ycbcr(luma, np.zeros(wrong, np.uint8), np.zeros(wrong, np.uint8))


def test_jpeg_exif_segment():
    """EXIF goes into one APP1 segment after JFIF's APP0; EXIF over the 64 KB segment limit is dropped."""
    luma = pattern(16, 24, 0, 1)[..., 0]
    cb, cr = images.compose_jpeg_chroma(luma.shape, np.zeros((2, 4, 6), np.float32))
    exif = Image.Exif()
    exif[0x010E] = "a caption"
    data = images.encode_jpeg_ycbcr(luma, cb, cr, exif=exif.tobytes())
    assert data[:4] == b"\xff\xd8\xff\xe0" and data.count(b"Exif\x00\x00") == 1
    im = Image.open(io.BytesIO(data))
    assert im.getexif().get(0x010E) == "a caption"
    assert np.array_equal(np.asarray(im), np.asarray(Image.open(io.BytesIO(images.encode_jpeg_ycbcr(luma, cb, cr)))))
    exif[0x010E] = "x" * 70_000
    big = images.encode_jpeg_ycbcr(luma, cb, cr, exif=exif.tobytes())
    assert b"Exif\x00\x00" not in big and Image.open(io.BytesIO(big)).size == (24, 16)


def test_compose_keeps_luma_and_alpha():
    luma = pattern(50, 70, 0, 1)[..., 0]
    uv = np.full((2, 10, 14), 0.03, np.float32)
    alpha = np.arange(50 * 70, dtype=np.uint32).reshape(50, 70).astype(np.uint8)
    out = images.compose(luma, uv, alpha=alpha)
    assert out.shape == (50, 70, 4) and np.array_equal(out[..., 3], alpha)
    assert np.abs(color.rgb_u8_to_luma_u8(out[..., :3]).astype(int) - luma).max() <= 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
@pytest.mark.parametrize("channels", [3, 4])
def test_encode_round_trip(fmt, channels):
    img = pattern(30, 40, 0, channels)
    data = images.encode(img, fmt, quality=95)
    back = Image.open(io.BytesIO(data))
    assert back.format == fmt and back.size == (40, 30)
    keeps_alpha = channels == 4 and fmt != "JPEG"
    assert ("A" in back.mode) == keeps_alpha
    arr = np.asarray(back.convert("RGBA" if keeps_alpha else "RGB"))
    err = np.abs(arr.astype(int) - img[..., : arr.shape[2]].astype(int))
    if fmt in ("PNG", "BMP", "TIFF"):
        assert err.max() == 0
    else:  # lossy, chroma subsampled
        assert err.mean() < 4


def test_write_atomic_leaves_no_temp(tmp_path):
    target = tmp_path / "x.jpg"
    images.write_atomic(target, b"abc")
    assert target.read_bytes() == b"abc"
    assert os.listdir(tmp_path) == ["x.jpg"]
    with pytest.raises(ImageError, match="cannot write"):
        images.write_atomic(tmp_path / "missing-dir" / "y.jpg", b"abc")


def test_jpeg_from_planes_is_deterministic_for_odd_sizes():
    """The same planes give the same bytes: nothing is read past the planes (TurboJPEG pads 4:2:0 luma to even)."""
    luma = pattern(45, 67, 0, 1)[..., 0]
    cb, cr = images.compose_jpeg_chroma(luma.shape, np.random.default_rng(2).normal(0, 0.1, (2, 9, 13)).astype(np.float32))
    first = images.encode_jpeg_ycbcr(luma, cb, cr)
    for fill in (0, 255, 77):
        junk = [np.full(1 << 16, fill, np.uint8) for _ in range(8)]  # recycle memory near the planes
        assert images.encode_jpeg_ycbcr(luma.copy(), cb.copy(), cr.copy()) == first
        del junk


def test_over_twice_pillows_guard_is_our_message(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(huge_png_header(20_000, 15_000))  # 300 MP: Pillow itself refuses it at open
    with pytest.raises(ImageError) as caught:
        images.read_image(p, max_pixels=100_000_000)
    assert str(caught.value) == "too large: 300.0 MP, limit is 100.0 MP (--max-pixels)"


def test_png_with_a_large_icc_profile_reads(tmp_path):
    """Printer and camera profiles pass Pillow's 1 MB limit on a PNG's compressed chunks."""
    profile = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # 3 MB, incompressible
    p = tmp_path / "icc.png"
    rgb = pattern(30, 40, 0)
    Image.fromarray(rgb).save(p, icc_profile=profile)
    got = images.read_image(p)
    assert np.array_equal(got.luma, images.to_luma(rgb)[0])


def test_a_file_the_system_will_not_read_says_cannot_read(tmp_path, monkeypatch):
    import errno

    p = tmp_path / "locked.jpg"
    Image.fromarray(pattern(30, 40, 0)).save(p)

    def refuse(*a, **k):  # as a file without read permission does (tests may run as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(images.Image, "open", refuse)
    with pytest.raises(ImageError) as caught:
        images.read_image(p)
    assert str(caught.value) == "cannot read (Permission denied)"


def test_special_files_are_refused_without_opening(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block until a writer comes
    with pytest.raises(ImageError, match=r"^not a regular file \(a FIFO\)$"):
        images.read_image(tmp_path / "pipe.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match=r"^not a regular file \(a directory\)$"):
        images.read_rgb(tmp_path / "dir.jpg")
