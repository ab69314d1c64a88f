"""Score checkpoints on whole validation photos, as colorize-dir sees them.

    python cli.py score-whole RUN/val_files.txt RUN_A/last.pt RUN_B/last.pt --temperatures 0.6,0.8,1.0 --size 256

Each photo is area-resized so its long side is 512 (a stand-in for the full-size photo), grayed with the
colour spec's luma, colorized by the engine (PyTorch backend, the model at ``--size``, tight padding, as
colorize-dir on a CPU), and compared with the resized photo: mean PSNR and colourfulness ratio. The
checkpoint is released at each annealed-mean temperature (an inference setting). With ``--ensemble`` the
checkpoints' outputs are also averaged per photo at each temperature (``average``) and scored as one model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.core import color, metrics
from engine.api import Colorizer
from engine.net.checkpoint import load_checkpoint, release_checkpoint


def photos(val_list: Path, long_side: int = 512) -> list[np.ndarray]:
    out = []
    for line in val_list.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rgb = np.asarray(Image.open(line.strip()).convert("RGB"))
            s = long_side / max(rgb.shape[:2])
            out.append(cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA))
    return out


def gray_psnr(gts: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """The photos' gray inputs (the colour spec's luma) and their mean PSNR against the photos."""
    grays = [color.rgb_u8_to_luma_u8(g) for g in gts]
    return grays, float(np.mean([metrics.psnr(np.repeat(y[..., None], 3, -1), g) for y, g in zip(grays, gts)]))


def temperatures_for(ckpt: Path, temperatures: list[float]) -> list[float | None]:
    """The temperatures to score ``ckpt`` at: all of them for a classification head, none (``[None]``) otherwise."""
    return list(temperatures) if load_checkpoint(ckpt)["model_config"]["head"] == "classification" else [None]


def colorize(ckpt: Path, temperature: float | None, grays: list[np.ndarray], size: int = 256) -> list[np.ndarray]:
    """``grays`` colorized by ``ckpt`` released at ``temperature`` (uint8 RGB, one per photo)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.pt"
        release_checkpoint(ckpt, model, head_options={"temperature": temperature} if temperature else None)
        with Colorizer(model, "torch", size=size, padding="tight") as c:
            return c.colorize_batch(grays)


def quality(preds: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    """Mean PSNR of ``preds`` against ``gts`` and the ratio of their mean colourfulness."""
    psnr = float(np.mean([metrics.psnr(pr, g) for pr, g in zip(preds, gts)]))
    ratio = float(np.mean([metrics.colourfulness(pr) for pr in preds]) / np.mean([metrics.colourfulness(g) for g in gts]))
    return psnr, ratio


def average(outputs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per photo, the mean of several models' RGB outputs, rounded to uint8.

    The models share the gray input, so this is the mean of their chroma (the colour spec is linear) up to
    rounding and clipping: the output of an ensemble that averages the models' UV.
    """
    return [np.clip(np.rint(np.mean([o[i].astype(np.float64) for o in outputs], axis=0)), 0, 255).astype(np.uint8)
            for i in range(len(outputs[0]))]
