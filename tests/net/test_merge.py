import pytest
import torch

from engine.net.checkpoint import CheckpointError, load_checkpoint, load_model, release_checkpoint, save_checkpoint
from engine.net.merge import MergeError, merge_members
from engine.net.model import ColorizerNet, ModelConfig
from tests.conftest import TINY_MODEL


def _runs(n, *, same_stats=False, members=1):
    """``n`` tiny models with one encoder's weights, their own decoders and (unless ``same_stats``) BN statistics."""
    config = ModelConfig.from_dict({**TINY_MODEL, "members": members})
    torch.manual_seed(0)
    trunk = ColorizerNet(config).encoder.state_dict()
    nets = []
    for i in range(n):
        torch.manual_seed(100 + i)
        net = ColorizerNet(config).eval()
        net.encoder.load_state_dict(trunk)
        if not same_stats:
            with torch.no_grad():
                for m in net.encoder.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.2, 0.2)
                        m.running_var.uniform_(0.5, 1.5)
        nets.append(net)
    return config, nets


def test_merged_model_is_the_mean_of_its_sources_when_they_share_the_trunk_statistics():
    config, nets = _runs(3, same_stats=True)
    merged_config, state = merge_members([(f"run{i}", config, n.state_dict()) for i, n in enumerate(nets)])
    assert merged_config.members == 3
    merged = ColorizerNet(merged_config).eval()
    merged.load_state_dict(state)
    y = torch.rand(2, 1, 19, 26)
    with torch.no_grad():
        torch.testing.assert_close(merged(y), sum(n(y) for n in nets) / 3)


def test_trunk_statistics_are_averaged_and_members_keep_their_order():
    config, nets = _runs(2, members=2)
    merged_config, state = merge_members([("a", config, nets[0].state_dict()), ("b", config, nets[1].state_dict())])
    assert merged_config.members == 4
    for key in [k for k in state if k.endswith(("running_mean", "running_var")) and k.startswith("encoder.")]:
        torch.testing.assert_close(state[key], (nets[0].state_dict()[key] + nets[1].state_dict()[key]) / 2)
    assert torch.equal(state["members.3.head.conv.weight"], nets[1].state_dict()["members.1.head.conv.weight"])
    assert torch.equal(state["members.0.head.conv.weight"], nets[0].state_dict()["members.0.head.conv.weight"])


def test_runs_whose_encoders_learned_do_not_merge():
    config, nets = _runs(2)
    with torch.no_grad():
        nets[1].encoder.blocks[0][0][0].weight.add_(1e-3)
    with pytest.raises(MergeError, match=r"run-b: encoder weight encoder\.blocks\.0\.0\.0\.weight differs"):
        merge_members([("run-a", config, nets[0].state_dict()), ("run-b", config, nets[1].state_dict())])


def test_other_model_configs_and_too_many_members_are_refused():
    config, nets = _runs(2)
    wider = ModelConfig.from_dict({**TINY_MODEL, "width_mult": 0.25})
    with pytest.raises(MergeError, match="b: model config differs from a's in width_mult, widths"):
        merge_members([("a", config, nets[0].state_dict()), ("b", wider, ColorizerNet(wider).state_dict())])
    with pytest.raises(MergeError, match="two or more"):
        merge_members([("a", config, nets[0].state_dict())])
    five = ModelConfig.from_dict({**TINY_MODEL, "members": 5})
    with pytest.raises(MergeError, match="at most 8 members in all, found 10"):
        merge_members([("a", five, ColorizerNet(five).state_dict())] * 2)


def test_release_of_several_checkpoints_merges_them(tmp_path):
    config, nets = _runs(2, same_stats=True)
    paths = []
    for i, net in enumerate(nets):
        path = tmp_path / f"seed{i}" / "last.pt"
        path.parent.mkdir()
        # the second run kept a weight average: the release ships it, as for one checkpoint
        ema = {"decay": 0.9, "updates": 5, "model": net.state_dict()} if i else None
        legacy = {k.replace("members.0.", ""): v for k, v in net.state_dict().items()}  # saved before members
        save_checkpoint(path, {"model_config": {k: v for k, v in config.to_dict().items() if k != "members"},
                               "model": legacy if i == 0 else {k: v * 0 for k, v in net.state_dict().items()},
                               "step": 10 + i, "ema": ema, "metrics": {"val_psnr": 1.0}})
        paths.append(path)
    written = release_checkpoint(paths, tmp_path / "ens.pt")
    data = load_checkpoint(tmp_path / "ens.pt")
    assert data["model_config"]["members"] == 2 and data["step"] == 10 and "metrics" not in data
    assert [m["source"] for m in data["release"]["members"]] == ["seed0/last.pt", "seed1/last.pt"]
    assert data["release"]["members"][1]["weights"].startswith("ema") and written["release"] == data["release"]
    model, _ = load_model(tmp_path / "ens.pt")
    y = torch.rand(1, 1, 17, 17)
    with torch.no_grad():
        torch.testing.assert_close(model(y), (nets[0](y) + nets[1](y)) / 2)
    with pytest.raises(CheckpointError, match="is the checkpoint being released"):
        release_checkpoint([paths[0], tmp_path / "ens.pt"], tmp_path / "ens.pt", overwrite=True)
