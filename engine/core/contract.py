"""The contract between ``export`` and ``engine``: tensor names, dtypes, sidecar files.

An exported artifact is a file (``MODEL.onnx`` or ``MODEL.plan``) plus a JSON
sidecar beside it (``MODEL.json`` / ``MODEL.plan.json``). The engine reads only
these two, never a training checkpoint.

Graph I/O (every precision, every backend):
    input  ``gray``: uint8 ``(N, 1, H, W)`` in [0, 255], dynamic N, H, W
    output ``rgb``:  uint8 ``(N, 3, H, W)``, the colourized image at input size
    output ``uv``:   float32 ``(N, 2, H, W)``, U in ±0.436, V in ±0.615 (colour spec),
                     used by the engine to compose full-resolution output

The input's sidecar entry may carry ``size_multiple`` (``SIZE_MULTIPLE``): H and W
must then be multiples of it (exports resize the decoder by fixed factors,
``export.rewrites``); runners pad their input up to it and crop the outputs.
Sidecars without it take any size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from engine.core.errors import ArtifactError
from engine.core.files import write_json_atomic  # noqa: F401 - the sidecar writer's one atomic write

__all__ = ["ArtifactError"]

INPUT_NAME = "gray"
OUTPUT_RGB = "rgb"
OUTPUT_UV = "uv"
INPUT_DTYPE = "uint8"
OUTPUT_DTYPES = {OUTPUT_RGB: "uint8", OUTPUT_UV: "float32"}
SIDECAR_FORMAT = "colorizer-artifact/1"
SIZE_MULTIPLE = "size_multiple"


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.json``; ``model.plan`` -> ``model.plan.json``."""
    p = Path(artifact)
    if p.suffix == ".onnx":
        return p.with_suffix(".json")
    return p.with_name(p.name + ".json")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def read_sidecar(artifact: str | os.PathLike[str], *, verify_sha256: bool = True) -> dict[str, Any]:
    """Load and check the sidecar of ``artifact``.

    Raises ``ArtifactError`` naming the file and the reason when the artifact or
    sidecar is missing, the JSON is broken, or the artifact's sha256 differs from
    the one recorded at export (the message says which file to re-export).
    """
    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: model file not found")
    if not side.is_file():
        raise ArtifactError(f"{artifact}: sidecar {side.name} not found next to it; re-export the model")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{side}: unreadable sidecar ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{side}: expected format {SIDECAR_FORMAT!r}, found {found!r}")
    if verify_sha256:
        want = meta.get("sha256")
        got = sha256_file(artifact)
        if want != got:
            raise ArtifactError(
                f"{artifact}: sha256 {got[:12]}… does not match its sidecar ({str(want)[:12]}…); "
                f"the file changed after export, re-export it"
            )
    return meta


def size_multiple(meta: dict[str, Any], artifact: str | os.PathLike[str]) -> int:
    """The multiple H and W of ``artifact``'s input must be (sidecar ``inputs``; 1 when not recorded)."""
    inputs = meta.get("inputs")
    entry = None
    if isinstance(inputs, list):
        entry = next((i for i in inputs if isinstance(i, dict) and i.get("name") == INPUT_NAME), None)
    value = entry.get(SIZE_MULTIPLE, 1) if entry is not None else 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ArtifactError(f"{sidecar_path(artifact)}: input {SIZE_MULTIPLE}: expected an integer in 1..1024, found {value!r}")
    return value


def round_up(size: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``size``."""
    return -(-int(size) // int(multiple)) * int(multiple)
