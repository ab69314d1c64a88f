import pytest
import torch
from torch import nn

from train.ema import WeightEMA


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())


def test_average_follows_the_ramped_decay_exactly():
    net = _net()
    ema = WeightEMA(net, 0.9)
    start = net[0].weight.detach().clone()
    expect = start.clone()
    for n in range(1, 31):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        ema.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        expect = d * expect + (1 - d) * net[0].weight.detach()
    assert ema.updates == 30 and ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(1000) == 0.9
    assert torch.allclose(ema.net[0].weight, expect, atol=1e-5)
    # the live weights moved by +1 per update; the average lags them, by less than
    # the steady-state lag d / (1 - d) = 9 while the ramp still holds d under 0.9
    lag = (net[0].weight - ema.net[0].weight).mean().item()
    assert 2 < lag < 9
    assert not any(p.requires_grad for p in ema.net.parameters()) and not ema.net.training


def test_a_constant_network_is_its_own_average():
    net = _net()
    ema = WeightEMA(net, 0.999)
    for _ in range(5):
        ema.update(net)
    for a, b in zip(ema.net.state_dict().values(), net.state_dict().values()):
        assert torch.allclose(a.float(), b.float())


def test_batchnorm_statistics_are_averaged_and_counters_copied():
    net = _net()
    ema = WeightEMA(net, 0.5)
    net.train()
    for _ in range(3):
        net(torch.rand(2, 1, 8, 8) + 5)  # moves running_mean toward the conv output
    ema.update(net)  # decay at update 1: min(0.5, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.net[1].running_mean, (1 - d) * net[1].running_mean, atol=1e-6)
    assert int(ema.net[1].num_batches_tracked) == 3


def test_state_round_trip_continues_identically():
    net = _net()
    a = WeightEMA(net, 0.99)
    for _ in range(4):
        with torch.no_grad():
            net[0].weight.mul_(1.1)
        a.update(net)
    b = WeightEMA(_net(), 0.5)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        net[0].weight.mul_(1.1)
    a.update(net)
    b.update(net)
    assert b.updates == 5 and b.decay == 0.99
    assert torch.equal(a.net[0].weight, b.net[0].weight)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_decay_out_of_range_is_refused(decay):
    with pytest.raises(ValueError, match="expected 0 < decay < 1"):
        WeightEMA(_net(), decay)
