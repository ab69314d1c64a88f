"""engine.stages: model calls per input shape (the per-photo read/write stages run in test_api's folder tests)."""

from __future__ import annotations

import numpy as np

from engine import images, stages
from tests.engine.corpus import pattern
from tests.engine.test_api import PixelRunner


class Recording(PixelRunner):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def infer(self, gray, outputs=None):
        self.calls.append(gray.shape)
        return super().infer(gray, outputs)


def test_infer_chroma_one_call_per_shape_in_order():
    photos = [pattern(90, 160, 0, 1), pattern(160, 90, 1, 1), pattern(90, 160, 2, 1), pattern(50, 50, 3, 1)]
    fitted = [images.fit(p[..., 0], 64, multiple=8) for p in photos]
    with Recording() as runner:
        uv = stages.infer_chroma(runner, [x for x, _ in fitted], [c for _, c in fitted])
        assert runner.calls == [(2, 1, 40, 64), (1, 1, 64, 40), (1, 1, 64, 64)]
        for (x, (h, w)), got in zip(fitted, uv):
            alone = runner.infer(x[None, None], outputs=("uv",))["uv"][0, :, :h, :w]
            assert got.shape == (2, h, w) and got.flags.c_contiguous
            assert np.array_equal(got, alone)
