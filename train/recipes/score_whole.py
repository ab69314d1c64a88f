"""Score checkpoints on whole validation photos, as colorize-dir sees them.

    python -m train.recipes.score_whole RUN/val_files.txt RUN_A/last.pt RUN_B/last.pt \\
        --temperatures 0.6,0.8,1.0 --size 256

Each photo is area-resized so its long side is 512 (a stand-in for the full-size photo), grayed with the
colour spec's luma, colorized by the engine (PyTorch backend, the model at ``--size``, tight padding, as
colorize-dir on a CPU), and compared with the resized photo: mean PSNR and colourfulness ratio. The
checkpoint is released at each annealed-mean temperature (an inference setting).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.core import color, metrics
from engine.api import Colorizer
from engine.net.checkpoint import release_checkpoint


def photos(val_list: Path, long_side: int = 512) -> list[np.ndarray]:
    out = []
    for line in val_list.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rgb = np.asarray(Image.open(line.strip()).convert("RGB"))
            s = long_side / max(rgb.shape[:2])
            out.append(cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("val_list", type=Path)
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--temperatures", default="0.6,0.8,1.0")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    gts = photos(args.val_list)
    grays = [color.rgb_u8_to_luma_u8(g) for g in gts]
    gray_psnr = np.mean([metrics.psnr(np.repeat(y[..., None], 3, -1), g) for y, g in zip(grays, gts)])
    print(f"{len(gts)} photos, long side 512, model at {args.size}; gray PSNR {gray_psnr:.3f} dB")
    for ckpt in args.checkpoints:
        for t in (float(x) for x in args.temperatures.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                model = Path(tmp) / "m.pt"
                release_checkpoint(ckpt, model, head_options={"temperature": t})
                with Colorizer(model, "torch", size=args.size, padding="tight") as c:
                    preds = c.colorize_batch(grays)
            psnr = np.mean([metrics.psnr(pr, g) for pr, g in zip(preds, gts)])
            ratio = np.mean([metrics.colourfulness(pr) for pr in preds]) / np.mean([metrics.colourfulness(g) for g in gts])
            print(f"{ckpt}  T={t:.2f}  PSNR {psnr:.3f} dB  colourfulness ratio {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
