import numpy as np
import pytest
import torch

from engine.core.color import U_MAX, V_MAX
from engine.net import chroma_bins
from engine.net.encoders import VGG_DEPTHS as BLOCK_DEPTHS
from engine.net.model import WIDTH_PRESETS, ColorizerNet, ModelConfig, ModelConfigError, count_parameters
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_parameters(widths, head="regression", bins=0):
    """Parameter count from the architecture as documented in engine/net/model.py.

    Encoder: blocks of 3x3 conv (no bias) + BatchNorm (2 per channel), depths 2/2/3/3.
    Decoder, deepest first: 1x1 projection (with bias) to the shallower width, then a
    3x3 conv-BN refinement except at full resolution. Regression head: 3x3 conv to 2
    channels with bias. Classification head: 3x3 conv-BN, then 1x1 conv to K bins.
    """
    n, cin = 0, 1
    for w, depth in zip(widths, BLOCK_DEPTHS):
        for i in range(depth):
            n += 9 * (cin if i == 0 else w) * w + 2 * w
        cin = w
    levels = list(zip(widths[:0:-1], widths[-2::-1]))
    for i, (deep, shallow) in enumerate(levels):
        n += deep * shallow + shallow
        if i < len(levels) - 1:
            n += 9 * shallow * shallow + 2 * shallow
    w0 = widths[0]
    if head == "regression":
        n += 9 * w0 * 2 + 2
    else:
        n += 9 * w0 * w0 + 2 * w0 + w0 * bins + bins
    return n


@pytest.mark.parametrize("width", sorted(WIDTH_PRESETS))
@pytest.mark.parametrize("mult", [0.125, 0.5, 1.0])
def test_parameter_count_matches_the_architecture(width, mult):
    config = ModelConfig(width, mult)
    assert config.widths == tuple(max(4, round(c * mult)) for c in WIDTH_PRESETS[width])
    assert count_parameters(ColorizerNet(config)) == expected_parameters(config.widths)


def test_presets_and_width_mult_scale_as_expected():
    seed, vgg = (count_parameters(ColorizerNet(ModelConfig(w))) for w in ("seed", "vgg16"))
    assert seed < vgg
    half = count_parameters(ColorizerNet(ModelConfig("seed", 0.5)))
    # Almost every weight is a conv between two scaled widths: about a quarter at half width.
    assert 0.22 < half / seed < 0.27


def test_bad_config_is_a_model_config_error():
    with pytest.raises(ModelConfigError):
        ColorizerNet(ModelConfig("huge"))
    with pytest.raises(ModelConfigError):
        ColorizerNet(ModelConfig("seed", 0.0))
    with pytest.raises(ModelConfigError):
        ColorizerNet(ModelConfig("seed", head="nope"))
    with pytest.raises(ModelConfigError):
        ModelConfig.from_dict({**TINY_MODEL, "colour": 1})


def test_config_round_trips_through_a_dict():
    config = ModelConfig("vgg16", 0.25)
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("hw", [(1, 1), (37, 53), (64, 64), (2, 97)])
def test_output_shape_equals_input_shape_at_any_size(hw):
    torch.manual_seed(0)
    net = ColorizerNet(ModelConfig.from_dict(TINY_MODEL)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *hw))
        assert out.shape == (2, 2, *hw)
        assert net.forward_train(torch.rand(1, 1, *hw))[0]["uv"].shape == (1, 2, *hw)
    if min(hw) >= 8:  # train-mode BatchNorm needs more than one value per channel at the deepest scale
        assert ColorizerNet(ModelConfig.from_dict(TINY_MODEL)).train()(torch.rand(2, 1, *hw)).shape == (2, 2, *hw)


def test_uv_stays_within_the_colour_spec_ranges():
    torch.manual_seed(0)
    net = ColorizerNet(ModelConfig.from_dict(TINY_MODEL)).eval()
    with torch.no_grad():
        net.members[0].head.conv.weight.mul_(1000.0)  # drive tanh into saturation
        uv = net(torch.rand(4, 1, 40, 40))
    u, v = uv[:, 0], uv[:, 1]
    assert u.abs().max() <= U_MAX + 1e-6 and v.abs().max() <= V_MAX + 1e-6
    assert u.abs().max() > 0.99 * U_MAX and v.abs().max() > 0.99 * V_MAX


def _all_parameters_get_gradients(net, loss):
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = ColorizerNet(ModelConfig.from_dict(TINY_MODEL)).train()
    out, = net.forward_train(torch.rand(2, 1, 24, 30))
    _all_parameters_get_gradients(net, ((out["uv"] - 0.05) ** 2).mean())


def test_classification_head_shapes_and_gradients():
    rng = np.random.default_rng(0)
    centres, _ = chroma_bins.bins_from_samples(rng.normal(0, 0.1, (5000, 2)))
    config = ModelConfig("seed", 0.125, head="classification",
                         head_options={"centres": centres.tolist(), "temperature": 0.4, "stride": 4})
    torch.manual_seed(0)
    net = ColorizerNet(config).train()
    out, = net.forward_train(torch.rand(2, 1, 37, 53))
    assert out["uv"].shape == (2, 2, 37, 53) and out["logits"].shape == (2, len(centres), 10, 14)
    _all_parameters_get_gradients(net, out["logits"].logsumexp(1).mean() + out["uv"].pow(2).mean())
    assert count_parameters(net) == expected_parameters(config.widths, "classification", len(centres))
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 5, 3)).shape == (1, 2, 5, 3)


def _members_net(k, head="regression", **options):
    torch.manual_seed(0)
    return ColorizerNet(ModelConfig.from_dict({**TINY_MODEL, "members": k, "head": head,
                                               "head_options": options})).eval()


def test_members_run_the_encoder_once_and_output_the_mean_of_their_decoders():
    net = _members_net(3)
    one = ColorizerNet(ModelConfig.from_dict(TINY_MODEL))
    member = count_parameters(one) - count_parameters(one.encoder)
    assert count_parameters(net) == count_parameters(net.encoder) + 3 * member
    calls = []
    net.encoder.register_forward_hook(lambda *_: calls.append(1))
    y = torch.rand(2, 1, 23, 31)
    with torch.no_grad():
        out = net(y)
        feats = net.encoder(y)
        each = [m.head(m.features(feats), None) for m in net.members]
    assert len(calls) == 2  # the forward pass above plus the explicit call: once per forward
    assert not torch.allclose(each[0], each[1])  # members start from their own random weights
    torch.testing.assert_close(out, (each[0] + each[1] + each[2]) / 3)
    outputs = net.train().forward_train(y)
    assert len(outputs) == 3 and all(o["uv"].shape == (2, 2, 23, 31) for o in outputs)


def test_members_is_part_of_the_config_and_old_configs_mean_one():
    config = ModelConfig.from_dict({**TINY_MODEL, "members": 2})
    assert ModelConfig.from_dict(config.to_dict()) == config and config.to_dict()["members"] == 2
    assert ModelConfig.from_dict(TINY_MODEL).members == 1
    for bad in (0, 9, 1.5):
        with pytest.raises(ModelConfigError, match="members"):
            ColorizerNet(ModelConfig.from_dict({**TINY_MODEL, "members": bad}))


def test_weights_saved_before_members_load_as_member_zero():
    net = _members_net(1)
    legacy = {k.replace("members.0.", ""): v for k, v in net.state_dict().items()}
    assert "head.conv.weight" in legacy
    fresh = ColorizerNet(ModelConfig.from_dict(TINY_MODEL)).eval()
    fresh.load_state_dict(legacy)
    y = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(y), net(y))


def test_set_temperature_reaches_every_member_and_needs_a_classification_head():
    rng = np.random.default_rng(0)
    centres, _ = chroma_bins.bins_from_samples(rng.normal(0, 0.1, (5000, 2)))
    net = _members_net(2, "classification", centres=centres.tolist(), temperature=0.4)
    net.set_temperature(0.9)
    assert [h.temperature for h in net.heads] == [0.9, 0.9]
    with pytest.raises(ModelConfigError, match="classification"):
        _members_net(2).set_temperature(0.9)
