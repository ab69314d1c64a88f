"""colorize-video on a clip whose truth is known: a pan over one colour photo, a cut, a zoom into another.

    python benchmarks/video.py PHOTO_A PHOTO_B [--size 224] [--width 640 --height 360] [--frames 48]

Each shot is made from a colour photo (the truth of every frame); the clip holds their luma, encoded
H.264 (--crf 0). ``cli.py colorize-video`` runs on it with ``--temporal 0`` and with the default, and
``cli.py colorize-dir`` on the same frames saved as JPEGs, at the same ``--size`` and model. Printed (and
written with ``--json``): PSNR against the truth (RGB, mean over frames), the flicker figure (mean absolute
change of the output's Cb/Cr levels between consecutive frames within a shot) against the truth's own, the
colourfulness ratio to the truth's, the mean luma error against the input (levels), the scene cuts found, and frames/s end to end (each command's own summary line: model loading excluded)
against the photo path's images/s (and its PSNR: JPEG q95 outputs).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from benchmarks.common import BenchmarkError  # noqa: E402
from engine.core import color, metrics  # noqa: E402
from engine.core.errors import ColorizerError  # noqa: E402


def shots(photo_a: Path, photo_b: Path, w: int, h: int, n: int) -> list[list[np.ndarray]]:
    """RGB frames: a left-to-right pan over ``photo_a``, then a zoom into the centre of ``photo_b``."""
    a = np.asarray(Image.open(photo_a).convert("RGB"))
    b = np.asarray(Image.open(photo_b).convert("RGB"))
    scale = max((h * 1.1) / a.shape[0], (w * 1.25) / a.shape[1])  # room to pan across
    a = cv2.resize(a, (round(a.shape[1] * scale), round(a.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    y0 = (a.shape[0] - h) // 2
    pan = [np.ascontiguousarray(a[y0 : y0 + h, x : x + w])
           for x in np.linspace(0, a.shape[1] - w, n).round().astype(int)]
    bh, bw = b.shape[:2]
    full_w = min(bw, bh * w / h)
    zoom = []
    for k in range(n):
        cw = full_w * (1.0 - 0.4 * k / max(1, n - 1))
        ch = cw * h / w
        x0, y0 = (bw - cw) / 2, (bh - ch) / 2
        m = np.float32([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]])
        zoom.append(cv2.warpAffine(b, m, (w, h), flags=cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR))
    return [pan, zoom]


def write_clip(path: Path, frames: list[np.ndarray], rate: int = 24) -> None:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate, options={"crf": "0"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for rgb in frames:
            gray = color.rgb_u8_to_luma_u8(rgb)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")))
        out.mux(vs.encode(None))


def read_output(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The output's RGB frames by the colour spec (limited range, BT.601), and its Cb/Cr planes in levels."""
    import av

    rgbs, cbcr = [], []
    span = np.array(color.CBCR_PER_UV, np.float32) * np.float32(color.LIMITED_C_SPAN / 255.0)
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            a = f.to_ndarray(format="yuv420p")
            h, w = f.height, f.width
            planes = a[h:].reshape(2, h // 2, w // 2).astype(np.float32)
            cbcr.append(planes)
            uv = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in planes], -1)
            uv = (uv - np.float32(color.CBCR_OFFSET)) / span
            rgbs.append(color.compose_u8(color.limited_luma_to_full_u8(a[:h]), uv))
    return rgbs, np.stack(cbcr)


def truth_cbcr(frames: list[np.ndarray]) -> np.ndarray:
    out = []
    for rgb in frames:
        uv = color.rgb_u8_to_yuv(rgb)[..., 1:]
        small = cv2.resize(uv, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        out.append(np.moveaxis(color.uv_to_cbcr(small, limited=True), -1, 0))
    return np.stack(out)


def within_shots(cbcr: np.ndarray, n: int) -> float:
    """Flicker of each shot (no cut frame pair), averaged."""
    from engine.temporal import flicker

    return float(np.mean([flicker(cbcr[i : i + n]) for i in range(0, len(cbcr), n)]))


def run_cli(*args: object) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchmarkError(f"cli.py {args[0]} failed (exit {r.returncode}): {r.stderr.strip()}")
    return r.stdout.splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except ColorizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo_a", type=Path, help="colour photo for the pan")
    ap.add_argument("photo_b", type=Path, help="colour photo for the zoom")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=48, help="frames per shot")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    for photo in (args.photo_a, args.photo_b):
        if not photo.is_file():
            raise BenchmarkError(f"{photo}: expected a colour photo, found no file")
    model = ["--model", args.model] if args.model else []
    pan, zoom = shots(args.photo_a, args.photo_b, args.width, args.height, args.frames)
    truth = pan + zoom
    report: dict = {"frames": len(truth), "size": f"{args.width}x{args.height}", "model_size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_clip(t / "in.mp4", truth)
        gray = np.stack([color.rgb_u8_to_luma_u8(f) for f in truth])
        report["gray_psnr_db"] = float(np.mean([metrics.psnr(np.repeat(g[..., None], 3, 2), f)
                                                 for g, f in zip(gray, truth)]))
        report["truth_flicker"] = within_shots(truth_cbcr(truth), args.frames)
        truth_colour = float(np.mean([metrics.colourfulness(f) for f in truth]))
        report["truth_colourfulness"] = truth_colour
        for name, temporal in (("temporal_0", ["--temporal", "0"]), ("default", [])):
            line = run_cli("colorize-video", t / "in.mp4", t / f"{name}.mp4", "--size", args.size, *model, *temporal)
            rgbs, cbcr = read_output(t / f"{name}.mp4")
            report[name] = {
                "psnr_db": float(np.mean([metrics.psnr(o, f) for o, f in zip(rgbs, truth)])),
                "flicker": within_shots(cbcr, args.frames),
                "colourfulness_ratio": float(np.mean([metrics.colourfulness(o) for o in rgbs])) / truth_colour,
                "luma_error": float(np.mean([np.abs(color.rgb_u8_to_luma_u8(o).astype(np.int16) - g).mean()
                                             for o, g in zip(rgbs, gray)])),
                "frames_per_s": float(re.search(r"\(([\d.]+) frames/s\)", line).group(1)),
                "scene_cuts": int(re.search(r"(\d+) scene cut", line).group(1)),
                "summary": line,
            }
        (t / "jpegs").mkdir()
        for i, g in enumerate(gray):
            Image.fromarray(g).save(t / "jpegs" / f"{i:04d}.jpg", quality=95)
        line = run_cli("colorize-dir", t / "jpegs", t / "jpegs-out", "--size", args.size, *model)
        report["photo_path_images_per_s"] = float(re.search(r"\(([\d.]+) img/s\)", line).group(1))
        photos = [np.asarray(Image.open(t / "jpegs-out" / f"{i:04d}.jpg").convert("RGB")) for i in range(len(truth))]
        report["photo_path_psnr_db"] = float(np.mean([metrics.psnr(o, f) for o, f in zip(photos, truth)]))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
