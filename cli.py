"""Command line: parse, call the library, print, exit. Nothing else lives here.

Exit codes: 0 success; 1 some files failed (colorize, colorize-dir, evaluate); 2 usage or
input errors (one line on stderr, no traceback); 130 / 143 stopped by SIGINT / SIGTERM
(colorize, colorize-dir: the outputs written are complete).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from engine.core.errors import ColorizerError
from engine.core.files import DEFAULT_X264_PRESET, X264_PRESETS
from engine.tree import FORMAT_CHOICES

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
        except _Interrupted as e:  # colorize, colorize-dir: a signal during start-up
            click.echo(f"stopped by {_signal_name(e.signum)} during start-up: nothing written", err=True)
            sys.exit(STOP_CODES[e.signum])
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
@click.option("--repeat", multiple=True, metavar="GLOB=N",
              help="Training photos whose relative path matches stand N times in every epoch (N 1-100; the largest "
                   "N of the GLOBs a photo matches); the colour prior follows; repeatable.")
@click.option("--encoder", default="vgg", show_default=True,
              type=click.Choice(["vgg", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]),
              help="vgg: VGG blocks from scratch; efficientnet-liteN: ImageNet-pretrained trunk (weights from the train extra).")
@click.option("--encoder-lr-mult", default=1.0, show_default=True, help="Encoder learning rate as a multiple of --lr (0: frozen).")
@click.option("--encoder-freeze", default=0, show_default=True, metavar="N",
              help="Keep the weights of the encoder's first N feature levels, shallow to deep (vgg 4, lite 5 in all); "
                   "the deeper ones learn at --encoder-lr-mult.")
@click.option("--encoder-bn", type=click.Choice(["adapt", "frozen"]), default="adapt", show_default=True,
              help="adapt: the encoder's BatchNorm statistics follow the training photos; frozen: a pretrained "
                   "encoder keeps its own, in training as at inference.")
@click.option("--members", default=1, show_default=True, metavar="K",
              help="Decoder members (1-8): one encoder pass feeds K decoders with their own weights, each trained "
                   "with its own loss; the model outputs their mean (an ensemble in one graph).")
@click.option("--teacher", type=click.Path(path_type=Path), default=None, metavar="MODEL.pt",
              help="Distillation: a released classification model trained on the same photos (e.g. several runs "
                   "merged by `release`); each pixel's target mixes in its members' mean colour distribution "
                   "(--loss-option teacher=SHARE, default 0.5).")
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
def train(data, val, val_fraction, val_list, exclude, repeat, encoder, encoder_lr_mult, encoder_freeze, encoder_bn, members, teacher, out, width, width_mult, image_size, zoom, batch_size, steps, lr, warmup_steps, loss,
          loss_option, ema, resume, amp, seed, workers, log_every, val_every, val_limit, device, cache) -> None:
    """Train a colorization model (under torchrun: DistributedDataParallel, rank 0 writes)."""
    from train.losses import parse_loss_options
    from train.trainer import TrainConfig, train as run_training

    cfg = TrainConfig(
        data=str(data), out=str(out), val=None if val is None else str(val), val_fraction=val_fraction,
        val_list=None if val_list is None else str(val_list), exclude=tuple(exclude), repeat=tuple(repeat), encoder=encoder,
        encoder_lr_mult=encoder_lr_mult, encoder_freeze=encoder_freeze, encoder_bn=encoder_bn, members=members,
        teacher=None if teacher is None else str(teacher),
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
@click.option("--reduce-range", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="int8: 7-bit weights, which every CPU runs correctly (on); off only for CPUs with VNNI; auto: "
                   "from this CPU. Files for other machines (the bundled one): on.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file and its sidecar.")
def export(checkpoint: Path, out: Path, precision: str, calib: Path | None, opset: int | None,
           temperature: float | None, reduce_range: str, force: bool) -> None:
    """Export a checkpoint to ONNX (uint8 gray in, uint8 RGB out), parity-checked."""
    from export.to_onnx import export_checkpoint

    if reduce_range != "auto" and precision != "int8":
        _fail(f"--reduce-range {reduce_range}: applies to --precision int8, found --precision {precision}")
    side = export_checkpoint(checkpoint, out, precision=precision, opset=opset, calib_dir=calib,
                             temperature=temperature, force=force,
                             reduce_range={"auto": None, "on": True, "off": False}[reduce_range])
    p = side["parity"]
    extra = f", INT8 PSNR vs FP32 {p['psnr_db']:.2f} dB" if "psnr_db" in p else ""
    click.echo(f"exported {out} ({precision}, opset {side['opset']}): uv max diff {p['uv_max_abs']:.3g}, "
               f"rgb max diff {p['rgb_max_levels']} levels{extra}")


@main.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Inference checkpoint to write (e.g. models/colorizer.pt), then `cli.py export` it.")
@click.option("--temperature", type=float, default=None,
              help="Annealed-mean temperature stored with a classification head (the one `score-runs` chose).")
@click.option("--weights", type=click.Choice(["auto", "ema", "model"]), default="auto", show_default=True,
              help="auto: the weight average when the run kept one (--ema), else the live weights.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def release(checkpoints: tuple[Path, ...], out: Path, temperature: float | None, weights: str, force: bool) -> None:
    """Turn a training checkpoint into a small inference checkpoint (no optimizer state, no local paths).

    Several CHECKPOINTS (runs with a frozen encoder) merge into one model: the encoder runs once and
    every run's decoder is a member; the output is the members' mean.
    """
    from engine.net.checkpoint import release_checkpoint

    data = release_checkpoint(list(checkpoints), out, weights=weights, overwrite=force,
                              head_options=None if temperature is None else {"temperature": temperature})
    head = data["model_config"].get("head_options", {})
    t = f", T {head['temperature']}" if "temperature" in head else ""
    members = data["model_config"].get("members", 1)
    m = f", {members} decoder members" if members > 1 else ""
    click.echo(f"released {out}: step {data.get('step')}, weights {data['release']['weights']}{t}{m}, "
               f"{out.stat().st_size / 1e6:.1f} MB")


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

STOP_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal's number, as a shell reports it


class _Interrupted(BaseException):
    """SIGTERM or SIGINT during start-up, before a run can take it as a stop request: leave at once.

    A BaseException, as KeyboardInterrupt: no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """SIGTERM and SIGINT for colorize and colorize-dir: a stop request, never a kill in the middle of a write.

    Made first thing in the command. Until ``running()`` (start-up: imports, checks, loading the
    model) a signal raises ``_Interrupted`` at once: nothing has been written yet. From then on it
    only sets ``event``, which the run checks between its stages (``engine.pipeline``: no new photo
    starts, the photos being written are finished, temp files never stay); the command then prints
    the summary and exits with 128 + the signal's number.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._running = False
        self._before: dict[int, object] = {}

    def __enter__(self) -> "_StopSignals":
        for sig in STOP_CODES:
            self._before[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:  # the handlers before (an in-process caller keeps its own)
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def running(self) -> None:
        self._running = True

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()
        if not self._running:
            raise _Interrupted(signum)


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _log_progress_line(line: str) -> None:
    """colorize-dir's progress line without a terminal: a log record (stderr), as the library's own lines."""
    logging.getLogger("cli").info("%s", line)


# The model and how it runs: colorize, colorize-dir and colorize-video. One definition each.
_MODEL_OPTIONS = (
    click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Model file: .onnx (ort), .plan (trt) or .pt (torch). Default: the bundled "
                      "models/colorizer.onnx (.pt for torch); models/colorizer-int8.onnx is faster on a CPU."),
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


def _run_log_options(line: str, summary: str) -> tuple:
    """--log-every and --summary-json, for photo runs and for colorize-video (``line``, ``summary``: what they
    hold); ``_check_run_log`` checks their values."""
    return (
        click.option("--log-every", type=str, default="10", show_default=True, metavar="SECONDS",
                     help=f"Without a terminal on stderr: a progress line (UTC time, {line}, ETA) every SECONDS."),
        click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"At the end (also after SIGTERM/SIGINT), write {summary} as JSON."),
    )


def _check_run_log(log_every: str, summary_json: Path | None) -> float:
    """The --log-every interval in seconds; a --summary-json path that is a folder is a usage error."""
    from engine.progress import check_interval

    every = check_interval(log_every)
    if summary_json is not None and summary_json.is_dir():
        _fail(f"--summary-json: expected a file path, found the folder {summary_json}")
    return every


# Photos and folders: colorize and colorize-dir.
_FILE_OPTIONS = (
    click.option("-f", "--format", "out_format", type=click.Choice(FORMAT_CHOICES), default="same",
                 show_default=True,
                 help="Output format: same (each input's own; formats without colour as PNG) or one for every "
                      "output (a.jpg -> a.png with png)."),
    click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
                 help="Quality of JPEG (and WebP) outputs."),
    click.option("--max-pixels", type=click.IntRange(1), default=100_000_000, show_default=True,
                 help="Larger images fail (reported) instead of being decoded."),
    click.option("--overwrite", is_flag=True,
                 help="Redo outputs that exist (default: skip them, so re-running resumes)."),
    click.option("--shard", default=None, metavar="I/N", help="Take a stable 1/N of the files (0 <= I < N)."),
    click.option("--fail-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Write the failed input paths to this file, one per line."),
    *_run_log_options("done/total, failed, current and mean img/s",
                      "the counts, seconds, exit code and failures (path, reason)"),
    click.option("--threads", type=click.IntRange(1), default=None,
                 help="CPU inference threads (default: physical cores)."),
    click.option("--io-threads", type=(click.IntRange(1), click.IntRange(1)), default=None,
                 metavar="READERS WRITERS", help="Decode and encode threads (default: from the CPU count and the device)."),
    click.option("--ray", "use_ray", is_flag=True,
                 help="Run on Ray (pip install -e '.[cluster]'): decode/write in Ray tasks, the model in an actor pool."),
    click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
                 help="--ray: join this cluster (default: start a local Ray instance)."),
    click.option("--num-workers", type=click.IntRange(1), default=None,
                 help="--ray: model actors (default: one per GPU, else half the cluster's CPUs)."),
    click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
                 help="--ray: GPUs per actor (default: 1 when the cluster has GPUs, else 0)."),
    click.option("--cpus-per-worker", type=click.FloatRange(0, min_open=True), default=None,
                 help="--ray: CPUs reserved per actor (default: 1)."),
)


# How videos are written (colorize-video, and the videos inside colorize-dir's folders).
_VIDEO_OPTIONS = (
    click.option("--temporal", type=click.FloatRange(0.0, 0.95), default=0.7, show_default=True, metavar="STRENGTH",
                 help="Videos: smooth the colour across frames, the weight of the past on still pixels, reset at "
                      "scene cuts (0: every frame on its own)."),
    click.option("--crf", type=click.IntRange(0, 51), default=17, show_default=True,
                 help="Videos: encoder quality (H.264; VP9 for .webm), lower is better and larger."),
    click.option("--preset", type=click.Choice(X264_PRESETS), default=DEFAULT_X264_PRESET, show_default=True,
                 help="Videos: x264's speed preset; slower ones give smaller files at the same --crf."),
)


def _options(*groups):
    """A decorator adding option groups (in the order given) to a command."""
    def add(command):
        for option in reversed([o for group in groups for o in group]):
            command = option(command)
        return command
    return add


@main.command("colorize-dir")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@_options(_MODEL_OPTIONS, _FILE_OPTIONS, _VIDEO_OPTIONS)
def colorize_dir(src: str, dst: str, **options) -> None:
    """Colorize every image and video under SRC into DST (mirrored tree, same names; existing outputs skipped).

    SRC may also be one image file: its output goes into the folder DST.
    Exit codes: 0 all done, 1 some files failed (listed on stderr), 2 usage error, 130/143 stopped by
    SIGINT/SIGTERM (the outputs written are complete; run again to finish).
    """
    _colorize("colorize-dir", src, dst, **options)


@main.command("colorize")
@click.argument("src", type=click.Path(allow_dash=True))
@click.argument("dst", type=click.Path(allow_dash=True))
@_options(_MODEL_OPTIONS, _FILE_OPTIONS, _VIDEO_OPTIONS)
def colorize(src: str, dst: str, **options) -> None:
    """Colorize SRC into DST. SRC: an image file, a folder (as colorize-dir) or - (stdin).

    DST: a folder (the output goes into it, same name), else the output file (format from its suffix,
    or --format), or - (stdout: only the image bytes; every message goes to stderr).
    Exit codes as colorize-dir.
    """
    _colorize("colorize", src, dst, **options)


def _colorize(command: str, src_arg: str, dst_arg: str, **options) -> None:
    """colorize and colorize-dir, with SIGTERM and SIGINT as stop requests (``_StopSignals``)."""
    with _StopSignals() as signals:  # first: a signal during start-up ends the command cleanly
        _colorize_run(signals, command, src_arg, dst_arg, **options)


def _colorize_run(signals: _StopSignals, command: str, src_arg: str, dst_arg: str, *, model: Path | None,
                  backend: str, device: str | None, size: int, padding: str, batch_size: int, saturation: float,
                  out_format: str, jpeg_quality: int, max_pixels: int, overwrite: bool, shard: str | None,
                  fail_list: Path | None, log_every: str, summary_json: Path | None, threads: int | None,
                  io_threads: tuple[int, int] | None, use_ray: bool,
                  ray_address: str | None, num_workers: int | None, gpus_per_worker: float | None,
                  cpus_per_worker: float | None, temporal: float, crf: int, preset: str) -> None:
    """colorize and colorize-dir: a folder run, or one photo (file, stdin, stdout)."""
    from engine.api import Colorizer, Shard
    from engine.progress import reporter_for, write_summary_json
    from engine.tree import check_folders

    every = _check_run_log(log_every, summary_json)
    from_stdin, to_stdout = src_arg == "-", dst_arg == "-"
    src, dst = Path(src_arg).expanduser(), Path(dst_arg).expanduser()
    # colorize-dir with a SRC that does not exist: the folder run's own message
    folder_run = not from_stdin and (src.is_dir() or (command == "colorize-dir" and not src.exists()))
    shard_obj = Shard.parse(shard) if shard else None
    ray_options = {"--ray-address": ray_address, "--num-workers": num_workers, "--gpus-per-worker": gpus_per_worker,
                   "--cpus-per-worker": cpus_per_worker}
    if not use_ray and any(v is not None for v in ray_options.values()):
        _fail(f"{', '.join(k for k, v in ray_options.items() if v is not None)}: only with --ray")
    if use_ray and (device is not None or io_threads is not None):
        _fail("--device and --io-threads: not with --ray (each Ray worker takes its GPU, Ray tasks decode and write)")
    if use_ray and padding == "tight":
        _fail("--padding tight: not with --ray (Ray batches are square: --padding square or auto)")
    if folder_run:
        if to_stdout:
            _fail(f"output -: the input {src} is a folder, which gives many files; give an output folder")
        check_folders(src, dst)  # fail fast, before loading a model
    else:
        folder_only = [name for name, value in (("--shard", shard), ("--io-threads", io_threads), ("--ray", use_ray))
                       if value]
        if folder_only:
            _fail(f"{', '.join(folder_only)}: only when SRC is a folder")
        if to_stdout and sys.stdout is None:
            _fail("output -: stdout is closed")
        if to_stdout and sys.stdout.isatty():
            _fail("output -: stdout is a terminal; redirect it to a file (> out.png) or a pipe")
        if command == "colorize-dir" or dst_arg.endswith(("/", os.sep)):  # DST is a folder: make it
            if dst.exists() and not dst.is_dir():
                _fail(f"output folder: expected a directory, found a file: {dst}")
            if not from_stdin and src.exists():
                dst.mkdir(parents=True, exist_ok=True)
        from engine.single import plan_file

        plan_file(None if from_stdin else src, None if to_stdout else dst, out_format, overwrite=overwrite)
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
        click.echo(f"backend: {colorizer.describe()}{padded}" + (f", shard {shard_obj}" if shard_obj else ""),
                   err=to_stdout)
        # stdin is read whole while a signal still ends the command at once (a read would not notice a request)
        source = io.BytesIO(sys.stdin.buffer.read()) if from_stdin else src
        signals.running()  # from here a signal is a stop request the run checks
        if folder_run:
            # A tqdm bar when stderr is a terminal, else a progress line logged every --log-every seconds.
            videos = {} if use_ray else {"temporal": temporal, "crf": crf, "preset": preset}  # --ray: images only
            with reporter_for(sys.stderr, _log_progress_line, every) as progress:
                summary = colorizer.colorize_dir(src, dst, overwrite=overwrite, shard=shard_obj,
                                                 jpeg_quality=jpeg_quality, fail_list=fail_list, progress=progress,
                                                 out_format=out_format, stop=signals.event, **videos)
        else:
            summary = colorizer.colorize_file(source, sys.stdout.buffer if to_stdout else dst,
                                              out_format=out_format, overwrite=overwrite, jpeg_quality=jpeg_quality,
                                              fail_list=fail_list, stop=signals.event)
    if folder_run and summary.done == 0 and not summary.stopped:
        from engine.tree import INPUT_EXTS, VIDEO_SUFFIXES

        exts = INPUT_EXTS if use_ray else INPUT_EXTS | VIDEO_SUFFIXES
        where = f" for shard {shard_obj}" if shard_obj else ""
        click.echo(f"note: no images ({', '.join(sorted(exts))}; hidden names ignored) found under "
                   f"{src}{where}: nothing to do", err=True)
    if signals.signum is not None:
        click.echo(f"stopped by {_signal_name(signals.signum)}: no new photo started, the outputs written are "
                   f"complete; run the same command again to finish", err=True)
    click.echo(summary.line(), err=to_stdout)
    code = STOP_CODES[signals.signum] if signals.signum is not None else summary.exit_code
    if summary_json is not None:
        write_summary_json(summary_json, summary, exit_code=code)
    sys.exit(code)


@main.command("colorize-video")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@_options(_MODEL_OPTIONS, _VIDEO_OPTIONS)
@click.option("--overwrite", is_flag=True, help="Redo the output if it exists (default: skip it).")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU inference threads (default: physical cores).")
@_options(_run_log_options("frames done/expected, current and mean frames/s",
                           "the outcome (frames, seconds, exit code, failure; after a failure too)"))
def colorize_video(src: Path, dst: Path, **options) -> None:
    """Colorize the video SRC into DST (.mp4 .mov .mkv .avi: H.264; .webm: VP9), audio and subtitles copied.

    Exit codes: 0 done (or skipped), 1 the video cannot be read or written (one 'path: reason' line),
    2 usage error, 143/130 stopped by SIGTERM/SIGINT (nothing written).
    """
    with _StopSignals() as signals:  # SIGTERM/SIGINT: during start-up leave at once, then abandon the video
        _colorize_video_run(signals, src, dst, **options)


def _colorize_video_run(signals: _StopSignals, src: Path, dst: Path, *, model: Path | None, backend: str,
                        device: str | None, size: int, padding: str, batch_size: int, saturation: float,
                        temporal: float, crf: int, preset: str, overwrite: bool, threads: int | None, log_every: str,
                        summary_json: Path | None) -> None:
    from engine.api import Colorizer
    from engine.progress import Progress, reporter_for, write_record_json
    from engine.video import VideoError, VideoSummary, check_paths

    every = _check_run_log(log_every, summary_json)
    check_paths(src, dst)  # fail fast, before loading a model

    def finish(summary: VideoSummary, code: int, failure: str | None = None) -> None:
        if summary_json is not None:
            write_record_json(summary_json, summary.record(src, dst, exit_code=code, failure=failure))
        sys.exit(code)

    with Colorizer(model, backend, size=size, batch_size=batch_size, device=device, saturation=saturation,
                   threads=threads, padding=padding) as colorizer:
        click.echo(f"backend: {colorizer.describe()}, {colorizer.padding} padding")
        signals.running()
        # A tqdm bar in frames when stderr is a terminal, else a progress line logged every --log-every seconds.
        with reporter_for(sys.stderr, _log_progress_line, every, unit="frames") as report:
            def progress(done: int, total: int | None, elapsed: float) -> None:
                report(Progress("frames", None, done, 0, 0, total, elapsed))

            try:
                summary = colorizer.colorize_video(src, dst, temporal=temporal, crf=crf, preset=preset,
                                                   overwrite=overwrite, progress=progress, stop=signals.event)
            except VideoError as e:
                click.echo(str(e), err=True)
                finish(VideoSummary(), 1, str(e))
    if summary.stopped:
        click.echo(f"stopped by {_signal_name(signals.signum or signal.SIGTERM)} after {summary.frames} frames: "
                   f"nothing written; run the same command again", err=True)
        finish(summary, STOP_CODES.get(signals.signum, 143))
    click.echo(summary.line())
    finish(summary, 0)


# ----------------------------------------------------------------------------- evaluate / demo


def _fmt(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.3f}"


@main.command()
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Colour photos: a folder (recursive) or a .txt list of paths (e.g. RUN_DIR/val_files.txt).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Model file [bundled: models/colorizer.onnx].")
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
    from engine.core.files import write_json_atomic
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


def _temperatures(text: str) -> list[float]:
    """A comma-separated list of annealed-mean temperatures, each > 0."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not t > 0 for t in values):
        _fail(f"--temperatures: expected numbers > 0 separated by commas, found {text!r}")
    return values


@main.command("score-runs")
@click.option("--runs", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder holding one run folder per variant (finished runs: those with the DONE file "
                   "training writes at its last step).")
@click.option("--only", default=None, help="Comma-separated run names to score [every finished run].")
@click.option("--extra", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="More checkpoints (e.g. runs/cls/last.pt); repeatable.")
@click.option("--val", required=True, type=click.Path(exists=True, path_type=Path),
              help="Validation photos: a .txt list of paths or a folder.")
@click.option("--size", type=click.IntRange(16, 4096), default=256, show_default=True,
              help="Photos are centre-cropped to SIZE x SIZE.")
@click.option("--temperatures", default="0.2,0.3,0.4,0.6,0.8,1.0", show_default=True,
              help="Annealed-mean temperatures to score classification runs at.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the scores here.")
@click.option("--grids", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each run's grid (at its chosen T) here.")
@click.option("--weights", type=click.Choice(["auto", "model", "ema"]), default="auto", show_default=True,
              help="Live weights, the --ema average, or auto (the average when a run has one).")
def score_runs(runs: Path, only: str | None, extra: tuple[Path, ...], val: Path, size: int, temperatures: str,
               json_out: Path | None, grids: Path | None, weights: str) -> None:
    """Score training runs on a validation list at several temperatures; pick one by the quality rule."""
    from engine.core.files import write_json_atomic
    from train.recipes.score_runs import score_runs as run_scores

    def show(name: str, rows: list[dict]) -> None:
        for r in rows:
            click.echo(f"{name:22s} T={r['temperature']!s:5s} PSNR {r['psnr']:.3f} (gray {r['gray_psnr']:.3f}) "
                       f"SSIM {r['ssim']:.3f} ratio {r['colourfulness_ratio']:.3f}")

    report = run_scores(runs, val, only=set(only.split(",")) if only else None, extra=extra, size=size,
                        temperatures=_temperatures(temperatures), grids=grids, weights=weights, on_rows=show)
    winner = report["winner"]
    if winner is None:
        _fail(f"nothing to score: no finished run in {runs}{' named ' + only if only else ''} and no --extra")
    if json_out is not None:
        try:
            write_json_atomic(json_out, report)
        except OSError as e:
            _fail(f"cannot write {json_out} ({e.strerror or e})")
    click.echo(f"winner: {winner['variant']} T={winner['temperature']} PSNR {winner['psnr']:.3f} "
               f"ratio {winner['colourfulness_ratio']:.3f}")


@main.command("score-whole")
@click.argument("val_list", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("checkpoints", type=click.Path(exists=True, dir_okay=False, path_type=Path), nargs=-1, required=True)
@click.option("--temperatures", default="0.6,0.8,1.0", show_default=True, help="Annealed-mean temperatures.")
@click.option("--size", type=click.IntRange(16, 4096), default=256, show_default=True, help="Model resolution.")
@click.option("--ensemble", is_flag=True,
              help="Also score the mean of all the checkpoints' outputs at each temperature (an ensemble).")
def score_whole(val_list: Path, checkpoints: tuple[Path, ...], temperatures: str, size: int, ensemble: bool) -> None:
    """Score checkpoints on whole validation photos (long side 512), as colorize-dir sees them.

    Classification heads at each of --temperatures; other heads once."""
    from train.recipes import score_whole as sw

    temps = _temperatures(temperatures)
    if ensemble and len(checkpoints) < 2:
        _fail(f"--ensemble: expected two or more checkpoints, found {len(checkpoints)}")
    gts = sw.photos(val_list)
    grays, gray_psnr = sw.gray_psnr(gts)
    click.echo(f"{len(gts)} photos, long side 512, model at {size}; gray PSNR {gray_psnr:.3f} dB")
    def show(name: object, t: float | None, preds: list) -> None:
        psnr, ratio = sw.quality(preds, gts)
        click.echo(f"{name}  T={'-' if t is None else f'{t:.2f}'}  PSNR {psnr:.3f} dB  colourfulness ratio {ratio:.3f}")

    outputs: dict[float | None, list[list]] = {}
    for ckpt in checkpoints:
        for t in sw.temperatures_for(ckpt, temps):
            preds = sw.colorize(ckpt, t, grays, size)
            if ensemble:
                outputs.setdefault(t, []).append(preds)
            show(ckpt, t, preds)
    for t, outs in outputs.items():
        show(f"ensemble of {len(outs)}", t, sw.average(outs))


@main.command()
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Model file [bundled: models/colorizer.onnx].")
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
