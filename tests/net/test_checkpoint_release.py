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
    release_checkpoint(src, dst, note="test")
    data = load_checkpoint(dst)
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
    assert model.head.temperature == 1.0
    assert model.config.head_options["centres"] == centres.tolist()
