"""The JSON sidecar written next to every exported ONNX file (``engine.core.contract``).

Keys of an ONNX sidecar (``MODEL.json``):

    format          engine.core.contract.SIDECAR_FORMAT
    artifact        {"file": "MODEL.onnx", "kind": "onnx"}
    sha256          sha256 of the ONNX file (the engine refuses a file that differs)
    precision       "fp32" | "fp16" | "int8"
    opset           default-domain opset of the file
    model_config    engine.net.model.ModelConfig.to_dict() (temperature override applied)
    inputs/outputs  [{"name", "dtype", "shape" (symbolic "N", "H", "W"), "range"}]; the input also
                    has "size_multiple": H and W must be multiples of it (the engine pads to it)
    colour_spec     engine.core.color.describe()
    parity          measured vs the PyTorch FP32 graph: uv_max_abs, rgb_max_levels, cases
                    (+ psnr_db, psnr_images for int8)
    tolerance       the gate applied (export.parity.TOLERANCES[precision])
    precision_info  fp16: converter, FP32 colour nodes; int8: reduce_range, VNNI,
                    calibration images/size/method, held-out images, excluded nodes
    checkpoint      {"path", "sha256", "step"} the export came from
    exporter        versions: torch, onnx, onnxruntime, onnxscript, onnxconverter_common,
                    python, and the exporter used ("torch.onnx.export(dynamo=True)")
    created_utc     ISO 8601 time of the export

The same content less ``sha256`` is stamped into the ONNX file itself (``stamp_contract``:
``metadata_props`` key ``engine.core.contract.METADATA_KEY``, a JSON value), so the file
runs without its sidecar; ``restamp_onnx`` does it for an existing export.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from engine.core import color, files
from engine.core.contract import (
    INPUT_DTYPE,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_DTYPES,
    OUTPUT_RGB,
    OUTPUT_UV,
    SIDECAR_FORMAT,
    SIZE_MULTIPLE,
    embedded_contract,
    read_sidecar,
    sha256_file,
    sidecar_path,
)
from engine.core.files import write_json_atomic

DIMS = ["N", 1, "H", "W"]


def io_spec(size_multiple: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The contract's inputs and outputs as plain data (``size_multiple``: H and W must be multiples of it)."""
    inputs = [{"name": INPUT_NAME, "dtype": INPUT_DTYPE, "shape": list(DIMS), "range": [0, 255],
               SIZE_MULTIPLE: int(size_multiple)}]
    outputs = [
        {"name": OUTPUT_RGB, "dtype": OUTPUT_DTYPES[OUTPUT_RGB], "shape": ["N", 3, "H", "W"], "range": [0, 255]},
        {
            "name": OUTPUT_UV,
            "dtype": OUTPUT_DTYPES[OUTPUT_UV],
            "shape": ["N", 2, "H", "W"],
            "range": [[-color.U_MAX, color.U_MAX], [-color.V_MAX, color.V_MAX]],
        },
    ]
    return inputs, outputs


def exporter_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    def ver(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "python": platform.python_version(),
        **{name: ver(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common")},
    }


def onnx_sidecar(
    onnx_path: Path,
    *,
    precision: str,
    opset: int,
    model_config: dict[str, Any],
    parity: dict[str, Any],
    tolerance: dict[str, Any],
    precision_info: dict[str, Any],
    checkpoint: dict[str, Any],
    size_multiple: int = 1,
    sha256: str | None = None,
) -> dict[str, Any]:
    """The sidecar of ``onnx_path`` (``sha256``: of the file as it will be written; default: as it is)."""
    inputs, outputs = io_spec(size_multiple)
    return {
        "format": SIDECAR_FORMAT,
        "artifact": {"file": onnx_path.name, "kind": "onnx"},
        "sha256": sha256_file(onnx_path) if sha256 is None else sha256,
        "precision": precision,
        "opset": opset,
        "model_config": model_config,
        "inputs": inputs,
        "outputs": outputs,
        "colour_spec": color.describe(),
        "parity": parity,
        "tolerance": tolerance,
        "precision_info": precision_info,
        "checkpoint": checkpoint,
        "exporter": exporter_versions(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_sidecar(artifact: Path, data: dict[str, Any]) -> Path:
    side = sidecar_path(artifact)
    write_json_atomic(side, data)
    return side


def stamp_contract(model: Any, data: dict[str, Any]) -> None:
    """Put ``data`` (a sidecar dict; its ``sha256`` left out) into ``model.metadata_props`` under
    ``METADATA_KEY``, replacing an earlier stamp; other metadata entries are kept."""
    value = json.dumps(embedded_contract(data), sort_keys=True, separators=(",", ":"))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, val in [*kept, (METADATA_KEY, value)]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, val


def stamped_bytes(model: Any, data: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """``model`` serialized with ``data`` stamped in, and ``data`` with the sha256 of those bytes."""
    stamp_contract(model, data)
    blob = model.SerializeToString()
    return blob, {**data, "sha256": hashlib.sha256(blob).hexdigest()}


def restamp_onnx(path: Path) -> tuple[str, str]:
    """Stamp an existing export's sidecar into its ONNX file (graph and weights untouched) and rewrite the
    sidecar's ``sha256``; returns (old sha256, new sha256). The sidecar must match the file first."""
    import onnx

    path = Path(path)
    old = read_sidecar(path)  # ArtifactError when missing or stale
    model = onnx.load(str(path), load_external_data=False)
    blob, new = stamped_bytes(model, old)
    files.write_bytes_atomic(path, blob)
    write_sidecar(path, new)
    return old["sha256"], new["sha256"]
