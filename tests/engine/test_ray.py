"""``colorize-dir --ray`` and ``engine.ray_data.colorize_dataset`` on a local Ray instance (2 CPUs, started once).

Ray is the ``cluster`` extra: without it the Ray tests skip (with the install command as the reason),
and the two tests of the no-Ray paths still run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.api import Colorizer
from tests.conftest import ROOT
from tests.engine.corpus import pattern, write_kinds, write_photos

SIZE = 64


def _bad_files(folder: Path, good_jpeg: Path) -> list[str]:
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is text\n")
    data = good_jpeg.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return ["zero.jpg", "text.jpg", "truncated.jpg"]


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            with Image.open(p) as im:
                out[str(p.relative_to(folder))] = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB")).astype(int)
    return out


@pytest.fixture(scope="module")
def runs(ray_local, tiny_onnx, tmp_path_factory):
    """One tree (every input kind, sub-folders, bad files) colorized locally and with --ray (2 workers)."""
    from engine.ray_io import RayColorizer

    root = tmp_path_factory.mktemp("ray")
    src = root / "in"
    good = write_photos(src, 6)
    write_kinds(src / "kinds")
    bad = _bad_files(src, good[0])
    with Colorizer(tiny_onnx, size=SIZE, padding="square") as c:  # Ray batches are square
        local = c.colorize_dir(src, root / "local")
    with RayColorizer(tiny_onnx, size=SIZE, batch_size=4, num_workers=2, cpus_per_worker=0.5) as rc:
        assert rc.describe().startswith("ray ") and "2 workers" in rc.describe()
        remote = rc.colorize_dir(src, root / "ray", fail_list=root / "failed.txt")
    return {"root": root, "src": src, "bad": bad, "local": local, "ray": remote, "model": tiny_onnx}


def test_same_outputs_as_the_local_path(runs):
    local, remote = runs["local"], runs["ray"]
    assert (remote.colorized, remote.skipped, remote.failed) == (local.colorized, local.skipped, local.failed)
    assert remote.colorized >= 20 and remote.exit_code == local.exit_code == 1
    a, b = _outputs(runs["root"] / "local"), _outputs(runs["root"] / "ray")
    assert sorted(a) == sorted(b)  # same mirrored tree, same names (gray.pgm -> gray.png, ...)
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert np.abs(a[name] - b[name]).max() <= 1, name
    assert "workers ran ort (CPUExecutionProvider" in remote.backend


def test_bad_inputs_reported_per_file(runs):
    src, remote = runs["src"], runs["ray"]
    reasons = dict(remote.failures)
    assert sorted(reasons) == sorted(str(src / n) for n in runs["bad"])
    assert reasons[str(src / "zero.jpg")] == "empty file (0 bytes)"
    assert dict(runs["local"].failures) == reasons  # the same `path: reason` as the local run
    assert sorted((runs["root"] / "failed.txt").read_text().split()) == sorted(reasons)


def test_rerun_skips_finished_files(runs, caplog):
    from engine.ray_io import RayColorizer

    out = runs["root"] / "ray"
    (out / "img0000.jpg").unlink()
    (out / "kinds" / "rgba.png").unlink()
    stale = out / "kinds" / ".rgba.png.tmp-999999"  # left by a killed worker
    stale.write_bytes(b"partial")
    with RayColorizer(runs["model"], size=SIZE, num_workers=1) as rc:
        again = rc.colorize_dir(runs["src"], out)
    first = runs["ray"]
    assert (again.colorized, again.failed) == (2, len(runs["bad"]))
    assert again.skipped == first.colorized - 2
    assert (out / "img0000.jpg").is_file() and (out / "kinds" / "rgba.png").is_file() and not stale.exists()
    assert [r for r in caplog.records if r.getMessage().startswith(f"{runs['src'] / 'zero.jpg'}: ")]


def test_shard_takes_the_same_files_as_locally(ray_local, tiny_onnx, tmp_path):
    from engine.ray_io import RayColorizer
    from engine.tree import Shard

    src = tmp_path / "in"
    photos = write_photos(src, 8)
    with RayColorizer(tiny_onnx, size=SIZE, num_workers=1) as rc:
        s = rc.colorize_dir(src, tmp_path / "out", shard="1/2")
    owned = sorted(str(p.relative_to(src)) for p in photos if Shard(1, 2).owns(p.relative_to(src).as_posix()))
    done = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert done == owned and s.colorized == len(owned) and 0 < len(owned) < 8


def test_worker_killed_mid_run_finishes_and_a_killer_file_fails(ray_local, tiny_onnx, tmp_path):
    """The infer actor os._exit()s on img0002 the first time (retried: colorized) and on img0004 every time
    (charged at most max_worker_deaths times, then reported failed); the run completes."""
    from engine.ray_io import RayColorizer

    src = tmp_path / "in"
    write_photos(src, 6)
    with RayColorizer(tiny_onnx, size=SIZE, batch_size=2, num_workers=1, max_worker_deaths=2,
                      crash_on="img0002.jpg,img0004.jpg!") as rc:
        s = rc.colorize_dir(src, tmp_path / "out")
    assert (s.colorized, s.failed) == (5, 1), s.failures
    (path, reason), = s.failures
    assert path == str(src / "img0004.jpg") and "worker process died 2 times" in reason
    outs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outs == ["d0/img0003.jpg", "d1/img0001.jpg", "d2/img0005.jpg", "img0000.jpg", "img0002.jpg"]


def test_colorize_dataset_matches_colorize(ray_local, tiny_onnx):
    from engine.ray_data import colorize_dataset

    images = [pattern(40 + 3 * i, 50 + 5 * i, i, 1)[..., 0] for i in range(4)]  # gray, different sizes
    images.append(pattern(30, 20, 9, 4))  # RGBA in the same column
    images.append(np.zeros((0, 5), np.uint8))
    # one row per block: Ray Data cannot re-batch a block that holds gray and colour arrays together, whatever
    # the map (docs/ray.md); how many blocks from_items makes by default varies from run to run
    ds = ray_local.data.from_items([{"image": a, "id": i} for i, a in enumerate(images)],
                                   override_num_blocks=len(images))
    rows = sorted(colorize_dataset(ds, model=tiny_onnx, size=SIZE, batch_size=4, num_workers=1).take_all(),
                  key=lambda r: r["id"])
    with Colorizer(tiny_onnx, size=SIZE, padding="square") as c:  # Ray batches are square
        for row, image in zip(rows[:-1], images[:-1]):
            assert row["colorize_error"] == ""
            want = c.colorize(image)
            assert row["colorized"].shape == want.shape
            assert np.abs(row["colorized"].astype(int) - want).max() <= 1
    assert rows[-1]["colorize_error"].startswith("image array: empty") and rows[-1]["colorized"].size == 0


def test_cli_ray_same_summary_and_exit_codes(ray_local, tiny_onnx, tmp_path):
    """In-process (the module's Ray instance): first line names Ray, last line is the usual summary."""
    from click.testing import CliRunner

    from cli import main

    src = tmp_path / "in"
    good = write_photos(src, 3)
    (src / "zero.jpg").write_bytes(b"")
    args = ["colorize-dir", str(src), str(tmp_path / "out"), "--model", str(tiny_onnx), "--size", str(SIZE), "--ray",
            "--num-workers", "1"]
    r = CliRunner().invoke(main, args)
    lines = r.output.splitlines()
    assert r.exit_code == 1, r.output
    assert lines[0].startswith("backend: ray ") and "1 worker x 1 CPU" in lines[0]
    assert lines[-1].startswith("3 colorized, 0 skipped, 1 failed") and "img/s" in lines[-1]
    assert all((tmp_path / "out" / p.relative_to(src)).is_file() for p in good)
    (src / "zero.jpg").unlink()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.output.splitlines()[-1].startswith("0 colorized, 3 skipped, 0 failed"), r.output


def test_cli_ray_option_errors(tmp_path):
    from click.testing import CliRunner

    from cli import main

    (tmp_path / "in").mkdir()
    r = CliRunner().invoke(main, ["colorize-dir", str(tmp_path / "in"), str(tmp_path / "out"), "--num-workers", "2"])
    assert r.exit_code == 2 and "--num-workers: only with --ray" in r.output
    r = CliRunner().invoke(main, ["colorize-dir", str(tmp_path / "in"), str(tmp_path / "out"), "--ray", "--device", "cpu"])
    assert r.exit_code == 2 and "not with --ray" in r.output


def _run_cli_in(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_plain_colorize_dir_never_imports_ray(tiny_onnx, tmp_path):
    write_photos(tmp_path / "in", 2)
    code = (
        "import sys\n"
        "from cli import main\n"
        "try:\n"
        f"    main(['colorize-dir', {str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r}, '--model', {str(tiny_onnx)!r},"
        " '--size', '32'])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('ray imported:', sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    r = _run_cli_in(code, tmp_path)
    assert "exit 0" in r.stdout, r.stdout + r.stderr
    assert "ray imported: []" in r.stdout


def test_ray_missing_says_how_to_install(tmp_path):
    write_photos(tmp_path / "in", 1)
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from cli import main\n"
        f"main(['colorize-dir', {str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r}, '--ray'])\n"
    )
    r = _run_cli_in(code, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --ray needs Ray, which is not installed here: pip install -e '.[cluster]' (installs ray[data])")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_no_temp_files_left(runs):
    assert not [p for p in (runs["root"] / "ray").rglob(".*") if p.is_file()]


def test_stage_times_summed_over_workers(runs):
    st = runs["ray"].stages
    assert set(st) == set(runs["local"].stages)
    assert st["decode"]["photos"] >= runs["ray"].colorized and st["infer"]["photos"] >= runs["ray"].colorized
    assert st["write"]["photos"] == runs["ray"].colorized and st["infer"]["seconds"] > 0


def test_bad_model_is_a_usage_error_before_ray_starts(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (the cluster extra): pip install -e '.[cluster]'")
    from engine.core.errors import ArtifactError
    from engine.ray_io import RayColorizer

    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="sidecar m.json not found"):
        RayColorizer(tmp_path / "m.onnx")


def test_worker_start_failure_is_one_line():
    from engine.ray_io import _ray_error_message

    class ActorDied(Exception):
        error_msg = ("The actor died because of an error raised in its creation task\nTraceback (most recent call last):\n"
                     '  File "x.py", line 1\nengine.errors.BackendUnavailable: trt: TensorRT is not installed here\n')

    assert _ray_error_message(ActorDied("x")) == "a Ray worker failed: trt: TensorRT is not installed here"


def test_out_format_on_ray(ray_local, tiny_onnx, tmp_path):
    """--format on the Ray path: the local run's planned names and formats, skip keyed on them."""
    from engine.ray_io import RayColorizer

    src = tmp_path / "in"
    write_photos(src, 3)
    Image.fromarray(np.dstack([pattern(20, 30, 1), np.full((20, 30), 9, np.uint8)])).save(src / "alpha.png")
    with RayColorizer(tiny_onnx, size=SIZE, batch_size=4, num_workers=1, cpus_per_worker=0.5) as rc:
        s = rc.colorize_dir(src, tmp_path / "out", out_format="jpg")
        again = rc.colorize_dir(src, tmp_path / "out", out_format="jpg")
    assert (s.colorized, s.failed) == (4, 0) and (again.colorized, again.skipped) == (0, 4)
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*"))
    assert outs == ["alpha.jpg", "d1/img0001.jpg", "img0000.jpg", "img0002.jpg"]
    with Image.open(tmp_path / "out" / "alpha.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB"


def test_a_block_where_ray_padded_gray_arrays_to_one_by_h_by_w_is_read_as_gray():
    """Ray stores a block mixing gray (H, W) and colour (H, W, C) arrays with the gray ones as (1, H, W)."""
    from engine.ray_data import ALPHA, CROP_H, CROP_W, ERROR, LUMA, _prepare_arrays

    gray, rgba = pattern(30, 40, 1, 1)[..., 0], pattern(30, 20, 9, 4)
    column = np.empty(2, dtype=object)
    column[0], column[1] = gray[None], rgba
    out = _prepare_arrays({"image": column}, column="image", size=SIZE)
    assert list(out[ERROR]) == ["", ""]
    assert np.array_equal(out[LUMA][0], gray) and out[ALPHA][0].size == 0  # gray: itself, no alpha
    assert out[LUMA][1].shape == (30, 20) and np.array_equal(out[ALPHA][1], rgba[..., 3])
    assert (list(out[CROP_H]), list(out[CROP_W])) == ([48, 64], [64, 43])  # long side to SIZE, as (H, W) inputs
