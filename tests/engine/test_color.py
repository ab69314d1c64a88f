import numpy as np
import pytest
import torch

from engine import color


@pytest.fixture()
def rgb_u8(rng):
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    rgb[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                  [255, 0, 255]]  # the corners of the cube
    return rgb


def test_round_trip_uint8_is_exact_or_within_one(rgb_u8):
    back = color.yuv_to_rgb_u8(color.rgb_u8_to_yuv(rgb_u8))
    diff = np.abs(back.astype(int) - rgb_u8.astype(int))
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.999


def test_yuv_ranges_match_the_spec(rgb_u8):
    yuv = color.rgb_u8_to_yuv(rgb_u8)
    assert yuv[..., 0].min() >= -1e-6 and yuv[..., 0].max() <= 1 + 1e-6
    assert np.abs(yuv[..., 1]).max() <= color.U_MAX + 1e-6
    assert np.abs(yuv[..., 2]).max() <= color.V_MAX + 1e-6
    corners = color.rgb_u8_to_yuv(np.array([[0, 0, 255], [255, 0, 0]], np.uint8))
    assert corners[0, 1] == pytest.approx(color.U_MAX, abs=1e-6)  # pure blue: U at its maximum
    assert corners[1, 2] == pytest.approx(color.V_MAX, abs=1e-6)  # pure red: V at its maximum


def test_gray_pixels_have_zero_chroma():
    g = np.arange(256, dtype=np.uint8)
    yuv = color.rgb_u8_to_yuv(np.stack([g, g, g], axis=-1))
    assert np.abs(yuv[..., 1:]).max() < 1e-6
    np.testing.assert_allclose(yuv[..., 0], g / 255.0, atol=1e-6)
    np.testing.assert_array_equal(color.rgb_u8_to_luma_u8(np.stack([g, g, g], axis=-1)), g)
    # Composing luma with zero chroma gives the gray photo back.
    gray = g.reshape(16, 16)
    out = color.compose_u8(gray, np.zeros((16, 16, 2), np.float32))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))


def test_numpy_and_torch_agree(rgb_u8):
    t = torch.from_numpy(rgb_u8).permute(2, 0, 1)[None]  # (1, 3, H, W)
    yuv_t = color.rgb_u8_to_yuv_torch(t)
    yuv_n = color.rgb_u8_to_yuv(rgb_u8)
    np.testing.assert_allclose(yuv_t[0].permute(1, 2, 0).numpy(), yuv_n, atol=1e-6)
    back_t = color.yuv_to_rgb_u8_torch(yuv_t)[0].permute(1, 2, 0).numpy()
    back_n = color.yuv_to_rgb_u8(yuv_n)
    assert np.abs(back_t.astype(int) - back_n.astype(int)).max() <= 1
    assert (back_t == back_n).mean() > 0.999
    g = torch.arange(256, dtype=torch.uint8)
    np.testing.assert_array_equal(color.gray_u8_to_y_torch(g).numpy(), color.gray_u8_to_y(g.numpy()))
    x = torch.linspace(-0.5, 1.5, 1001)
    np.testing.assert_array_equal(color.to_u8_torch(x).numpy(), color.to_u8(x.numpy()))


def test_extreme_yuv_clamps_instead_of_wrapping():
    yuv = np.array([
        [1.0, color.U_MAX, color.V_MAX],    # beyond the RGB cube: some channels > 1
        [0.0, -color.U_MAX, -color.V_MAX],  # some channels < 0
        [5.0, 3.0, 3.0],
        [-5.0, -3.0, -3.0],
        [2.0, 0.0, 0.0],
        [-1.0, 0.0, 0.0],
    ], np.float32)
    rgb = color.yuv_to_rgb_u8(yuv)
    raw = yuv @ color.YUV_TO_RGB.T
    np.testing.assert_array_equal(rgb[raw >= 1.0], 255)
    np.testing.assert_array_equal(rgb[raw <= 0.0], 0)
    np.testing.assert_array_equal(rgb[4], [255, 255, 255])
    np.testing.assert_array_equal(rgb[5], [0, 0, 0])
    t = torch.from_numpy(yuv).T.reshape(1, 3, 1, 6)
    np.testing.assert_array_equal(color.yuv_to_rgb_u8_torch(t)[0, :, 0].T.numpy(), rgb)


def test_rounding_is_half_up():
    np.testing.assert_array_equal(color.to_u8(np.array([0.5 / 255, 0.49 / 255, 254.5 / 255])), [1, 0, 255])


@pytest.mark.parametrize("shape", [(2,), (4, 4, 2), (4, 4, 4), ()])
def test_wrong_numpy_shapes_raise_value_error(shape):
    bad = np.zeros(shape, np.float32)
    for fn in (color.rgb_to_yuv, color.yuv_to_rgb, color.rgb_u8_to_yuv, color.yuv_to_rgb_u8):
        with pytest.raises(ValueError, match="expected shape"):
            fn(bad)


@pytest.mark.parametrize("shape", [(3, 4), (1, 2, 4, 4), (4, 4, 3), (1, 4, 4, 4)])
def test_wrong_torch_shapes_raise_value_error(shape):
    with pytest.raises(ValueError, match="expected shape"):
        color.rgb_to_yuv_torch(torch.zeros(shape))
    with pytest.raises(ValueError, match="expected shape"):
        color.yuv_to_rgb_torch(torch.zeros(shape))


def test_matrices_are_exact_inverses_and_described():
    np.testing.assert_allclose(color.RGB_TO_YUV @ color.YUV_TO_RGB, np.eye(3), atol=1e-12)
    d = color.describe()
    assert d["name"] == color.SPEC_NAME and d["u_max"] == color.U_MAX and d["v_max"] == color.V_MAX
    np.testing.assert_allclose(np.array(d["rgb_to_yuv"]) @ np.array(d["yuv_to_rgb"]), np.eye(3), atol=1e-12)
