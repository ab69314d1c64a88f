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
def train() -> None:
    """Train a colorization model."""
    _fail("train: not implemented yet")


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
