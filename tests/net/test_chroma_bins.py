import numpy as np
import pytest
import torch

from engine.net import chroma_bins as cb


@pytest.fixture()
def samples(rng):
    uv = rng.normal(0, 0.08, (20000, 2))
    uv[:, 0] = np.clip(uv[:, 0], -0.436, 0.436)
    uv[:, 1] = np.clip(uv[:, 1], -0.615, 0.615)
    return uv


def test_bins_keep_only_occupied_cells_and_round_trip(samples):
    centres, counts = cb.bins_from_samples(samples, grid=0.05)
    assert counts.sum() == len(samples)
    assert (counts > 0).all()
    full_grid = (2 * 0.436 / 0.05 + 1) * (2 * 0.615 / 0.05 + 1)
    assert len(centres) < full_grid
    # encode -> nearest bin -> decode lands within half a grid step per axis
    target = torch.tensor(samples[:500], dtype=torch.float32).T.reshape(1, 2, 20, 25)
    soft = cb.soft_encode(target, torch.tensor(centres), sigma=0.025, k=1)
    idx = soft.argmax(1).flatten()
    decoded = torch.tensor(centres)[idx]
    err = (decoded - target.reshape(2, -1).T).abs()
    assert err.max() <= 0.025 + 1e-6


def test_soft_encoding_sums_to_one_and_is_local(samples):
    centres, _ = cb.bins_from_samples(samples)
    target = torch.tensor(samples[:64], dtype=torch.float32).T.reshape(1, 2, 8, 8)
    soft = cb.soft_encode(target, torch.tensor(centres), sigma=0.05, k=5)
    assert soft.shape == (1, len(centres), 8, 8)
    assert torch.allclose(soft.sum(1), torch.ones(1, 8, 8), atol=1e-5)
    assert (soft >= 0).all()
    assert ((soft > 0).sum(1) <= 5).all()


def test_rebalancing_weights_have_mean_one_under_the_prior(samples):
    centres, counts = cb.bins_from_samples(samples)
    p = counts / counts.sum()
    for lam in (0.0, 0.5, 0.9):
        w = cb.rebalance_weights(counts, lam, centres=centres)
        assert (p * w).sum() == pytest.approx(1.0, rel=1e-5)
    w = cb.rebalance_weights(counts, 0.5, centres=centres)
    assert w[np.argmin(counts)] > w[np.argmax(counts)]  # rare colours weigh more
    assert np.allclose(cb.rebalance_weights(counts, 1.0), 1.0)  # lam = 1: no rebalancing


def test_rebalancing_rejects_bad_lambda():
    with pytest.raises(Exception, match="lambda"):
        cb.rebalance_weights(np.ones(4), 1.5)


def test_annealed_mean_mode_and_mean():
    centres = torch.tensor([[-0.2, 0.0], [0.0, 0.1], [0.3, -0.3]])
    logits = torch.tensor([1.0, 2.0, 0.5]).reshape(1, 3, 1, 1)
    mode = cb.annealed_mean(logits, centres, temperature=1e-3).flatten()
    assert torch.allclose(mode, centres[1], atol=1e-4)
    mean = cb.annealed_mean(logits, centres, temperature=1.0).flatten()
    expected = (torch.softmax(logits.flatten(), 0)[:, None] * centres).sum(0)
    assert torch.allclose(mean, expected, atol=1e-6)
