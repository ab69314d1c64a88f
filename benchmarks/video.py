"""colorize-video on a clip whose truth is known: shots over colour photos, a cut between each two.

    python benchmarks/video.py PHOTO PHOTO [PHOTO ...] [--size 224] [--width 640 --height 360] [--frames 96]
        [--input-crf 17]

One shot per photo, in the order given: a left-to-right pan across the 1st, 3rd, ... photo, a zoom into the
centre of the 2nd, 4th, ... Each shot is made from a colour photo (the truth of every frame); the clip holds their luma, encoded
H.264 at ``--input-crf`` (17: lossy like a film as it comes, as the photo path's JPEGs are; 0: lossless, which costs
more to decode). ``cli.py colorize-video`` runs on it with ``--temporal 0`` and with the default, and
``cli.py colorize-dir`` on the same frames saved as JPEGs, at the same ``--size`` and model. Printed (and
written with ``--json``): PSNR against the truth (RGB, mean over frames), the flicker figure (mean absolute
change of the output's Cb/Cr levels between consecutive frames within a shot) against the truth's own, the
colourfulness ratio to the truth's, the mean luma error (the output's stored luma plane against the input's,
full-range levels), the scene cuts found, and frames/s end to end (each command's own summary line: model
loading excluded; the median of --repeat runs, the commands taking turns)
against the photo path's images/s (and its PSNR: JPEG q95 outputs).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
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
from engine.core.files import DEFAULT_X264_PRESET  # noqa: E402


def shots(photos: list[Path], w: int, h: int, n: int) -> list[list[np.ndarray]]:
    """RGB frames of each shot, ``n`` per photo: pans over the even-numbered photos, zooms into the others."""
    return [(pan if i % 2 == 0 else zoom)(np.asarray(Image.open(p).convert("RGB")), w, h, n)
            for i, p in enumerate(photos)]


def pan(a: np.ndarray, w: int, h: int, n: int) -> list[np.ndarray]:
    """``n`` frames ``h x w`` panning left to right across the photo ``a`` (scaled to leave room)."""
    scale = max((h * 1.1) / a.shape[0], (w * 1.25) / a.shape[1])  # room to pan across
    a = cv2.resize(a, (round(a.shape[1] * scale), round(a.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    y0 = (a.shape[0] - h) // 2
    return [np.ascontiguousarray(a[y0 : y0 + h, x : x + w])
            for x in np.linspace(0, a.shape[1] - w, n).round().astype(int)]


def zoom(b: np.ndarray, w: int, h: int, n: int) -> list[np.ndarray]:
    """``n`` frames ``h x w`` zooming into the centre of the photo ``b``, from its full width to 60 % of it."""
    bh, bw = b.shape[:2]
    full_w = min(bw, bh * w / h)
    frames = []
    for k in range(n):
        cw = full_w * (1.0 - 0.4 * k / max(1, n - 1))
        ch = cw * h / w
        x0, y0 = (bw - cw) / 2, (bh - ch) / 2
        m = np.float32([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]])
        frames.append(cv2.warpAffine(b, m, (w, h), flags=cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR))
    return frames


def write_clip(path: Path, frames: list[np.ndarray], rate: int = 24, crf: int = 17) -> None:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "medium"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for rgb in frames:
            gray = color.rgb_u8_to_luma_u8(rgb)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")))
        out.mux(vs.encode(None))


def read_luma(path: Path) -> np.ndarray:
    """The clip's decoded luma planes, full range (as the model sees them), ``(frames, H, W)``."""
    import av

    with av.open(str(path)) as c:
        return np.stack([color.limited_luma_to_full_u8(f.to_ndarray(format="yuv420p")[: f.height])
                         for f in c.decode(c.streams.video[0])])


def read_output(path: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The output's RGB frames by the colour spec (limited range, BT.601), its Cb/Cr planes in levels, and its
    luma planes full range (``read_luma``'s)."""
    import av

    rgbs, cbcr, lumas = [], [], []
    span = np.array(color.CBCR_PER_UV, np.float32) * np.float32(color.LIMITED_C_SPAN / 255.0)
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            a = f.to_ndarray(format="yuv420p")
            h, w = f.height, f.width
            planes = a[h:].reshape(2, h // 2, w // 2).astype(np.float32)
            cbcr.append(planes)
            uv = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in planes], -1)
            uv = (uv - np.float32(color.CBCR_OFFSET)) / span
            lumas.append(color.limited_luma_to_full_u8(a[:h]))
            rgbs.append(color.compose_u8(lumas[-1], uv))
    return rgbs, np.stack(cbcr), np.stack(lumas)


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


def table(report: dict) -> str:
    """The report as the Markdown table of docs/video.md."""
    def row(name: str, r: dict) -> str:
        return (f"| {name} | {r['psnr_db']:.2f} | {r['flicker']:.2f} | {r['colourfulness_ratio']:.2f} | "
                f"{r['luma_error']:.2f} | {r['scene_cuts']} of {report['shots'] - 1} | {r['output_mib']:.1f} MiB | "
                f"{r['frames_per_s']:.1f} frames/s |")

    t0, d = report["temporal_0"], report["default"]
    return "\n".join([
        "| | PSNR vs truth (dB) | flicker (Cb/Cr levels) | colourfulness / truth's | luma error (levels) "
        "| scene cuts found | file | speed |",
        "|---|---|---|---|---|---|---|---|",
        f"| gray input | {report['gray_psnr_db']:.2f} | | 0 | | | | |",
        f"| truth | | {report['truth_flicker']:.2f} | 1 | | | | |",
        row("`--temporal 0`", t0),
        row("`--temporal 0.7` (default)", d),
        f"| `colorize-dir` on the frames as JPEGs | {report['photo_path_psnr_db']:.2f} | | | | | | "
        f"{report['photo_path_images_per_s']:.1f} images/s |",
        "",
        f"{report['frames']} frames of {report['size']} ({report['shots']} shots of "
        f"{report['frames'] // report['shots']}), input H.264 at CRF {report['input_crf']} "
        f"({report['input_mib']:.1f} MiB), model at --size {report['model_size']}, x264 preset "
        f"{report['preset']}; `--temporal 0.7`'s "
        f"frames/s is {100 * d['frames_per_s'] / report['photo_path_images_per_s']:.0f} % of the photo path's "
        f"images/s (medians of {len(d['frames_per_s_runs'])} runs each, taking turns: video "
        f"{', '.join(f'{v:.1f}' for v in d['frames_per_s_runs'])} frames/s, photos "
        f"{', '.join(f'{v:.1f}' for v in report['photo_path_images_per_s_runs'])} images/s); "
        f"flicker with smoothing is {d['flicker'] / report['truth_flicker']:.2f}x the truth's.",
    ]) + "\n"


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
    ap.add_argument("photos", type=Path, nargs="+", metavar="PHOTO",
                    help="colour photos, one shot each (at least two: the clip has a cut between shots)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=96, help="frames per shot")
    ap.add_argument("--repeat", type=int, default=3, help="speed: runs of each command, taking turns (median)")
    ap.add_argument("--input-crf", type=int, default=17, help="x264 CRF of the input clip (0: lossless)")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--preset", default=None, help="colorize-video --preset (default: its own)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table of docs/video.md here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise BenchmarkError(f"--repeat: expected at least 1, found {args.repeat}")
    if len(args.photos) < 2:
        raise BenchmarkError(f"expected at least two photos (one shot each), found {len(args.photos)}")
    for photo in args.photos:
        if not photo.is_file():
            raise BenchmarkError(f"{photo}: expected a colour photo, found no file")
    model = ["--model", args.model] if args.model else []
    preset = ["--preset", args.preset] if args.preset else []
    truth = [f for shot in shots(args.photos, args.width, args.height, args.frames) for f in shot]
    report: dict = {"preset": args.preset or f"default ({DEFAULT_X264_PRESET})", "frames": len(truth),
                    "shots": len(args.photos), "photos": [p.name for p in args.photos],
                    "size": f"{args.width}x{args.height}", "model_size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_clip(t / "in.mp4", truth, crf=args.input_crf)
        gray = np.stack([color.rgb_u8_to_luma_u8(f) for f in truth])
        decoded = read_luma(t / "in.mp4")
        if len(decoded) != len(truth):
            raise BenchmarkError(f"the input clip decodes to {len(decoded)} frames, expected {len(truth)}")
        report["input_crf"] = args.input_crf
        report["input_mib"] = (t / "in.mp4").stat().st_size / 2**20
        report["gray_psnr_db"] = float(np.mean([metrics.psnr(np.repeat(g[..., None], 3, 2), f)
                                                 for g, f in zip(gray, truth)]))
        report["truth_flicker"] = within_shots(truth_cbcr(truth), args.frames)
        truth_colour = float(np.mean([metrics.colourfulness(f) for f in truth]))
        report["truth_colourfulness"] = truth_colour
        (t / "jpegs").mkdir()
        for i, g in enumerate(decoded):
            Image.fromarray(g).save(t / "jpegs" / f"{i:04d}.jpg", quality=95)
        # Speed: the three commands take turns, --repeat times, and each reports its median, so a slow
        # moment of the machine does not land on one command alone.
        speeds: dict[str, list[float]] = {"temporal_0": [], "default": [], "photo_path": []}
        lines: dict[str, str] = {}
        for _ in range(args.repeat):
            for name, temporal in (("temporal_0", ["--temporal", "0"]), ("default", [])):
                lines[name] = run_cli("colorize-video", t / "in.mp4", t / f"{name}.mp4", "--size", args.size,
                                      *model, *temporal, *preset, "--overwrite")
                speeds[name].append(float(re.search(r"\(([\d.]+) frames/s\)", lines[name]).group(1)))
            shutil.rmtree(t / "jpegs-out", ignore_errors=True)
            line = run_cli("colorize-dir", t / "jpegs", t / "jpegs-out", "--size", args.size, *model)
            speeds["photo_path"].append(float(re.search(r"\(([\d.]+) img/s\)", line).group(1)))
        for name in ("temporal_0", "default"):
            rgbs, cbcr, luma = read_output(t / f"{name}.mp4")
            report[name] = {
                "psnr_db": float(np.mean([metrics.psnr(o, f) for o, f in zip(rgbs, truth)])),
                "flicker": within_shots(cbcr, args.frames),
                "colourfulness_ratio": float(np.mean([metrics.colourfulness(o) for o in rgbs])) / truth_colour,
                "luma_error": float(np.abs(luma.astype(np.int16) - decoded).mean()),
                "frames_per_s": float(np.median(speeds[name])),
                "frames_per_s_runs": speeds[name],
                "scene_cuts": int(re.search(r"(\d+) scene cut", lines[name]).group(1)),
                "output_mib": (t / f"{name}.mp4").stat().st_size / 2**20,
                "summary": lines[name],
            }
        report["photo_path_images_per_s"] = float(np.median(speeds["photo_path"]))
        report["photo_path_images_per_s_runs"] = speeds["photo_path"]
        photos = [np.asarray(Image.open(t / "jpegs-out" / f"{i:04d}.jpg").convert("RGB")) for i in range(len(truth))]
        report["photo_path_psnr_db"] = float(np.mean([metrics.psnr(o, f) for o, f in zip(photos, truth)]))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table(report))


if __name__ == "__main__":
    sys.exit(main())
