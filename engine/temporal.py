"""Temporal consistency of a video's predicted chroma: smoothing across frames and scene cuts (numpy, and
OpenCV's box filter).

The model colours every frame on its own, so the chroma of a still scene flickers from frame to frame
with the codec's noise and small changes. ``ChromaSmoother`` blends each frame's predicted chroma
(U, V at the model's resolution) with the smoothed chroma of the frames before it, an exponential
moving average, per pixel:

    smoothed = w * previous_smoothed + (1 - w) * predicted,   w = strength * still

``still`` is 1 where the frame's luma (at the model's resolution) equals the previous frame's and falls
to 0 where it changed by ``MOTION_LEVELS`` or more, so moving edges take their new colour at once
instead of dragging the old one behind them. The change is averaged over ``MOTION_BOX`` pixels
square first, so film grain and codec noise (which average out) do not count as motion. At a scene cut the history is dropped: the first frame of
a new shot is its own prediction. A cut is a mean absolute difference of the two frames' luma, averaged
over a coarse grid (``GRID`` cells on the long side: pans and zooms move it little), above
``CUT_THRESHOLD``.

The luma is never touched here: only chroma is smoothed, the output keeps each frame's own luma.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_STRENGTH = 0.7  # --temporal: weight of the past (0: every frame on its own)
MAX_STRENGTH = 0.95
CUT_THRESHOLD = 0.10  # mean absolute difference of grid-averaged luma in [0, 1] that starts a new shot
GRID = 16  # cells on the long side of the luma grid the cut test compares
MOTION_LEVELS = 24.0  # a luma change (0..255 levels) at which a pixel takes its new chroma at once
MOTION_BOX = 5  # pixels (odd): the luma change is averaged over this square before it is compared


def box_mean(a: np.ndarray, box: int = MOTION_BOX) -> np.ndarray:
    """float32 mean of ``a`` ``(h, w)`` over a ``box x box`` square around each pixel (edges replicated)."""
    return cv2.blur(np.asarray(a, dtype=np.float32), (box, box), borderType=cv2.BORDER_REPLICATE)


def luma_grid(luma: np.ndarray, cells: int = GRID) -> np.ndarray:
    """uint8 luma ``(h, w)`` -> float32 means over a grid of ``cells`` on the long side, in [0, 1]."""
    luma = np.asarray(luma)
    if luma.ndim != 2 or min(luma.shape) < 1:
        raise ValueError(f"luma: expected a non-empty (h, w) array, found shape {luma.shape}")
    h, w = luma.shape
    gh = max(1, min(h, round(cells * h / max(h, w))))
    gw = max(1, min(w, round(cells * w / max(h, w))))
    rows = np.linspace(0, h, gh + 1).astype(np.intp)[:-1]
    cols = np.linspace(0, w, gw + 1).astype(np.intp)[:-1]
    sums = np.add.reduceat(np.add.reduceat(luma.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    return (sums / (counts * 255.0)).astype(np.float32)


def cut_score(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference of two frames' ``luma_grid`` (0: same picture, 1: black to white)."""
    if previous.shape != current.shape:
        return 1.0
    return float(np.mean(np.abs(previous - current)))


class ChromaSmoother:
    """Smooths one shot after another: call it with every frame, in order.

    ``strength`` in [0, MAX_STRENGTH]: the weight of the past on a still pixel (0: no smoothing,
    frames independent). ``cut_threshold``: see ``cut_score``. ``cuts`` counts the scene cuts seen.
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH, *, cut_threshold: float = CUT_THRESHOLD,
                 motion_levels: float = MOTION_LEVELS) -> None:
        if not 0.0 <= strength <= MAX_STRENGTH:
            raise ValueError(f"strength: expected 0..{MAX_STRENGTH}, found {strength!r}")
        if not cut_threshold > 0.0 or not motion_levels > 0.0:
            raise ValueError(f"cut_threshold and motion_levels: expected > 0, found {cut_threshold!r}, "
                             f"{motion_levels!r}")
        self.strength = float(strength)
        self.cut_threshold = float(cut_threshold)
        self.motion_levels = float(motion_levels)
        self.cuts = 0
        self._grid: np.ndarray | None = None
        self._luma: np.ndarray | None = None
        self._uv: np.ndarray | None = None

    def __call__(self, luma: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """The smoothed chroma of the next frame.

        ``luma``: uint8 ``(h, w)``, the frame's luma at the model's resolution (as the model saw it);
        ``uv``: float32 ``(2, h, w)``, the model's chroma for it. Returns a new float32 ``(2, h, w)``.
        """
        luma = np.asarray(luma)
        uv = np.asarray(uv, dtype=np.float32)
        if uv.shape != (2,) + luma.shape:
            raise ValueError(f"uv: expected shape {(2,) + luma.shape}, found {uv.shape}")
        grid = luma_grid(luma)
        new_shot = self._uv is None or self._uv.shape != uv.shape
        if not new_shot and cut_score(self._grid, grid) > self.cut_threshold:  # type: ignore[arg-type]
            new_shot = True
            self.cuts += 1
        if new_shot or self.strength == 0.0:
            out = uv.copy()
        else:
            change = np.abs(box_mean(luma.astype(np.float32) - self._luma))  # type: ignore[operator]
            weight = np.float32(self.strength) * np.clip(1.0 - change / np.float32(self.motion_levels), 0.0, 1.0)
            out = weight * self._uv + (np.float32(1.0) - weight) * uv  # type: ignore[operator]
            out = out.astype(np.float32, copy=False)
        self._grid, self._luma, self._uv = grid, luma.copy(), out
        return out.copy()


def flicker(uvs: list[np.ndarray] | np.ndarray) -> float:
    """Mean absolute change of chroma between consecutive frames (``(N, 2, h, w)`` or a list of them)."""
    a = np.asarray(uvs, dtype=np.float32)
    if len(a) < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(a, axis=0))))
