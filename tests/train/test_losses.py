import pytest
import torch

from engine.core.errors import ColorizerError
from train import losses as L
from engine.net.model import ColorizerNet, ModelConfig
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_and_builds_losses():
    names = L.available_losses()
    assert {"huber", "mse", "classification"} <= set(names)
    loss = L.build_loss("huber", {"delta": 0.05})
    assert isinstance(loss, L.HuberLoss) and loss.delta == 0.05 and loss.name == "huber"
    assert loss.head_config() == ("regression", {})
    assert loss.prepared_state() == {}


def test_unknown_loss_and_bad_options_are_user_errors():
    with pytest.raises(ColorizerError, match="expected one of"):
        L.build_loss("nope")
    with pytest.raises(ColorizerError, match="bad options"):
        L.build_loss("huber", {"width": 3})
    with pytest.raises(ColorizerError, match="delta"):
        L.build_loss("huber", {"delta": 0})


def test_parse_loss_options():
    assert L.parse_loss_options(["delta=0.05", "k=5", "name=x", "flag=true"]) == {
        "delta": 0.05, "k": 5, "name": "x", "flag": True}
    with pytest.raises(ColorizerError, match="KEY=VALUE"):
        L.parse_loss_options(["delta"])


def test_huber_is_quadratic_below_delta_and_linear_above():
    loss = L.build_loss("huber", {"delta": 0.1})
    target = torch.zeros(1, 2, 1, 2)
    pred = torch.tensor([0.05, -0.3, 0.0, 0.0]).reshape(1, 2, 1, 2)
    expect = (0.5 * 0.05**2 + 0.1 * (0.3 - 0.5 * 0.1)) / 4
    assert loss({"uv": pred}, target).item() == pytest.approx(expect, rel=1e-6)
    assert loss({"uv": target.clone()}, target).item() == 0.0
    mse = L.build_loss("mse")
    assert mse({"uv": pred}, target).item() == pytest.approx((0.05**2 + 0.3**2) / 4, rel=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        L.build_loss("huber")({"uv": torch.zeros(1, 2, 4, 4)}, torch.zeros(1, 2, 4, 5))


def test_loss_gradient_reaches_the_model():
    net = ColorizerNet(ModelConfig.from_dict(TINY_MODEL))
    y = torch.rand(2, 1, 16, 16)
    target = torch.rand(2, 2, 16, 16) * 0.2 - 0.1
    L.build_loss("huber")(net.forward_train(y)[0], target).backward()
    assert net.members[0].head.conv.weight.grad is not None and net.members[0].head.conv.weight.grad.abs().sum() > 0


def test_a_registered_plugin_loss_plugs_in():
    @L.register_loss("test-l1")
    class L1(L.Loss):
        def __init__(self, scale: float = 1.0):
            super().__init__(scale=scale)
            self.scale = scale
            self.prepared = None

        def prepare(self, train_set):
            self.prepared = len(train_set)

        def forward(self, outputs, target_uv):
            return self.scale * (outputs["uv"] - target_uv).abs().mean()

    try:
        loss = L.build_loss("test-l1", {"scale": 2.0})
        assert "test-l1" in L.available_losses() and loss.options == {"scale": 2.0}
        loss.prepare(range(7))
        assert loss.prepared == 7
        value = loss({"uv": torch.ones(1, 2, 2, 2)}, torch.zeros(1, 2, 2, 2))
        assert value.item() == pytest.approx(2.0)
    finally:
        L.LOSSES.pop("test-l1")
