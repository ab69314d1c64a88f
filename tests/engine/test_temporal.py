"""engine.temporal: chroma smoothing across frames, motion and scene cuts (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import temporal


def _scene(seed: int, shape=(24, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8)).astype(np.uint8)
    return np.kron(small, np.ones((8, 8), np.uint8))


def test_still_scene_flicker_falls_with_strength(rng):
    luma = _scene(0)
    base = rng.normal(0, 0.1, (2,) + luma.shape).astype(np.float32)
    noisy = [base + rng.normal(0, 0.03, base.shape).astype(np.float32) for _ in range(40)]
    figures = {}
    for strength in (0.0, 0.5, 0.9):
        s = temporal.ChromaSmoother(strength)
        figures[strength] = temporal.flicker([s(luma, uv) for uv in noisy])
    assert figures[0.0] == pytest.approx(temporal.flicker(noisy))
    assert figures[0.9] < figures[0.5] < 0.8 * figures[0.0]
    assert figures[0.9] < 0.4 * figures[0.0]


def test_strength_zero_returns_each_prediction():
    s = temporal.ChromaSmoother(0.0)
    luma = _scene(1)
    for k in range(3):
        uv = np.full((2,) + luma.shape, 0.05 * k, np.float32)
        np.testing.assert_array_equal(s(luma, uv), uv)


def test_scene_cut_drops_the_history():
    a, b = _scene(1), _scene(2)
    assert temporal.cut_score(temporal.luma_grid(a), temporal.luma_grid(b)) > temporal.CUT_THRESHOLD
    uv_a = np.full((2,) + a.shape, 0.2, np.float32)
    uv_b = np.full((2,) + a.shape, -0.2, np.float32)
    s = temporal.ChromaSmoother(0.9)
    for _ in range(5):
        s(a, uv_a)
    np.testing.assert_array_equal(s(b, uv_b), uv_b)  # the first frame after the cut is its own prediction
    assert s.cuts == 1
    out = s(b, uv_a)  # within the shot, the past weighs again
    assert np.all(out < -0.1)


def test_small_pan_is_not_a_cut_and_moving_pixels_follow_at_once():
    big = np.kron(np.random.default_rng(3).integers(0, 256, (6, 10)).astype(np.uint8), np.ones((8, 8), np.uint8))
    a, b = big[:, :64], big[:, 2:66]  # two pixels of pan
    assert temporal.cut_score(temporal.luma_grid(a), temporal.luma_grid(b)) < temporal.CUT_THRESHOLD
    s = temporal.ChromaSmoother(0.9)
    s(a, np.zeros((2,) + a.shape, np.float32))
    out = s(b, np.ones((2,) + b.shape, np.float32))
    diff = b.astype(np.float32) - a.astype(np.float32)
    moved = np.abs(temporal.box_mean(diff)) >= temporal.MOTION_LEVELS
    still = temporal.box_mean(np.abs(diff)) == 0
    assert moved.any() and still.any() and s.cuts == 0
    np.testing.assert_allclose(out[:, moved], 1.0)  # changed pixels: the new chroma, no trail
    np.testing.assert_allclose(out[:, still], 0.1, atol=1e-6)  # still pixels: 0.9 of the past


def test_grain_is_not_motion(rng):
    luma = _scene(4).astype(np.int16)
    s = temporal.ChromaSmoother(0.8)
    s(luma.astype(np.uint8), np.zeros((2,) + luma.shape, np.float32))
    grainy = np.clip(luma + rng.integers(-20, 21, luma.shape), 0, 255).astype(np.uint8)
    out = s(grainy, np.ones((2,) + luma.shape, np.float32))
    assert out.mean() < 0.35  # mostly the past: the grain averaged out of the motion test


def test_bad_arguments():
    with pytest.raises(ValueError):
        temporal.ChromaSmoother(1.0)
    with pytest.raises(ValueError):
        temporal.ChromaSmoother(0.5)(np.zeros((4, 4), np.uint8), np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError):
        temporal.luma_grid(np.zeros((0, 4), np.uint8))


def test_box_mean_is_the_mean_over_the_replicated_edge_square():
    a = np.random.default_rng(3).normal(0, 40, (9, 13)).astype(np.float32)
    box = temporal.MOTION_BOX
    r = box // 2
    p = np.pad(a.astype(np.float64), r, mode="edge")
    want = np.array([[p[i:i + box, j:j + box].mean() for j in range(13)] for i in range(9)])
    got = temporal.box_mean(a)
    assert got.dtype == np.float32 and got.shape == a.shape
    assert np.abs(got - want).max() < 1e-4
