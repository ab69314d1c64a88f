"""The model that ships in models/: loads, matches its sidecar, and re-exports to the same graph."""

import json

import numpy as np
import pytest

from engine.core.contract import read_sidecar, sha256_file
from tests.conftest import ROOT

MODELS = ROOT / "models"
CHECKPOINT = MODELS / "colorizer.pt"
ONNX = MODELS / "colorizer.onnx"
INT8 = MODELS / "colorizer-int8.onnx"


def test_bundled_files_exist_and_stay_small():
    for path in (CHECKPOINT, ONNX, ONNX.with_suffix(".json"), MODELS / "README.md"):
        assert path.is_file(), f"{path} missing"
    total = sum(p.stat().st_size for p in MODELS.iterdir() if p.is_file())
    assert total < 50 * 2**20


@pytest.mark.parametrize("artifact", [ONNX, INT8], ids=["fp32", "int8"])
def test_sidecar_matches_artifact(artifact):
    if not artifact.exists():
        pytest.skip(f"{artifact.name} not shipped")
    meta = read_sidecar(artifact)  # raises on a sha256 mismatch
    assert meta["sha256"] == sha256_file(artifact)
    assert [i["name"] for i in meta["inputs"]] == ["gray"]
    assert [o["name"] for o in meta["outputs"]] == ["rgb", "uv"]
    from engine.core.contract import contract_in_onnx

    assert contract_in_onnx(artifact) == {k: v for k, v in meta.items() if k != "sha256"}  # runs without its sidecar


def test_checkpoint_loads_and_reexports_to_the_bundled_outputs(tmp_path):
    import onnxruntime as ort

    from export.to_onnx import export_checkpoint
    from engine.net.checkpoint import load_model

    model, data = load_model(CHECKPOINT)
    bundled_meta = json.loads(ONNX.with_suffix(".json").read_text())
    assert bundled_meta["model_config"]["widths"] == list(model.config.widths)
    out = tmp_path / "re.onnx"
    export_checkpoint(CHECKPOINT, out, temperature=bundled_meta["model_config"].get("head_options", {}).get("temperature"))
    m = bundled_meta["inputs"][0].get("size_multiple", 8)  # H and W: multiples of the model's stride
    gray = np.random.default_rng(0).integers(0, 256, (2, 1, 2 * m, 3 * m), dtype=np.uint8)
    a = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"]).run(None, {"gray": gray})
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"gray": gray})
    for x, y in zip(a, b):
        assert np.abs(x.astype(np.float32) - y.astype(np.float32)).max() <= 1
