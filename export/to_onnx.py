"""Checkpoint -> ONNX (fp32 | fp16 | int8), checked, then published with its sidecar.

``export_checkpoint`` traces ``engine.net.graph.ColorizeGraph`` with the dynamo
exporter (dynamic N, H, W; one self-contained file), rewrites it for ONNX
Runtime's layouts (every precision: fixed-factor resizes and the head's pool;
FP32: the annealed mean made channels-last too; ``export.rewrites``), converts
it to the requested precision, writes it to a temp file beside ``out`` and
checks it: ``onnx.checker`` (full), ONNX Runtime vs the PyTorch graph on fixed inputs
(``export.parity``), and for INT8 the held-out PSNR gate. Only then is the graph
written to ``out`` (atomically, the sidecar's content stamped into its metadata) and
the sidecar beside it; on any failure nothing is left at ``out`` (an older file there
stays untouched) and an ``ExportError`` says why.
An existing ``out`` or sidecar is replaced only with ``force`` (checked before any work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from engine.core.contract import INPUT_NAME, OUTPUT_RGB, OUTPUT_UV, sha256_file, sidecar_path
from export import parity
from export.fp16 import ExportError, colour_nodes, convert_to_fp16

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CALIB_DIR = ROOT / "samples"
MIN_OPSET = 18  # the dynamo exporter's lowest supported opset
# Traced example: neither 0 nor 1 in any dynamic dim, so torch.export does not specialize them.
_EXAMPLE_SHAPE = (2, 1, 48, 64)
_MAX_DIM = 1 << 16


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    precision: str = "fp32",
    opset: int | None = None,
    calib_dir: str | os.PathLike[str] | None = None,
    temperature: float | None = None,
    tolerance: dict[str, Any] | None = None,
    reduce_range: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (.onnx) and write ``out``'s sidecar; returns the sidecar dict.

    ``force``: replace an existing ``out`` and sidecar (otherwise ``ExportError`` before any work).

    ``tolerance`` overrides ``export.parity.TOLERANCES[precision]`` (tests use it to
    force a failure). ``temperature`` sets the annealed-mean temperature of a
    classification head (refused for heads without one). ``reduce_range``
    (int8 only) overrides the choice made from the CPU's VNNI flag.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"precision: expected one of {list(PRECISIONS)}, found {precision!r}")
    opset = _check_opset(opset)
    out = Path(out)
    tmp = _prepare_out(out, force)
    gate = dict(parity.TOLERANCES[precision] if tolerance is None else tolerance)

    calib_images: list[Path] = []
    if precision == "int8":
        from export import quantize

        calib_images = quantize.find_images(Path(calib_dir) if calib_dir is not None else DEFAULT_CALIB_DIR)
    elif calib_dir is not None:
        log.warning("--calib is used only with --precision int8; ignoring %s", calib_dir)

    graph, config, ckpt_info = _load(Path(checkpoint), temperature)
    try:
        with tempfile.TemporaryDirectory(prefix="colorizer-export-") as work:
            fp32_path = Path(work) / "fp32.onnx"
            model = _trace(graph, opset, fp32_path)
            colour_nodes(model)  # fails early if the graph lacks the contract's outputs
            layout, multiple = _fixed_layout(model)
            import onnx

            if precision == "fp16":
                model, info = convert_to_fp16(model)
                onnx.save_model(model, str(tmp), save_as_external_data=False)
            elif precision == "int8":
                from export import quantize

                onnx.save_model(model, str(fp32_path), save_as_external_data=False)  # the quantizer reads a file
                info = quantize.quantize_int8(fp32_path, tmp, calib_images, reduce_range=reduce_range, size_multiple=multiple)
            else:
                from export.rewrites import softmax_channels_last

                rewritten = softmax_channels_last(model, {n.name for n in model.graph.node})
                onnx.save_model(model, str(tmp), save_as_external_data=False)
                info = {"graph_rewrites": {"softmax_channels_last": sorted(rewritten)}}
            info.setdefault("graph_rewrites", {}).update(layout)
            measured = _check(tmp, graph, precision, info, multiple)
        bad = parity.violations(measured, gate)
        if bad:
            raise ExportError(
                f"{precision} export of {checkpoint} failed its parity check ({'; '.join(bad)}); "
                f"nothing written to {out}"
            )
        side = _publish(
            tmp,
            out,
            precision=precision,
            model_config=config,
            parity=measured,
            tolerance=gate,
            precision_info=info,
            checkpoint=ckpt_info,
            size_multiple=multiple,
        )
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("wrote %s and %s", out, sidecar_path(out).name)
    return side


# ----------------------------------------------------------------------------- steps


def _check_opset(opset: int | None) -> int | None:
    if opset is None:
        return None
    import onnx.defs

    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= top:
        raise ExportError(f"opset: expected {MIN_OPSET}..{top} (dynamo exporter, onnx {onnx.__version__}), found {opset}")
    return int(opset)


def _prepare_out(out: Path, force: bool = False) -> Path:
    """Check ``out`` can be written (creating its folder; existing files only with ``force``) and return
    the temp path beside it."""
    if out.suffix != ".onnx":
        raise ExportError(f"--out: expected a path ending in .onnx, found {out}")
    if out.is_dir():
        raise ExportError(f"--out: expected a file path, found the folder {out}")
    if not force:
        existing = [p for p in (out, sidecar_path(out)) if os.path.lexists(p)]
        if existing:
            raise ExportError(f"--out: {' and '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}; "
                              f"pass --force to overwrite")
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.onnx")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb"):
            pass
        tmp.unlink()
    except OSError as e:
        raise ExportError(f"--out: cannot write in {out.parent} ({e.strerror or e})") from e
    return tmp


def _load(checkpoint: Path, temperature: float | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from engine.net.graph import ColorizeGraph
    from engine.net.checkpoint import load_model

    model, data = load_model(checkpoint)
    config = model.config
    if temperature is not None:
        if config.head != "classification":
            raise ExportError(
                f"--temperature: expected a model whose head has a temperature (classification), "
                f"found head {config.head!r} in {checkpoint}"
            )
        if not float(temperature) > 0:
            raise ExportError(f"--temperature: expected a value > 0, found {temperature}")
        model.set_temperature(float(temperature))
        config = dataclasses.replace(config, head_options={**config.head_options, "temperature": float(temperature)})
    graph = ColorizeGraph(model).eval()
    info = {"path": str(checkpoint), "sha256": sha256_file(checkpoint), "step": data.get("step")}
    return graph, config.to_dict(), info


def _trace(graph: Any, opset: int | None, path: Path) -> Any:
    """Export the graph with dynamic N, H, W to ``path``; returns the loaded ModelProto."""
    import onnx
    import torch

    dim_n = torch.export.Dim("N", min=1, max=_MAX_DIM)
    dim_h = torch.export.Dim("H", min=1, max=_MAX_DIM)
    dim_w = torch.export.Dim("W", min=1, max=_MAX_DIM)
    example = torch.zeros(_EXAMPLE_SHAPE, dtype=torch.uint8)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), _quiet_loggers():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_RGB, OUTPUT_UV],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={INPUT_NAME: {0: dim_n, 2: dim_h, 3: dim_w}},
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; report them as one error
        log.debug("exporter output:\n%s", chatter.getvalue())
        raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).strip().splitlines()[0]})") from e
    log.debug("exporter output:\n%s", chatter.getvalue())
    return onnx.load(str(path))


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...] = ("torch", "onnxscript", "onnx_ir")):
    """The exporter logs its optimizer passes at INFO; keep them out of the user's log."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _fixed_layout(model: Any) -> tuple[dict[str, Any], int]:
    """Rewrites for every precision (``export.rewrites``), in place; returns (record, size multiple).

    Resizes by a fixed factor get constant scales and the head's pool excludes its
    (empty) padding, so ONNX Runtime keeps the decoder in its blocked layout; the
    graph then takes H, W that are multiples of the returned number.
    """
    from export.rewrites import pool_exclude_pad, prune, resize_fixed_scales

    scaled, multiple = resize_fixed_scales(model)
    pools = pool_exclude_pad(model)
    pruned = prune(model)
    log.debug("fixed-factor resizes %s (size multiple %d), pools %s, %d dead nodes pruned", scaled, multiple, pools, len(pruned))
    record = {"resize_fixed_scales": scaled, "pool_exclude_pad": pools, "pruned_nodes": len(pruned)}
    return record, multiple


def _check(path: Path, graph: Any, precision: str, info: dict[str, Any], multiple: int = 1) -> dict[str, Any]:
    """onnx.checker + ORT vs torch at fixed inputs (sizes rounded up to ``multiple``; + INT8 PSNR)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{precision} graph failed onnx.checker: {str(e).strip().splitlines()[0]}") from e
    _check_io(onnx.load(str(path), load_external_data=False))
    session = parity.ort_session(path)
    measured = parity.compare(session, graph, parity.parity_inputs(multiple=multiple))
    log.info(
        "%s parity vs torch fp32: uv max |diff| %.3g, rgb max |diff| %d levels (%s)",
        precision,
        measured["uv_max_abs"],
        measured["rgb_max_levels"],
        ", ".join("x".join(map(str, c["shape"])) for c in measured["cases"]),
    )
    if precision == "int8":
        from export import quantize

        measured.update(quantize.quality_check(session, graph, info))
        log.info(
            "int8 mean PSNR vs fp32 rgb on %d held-out image(s): %.2f dB",
            len(measured["psnr_images"]),
            measured["psnr_db"],
        )
    return measured


def _check_io(model: Any) -> None:
    """The file's I/O must be the contract's: names, element types, rank, symbolic N/H/W."""
    from onnx import TensorProto

    want = {
        INPUT_NAME: (TensorProto.UINT8, 1),
        OUTPUT_RGB: (TensorProto.UINT8, 3),
        OUTPUT_UV: (TensorProto.FLOAT, 2),
    }
    found = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for name, (elem, channels) in want.items():
        v = found.get(name)
        if v is None:
            raise ExportError(f"graph I/O: expected a tensor {name!r}, found {sorted(found)}")
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        static = [d for i, d in enumerate(dims) if i != 1 and isinstance(d, int)]
        if t.elem_type != elem or len(dims) != 4 or dims[1] != channels or static:
            raise ExportError(
                f"graph I/O {name!r}: expected {TensorProto.DataType.Name(elem)} (N, {channels}, H, W) "
                f"with symbolic N, H, W, found {TensorProto.DataType.Name(t.elem_type)} {dims}"
            )


def _publish(tmp: Path, out: Path, **fields: Any) -> dict[str, Any]:
    """Write the checked graph to ``out`` with its contract stamped in (``export.sidecar.stamp_contract``),
    then its sidecar (removing the model if that fails)."""
    import onnx

    from engine.core import files
    from export.sidecar import onnx_sidecar, stamped_bytes, write_sidecar

    model = onnx.load(str(tmp), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    blob, data = stamped_bytes(model, onnx_sidecar(out, opset=opset, sha256="", **fields))
    try:
        files.write_bytes_atomic(out, blob)
    except OSError as e:
        raise ExportError(f"cannot write {out} ({e.strerror or e})") from e
    try:
        write_sidecar(out, data)
    except OSError as e:
        out.unlink(missing_ok=True)
        raise ExportError(f"cannot write the sidecar of {out} ({e}); removed the model too") from e
    return data
