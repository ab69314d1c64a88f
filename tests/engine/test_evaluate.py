import math

import cv2
import numpy as np
import pytest

from engine.core import color
from engine.core.errors import ColorizerError
from engine.evaluate import evaluate_folder, write_csv

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
