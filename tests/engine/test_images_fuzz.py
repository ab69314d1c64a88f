"""Damaged files through ``read_image``: every mutation decodes or fails with ``ImageError``, nothing else.

Truncations, bit flips and header edits of small photos in every input format, generated from a
fixed seed (so a failure reproduces); each format runs in a child process with its address space
capped and a time limit. A decoder that raised anything else, printed a warning, returned an array
of the wrong shape or type, accepted a JPEG cut short, ran out of memory or hung would fail here.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import images
from engine.images import ImageError
from tests.conftest import ROOT
from tests.engine.corpus import pattern

FORMATS = {"jpg": ("JPEG", "RGB"), "gray.jpg": ("JPEG", "L"), "png": ("PNG", "RGBA"), "webp": ("WEBP", "RGB"),
           "tif": ("TIFF", "RGB"), "bmp": ("BMP", "L"), "gif": ("GIF", "P")}
CASES_PER_FORMAT = 250
MEMORY_CAP = 3 << 29  # 1.5 GiB


def _mutations(data: bytes, rng: np.random.Generator):
    n = len(data)
    for _ in range(CASES_PER_FORMAT):
        kind = rng.integers(4)
        buf = bytearray(data)
        if kind == 0:  # cut short
            yield "truncated", bytes(buf[: rng.integers(1, n)])
        elif kind == 1:  # a few bits flipped anywhere
            for pos in rng.integers(0, n, rng.integers(1, 8)):
                buf[pos] ^= 1 << int(rng.integers(8))
            yield "bit flips", bytes(buf)
        elif kind == 2:  # header bytes overwritten (dimensions, chunk lengths, markers live there)
            for pos in rng.integers(0, min(n, 64), rng.integers(1, 4)):
                buf[pos] = int(rng.integers(256))
            yield "header edit", bytes(buf)
        else:  # a run of bytes replaced
            start = int(rng.integers(0, n))
            length = int(rng.integers(1, 64))
            buf[start : start + length] = rng.integers(0, 256, len(buf[start : start + length]), dtype=np.uint8).tobytes()
            yield "overwritten run", bytes(buf)


def fuzz(suffix: str, folder: Path) -> dict[str, int]:
    """Every mutation of one format through ``read_image``; raises AssertionError on a wrong outcome."""
    fmt, mode = FORMATS[suffix]
    rgb = pattern(48, 64, 3)
    img = Image.fromarray(rgb).convert(mode) if mode != "RGBA" else Image.fromarray(
        np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]))
    buf = io.BytesIO()
    img.save(buf, fmt)
    rng = np.random.default_rng(sum(map(ord, suffix)))
    p = folder / f"case.{suffix}"
    outcomes = {"decoded": 0, "failed": 0}
    for what, data in _mutations(buf.getvalue(), rng):
        p.write_bytes(data)
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")  # pytest's own filters out, the product's in
                images.quiet_decoder_warnings()
                got = images.read_image(p, max_pixels=4_000_000)  # a header edit may claim any size
        except ImageError as e:
            assert str(e) and "\n" not in str(e), (what, str(e))
            outcomes["failed"] += 1
            continue
        assert not [str(w.message) for w in said], what  # a warning would print a second line on stderr
        assert got.luma.dtype == np.uint8 and got.luma.ndim == 2 and got.luma.size > 0, what
        assert got.alpha is None or got.alpha.shape == got.luma.shape, what
        assert not (what == "truncated" and fmt == "JPEG"), f"a JPEG cut to {len(data)} bytes decoded"
        outcomes["decoded"] += 1
    return outcomes


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_damaged_files_decode_or_fail_cleanly(tmp_path, suffix):
    """In a child process under a memory cap (1.5 GiB of address space) and a time limit (a hang fails)."""
    code = ("import json, sys; from pathlib import Path; from tests.engine.test_images_fuzz import fuzz; "
            "print(json.dumps(fuzz(sys.argv[1], Path(sys.argv[2]))))")

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    r = subprocess.run([sys.executable, "-c", code, suffix, str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, preexec_fn=cap)
    assert r.returncode == 0, r.stderr[-3000:]
    outcomes = json.loads(r.stdout)
    assert outcomes["decoded"] + outcomes["failed"] == CASES_PER_FORMAT
    assert outcomes["failed"] > 0  # the mutations do damage: a fuzzer that never fails tests nothing
