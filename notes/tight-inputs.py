"""Square vs tight model inputs on the validation split (notes/tight-inputs.md).

    .venv/bin/python notes/tight-inputs.py runs/long-l08/val_files.txt

Each photo is area-resized so its long side is 224 (as colorize-dir fits it), grayed with the
colour spec's luma, colorized from (a) the input padded by reflection to 224x224 and (b) padded
only to the model's size multiple; chroma cropped to the content, joined with the photo's luma,
compared with the photo (PSNR, colourfulness).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import color, images, metrics  # noqa: E402
from engine.backends.ort import OrtRunner  # noqa: E402


def main(val_list: str, size: int = 224) -> None:
    files = [line.strip() for line in open(val_list, encoding="utf-8") if line.strip()]
    for model in ("models/colorizer.onnx", "models/colorizer-int8.onnx"):
        with OrtRunner(model) as runner:
            scores: dict[str, list[tuple[float, float, float]]] = {"square": [], "tight": []}
            for f in files:
                rgb = np.asarray(Image.open(f).convert("RGB"))
                (h, w), _ = images.fitted_shape(*rgb.shape[:2], size)
                gt = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
                luma = color.rgb_u8_to_luma_u8(gt)
                for name, multiple in (("square", None), ("tight", runner.size_multiple)):
                    x, (ch, cw) = images.fit(luma, size, multiple=multiple)
                    uv = runner.infer(x[None, None], outputs=("uv",))["uv"][0, :, :ch, :cw]
                    pred = color.compose_u8(luma, np.moveaxis(uv, 0, -1))
                    scores[name].append((metrics.psnr(pred, gt), metrics.colourfulness(pred), metrics.colourfulness(gt)))
            print(f"{model}: {len(files)} photos, long side {size}")
            for name, v in scores.items():
                a = np.array(v)
                print(f"  {name:6s} PSNR {a[:, 0].mean():.3f} dB  colourfulness {a[:, 1].mean():.2f}"
                      f"  ratio to ground truth {a[:, 1].mean() / a[:, 2].mean():.3f}")
            d = np.array(scores["tight"])[:, 0] - np.array(scores["square"])[:, 0]
            print(f"  tight - square PSNR per photo: mean {d.mean():+.3f}, min {d.min():+.3f}, max {d.max():+.3f} dB")


if __name__ == "__main__":
    main(*sys.argv[1:2])
