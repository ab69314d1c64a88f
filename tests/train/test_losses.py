import math

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


def _three_bin_loss(**options):
    loss = L.build_loss("classification", {"k": 1, "stride": 1, **options})
    loss.load_prepared_state({"centres": [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]], "weights": [2.0, 1.0, 1.0]})
    return loss


def test_a_teachers_distribution_is_mixed_into_the_target():
    target = torch.zeros(1, 2, 2, 2)  # every pixel's true colour is bin 0
    teacher = torch.zeros(1, 3, 2, 2)
    teacher[:, 2] = 1.0  # the teacher says bin 2
    peak = {b: torch.full((1, 3, 2, 2), -5.0).index_fill_(1, torch.tensor([b]), 5.0) for b in (0, 2)}

    def value(share, logits, with_teacher=True):
        extra = {"teacher_probs": teacher} if with_teacher else {}
        return _three_bin_loss(teacher=share)({"logits": logits, **extra}, target).item()

    assert value(0.0, peak[0]) < value(0.0, peak[2])  # share 0: the true colour alone
    assert value(1.0, peak[2]) < value(1.0, peak[0])  # share 1: the teacher alone
    assert value(0.5, peak[0]) == pytest.approx((value(0.0, peak[0]) + value(1.0, peak[0])) / 2)
    assert value(1.0, peak[0], with_teacher=False) == pytest.approx(value(0.0, peak[0]))  # no teacher: no mixing
    # the rebalancing weight follows the true colour's bin (weight 2), not the teacher's (weight 1)
    assert value(1.0, torch.zeros(1, 3, 2, 2)) == pytest.approx(2 * math.log(3), rel=1e-5)


def test_a_teacher_of_another_shape_or_a_bad_share_is_a_user_error():
    loss = _three_bin_loss()
    with pytest.raises(L.LossConfigError, match=r"teacher distribution of shape \(1, 4, 2, 2\) does not match"):
        loss({"logits": torch.zeros(1, 3, 2, 2), "teacher_probs": torch.zeros(1, 4, 2, 2)}, torch.zeros(1, 2, 2, 2))
    with pytest.raises(L.LossConfigError, match=r"invalid option\(s\) \['teacher'\]: got 1.5"):
        L.build_loss("classification", {"teacher": 1.5})
    assert L.build_loss("classification").accepts_teacher and not L.build_loss("huber").accepts_teacher
