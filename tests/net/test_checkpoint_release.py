import torch

from engine.net.checkpoint import load_checkpoint, load_model, release_checkpoint, save_checkpoint
from engine.net.model import ColorizerNet, ModelConfig


def test_release_drops_training_state_and_keeps_identical_outputs(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(width_mult=0.125)
    net = ColorizerNet(config).eval()
    opt = torch.optim.Adam(net.parameters())
    net(torch.rand(1, 1, 16, 16)).sum().backward()
    opt.step()
    src, dst = tmp_path / "last.pt", tmp_path / "release.pt"
    save_checkpoint(src, {"model_config": config.to_dict(), "model": net.state_dict(), "optimizer": opt.state_dict(),
                          "step": 7, "rng": {"torch": torch.get_rng_state()}})
    written = release_checkpoint(src, dst, note="test")
    data = load_checkpoint(dst)
    assert written["release"] == data["release"] and written["step"] == data["step"]  # what was written, returned
    assert "optimizer" not in data and "rng" not in data
    assert data["step"] == 7 and data["release"]["note"] == "test"
    assert dst.stat().st_size < src.stat().st_size
    model, _ = load_model(dst)
    y = torch.rand(2, 1, 21, 17)
    with torch.no_grad():
        assert torch.equal(model(y), net(y))


def test_release_can_override_head_options(tmp_path):
    import numpy as np

    from engine.net.chroma_bins import bins_from_samples

    centres, _ = bins_from_samples(np.random.default_rng(0).normal(0, 0.1, (5000, 2)))
    config = ModelConfig(width_mult=0.125, head="classification",
                         head_options={"centres": centres.tolist(), "temperature": 0.4})
    src, dst = tmp_path / "last.pt", tmp_path / "release.pt"
    save_checkpoint(src, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": 1})
    release_checkpoint(src, dst, head_options={"temperature": 1.0})
    model, _ = load_model(dst)
    assert model.members[0].head.temperature == 1.0
    assert model.config.head_options["centres"] == centres.tolist()


def _tiny_run(tmp_path, **extra):
    config = ModelConfig(width_mult=0.125)
    src = tmp_path / "lite0-run" / "last.pt"
    src.parent.mkdir()
    save_checkpoint(src, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": 3,
                          **extra})
    return src


def test_release_keeps_no_paths_of_the_training_machine(tmp_path):
    train_config = {"data": "/home/someone/photos", "out": str(tmp_path / "lite0-run"), "val": "../elsewhere/v",
                    "val_list": "train/splits/val.txt", "cache": None, "steps": 3}
    src = _tiny_run(tmp_path, train_config=train_config)
    release_checkpoint(src, tmp_path / "r.pt")
    data = load_checkpoint(tmp_path / "r.pt")
    assert data["train_config"] == {"data": "DATA", "out": "lite0-run", "val": "VAL",
                                    "val_list": "train/splits/val.txt", "cache": None, "steps": 3}
    assert data["release"]["source"] == "lite0-run/last.pt"
    assert str(tmp_path) not in repr(data["release"]) + repr(data["train_config"])


def test_release_never_overwrites_without_overwrite(tmp_path):
    import pytest

    from engine.net.checkpoint import CheckpointError

    src, dst = _tiny_run(tmp_path), tmp_path / "r.pt"
    dst.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match="exists; pass --force"):
        release_checkpoint(src, dst)
    assert dst.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="is the checkpoint being released"):
        release_checkpoint(src, src, overwrite=True)
    release_checkpoint(src, dst, overwrite=True)
    assert load_checkpoint(dst)["step"] == 3


def test_release_refuses_head_options_for_a_regression_head(tmp_path):
    import pytest

    from engine.net.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"\['temperature'\] need a classification head, found a regression"):
        release_checkpoint(_tiny_run(tmp_path), tmp_path / "r.pt", head_options={"temperature": 0.35})
    assert not (tmp_path / "r.pt").exists()
