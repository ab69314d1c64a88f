import logging
import os
import re

import numpy as np
import pytest
import torch

from engine.core import color
from train import data as D
from tests.train.conftest import write_photos


def test_listing_is_recursive_sorted_and_filters_suffixes(tmp_path):
    write_photos(tmp_path, n=6)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "deep" / "x" / "y").mkdir(parents=True)
    (tmp_path / "deep" / "x" / "y" / "UPPER.JPEG").write_bytes((tmp_path / "a" / "p00.jpg").read_bytes())
    rels = [f.rel for f in D.list_images(tmp_path)]
    assert rels == sorted(rels)
    assert "deep/x/y/UPPER.JPEG" in rels and "b/c/p01.png" in rels
    assert not any(r.endswith(".txt") for r in rels)
    assert len(rels) == 7


def test_places365_layout(tmp_path):
    root = tmp_path / "data_256"
    for cls in ("a/abbey", "a/airfield", "b/bakery"):
        write_photos(root / cls, n=2, size=(20, 20))
    files = D.list_images(root)
    assert len(files) == 6 and files[0].rel.startswith("a/abbey/") and files[-1].rel.startswith("b/bakery/")


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_missing_empty_or_file_data_folder_is_a_data_error(tmp_path, kind):
    target = tmp_path / "data"
    if kind == "empty":
        target.mkdir()
        (target / "readme.md").write_text("no photos")
    elif kind == "file":
        target.write_text("x")
    with pytest.raises(D.DataError, match=str(target)):
        D.list_images(target)


def test_split_takes_every_kth_file_by_sorted_path(tmp_path):
    files = [D.ImageFile(tmp_path, f"{i:03d}.jpg") for i in range(25)]
    train, val = D.split_files(files, 0.1)
    assert [f.rel for f in val] == ["009.jpg", "019.jpg"]
    assert set(train) | set(val) == set(files) and not set(train) & set(val)
    assert D.split_files(files, 0.1) == (train, val)
    assert D.split_files(files, 0.0) == (files, [])
    assert D.split_files(files[:4], 0.1)[1] == [files[3]]  # fewer than k files: the last one validates
    assert D.split_files(files[:1], 0.5) == (files[:1], [])  # a single file trains, nothing validates
    with pytest.raises(D.DataError):
        D.split_files(files, 1.0)


def test_cache_is_built_once_and_reused(photos, tmp_path, monkeypatch):
    files = D.list_images(photos)
    cache = D.build_or_load_cache(files, 40, tmp_path / "cache", workers=2)
    assert len(cache) == len(files)
    for i in range(len(cache)):
        img = cache.image(i)
        assert img.dtype == np.uint8 and min(img.shape[:2]) == 40 and img.shape[2] == 3
    # Same bytes as decoding directly.
    np.testing.assert_array_equal(cache.image(3), D.decode_resized(files[3].path, 40))

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(D, "decode_resized", boom)
    again = D.build_or_load_cache(files, 40, tmp_path / "cache")
    np.testing.assert_array_equal(again.image(5), cache.image(5))
    # Another size or a changed file is another key.
    assert D.cache_key(files, 48) != D.cache_key(files, 40)
    before = D.cache_key(files, 40)
    os.utime(files[0].path, ns=(1, 1))
    assert D.cache_key(files, 40) != before


def test_unreadable_images_are_skipped_with_one_warning_each(tmp_path, caplog):
    write_photos(tmp_path / "d", n=3)
    (tmp_path / "d" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "d" / "zero.png").write_bytes(b"")
    files = D.list_images(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        cache = D.build_or_load_cache(files, 24, tmp_path / "cache")
    assert len(cache) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("broken.jpg" in w and "not a decodable image" in w for w in warnings)
    assert any("zero.png" in w and "empty file" in w for w in warnings)


def test_nothing_readable_is_a_data_error(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(2):
        (tmp_path / "d" / f"x{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(D.DataError, match="none of the 2"):
        D.build_or_load_cache(D.list_images(tmp_path / "d"), 24, tmp_path / "cache")


@pytest.fixture()
def train_set(photos, tmp_path):
    cache = D.build_or_load_cache(D.list_images(photos), 40, tmp_path / "cache")
    return D.TrainSet(cache, 32, seed=7)


def _contains(img, crop):
    h, w = crop.shape[:2]
    for top in range(img.shape[0] - h + 1):
        for left in range(img.shape[1] - w + 1):
            win = img[top : top + h, left : left + w]
            if np.array_equal(win, crop):
                return "plain"
            if np.array_equal(win[:, ::-1], crop):
                return "flipped"
    return None


def test_batches_are_a_pure_function_of_seed_and_step(train_set, photos, tmp_path):
    b = train_set.batch(5, 4)
    assert b.shape == (4, 32, 32, 3) and b.dtype == np.uint8
    fresh = D.TrainSet(train_set.cache, 32, seed=7)
    np.testing.assert_array_equal(fresh.batch(5, 4), b)  # no hidden state: a resumed run sees the same batch
    assert not np.array_equal(train_set.batch(6, 4), b)
    assert not np.array_equal(D.TrainSet(train_set.cache, 32, seed=8).batch(5, 4), b)


def _spans(train_set, steps=6):
    """Horizontal value span of each crop when every image is a gradient whose value is its column (0..199)."""
    gradient = np.broadcast_to(np.arange(200, dtype=np.uint8)[None, :, None], (100, 200, 3))
    train_set.image = lambda i: gradient
    spans = []
    for step in range(steps):
        for crop in train_set.batch(step, 4):
            row = crop[16, :, 0].astype(int)
            spans.append(abs(row[-1] - row[0]))
    return np.array(spans)


def test_zoom_crops_see_photos_at_several_scales(train_set):
    assert set(_spans(train_set)) == {31}  # zoom 1: 32 px windows of the photo, one scale
    zoomed = D.TrainSet(train_set.cache, 32, seed=7, zoom=2.0)
    spans = _spans(zoomed)
    # a square of side s (32 .. the short side, 100) shrunk to 32 px spans about s - s / 32 columns
    assert spans.min() >= 30 and spans.max() <= 100 and spans.max() - spans.min() > 30, spans
    np.testing.assert_array_equal(_spans(D.TrainSet(train_set.cache, 32, seed=7, zoom=2.0)), spans)  # still pure
    assert D.cache_short_side(112) == 140 and D.cache_short_side(112, 2.0) == 280


def test_crops_come_from_their_image_and_some_are_flipped(train_set):
    kinds = []
    for step in range(4):
        pos = train_set.positions(step, 4)
        for crop, i in zip(train_set.batch(step, 4), train_set.indices(pos)):
            kinds.append(_contains(train_set.image(int(i)), crop))
    assert None not in kinds
    assert "plain" in kinds and "flipped" in kinds


def test_each_epoch_visits_every_image_once(train_set):
    n = len(train_set)
    idx = train_set.indices(np.arange(3 * n))
    for e in range(3):
        assert sorted(idx[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert idx[:n].tolist() != idx[n : 2 * n].tolist()


def test_ranks_take_disjoint_shards_of_the_global_batch(train_set):
    whole = train_set.batch(3, 4, rank=0, world_size=1)
    r0 = train_set.batch(3, 2, rank=0, world_size=2)
    r1 = train_set.batch(3, 2, rank=1, world_size=2)
    np.testing.assert_array_equal(np.concatenate([r0, r1]), whole)
    assert set(train_set.positions(3, 2, 0, 2)).isdisjoint(train_set.positions(3, 2, 1, 2))


def test_model_tensors_use_the_colour_spec(train_set):
    rgb = train_set.batch(0, 3)
    y, uv = D.to_model_tensors(rgb)
    assert y.shape == (3, 1, 32, 32) and uv.shape == (3, 2, 32, 32)
    # Y is exactly what the engine feeds for the grayed photo.
    luma = color.rgb_u8_to_luma_u8(rgb)
    torch.testing.assert_close(y[:, 0], torch.from_numpy(luma).float() / 255, rtol=0, atol=1e-7)
    expect_uv = color.rgb_u8_to_yuv(rgb)[..., 1:]
    np.testing.assert_allclose(uv.permute(0, 2, 3, 1).numpy(), expect_uv, atol=1e-6)
    y2, _ = D.to_model_tensors(rgb, channels_last=True)
    assert y2.is_contiguous(memory_format=torch.channels_last)


def test_sample_pixels_and_centre_crops(train_set):
    px = train_set.sample_pixels(500, seed=1)
    assert px.shape == (500, 3) and px.dtype == np.uint8
    np.testing.assert_array_equal(px, train_set.sample_pixels(500, seed=1))
    all_px = {tuple(p) for i in range(len(train_set)) for p in train_set.image(i).reshape(-1, 3)}
    assert all(tuple(p) in all_px for p in px[:50])
    crops = D.center_crops(train_set.cache, 32, limit=5)
    img = train_set.image(0)
    top, left = (img.shape[0] - 32) // 2, (img.shape[1] - 32) // 2
    assert crops.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(crops[0], img[top : top + 32, left : left + 32])


def test_prefetch_yields_in_order():
    assert list(D.prefetch(lambda s: s * s, range(3, 9), depth=2)) == [s * s for s in range(3, 9)]
    assert list(D.prefetch(lambda s: s, range(0), depth=2)) == []
    assert list(D.prefetch(lambda s: -s, range(4), depth=0)) == [0, -1, -2, -3]


# ----------------------------------------------------------------------------- --repeat


def test_repeat_counts_take_the_largest_matching_n():
    paths = ["a/p00.jpg", "a/p03.jpg", "b/c/p01.png", "p02.jpg"]
    np.testing.assert_array_equal(D.repeat_counts(paths, ("a/*=3",)), [3, 3, 1, 1])
    np.testing.assert_array_equal(D.repeat_counts(paths, ("a/*=3", "*p03*=5", "*.png=2")), [3, 5, 2, 1])
    np.testing.assert_array_equal(D.repeat_counts(paths, ()), [1, 1, 1, 1])
    assert D.parse_repeat(["x=y=2"]) == (("x=y", 2),)  # the last '=' separates N


@pytest.mark.parametrize("spec", ["a/*", "a/*=0", "a/*=101", "a/*=1.5", "=2", "a/*=two"])
def test_repeat_spec_errors_name_the_spec(spec):
    with pytest.raises(D.DataError, match=re.escape(f"--repeat: expected GLOB=N with N an integer from 1 to 100, found '{spec}'")):
        D.repeat_counts(["a/p00.jpg"], (spec,))


def test_repeat_glob_matching_nothing_is_an_error():
    with pytest.raises(D.DataError, match=r"--repeat imagenet_\*=2: matches no training photo"):
        D.repeat_counts(["a/p00.jpg"], ("imagenet_*=2",))


def test_repeated_photos_stand_n_times_in_every_epoch(train_set):
    n = len(train_set)
    repeats = np.ones(n, np.int64)
    repeats[[0, 5]] = (3, 2)
    rep = D.TrainSet(train_set.cache, 32, seed=7, repeats=repeats)
    assert rep.epoch_size == n + 3 and len(rep) == n
    for epoch in range(2):
        idx = rep.indices(np.arange(epoch * rep.epoch_size, (epoch + 1) * rep.epoch_size))
        np.testing.assert_array_equal(np.bincount(idx, minlength=n), repeats)
    b = rep.batch(4, 4)
    np.testing.assert_array_equal(D.TrainSet(train_set.cache, 32, seed=7, repeats=repeats).batch(4, 4), b)  # pure
    # all ones is the plain set, batch for batch
    ones = D.TrainSet(train_set.cache, 32, seed=7, repeats=np.ones(n, np.int64))
    np.testing.assert_array_equal(ones.batch(3, 4), train_set.batch(3, 4))
    with pytest.raises(D.DataError, match="repeats: expected"):
        D.TrainSet(train_set.cache, 32, seed=7, repeats=np.ones(n + 1, np.int64))


def test_repeats_weight_the_pixels_of_the_colour_prior(train_set):
    n = len(train_set)
    means = np.array([train_set.image(i).reshape(-1, 3).mean(0) for i in range(n)])
    target = int(np.argmax(np.abs(means - means.mean(0)).sum(1)))  # the photo least like the others
    repeats = np.ones(n, np.int64)
    repeats[target] = 50
    plain = train_set.sample_pixels(20000).astype(float).mean(0)
    weighted = D.TrainSet(train_set.cache, 32, seed=7, repeats=repeats).sample_pixels(20000).astype(float).mean(0)
    expect = (means.sum(0) + 49 * means[target]) / (n + 49)  # the mean over an epoch's images
    np.testing.assert_allclose(weighted, expect, atol=3)
    assert np.abs(weighted - plain).sum() > 10 * np.abs(weighted - expect).sum()
