"""Command line: parse, call the library, print, exit. Nothing else lives here.

Exit codes: 0 success; 1 some files failed (colorize-dir, evaluate); 2 usage or
input errors (one line on stderr, no traceback).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from engine.core.errors import ColorizerError

ROOT = Path(__file__).resolve().parent


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


# optional packages -> how to get them (a plain install runs colorize-dir, evaluate and demo on ONNX Runtime)
_TRAIN = "pip install '.[train]' (on a CPU machine first pip install torch==2.13.0, the CPU wheel)"
_EXTRAS = {"torch": _TRAIN, "onnx": _TRAIN, "onnxscript": _TRAIN, "onnxconverter_common": _TRAIN,
           "ray": "pip install '.[cluster]'", "av": "pip install '.[video]'", "tensorrt": "pip install '.[gpu]' on a GPU server (docs/gpu-servers.md)"}


class _Group(click.Group):
    """Turns user errors raised by the library into one line and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ColorizerError as e:
            _fail(str(e))
        except ModuleNotFoundError as e:
            extra = _EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            _fail(f"{ctx.invoked_subcommand or 'this command'} needs {e.name}, which is not installed: {extra}")
        except KeyboardInterrupt:
            _fail("interrupted", 130)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from engine import __version__
    from engine.core import hardware

    runtimes = ", ".join(f"{k} {v}" for k, v in hardware.runtime_versions().items() if v) or "none"
    click.echo(f"colorizer {__version__} (Python {sys.version.split()[0]}; {runtimes}; "
               f"CUDA devices: {hardware.cuda_device_count()})")
    ctx.exit(0)


@click.group(cls=_Group)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the package version and the runtimes found, then exit.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Colorize grayscale photographs with a CNN (train, export, build engines, run)."""
    _setup_logging(verbose)


# ----------------------------------------------------------------------------- train
# (owned by the trainer: train/)


@main.command()
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Folder of colour photos (searched recursively).")
@click.option("--val", type=click.Path(path_type=Path), help="Separate validation folder (instead of --val-fraction).")
@click.option("--val-fraction", type=float, help="Hold out every round(1/F)-th file by sorted relative path [0.1].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder: checkpoints, metrics.jsonl, cache.")
@click.option("--val-list", type=click.Path(dir_okay=False, path_type=Path),
              help="Text file of photos (paths relative to --data) that validate; the rest train.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave training photos whose relative path matches; repeatable.")
@click.option("--encoder", default="vgg", show_default=True,
              type=click.Choice(["vgg", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]),
              help="vgg: VGG blocks from scratch; efficientnet-liteN: ImageNet-pretrained trunk (weights from the train extra).")
@click.option("--encoder-lr-mult", default=1.0, show_default=True, help="Encoder learning rate as a multiple of --lr (0: frozen).")
@click.option("--width", default="seed", show_default=True, help="Width preset: seed or vgg16 (vgg encoder; a pretrained encoder scales its decoder by --width-mult).")
@click.option("--width-mult", default=1.0, show_default=True, help="Multiplier on the preset's channel widths.")
@click.option("--image-size", default=128, show_default=True, help="Training crop size (px).")
@click.option("--zoom", default=1.0, show_default=True,
              help="Scale augmentation: crops see photos with short sides from the crop size up to ZOOM x 1.25 x it "
                   "(1: one scale, 1.25 x the crop).")
@click.option("--batch-size", default=16, show_default=True, help="Crops per step PER PROCESS (global = x nproc).")
@click.option("--steps", default=2000, show_default=True, help="Total optimizer steps.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak Adam learning rate (linear warm-up, cosine decay).")
@click.option("--warmup-steps", type=int, help="Warm-up steps [min(500, steps/20)].")
@click.option("--loss", default="huber", show_default=True, help="Loss from train.losses (huber, mse, classification).")
@click.option("--loss-option", multiple=True, metavar="KEY=VALUE", help="Loss option; repeatable.")
@click.option("--ema", default=0.0, show_default=True,
              help="Also keep an exponential moving average of the weights with this decay (e.g. 0.999; 0: off); "
                   "it is validated beside the live weights, and release_checkpoint ships it.")
@click.option("--resume", is_flag=True, help="Continue RUN_DIR/last.pt at its exact step (same settings required).")
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only; ignored with a note on the CPU).")
@click.option("--seed", default=0, show_default=True, help="Seed for init, data order and crops.")
@click.option("--workers", default=2, show_default=True, help="Decode threads for the cache; >0 also prefetches batches.")
@click.option("--log-every", default=50, show_default=True, help="Log loss, img/s, ETA every N steps.")
@click.option("--val-every", default=500, show_default=True, help="Validate and write last.pt every M steps.")
@click.option("--val-limit", default=500, show_default=True, help="Validate on at most this many photos.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--cache", type=click.Path(path_type=Path), help="Decoded-photo cache folder [RUN_DIR/cache].")
def train(data, val, val_fraction, val_list, exclude, encoder, encoder_lr_mult, out, width, width_mult, image_size, zoom, batch_size, steps, lr, warmup_steps, loss,
          loss_option, ema, resume, amp, seed, workers, log_every, val_every, val_limit, device, cache) -> None:
    """Train a colorization model (under torchrun: DistributedDataParallel, rank 0 writes)."""
    from train.losses import parse_loss_options
    from train.trainer import TrainConfig, train as run_training

    cfg = TrainConfig(
        data=str(data), out=str(out), val=None if val is None else str(val), val_fraction=val_fraction,
        val_list=None if val_list is None else str(val_list), exclude=tuple(exclude), encoder=encoder,
        encoder_lr_mult=encoder_lr_mult,
        width=width, width_mult=width_mult, image_size=image_size, zoom=zoom, batch_size=batch_size, steps=steps, lr=lr,
        warmup_steps=warmup_steps, loss=loss, loss_options=parse_loss_options(loss_option), ema=ema, resume=resume, amp=amp,
        seed=seed, workers=workers, log_every=log_every, val_every=val_every, val_limit=val_limit, device=device,
        cache=None if cache is None else str(cache),
    )
    run_training(cfg)


# ----------------------------------------------------------------------------- export
# (owned by the exporter: export/)


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), default=ROOT / "models" / "colorizer.pt",
              show_default=True, help="Training checkpoint (.pt).")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "models" / "colorizer.onnx",
              show_default=True, help="ONNX file to write; its sidecar MODEL.json goes beside it.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="int8: folder of calibration images (default: samples/); every 3rd is held out for the PSNR gate.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18 or newer).")
@click.option("--temperature", type=float, default=None,
              help="Annealed-mean temperature baked into a classification head's graph.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file and its sidecar.")
def export(checkpoint: Path, out: Path, precision: str, calib: Path | None, opset: int | None,
           temperature: float | None, force: bool) -> None:
    """Export a checkpoint to ONNX (uint8 gray in, uint8 RGB out), parity-checked."""
    from export.to_onnx import export_checkpoint

    side = export_checkpoint(checkpoint, out, precision=precision, opset=opset, calib_dir=calib,
                             temperature=temperature, force=force)
    p = side["parity"]
    extra = f", INT8 PSNR vs FP32 {p['psnr_db']:.2f} dB" if "psnr_db" in p else ""
    click.echo(f"exported {out} ({precision}, opset {side['opset']}): uv max diff {p['uv_max_abs']:.3g}, "
               f"rgb max diff {p['rgb_max_levels']} levels{extra}")


@main.command("build-engine")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), default=ROOT / "models" / "colorizer.onnx",
              show_default=True, help="Exported ONNX (with its sidecar).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Engine file (default: the ONNX path with .plan); sidecar MODEL.plan.json beside it.")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True)
@click.option("--batch", default="1:32:64", show_default=True,
              help="Batch MIN:OPT:MAX of the profile (colorize-dir on a GPU: --batch-size 32-64).")
@click.option("--size", default="64:256:1024", show_default=True,
              help="Square H=W MIN:OPT:MAX of the profile (colorize-dir runs at --size, default 256).")
@click.option("--workspace-gb", type=float, default=4.0, show_default=True)
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="Timing cache file (read and updated).")
@click.option("--force", is_flag=True,
              help="Rebuild even if a matching engine exists; overwrite an --out that does not match "
                   "(without it: reused, or an error).")
def build_engine(onnx_path: Path, out: Path | None, precision: str, batch: str, size: str, workspace_gb: float,
                 timing_cache: Path | None, force: bool) -> None:
    """Build an FP16 TensorRT engine from an exported ONNX file (GPU servers)."""
    from export.trt_build import build_engine as build, parse_range

    side = build(onnx_path, out or onnx_path.with_suffix(".plan"), precision=precision,
                 batch=parse_range(batch, "batch"), size=parse_range(size, "size"),
                 workspace_gb=workspace_gb, timing_cache=timing_cache, force=force)
    click.echo(f"engine {side['artifact']['file']} ({side['precision']}, TensorRT {side['tensorrt']}, "
               f"{side['gpu']['name']}): rgb max diff vs ORT {side['parity'].get('rgb_max_levels')} levels")


# ----------------------------------------------------------------------------- engine
# (owned by the engine: engine/)


def _log_progress_line(line: str) -> None:
    """colorize-dir's progress line without a terminal: a log record (stderr), as the library's own lines."""
    logging.getLogger("cli").info("%s", line)


# Options of the commands that run a model over files (colorize-dir, colorize-video): one definition each.
_RUN_OPTIONS = (
    click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Model file: .onnx (ort), .plan (trt) or .pt (torch). Default: the bundled "
                      "models/colorizer-int8.onnx on a CPU, models/colorizer.onnx on a GPU (.pt for torch)."),
    click.option("--backend", type=click.Choice(["auto", "ort", "trt", "torch"]), default="auto", show_default=True,
                 help="auto: trt with a .plan and a GPU, else ort with its best provider, else torch."),
    click.option("--device", default=None, metavar="cpu|cuda:K", help="Device (default: the best available)."),
    click.option("--size", type=click.IntRange(16, 4096), default=256, show_default=True,
                 help="Model input size: the long side is fitted to it (see --padding)."),
    click.option("--padding", type=click.Choice(["auto", "square", "tight"]), default="auto", show_default=True,
                 help="square: pad inputs to SIZE x SIZE (one shape, whole batches); tight: only to the model's "
                      "size multiple (8 for the bundled model: a 16:9 photo at 224 runs at 224x128, 1.75x less "
                      "work); auto: tight on a CPU, square on a GPU."),
    click.option("--batch-size", type=click.IntRange(1, 4096), default=8, show_default=True),
    click.option("--saturation", type=click.FloatRange(0.0, 10.0), default=1.0, show_default=True,
                 help="Scale the predicted chroma (1.0 = model output)."),
)


# How videos are written (colorize-video, and the videos inside colorize-dir's folders).
_VIDEO_OPTIONS = (
    click.option("--temporal", type=click.FloatRange(0.0, 0.95), default=0.7, show_default=True, metavar="STRENGTH",
                 help="Videos: smooth the colour across frames, the weight of the past on still pixels, reset at "
                      "scene cuts (0: every frame on its own)."),
    click.option("--crf", type=click.IntRange(0, 51), default=17, show_default=True,
                 help="Videos: encoder quality (H.264; VP9 for .webm), lower is better and larger."),
)


def _run_options(command):
    for option in reversed(_RUN_OPTIONS):
        command = option(command)
    return command


def _video_options(command):
    for option in reversed(_VIDEO_OPTIONS):
        command = option(command)
    return command


@main.command("colorize-dir")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@_run_options
@_video_options
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="Quality of JPEG (and WebP) outputs.")
@click.option("--max-pixels", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Larger images fail (reported) instead of being decoded.")
@click.option("--overwrite", is_flag=True, help="Redo outputs that exist (default: skip them, so re-running resumes).")
@click.option("--shard", default=None, metavar="I/N", help="Take a stable 1/N of the files (0 <= I < N).")
@click.option("--fail-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the failed input paths to this file, one per line.")
@click.option("--log-every", type=str, default="10", show_default=True, metavar="SECONDS",
              help="Without a terminal on stderr: a progress line (UTC time, done/total, failed, current and "
                   "mean img/s, ETA) every SECONDS.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="At the end, write the counts, seconds, exit code and failures (path, reason) as JSON.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU inference threads (default: physical cores).")
@click.option("--io-threads", type=(click.IntRange(1), click.IntRange(1)), default=None, metavar="READERS WRITERS",
              help="Decode and encode threads (default: from the CPU count and the device).")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray (pip install -e '.[cluster]'): decode/write in Ray tasks, the model in an actor pool.")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="--ray: join this cluster (default: start a local Ray instance).")
@click.option("--num-workers", type=click.IntRange(1), default=None,
              help="--ray: model actors (default: one per GPU, else half the cluster's CPUs).")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
              help="--ray: GPUs per actor (default: 1 when the cluster has GPUs, else 0).")
@click.option("--cpus-per-worker", type=click.FloatRange(0, min_open=True), default=None,
              help="--ray: CPUs reserved per actor (default: 1).")
def colorize_dir(src: Path, dst: Path, model: Path | None, backend: str, device: str | None, size: int,
                 padding: str, batch_size: int, saturation: float, temporal: float, crf: int, jpeg_quality: int,
                 max_pixels: int, overwrite: bool,
                 shard: str | None, fail_list: Path | None, log_every: str, summary_json: Path | None,
                 threads: int | None,
                 io_threads: tuple[int, int] | None, use_ray: bool, ray_address: str | None,
                 num_workers: int | None, gpus_per_worker: float | None, cpus_per_worker: float | None) -> None:
    """Colorize every image and video under SRC into DST (mirrored tree, same names; existing outputs skipped).

    Exit codes: 0 all done, 1 some files failed (listed on stderr), 2 usage error.
    """
    from engine.api import Colorizer, Shard
    from engine.progress import check_interval, reporter_for, write_summary_json
    from engine.tree import check_folders

    every = check_interval(log_every)
    if summary_json is not None and summary_json.is_dir():
        _fail(f"--summary-json: expected a file path, found the folder {summary_json}")
    shard_obj = Shard.parse(shard) if shard else None
    ray_options = {"--ray-address": ray_address, "--num-workers": num_workers, "--gpus-per-worker": gpus_per_worker,
                   "--cpus-per-worker": cpus_per_worker}
    if not use_ray and any(v is not None for v in ray_options.values()):
        _fail(f"{', '.join(k for k, v in ray_options.items() if v is not None)}: only with --ray")
    if use_ray and (device is not None or io_threads is not None):
        _fail("--device and --io-threads: not with --ray (each Ray worker takes its GPU, Ray tasks decode and write)")
    if use_ray and padding == "tight":
        _fail("--padding tight: not with --ray (Ray batches are square: --padding square or auto)")
    check_folders(src, dst)  # fail fast, before loading a model
    if use_ray:
        from engine.ray_io import RayColorizer  # imports Ray itself only when constructed

        def make():
            rc = RayColorizer(model, backend, size=size, batch_size=batch_size, saturation=saturation,
                              max_pixels=max_pixels, threads=threads, address=ray_address, num_workers=num_workers,
                              gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
            if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
                logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data's own progress/info lines
            return rc
    else:
        def make():
            return Colorizer(model, backend, size=size, batch_size=batch_size, device=device, saturation=saturation,
                             max_pixels=max_pixels, threads=threads, io_threads=io_threads, padding=padding)
    with make() as colorizer:
        padded = f", {colorizer.padding} padding" if not use_ray else ""
        click.echo(f"backend: {colorizer.describe()}{padded}" + (f", shard {shard_obj}" if shard_obj else ""))
        # A tqdm bar when stderr is a terminal, else a progress line logged every --log-every seconds.
        videos = {} if use_ray else {"temporal": temporal, "crf": crf}  # --ray: images only
        with reporter_for(sys.stderr, _log_progress_line, every) as progress:
            summary = colorizer.colorize_dir(src, dst, overwrite=overwrite, shard=shard_obj,
                                             jpeg_quality=jpeg_quality, fail_list=fail_list, progress=progress,
                                             **videos)
    if summary.done == 0:
        from engine.tree import INPUT_EXTS, VIDEO_SUFFIXES

        exts = INPUT_EXTS if use_ray else INPUT_EXTS | VIDEO_SUFFIXES
        where = f" for shard {shard_obj}" if shard_obj else ""
        click.echo(f"note: no images ({', '.join(sorted(exts))}; hidden names ignored) found under "
                   f"{src}{where}: nothing to do", err=True)
    click.echo(summary.line())
    if summary_json is not None:
        write_summary_json(summary_json, summary)
    sys.exit(summary.exit_code)


@main.command("colorize-video")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@_run_options
@_video_options
@click.option("--overwrite", is_flag=True, help="Redo the output if it exists (default: skip it).")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU inference threads (default: physical cores).")
def colorize_video(src: Path, dst: Path, model: Path | None, backend: str, device: str | None, size: int,
                   padding: str, batch_size: int, saturation: float, temporal: float, crf: int, overwrite: bool,
                   threads: int | None) -> None:
    """Colorize the video SRC into DST (.mp4 .mov .mkv .avi: H.264; .webm: VP9), audio copied.

    Exit codes: 0 done (or skipped), 1 the video cannot be read or written (one 'path: reason' line),
    2 usage error.
    """
    import time

    from engine.api import Colorizer
    from engine.video import VideoError, check_paths

    check_paths(src, dst)  # fail fast, before loading a model
    last = [time.monotonic()]

    def progress(done: int, total: int | None, elapsed: float) -> None:
        if time.monotonic() - last[0] >= 10.0:
            last[0] = time.monotonic()
            rate = done / elapsed if elapsed > 0 else 0.0
            _log_progress_line(f"{done}/{total if total is not None else '?'} frames, {rate:.2f} frames/s")

    with Colorizer(model, backend, size=size, batch_size=batch_size, device=device, saturation=saturation,
                   threads=threads, padding=padding) as colorizer:
        click.echo(f"backend: {colorizer.describe()}, {colorizer.padding} padding")
        try:
            summary = colorizer.colorize_video(src, dst, temporal=temporal, crf=crf, overwrite=overwrite,
                                               progress=progress)
        except VideoError as e:
            click.echo(str(e), err=True)
            sys.exit(1)
    click.echo(summary.line())


# ----------------------------------------------------------------------------- evaluate / demo


def _fmt(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.3f}"


@main.command()
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Colour photos: a folder (recursive) or a .txt list of paths (e.g. RUN_DIR/val_files.txt).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Model file [bundled: colorizer-int8.onnx on a CPU, colorizer.onnx on a GPU].")
@click.option("--backend", type=click.Choice(["auto", "ort", "trt", "torch"]), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:K.")
@click.option("--size", type=click.IntRange(16, 4096), default=256, show_default=True,
              help="Photos are centre-cropped to SIZE x SIZE.")
@click.option("--model-size", type=click.IntRange(16, 4096), default=None, help="Resolution the model runs at [--size].")
@click.option("--max-pixels", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Larger photos fail (one line) before any pixel is decoded.")
@click.option("--saturation", type=float, default=1.0, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--csv", "csv_out", type=click.Path(path_type=Path), default=None, help="Per-image scores as CSV.")
@click.option("--grid", type=click.Path(path_type=Path), default=None, help="PNG grid: input | output | truth.")
def evaluate(data: Path, model: Path | None, backend: str, device: str | None, size: int, model_size: int | None,
             saturation: float, max_pixels: int, json_out: Path | None, csv_out: Path | None,
             grid: Path | None) -> None:
    """Measure PSNR, SSIM and colourfulness on colour photos against the gray baseline."""
    import json

    from engine.api import Colorizer
    from engine.core.contract import write_json_atomic
    from engine.evaluate import evaluate_folder, write_csv

    with Colorizer(model, backend, size=model_size or size, device=device, saturation=saturation) as colorizer:
        click.echo(f"backend: {colorizer.describe()}")
        report = evaluate_folder(colorizer.colorize, data, size=size, grid=grid, max_pixels=max_pixels)
    m, g = report.model, report.gray_baseline
    click.echo(f"{report.images} photos at {size}x{size}" + (f", {len(report.failed)} unreadable" if report.failed else ""))
    click.echo(f"{'':14}{'PSNR dB':>9}{'SSIM':>8}{'colourfulness':>15}{'ratio':>8}")
    click.echo(f"{'model':14}{_fmt(m['psnr']):>9}{_fmt(m['ssim']):>8}{m['colourfulness']:>15.2f}"
               f"{m['colourfulness_ratio']:>8.3f}")
    click.echo(f"{'gray baseline':14}{_fmt(g['psnr']):>9}{_fmt(g['ssim']):>8}{0.0:>15.2f}{0.0:>8.3f}")
    click.echo(f"{'ground truth':14}{'':>9}{'':>8}{m['gt_colourfulness']:>15.2f}{1.0:>8.3f}")
    try:
        if json_out is not None:
            write_json_atomic(json_out, json.loads(json.dumps(report.to_dict(), default=str, allow_nan=False)))
        if csv_out is not None:
            write_csv(report, csv_out)
    except OSError as e:
        _fail(f"cannot write {e.filename or 'the report'} ({e.strerror or e})")
    if grid is not None:
        click.echo(f"grid: {grid}")
    sys.exit(1 if report.failed else 0)


@main.command()
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Model file [bundled: colorizer-int8.onnx on a CPU, colorizer.onnx on a GPU].")
@click.option("--backend", type=click.Choice(["auto", "ort", "trt", "torch"]), default="auto", show_default=True)
def demo(model: Path | None, backend: str) -> None:
    """Colorize samples/ with the bundled model into out/demo/ and write out/demo/grid.png."""
    from engine.api import Colorizer
    from engine.demo import OUT, run_demo

    with Colorizer(model, backend) as colorizer:
        click.echo(f"backend: {colorizer.describe()}")
        summary, grid = run_demo(colorizer.colorize_dir)
    click.echo(summary.line())
    click.echo(f"outputs: {OUT}/  side-by-side grid: {grid}")
    sys.exit(summary.exit_code)


if __name__ == "__main__":
    main()
