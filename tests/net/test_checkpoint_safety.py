"""A crafted checkpoint cannot run code: every entry point that reads a ``.pt`` refuses it in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from engine.net.checkpoint import CheckpointError, load_checkpoint


class _Payload:
    """Unpickling this calls ``os.system``: what an attacker's model file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path, marker):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"format": "colorizer-checkpoint/1", "model_config": {}, "model": {}, "x": _Payload(marker)}, f)
    return path


def test_the_payload_really_runs_with_an_unsafe_load(tmp_path):
    """Guards the test itself: the file is a real exploit when unpickled without the safe loader."""
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_a_pickled_callable_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path, marker)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(e.value)
    assert "evil.pt" in msg and "refused" in msg and "\n" not in msg
    assert "system" in msg  # names what it refused (posix.system)


def test_a_numpy_array_is_refused_too(tmp_path):
    import numpy as np

    path = tmp_path / "np.pt"
    torch.save({"format": "colorizer-checkpoint/1", "model_config": {}, "model": {}, "a": np.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def test_plain_checkpoint_still_loads(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"format": "colorizer-checkpoint/1", "model_config": {"width": "seed"}, "model": {"w": torch.ones(2)},
                "rng": {"python": (3, (1, 2), None)}, "metrics": {"val_psnr": 24.0}}, path)
    data = load_checkpoint(path)
    assert torch.equal(data["model"]["w"], torch.ones(2))
    assert data["rng"]["python"] == (3, (1, 2), None)


@pytest.mark.parametrize("args", [
    ["colorize-dir", "{gray}", "{out}", "--model", "{ckpt}"],
    ["colorize-dir", "{gray}", "{out}", "--model", "{ckpt}", "--backend", "torch"],
    ["evaluate", "--data", "{gray}", "--model", "{ckpt}"],
    ["export", "--checkpoint", "{ckpt}", "--out", "{out}/m.onnx"],
], ids=["colorize-dir", "colorize-dir-torch", "evaluate", "export"])
def test_every_command_refuses_it_in_one_line_exit_2(tmp_path, args):
    marker = tmp_path / "pwned"
    ckpt = _crafted(tmp_path, marker)
    gray = tmp_path / "gray"
    gray.mkdir()
    (gray / "a.jpg").write_bytes((ROOT / "samples" / "bw-grey.jpg").read_bytes())
    out = tmp_path / "out"
    argv = [a.format(gray=gray, out=out, ckpt=ckpt) for a in args]
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the checkpoint ran code"
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "evil.pt" in errors[0] and "refused" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
