"""benchmarks/video.py on a tiny clip: every figure present and sane, the cut found."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SAMPLES

pytest.importorskip("av", reason="PyAV is not installed (the video extra): pip install -e '.[video]'")


def test_video_benchmark_reports_every_figure(tiny_onnx, tmp_path):
    from benchmarks import video

    out = tmp_path / "video.json"
    photos = [SAMPLES / "color-Dune.jpg", SAMPLES / "color-Storm.jpg", SAMPLES / "color-Dune.jpg"]
    rc = video.main([*map(str, photos), "--width", "96", "--height", "64", "--frames", "6", "--size", "64", "--repeat", "2", "--model",
                     str(tiny_onnx), "--json", str(out), "--markdown", str(tmp_path / "video.md")])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 18 and report["shots"] == 3 and report["size"] == "96x64"
    for name in ("temporal_0", "default"):
        r = report[name]
        assert r["scene_cuts"] == 2 and r["frames_per_s"] > 0 and 5 < r["psnr_db"] < 60 and r["flicker"] >= 0
        assert 0 <= r["luma_error"] <= 2  # against the input clip's own decoded luma: only the output codec's loss
        assert len(r["frames_per_s_runs"]) == 2 and min(r["frames_per_s_runs"]) <= r["frames_per_s"]
    assert report["input_crf"] == 17 and report["input_mib"] > 0
    assert len(report["photo_path_images_per_s_runs"]) == 2
    assert report["photo_path_images_per_s"] > 0 and 5 < report["photo_path_psnr_db"] < 60
    assert 5 < report["gray_psnr_db"] < 60 and report["truth_flicker"] > 0
    md = (tmp_path / "video.md").read_text()
    assert f"| gray input | {report['gray_psnr_db']:.2f} |" in md and "| 2 of 2 |" in md and "input H.264 at CRF 17" in md


def test_video_benchmark_missing_photo_is_one_error(tmp_path, capsys):
    from benchmarks import video

    assert video.main([str(tmp_path / "none.jpg"), str(tmp_path / "none2.jpg")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert video.main([str(SAMPLES / "color-Dune.jpg")]) == 2
    assert "expected at least two photos" in capsys.readouterr().err
    assert video.main([str(SAMPLES / "color-Dune.jpg")] * 2 + ["--repeat", "0"]) == 2
    assert "--repeat: expected at least 1, found 0" in capsys.readouterr().err
