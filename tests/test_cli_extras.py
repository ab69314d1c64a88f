"""A plain install has no torch: commands that need an extra say which, in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

# torch (and ray, av) made unimportable, as on a machine with the plain install
RUN = ("import sys; sys.modules['torch'] = None; sys.modules['ray'] = None; sys.modules['av'] = None; "
       "sys.path.insert(0, {root!r}); "
       "sys.argv = ['colorizer', *{args!r}]; import cli; cli.main()")


@pytest.mark.parametrize("args,needs", [
    (["export", "--checkpoint", "models/colorizer.pt", "--out", "{tmp}/m.onnx"], "torch"),
    (["train", "--data", "samples", "--out", "{tmp}/run"], "torch"),
    (["release", "models/colorizer.pt", "--out", "{tmp}/r.pt"], "torch"),
    (["colorize-video", "README.md", "{tmp}/out.mp4"], "av"),
])
def test_missing_extra_is_one_error_line(tmp_path, args, needs):
    args = [a.format(tmp=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-c", RUN.format(root=str(ROOT), args=args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"needs {needs}" in errors[0] and "pip install" in errors[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_version_names_the_package_and_runtimes():
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    from engine import __version__

    assert r.stdout.startswith(f"colorizer {__version__} (Python ") and "onnxruntime" in r.stdout


@pytest.mark.parametrize("blocked", ["torch", "onnx"])
def test_export_without_torch_or_onnx_names_the_train_extra(tmp_path, blocked):
    code = RUN.replace("sys.modules['torch'] = None", f"sys.modules[{blocked!r}] = None").format(
        root=str(ROOT), args=["export", "--checkpoint", "models/colorizer.pt", "--out", f"{tmp_path}/m.onnx"])
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: export needs {blocked}, which is not installed: "
                                                     f"pip install '.[train]'"), r.stderr
    assert not (tmp_path / "m.onnx").exists()
