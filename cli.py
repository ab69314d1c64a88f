"""Command line: parse, call the library, print, exit. Nothing else lives here.

Exit codes: 0 success; 1 some files failed (colorize-dir, evaluate); 2 usage or
input errors (one line on stderr, no traceback).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from engine.errors import ColorizerError

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


class _Group(click.Group):
    """Turns user errors raised by the library into one line and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ColorizerError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=_Group)
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
@click.option("--width", default="seed", show_default=True, help="Width preset: seed or vgg16.")
@click.option("--width-mult", default=1.0, show_default=True, help="Multiplier on the preset's channel widths.")
@click.option("--image-size", default=128, show_default=True, help="Training crop size (px).")
@click.option("--batch-size", default=16, show_default=True, help="Crops per step PER PROCESS (global = x nproc).")
@click.option("--steps", default=2000, show_default=True, help="Total optimizer steps.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak Adam learning rate (linear warm-up, cosine decay).")
@click.option("--warmup-steps", type=int, help="Warm-up steps [min(500, steps/20)].")
@click.option("--loss", default="huber", show_default=True, help="Loss from train.losses (huber, mse, classification).")
@click.option("--loss-option", multiple=True, metavar="KEY=VALUE", help="Loss option; repeatable.")
@click.option("--resume", is_flag=True, help="Continue RUN_DIR/last.pt at its exact step (same settings required).")
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only; ignored with a note on the CPU).")
@click.option("--seed", default=0, show_default=True, help="Seed for init, data order and crops.")
@click.option("--workers", default=2, show_default=True, help="Decode threads for the cache; >0 also prefetches batches.")
@click.option("--log-every", default=50, show_default=True, help="Log loss, img/s, ETA every N steps.")
@click.option("--val-every", default=500, show_default=True, help="Validate and write last.pt every M steps.")
@click.option("--val-limit", default=500, show_default=True, help="Validate on at most this many photos.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--cache", type=click.Path(path_type=Path), help="Decoded-photo cache folder [RUN_DIR/cache].")
def train(data, val, val_fraction, out, width, width_mult, image_size, batch_size, steps, lr, warmup_steps, loss,
          loss_option, resume, amp, seed, workers, log_every, val_every, val_limit, device, cache) -> None:
    """Train a colorization model (under torchrun: DistributedDataParallel, rank 0 writes)."""
    from train.losses import parse_loss_options
    from train.trainer import TrainConfig, train as run_training

    cfg = TrainConfig(
        data=str(data), out=str(out), val=None if val is None else str(val), val_fraction=val_fraction,
        width=width, width_mult=width_mult, image_size=image_size, batch_size=batch_size, steps=steps, lr=lr,
        warmup_steps=warmup_steps, loss=loss, loss_options=parse_loss_options(loss_option), resume=resume, amp=amp,
        seed=seed, workers=workers, log_every=log_every, val_every=val_every, val_limit=val_limit, device=device,
        cache=None if cache is None else str(cache),
    )
    run_training(cfg)


# ----------------------------------------------------------------------------- export
# (owned by the exporter: export/)


@main.command()
def export() -> None:
    """Export a checkpoint to ONNX (uint8 gray in, uint8 RGB out), parity-checked."""
    _fail("export: not implemented yet")


@main.command("build-engine")
def build_engine() -> None:
    """Build an FP16 TensorRT engine from an exported ONNX file (GPU servers)."""
    _fail("build-engine: not implemented yet")


# ----------------------------------------------------------------------------- engine
# (owned by the engine: engine/)


@main.command("colorize-dir")
def colorize_dir() -> None:
    """Colorize every image under SRC into DST (mirrored tree)."""
    _fail("colorize-dir: not implemented yet")


# ----------------------------------------------------------------------------- evaluate / demo


@main.command()
def evaluate() -> None:
    """Measure PSNR, SSIM and colourfulness on colour photos against the gray baseline."""
    _fail("evaluate: not implemented yet")


@main.command()
def demo() -> None:
    """Colorize samples/ with the bundled model into out/demo/ and write a grid."""
    _fail("demo: not implemented yet")


if __name__ == "__main__":
    main()
