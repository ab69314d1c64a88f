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

Self-contained ONNX: export also stamps the sidecar's content, less its ``sha256`` (a file
cannot hold its own hash), into the ONNX file's ``metadata_props`` under ``METADATA_KEY``
(a JSON value). ``read_contract`` reads it without parsing the graph, so an ``.onnx``
without its sidecar runs; when both exist the sidecar is checked and wins, with a warning
if they disagree. A TensorRT engine without a sidecar is accepted when its own I/O tensors
match the contract (``engine_io_problems``, a pure function over (name, dtype, shape)).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

from engine.core.errors import ArtifactError

__all__ = ["ArtifactError"]

log = logging.getLogger(__name__)

INPUT_NAME = "gray"
OUTPUT_RGB = "rgb"
OUTPUT_UV = "uv"
INPUT_DTYPE = "uint8"
OUTPUT_DTYPES = {OUTPUT_RGB: "uint8", OUTPUT_UV: "float32"}
SIDECAR_FORMAT = "colorizer-artifact/1"
SIZE_MULTIPLE = "size_multiple"
METADATA_KEY = "colorizer.contract"  # ONNX metadata_props key holding the sidecar's content as JSON
CHANNELS = {INPUT_NAME: 1, OUTPUT_RGB: 3, OUTPUT_UV: 2}
ENGINE_DTYPES = {INPUT_NAME: ("uint8",), OUTPUT_RGB: ("uint8",), OUTPUT_UV: ("float32", "float16")}


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


# ----------------------------------------------------------------------------- contract embedded in the ONNX file

_MODEL_METADATA_FIELD = 14  # onnx.ModelProto.metadata_props (StringStringEntryProto: key = 1, value = 2)


def embedded_contract(meta: dict[str, Any]) -> dict[str, Any]:
    """What export stamps into the ONNX file: the sidecar without ``sha256``."""
    return {k: v for k, v in meta.items() if k != "sha256"}


def _varint(f: BinaryIO) -> int | None:
    """One protobuf varint from ``f``; None at a clean end of file."""
    value = shift = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(f: BinaryIO, size: int, wanted: int | None = None) -> Iterable[tuple[int, bytes | None]]:
    """(field number, bytes) of each length-delimited field (the bytes only for ``wanted``; others skipped)."""
    while True:
        key = _varint(f)
        if key is None:
            return
        field, wire = key >> 3, key & 7
        if wire == 0:
            if _varint(f) is None:
                raise ValueError("truncated varint")
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            n = _varint(f)
            if n is None or f.tell() + n > size:
                raise ValueError(f"field {field} runs past the end of the file")
            if wanted is None or field == wanted:
                yield field, f.read(n)
            else:
                f.seek(n, os.SEEK_CUR)
        else:
            raise ValueError(f"field {field}: unexpected wire type {wire}")
        if f.tell() > size:
            raise ValueError("truncated file")


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict, read by walking the top-level protobuf fields.

    The graph (weights included) is skipped by its length, never parsed, so this reads a few
    bytes of a large model and needs no ``onnx`` package. ``ArtifactError`` when the file is
    not a well-formed protobuf.
    """
    path = Path(path)
    out: dict[str, str] = {}
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            for _, entry in _fields(f, size, _MODEL_METADATA_FIELD):
                kv = {k: v for k, v in _fields(io.BytesIO(entry), len(entry or b""))}
                out[(kv.get(1) or b"").decode("utf-8")] = (kv.get(2) or b"").decode("utf-8")
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise ArtifactError(f"{path}: expected an ONNX file, cannot read its metadata ({e})") from e
    return out


def contract_in_onnx(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The contract stamped into an ONNX file (``METADATA_KEY``), or None when it has none."""
    text = onnx_metadata(path).get(METADATA_KEY)
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: metadata {METADATA_KEY!r}: expected JSON, found unparsable text ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{path}: metadata {METADATA_KEY!r}: expected format {SIDECAR_FORMAT!r}, found {found!r}")
    return meta


def read_contract(artifact: str | os.PathLike[str], *, verify_sha256: bool = True) -> dict[str, Any]:
    """The contract of ``artifact``: its sidecar (checked as ``read_sidecar``) when there is one, else the
    copy stamped into an ONNX file (``sha256`` filled in from the file itself).

    When both exist and differ, the sidecar wins and a warning names the keys that differ.
    """
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: model file not found")
    side = sidecar_path(artifact)
    embedded: dict[str, Any] | None = None
    problem = ""
    if artifact.suffix.lower() == ".onnx":
        try:
            embedded = contract_in_onnx(artifact)
        except ArtifactError as e:
            problem = str(e)
    if side.is_file():
        meta = read_sidecar(artifact, verify_sha256=verify_sha256)
        if embedded is not None:
            ours = embedded_contract(meta)
            differ = sorted(k for k in set(ours) | set(embedded) if ours.get(k) != embedded.get(k))
            if differ:
                log.warning("%s: its sidecar %s differs from the contract stamped in the file (%s); using the sidecar",
                            artifact, side.name, ", ".join(differ))
        return meta
    if embedded is None:
        why = problem or f"and the file holds no {METADATA_KEY!r} metadata"
        raise ArtifactError(f"{artifact}: sidecar {side.name} not found next to it, {why}; re-export the model")
    log.info("%s: no sidecar %s; using the contract stamped in the ONNX file", artifact, side.name)
    return {**embedded, "sha256": sha256_file(artifact)}


# ----------------------------------------------------------------------------- a TensorRT engine's own I/O


def engine_io_problems(tensors: Iterable[tuple[str, str, Sequence[int]]]) -> list[str]:
    """What keeps an engine's I/O tensors, as (name, dtype, shape), from being the contract's; [] when none.

    Exactly the tensors ``gray`` (uint8), ``rgb`` (uint8) and ``uv`` (float32, or float16 from an
    FP16 build), each of rank 4 with 1, 3 and 2 channels; N, H and W dynamic (-1) or positive.
    """
    problems = []
    seen: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, dtype, shape in tensors:
        seen[str(name)] = (str(dtype), tuple(int(d) for d in shape))
    extra = sorted(set(seen) - set(CHANNELS))
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for name, channels in CHANNELS.items():
        if name not in seen:
            problems.append(f"{name!r} missing")
            continue
        dtype, shape = seen[name]
        if dtype not in ENGINE_DTYPES[name]:
            problems.append(f"{name!r}: expected {' or '.join(ENGINE_DTYPES[name])}, found {dtype}")
        dims_ok = len(shape) == 4 and shape[1] == channels and all(d == -1 or d > 0 for d in shape)
        if not dims_ok:
            problems.append(f"{name!r}: expected shape (N, {channels}, H, W), found {shape}")
    return problems
