import numpy as np
import pytest
import torch

from engine.core import color


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


def _in_gamut_yuv(rng, n=20000):
    """Random YUV samples whose RGB lies inside the cube (with a margin), as uint8 luma + float chroma."""
    rgb = rng.uniform(0.03, 0.97, (n, 3)).astype(np.float32)
    yuv = color.rgb_to_yuv(rgb)
    gray = color.to_u8(yuv[:, 0])
    return gray.reshape(100, -1), yuv[:, 1:].reshape(100, -1, 2)


def test_uv_to_cbcr_matches_jpeg_own_conversion_of_compose_u8(rng):
    """JPEG planes from uv agree within one level with Pillow/libjpeg's RGB -> YCbCr of compose_u8's RGB."""
    from PIL import Image

    gray, uv = _in_gamut_yuv(rng)
    rgb = color.compose_u8(gray, uv)
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr")).astype(int)
    cbcr = color.uv_to_cbcr_u8(uv).astype(int)
    assert np.abs(cbcr - ycc[..., 1:]).max() <= 1
    assert np.abs(gray.astype(int) - ycc[..., 0]).max() <= 1  # JPEG's Y is the spec's luma
    # The JFIF formula written out (ITU-T T.871), independent of the constants in engine/core/color.py.
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    assert np.abs(cbcr - np.stack([cb, cr], -1)).max() <= 1.0


def test_uv_to_cbcr_constants_saturation_and_clamping():
    uv = np.array([[0.0, 0.0], [color.U_MAX, color.V_MAX], [-color.U_MAX, -color.V_MAX], [3.0, -3.0]], np.float32)
    np.testing.assert_allclose(color.uv_to_cbcr(uv)[:3], [[128, 128], [255.5, 255.5], [0.5, 0.5]], atol=1e-4)
    u8 = color.uv_to_cbcr_u8(uv)
    np.testing.assert_array_equal(u8[[0, 1, 3]], [[128, 128], [255, 255], [255, 0]])  # 255.5 and beyond clamp
    assert u8[2].max() <= 1  # 0.5 rounds half up
    np.testing.assert_array_equal(color.uv_to_cbcr_u8(uv[1:2], saturation=0.0), [[128, 128]])
    with pytest.raises(ValueError, match="expected shape"):
        color.uv_to_cbcr(np.zeros((4, 3), np.float32))


def test_compose_u8_is_yuv_to_rgb_u8_of_the_stacked_yuv(rng):
    gray = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    uv = rng.uniform(-0.7, 0.7, (64, 80, 2)).astype(np.float32)  # in and far out of the cube
    want = color.yuv_to_rgb_u8(np.concatenate([color.gray_u8_to_y(gray)[..., None], uv], axis=-1))
    got = color.compose_u8(gray, uv)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_limited_range_luma_maps_16_235_to_0_255():
    y = np.array([0, 16, 125, 235, 255], dtype=np.uint8)
    np.testing.assert_array_equal(color.limited_luma_to_full_u8(y), [0, 0, 127, 255, 255])


def test_limited_range_chroma_is_the_full_range_scaled_by_224_255(rgb_u8):
    uv = color.rgb_u8_to_yuv(rgb_u8)[..., 1:]
    full = color.uv_to_cbcr(uv)
    limited = color.uv_to_cbcr(uv, limited=True)
    np.testing.assert_allclose(limited - 128.0, (full - 128.0) * (224.0 / 255.0), atol=1e-4)
    u8 = color.uv_to_cbcr_u8(np.array([[0.0, 0.0], [color.U_MAX, color.V_MAX], [-1.0, -1.0]]), limited=True)
    np.testing.assert_array_equal(u8, [[128, 128], [240, 240], [16, 16]])  # neutral, the extremes, clamped


def test_limited_range_luma_table_is_the_formula_at_every_level():
    y = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = color.to_u8((y.astype(np.float32) - color.LIMITED_Y_MIN) / color.LIMITED_Y_SPAN)
    got = color.limited_luma_to_full_u8(y)
    assert got.dtype == np.uint8 and got.shape == (16, 16)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="expected uint8"):
        color.limited_luma_to_full_u8(y.astype(np.float32))
