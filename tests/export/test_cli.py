"""`cli.py export` on bad input: one clear line on stderr, exit code 2, nothing at --out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import ROOT
from engine.net.checkpoint import load_checkpoint, save_checkpoint


def _run(args):
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stderr


def _assert_one_error_line(stderr, *fragments):
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_checkpoint(tmp_path):
    out = tmp_path / "m.onnx"
    code, err = _run(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)])
    assert code == 2
    _assert_one_error_line(err, "nope.pt", "checkpoint not found")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(4096))
    out = tmp_path / "m.onnx"
    code, err = _run(["export", "--checkpoint", str(bad), "--out", str(out)])
    assert code == 2
    _assert_one_error_line(err, "bad.pt", "not a readable checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_checkpoint_from_another_config(tiny_checkpoint, tmp_path):
    data = load_checkpoint(tiny_checkpoint)
    data.pop("format")
    data["model_config"] = {**data["model_config"], "width_mult": 0.25}  # weights are for 0.125
    data["model_config"].pop("widths", None)
    other = tmp_path / "other.pt"
    save_checkpoint(other, data)
    code, err = _run(["export", "--checkpoint", str(other), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    _assert_one_error_line(err, "other.pt", "weights do not fit the model config")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.json").exists()


def test_unknown_config_key(tiny_checkpoint, tmp_path):
    data = load_checkpoint(tiny_checkpoint)
    data.pop("format")
    data["model_config"] = {**data["model_config"], "depth": 99}
    other = tmp_path / "odd.pt"
    save_checkpoint(other, data)
    code, err = _run(["export", "--checkpoint", str(other), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    _assert_one_error_line(err, "invalid model config", "depth")


def test_unwritable_output_dir(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(blocker / "m.onnx")])
    assert code == 2
    _assert_one_error_line(err, "cannot write in", str(blocker))
    assert blocker.read_text() == "not a folder"


def test_read_only_output_dir(tiny_checkpoint, read_only_dir):
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(read_only_dir / "m.onnx")])
    assert code == 2
    _assert_one_error_line(err, "cannot write in")
    assert list(read_only_dir.iterdir()) == []


def test_calibration_folder_without_images(tiny_checkpoint, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "readme.txt").write_text("no images here")
    out = tmp_path / "m.onnx"
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                      "--precision", "int8", "--calib", str(calib)])
    assert code == 2
    _assert_one_error_line(err, "--calib", "found none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--temperature", "0.5"], "head 'regression'"),
        (["--opset", "9"], "opset: expected 18.."),
        (["--precision", "int4"], "Invalid value for '--precision'"),
    ],
)
def test_bad_options(tiny_checkpoint, tmp_path, extra, fragment):
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), *extra])
    assert code == 2
    assert fragment in err
    assert list(tmp_path.iterdir()) == []


def test_out_must_be_onnx(tiny_checkpoint, tmp_path):
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.bin")])
    assert code == 2
    _assert_one_error_line(err, "ending in .onnx")


def test_export_real_process_exit_code(tmp_path):
    """The real entry point (not CliRunner): exit status 2 and a single stderr line."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "export", "--checkpoint", str(tmp_path / "none.pt"),
         "--out", str(tmp_path / "m.onnx")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'none.pt'}: checkpoint not found"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["m.onnx", "m.json"])
def test_export_never_overwrites_without_force(tiny_checkpoint, tmp_path, existing):
    (tmp_path / existing).write_bytes(b"keep me")
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    _assert_one_error_line(err, str(tmp_path / existing), "already exists", "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing] and (tmp_path / existing).read_bytes() == b"keep me"


def test_export_force_overwrites(tiny_checkpoint, tmp_path):
    from engine.core.contract import read_sidecar

    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    (tmp_path / "m.json").write_text("{}")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert read_sidecar(out)["precision"] == "fp32"


def test_release_command_writes_an_inference_checkpoint_that_exports(tiny_checkpoint, tmp_path):
    out = tmp_path / "colorizer.pt"
    result = CliRunner().invoke(main, ["release", str(tiny_checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"released {out}: step 0, weights model")
    assert load_checkpoint(out)["release"]["source"].endswith("/tiny.pt")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(out), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output


def test_release_command_errors_are_one_line(tiny_checkpoint, tmp_path):
    out = tmp_path / "colorizer.pt"
    out.write_bytes(b"keep me")
    code, err = _run(["release", str(tiny_checkpoint), "--out", str(out)])
    assert code == 2
    _assert_one_error_line(err, str(out), "exists; pass --force")
    code, err = _run(["release", str(tiny_checkpoint), "--out", str(tmp_path / "r.pt"), "--temperature", "0.35"])
    assert code == 2
    _assert_one_error_line(err, "need a classification head")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colorizer.pt"] and out.read_bytes() == b"keep me"
    (tmp_path / "folder").mkdir()
    code, err = _run(["release", str(tiny_checkpoint), "--out", str(tmp_path / "folder"), "--force"])
    assert code == 2
    _assert_one_error_line(err, str(tmp_path / "folder"), "found a folder")
    assert list((tmp_path / "folder").iterdir()) == []


def test_release_of_several_checkpoints_merges_their_members_and_refuses_learned_encoders(tiny_checkpoint, tmp_path):
    import torch

    from engine.net.checkpoint import save_checkpoint

    data = load_checkpoint(tiny_checkpoint)
    other = dict(data["model"])
    other["members.0.head.conv.weight"] = other["members.0.head.conv.weight"] * -1.0  # another decoder
    second = tmp_path / "second.pt"
    save_checkpoint(second, {**{k: v for k, v in data.items() if k != "format"}, "model": other})
    out = tmp_path / "ens.pt"
    result = CliRunner().invoke(main, ["release", str(tiny_checkpoint), str(second), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 decoder members" in result.stdout and load_checkpoint(out)["model_config"]["members"] == 2
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(out), "--out", str(tmp_path / "ens.onnx")])
    assert result.exit_code == 0, result.output
    learned = dict(data["model"])
    key = next(k for k in learned if k.startswith("encoder.") and k.endswith("weight"))
    learned[key] = learned[key] + 0.01
    third = tmp_path / "third.pt"
    save_checkpoint(third, {**{k: v for k, v in data.items() if k != "format"}, "model": learned})
    code, err = _run(["release", str(tiny_checkpoint), str(third), "--out", str(tmp_path / "bad.pt")])
    assert code == 2
    _assert_one_error_line(err, str(third), f"encoder weight {key} differs", "--encoder-lr-mult 0")
    assert not (tmp_path / "bad.pt").exists()
    assert torch.equal(load_checkpoint(second)["model"]["members.0.head.conv.weight"],
                       other["members.0.head.conv.weight"])  # sources untouched


def test_reduce_range_is_chosen_for_the_machine_that_will_run_the_file(tiny_checkpoint, tmp_path):
    from engine.core.contract import read_sidecar

    out = tmp_path / "t8.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                                       "--precision", "int8", "--reduce-range", "on"])
    assert result.exit_code == 0, result.output
    assert read_sidecar(out)["precision_info"]["reduce_range"] is True  # whatever this CPU has
    code, err = _run(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "f.onnx"),
                      "--reduce-range", "off"])
    assert code == 2
    _assert_one_error_line(err, "--reduce-range off: applies to --precision int8, found --precision fp32")
    assert not (tmp_path / "f.onnx").exists()
