import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from engine.core import color
from engine.core.errors import ColorizerError
from engine.evaluate import evaluate_folder, write_csv
from tests.conftest import ROOT
from tests.engine.corpus import huge_png_header

COLOURS = [(200, 100, 50), (30, 160, 220), (90, 90, 90)]


def _write_constant_photos(folder, size=32):
    folder.mkdir()
    for i, rgb in enumerate(COLOURS):
        img = np.empty((size, size + 8, 3), np.uint8)
        img[:] = rgb
        cv2.imwrite(str(folder / f"p{i}.png"), img[..., ::-1].copy())
    return folder


def _expected_gray_psnr(rgb):
    y = int(color.rgb_u8_to_luma_u8(np.array([[rgb]], np.uint8))[0, 0])
    mse = np.mean([(c - y) ** 2 for c in rgb])
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_gray_colorizer_scores_exactly_the_gray_baseline(tmp_path):
    folder = _write_constant_photos(tmp_path / "photos")
    report = evaluate_folder(lambda g: np.repeat(g[..., None], 3, axis=-1), folder, size=24)
    assert report.images == 3
    finite = [_expected_gray_psnr(c) for c in COLOURS if math.isfinite(_expected_gray_psnr(c))]
    assert report.gray_baseline["psnr"] == pytest.approx(np.mean(finite), abs=1e-6)
    assert report.model["psnr"] == pytest.approx(report.gray_baseline["psnr"])
    assert report.model["colourfulness_ratio"] == 0.0


def test_perfect_colorizer_scores_inf_psnr_and_ratio_one(tmp_path):
    folder = _write_constant_photos(tmp_path / "photos")
    truth = iter(COLOURS)

    def oracle(gray):
        out = np.empty(gray.shape + (3,), np.uint8)
        out[:] = next(truth)
        return out

    report = evaluate_folder(oracle, folder, size=24, grid=tmp_path / "grid.png")
    assert report.model["psnr"] == math.inf
    assert report.model["ssim"] == pytest.approx(1.0)
    assert report.model["colourfulness_ratio"] == pytest.approx(1.0)
    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid.shape == (3 * 24, 3 * 24, 3)
    write_csv(report, tmp_path / "scores.csv")
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 4


def test_bad_files_are_reported_and_skipped(tmp_path):
    folder = _write_constant_photos(tmp_path / "photos")
    (folder / "broken.jpg").write_bytes(b"not an image")
    report = evaluate_folder(lambda g: np.repeat(g[..., None], 3, axis=-1), folder, size=16)
    assert report.images == 3
    assert [f["path"] for f in report.failed] == [str(folder / "broken.jpg")]
    assert report.failed[0]["reason"].startswith("not an image")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ColorizerError, match="no images"):
        evaluate_folder(lambda g: g, tmp_path / "empty")


def test_list_file_selects_exactly_the_listed_photos(tmp_path):
    folder = _write_constant_photos(tmp_path / "photos")
    listing = tmp_path / "val_files.txt"
    listing.write_text("photos/p2.png\n\n" + str(folder / "p0.png") + "\n")
    report = evaluate_folder(lambda g: np.repeat(g[..., None], 3, axis=-1), listing, size=16)
    assert [s.path for s in report.per_image] == [str(folder / "p2.png"), str(folder / "p0.png")]


def _gray(g):
    return np.repeat(g[..., None], 3, axis=-1)


def test_list_file_entries_that_are_not_photos_fail_one_line_each_never_opened(tmp_path):
    """A FIFO in a list would block a reader forever: it is reported from its file type, not opened."""
    folder = _write_constant_photos(tmp_path / "photos")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "huge.png").write_bytes(huge_png_header(100_000, 100_000))
    listing = tmp_path / "val.txt"
    listing.write_text("photos/p0.png\n\nphotos/p1.png\r\npipe.png\nmissing.png\nphotos\nhuge.png\n"
                       f"{folder / 'p2.png'}\n")
    report = evaluate_folder(_gray, listing, size=16)
    assert report.images == 3
    reasons = {f["path"]: f["reason"] for f in report.failed}
    assert reasons[str(tmp_path / "pipe.png")] == "not a regular file (a FIFO)"
    assert reasons[str(tmp_path / "missing.png")].startswith("cannot read (")
    assert reasons[str(tmp_path / "photos")] == "not a regular file (a directory)"
    assert reasons[str(tmp_path / "huge.png")].startswith("too large: 10000.0 MP")


def test_pixel_limit_applies_before_decoding(tmp_path):
    folder = _write_constant_photos(tmp_path / "photos", size=64)
    cv2.imwrite(str(folder / "small.png"), np.full((20, 30, 3), 128, np.uint8))
    report = evaluate_folder(_gray, folder, size=16, max_pixels=64 * 64)
    assert report.images == 1 and len(report.failed) == 3
    assert all(f["reason"] == "too large: 72x64 = 4608 pixels, limit is 4096 pixels (--max-pixels)"
               for f in report.failed)


@pytest.mark.parametrize("size", [0, 15, 4097, 20000, 2.5, True])
def test_size_out_of_range_is_refused(tmp_path, size):
    folder = _write_constant_photos(tmp_path / "photos")
    with pytest.raises(ColorizerError, match=r"size: expected an integer in 16\.\.4096"):
        evaluate_folder(_gray, folder, size=size)


def test_report_is_strict_json(tmp_path):
    """A perfect score is an infinite PSNR: written as null, never as the non-JSON Infinity."""
    folder = _write_constant_photos(tmp_path / "photos")
    truth = iter([np.full((24, 24, 3), c, np.uint8) for c in COLOURS])
    report = evaluate_folder(lambda g: next(truth), folder, size=24)
    assert report.model["psnr"] == math.inf
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["model"]["psnr"] is None


def test_cli_evaluate_options_are_range_checked(tmp_path):
    folder = _write_constant_photos(tmp_path / "photos")
    for args in (["--size", "20000"], ["--model-size", "8"], ["--max-pixels", "0"]):
        r = subprocess.run([sys.executable, "cli.py", "evaluate", "--data", str(folder), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Invalid value for" in r.stderr and args[0] in r.stderr, r.stderr
