"""ONNX graph rewrites the exporter applies after tracing: same math, faster on ONNX Runtime's CPU provider.

``softmax_channels_last``: the classification head's annealed mean is a Softmax
over the bin axis (axis 1 of NCHW) and a 1x1 convolution by the bin centres.
ONNX Runtime's CPU Softmax over axis 1 of a 4-D tensor walks memory with a stride
of H*W; over the last axis it is contiguous, so the rewritten head is faster in
FP32 and much faster in INT8 (``export.quantize``). Transpose, Softmax(axis=-1)
and MatMul are plain ONNX that TensorRT parses as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.fp16 import producers


def softmax_channels_last(model: Any, names: set[str]) -> dict[str, list[str]]:
    """Annealed mean: Softmax over channels + 1x1 conv -> Softmax over the last axis + MatMul.

    Among the nodes ``names`` (all of them for the FP32 export, the FP32 head of the INT8 one), a Softmax over axis 1 whose only reader
    is a 1x1, stride-1, unpadded, ungrouped Conv with constant weights (the bin centres,
    ``engine.net.chroma_bins.annealed_mean``) becomes Transpose(NCHW -> NHWC) -> Softmax(axis
    -1) -> MatMul(centres) [-> Add(bias)] -> Transpose(NHWC -> NCHW), same FP32 math.
    When the Softmax reads a DequantizeLinear with a per-tensor scale and no other
    reader, the first Transpose moves onto its 8-bit input. ORT cancels that Transpose
    against the one it puts after the channels-last QLinearConv of the logits, so the
    logits are never transposed; only the 2-channel result is. Returns
    ``{old node name: [new FP32 node names]}`` for the Softmax and the Conv.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    prod = producers(model.graph)
    readers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    done: dict[str, list[str]] = {}
    added: set[str] = set()
    for sm in [n for n in model.graph.node if n.op_type == "Softmax" and n.name in names]:
        axis = next((helper.get_attribute_value(a) for a in sm.attribute if a.name == "axis"), -1)
        conv = readers.get(sm.output[0], [])
        if axis not in (1, -3) or len(conv) != 1 or conv[0].op_type != "Conv" or conv[0].name not in names:
            continue
        conv = conv[0]
        if sm.output[0] in graph_outputs or conv.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[conv.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if (w.ndim != 4 or w.shape[2:] != (1, 1) or attrs.get("group", 1) != 1
                or any(v != 1 for v in list(attrs.get("strides", [])) + list(attrs.get("dilations", [])))
                or any(v != 0 for v in attrs.get("pads", []))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")):
            continue
        if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
            continue
        base = sm.name
        centres = f"{conv.input[1]}_channels_last"
        if centres not in added:  # heads of several members may share one centres initializer
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, :, 0, 0].T), centres))
            added.add(centres)
        new = []
        dq = prod.get(sm.input[0])
        per_tensor = (
            dq is not None and dq.op_type == "DequantizeLinear" and len(readers[dq.output[0]]) == 1
            and dq.input[1] in inits and len(inits[dq.input[1]].dims) == 0
        )
        source = dq.input[0] if per_tensor else sm.input[0]
        new.append(helper.make_node("Transpose", [source], [f"{base}_nhwc"], name=f"{base}_to_nhwc", perm=[0, 2, 3, 1]))
        if per_tensor:  # transpose the 8-bit logits, dequantize channels-last
            dq.input[0] = f"{base}_nhwc"
        logits = sm.input[0] if per_tensor else f"{base}_nhwc"
        mean = f"{conv.name}_nhwc"
        new.append(helper.make_node("Softmax", [logits], [sm.output[0]], name=sm.name, axis=-1))
        new.append(helper.make_node("MatMul", [sm.output[0], centres], [mean], name=f"{conv.name}_matmul"))
        if len(conv.input) > 2 and conv.input[2]:
            new.append(helper.make_node("Add", [mean, conv.input[2]], [f"{mean}_bias"], name=f"{conv.name}_bias"))
            mean = f"{mean}_bias"
        new.append(helper.make_node("Transpose", [mean], [conv.output[0]], name=f"{conv.name}_to_nchw", perm=[0, 3, 1, 2]))
        model.graph.node.remove(sm)
        model.graph.node.remove(conv)
        # The Softmax output keeps its name but is channels-last now: drop its NCHW shape record,
        # which shape inference would otherwise merge with the new layout (wrong sizes downstream).
        for vi in [v for v in model.graph.value_info if v.name == sm.output[0]]:
            model.graph.value_info.remove(vi)
        # Topological order: everything new reads the DQ (or the Softmax's input) and
        # initializers, and the Conv's readers come after the DQ.
        at = list(model.graph.node).index(dq if per_tensor else prod[sm.input[0]]) if sm.input[0] in prod else -1
        if per_tensor:
            model.graph.node.insert(at, new[0])  # before the DQ that now reads it
            at += 1
        for k, node in enumerate(new[1:] if per_tensor else new):
            model.graph.node.insert(at + 1 + k, node)
        if not any(conv.input[1] in n.input for n in model.graph.node):
            model.graph.initializer.remove(inits[conv.input[1]])
        done[sm.name] = done[conv.name] = [n.name for n in new[1 if per_tensor else 0:]]  # FP32 ones
    return done


# ----------------------------------------------------------------------------- fixed-factor resizes

#: Size multiples tried, smallest first, when proving a Resize's factor (see ``resize_fixed_scales``).
MULTIPLES = (1, 2, 4, 8, 16, 32)
#: Multiples of the candidate at which a factor must hold (1 ... 64, and a few large sizes).
_PROBES = tuple(range(1, 65)) + (127, 128, 255, 256)


def pool_exclude_pad(model: Any) -> list[str]:
    """AveragePool with all-zero pads: ``count_include_pad`` 1 -> 0. Returns the nodes changed.

    With no padding there is nothing to include. A ceil-mode window that overhangs
    the input is divided by its in-bounds size either way from AveragePool-19 on,
    as PyTorch's ``avg_pool2d(ceil_mode=True)`` does; before opset 19 ONNX Runtime
    divided it by the whole kernel, so ceil-mode pools are changed only from opset
    19 (floor-mode pools have no overhang: any opset). ONNX Runtime's NCHWc layout
    pass converts only the exclude-pad form, so with it the head's 4x4 pool stops
    costing two layout reorders of the full-resolution features; TensorRT reads the
    exclude-pad form unambiguously (``export.trt_build.ceil_avgpool_for_tensorrt``).
    """
    from onnx import helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    changed = []
    for node in model.graph.node:
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: a for a in node.attribute}
        pads = helper.get_attribute_value(attrs["pads"]) if "pads" in attrs else []
        auto_pad = helper.get_attribute_value(attrs["auto_pad"]) if "auto_pad" in attrs else b"NOTSET"
        cip, ceil = attrs.get("count_include_pad"), attrs.get("ceil_mode")
        if cip is None or cip.i == 0 or any(pads) or auto_pad not in (b"NOTSET", b"VALID"):
            continue
        if ceil is not None and ceil.i == 1 and opset < 19:
            continue
        cip.i = 0
        changed.append(node.name)
    return changed


def resize_fixed_scales(model: Any) -> tuple[dict[str, list[float]], int]:
    """Resizes to a computed ``sizes`` that are a fixed integer factor -> Resize by constant ``scales``.

    PyTorch exports ``F.interpolate(x, size=skip.shape[-2:])`` as a Resize whose
    ``sizes`` come from Shape/arithmetic nodes; ONNX Runtime cannot keep such a
    Resize in its blocked (NCHWc) layout, so each one costs a reorder to NCHW and
    back, and the decoder's adds and the head's pool fall out of the blocked
    layout with it. The exporter's symbolic shapes give each Resize's input and
    output spatial sizes as expressions of ``H`` and ``W`` (``((H - 1)//8) + 1``);
    for the smallest size multiple M in ``MULTIPLES`` at which output / input is
    one integer for every probed multiple of M, the Resize gets those factors as
    constant ``scales``. With half-pixel coordinates, scaling by the exact ratio
    of the sizes is the same arithmetic as resizing to the sizes.

    The rewritten graph is then correct for H, W multiples of the largest M used
    (returned; 1 when nothing changed); at other sizes a scaled output no longer
    matches the tensor it is added to and ONNX Runtime refuses the run (never a
    silent misalignment). The engine pads its input to that multiple
    (``size_multiple`` in the sidecar, ``engine.backends.base.Runner``). Returns
    ``({node name: scales}, M)``; the Shape arithmetic left without readers is
    removed by ``prune``.
    """
    from onnx import helper, numpy_helper

    shapes = {v.name: v.type.tensor_type.shape for v in list(model.graph.value_info) + list(model.graph.output)}
    done: dict[str, list[float]] = {}
    multiple = 1
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("coordinate_transformation_mode", b"half_pixel") not in (b"half_pixel", b"pytorch_half_pixel"):
            continue
        if attrs.get("mode", b"nearest") != b"linear" or attrs.get("antialias", 0) or (len(node.input) > 1 and node.input[1]):
            continue
        dims_in, dims_out = _dims(shapes.get(node.input[0])), _dims(shapes.get(node.output[0]))
        if dims_in is None or dims_out is None or len(dims_in) != len(dims_out):
            continue
        found = _fixed_factor(dims_in, dims_out)
        if found is None:
            continue
        scales, m = found
        name = f"{node.name}_scales"
        model.graph.initializer.append(numpy_helper.from_array(np.array(scales, np.float32), name))
        node.input[2] = name
        del node.input[3]
        done[node.name] = scales
        multiple = max(multiple, m)
    return done, multiple


def prune(model: Any) -> list[str]:
    """Remove nodes no graph output depends on, then initializers nothing reads; returns the nodes removed."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    dead = [n.name for n in graph.node if n not in keep]
    if dead:
        kept = list(reversed(keep))
        del graph.node[:]
        graph.node.extend(kept)
    for init in [i for i in graph.initializer if i.name not in live]:
        graph.initializer.remove(init)
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for vi in [v for v in graph.value_info if v.name not in names]:
        graph.value_info.remove(vi)
    return dead


def _dims(shape: Any) -> list[int | str] | None:
    if shape is None or not shape.dim:
        return None
    dims: list[int | str] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            return None
    return dims


def _fixed_factor(dims_in: list[int | str], dims_out: list[int | str]) -> tuple[list[float], int] | None:
    """Per-axis integer factors out/in that hold for every probed size multiple of the smallest M, or None."""
    for m in MULTIPLES:
        factors: list[float] = []
        for a, b in zip(dims_in, dims_out):
            seen = set()
            for k in _PROBES:
                env = {"N": 3, "H": m * k, "W": m * (k + 1)}
                x, y = _eval_dim(a, env), _eval_dim(b, env)
                if x is None or y is None or x <= 0 or y % x:
                    seen = {None}
                    break
                seen.add(y // x)
            if len(seen) != 1 or None in seen:
                break
            factors.append(float(seen.pop()))
        else:
            if any(f != 1.0 for f in factors):
                return factors, m
    return None


def _eval_dim(dim: int | str, env: dict[str, int]) -> int | None:
    """Value of a symbolic dimension (``"(((H - 1)//4)) + 1"``) for ``env``; None if it is not integer arithmetic."""
    import ast

    if isinstance(dim, int):
        return dim
    try:
        tree = ast.parse(dim, mode="eval")
    except SyntaxError:
        return None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: a // b if b else None, ast.Mod: lambda a, b: a % b if b else None}

    def ev(n: ast.AST) -> int | None:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.Name):
            return env.get(n.id)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            v = ev(n.operand)
            return None if v is None else -v
        if isinstance(n, ast.BinOp) and type(n.op) in ops:
            a, b = ev(n.left), ev(n.right)
            return None if a is None or b is None else ops[type(n.op)](a, b)
        return None

    return ev(tree)


def pool_as_depthwise_conv(model: Any, multiple: int) -> list[str]:
    """AveragePool k x k, stride k, no pads -> depthwise Conv with weights 1/k^2 (for INT8 only); returns the nodes.

    Exact when H and W are multiples of k: no window overhangs, so ceil mode and the
    divisor rules do not come in; the caller passes the graph's size multiple and pools
    whose k does not divide it are left alone. Under INT8, ONNX Runtime runs the pool
    as a QLinearAveragePool, a slow channels-last loop, while a depthwise QLinearConv
    has a vectorized kernel; the weights 1/16 quantize exactly (one level, scale
    1/16 / 127 or / 63). Keeps the node's name and exporter metadata, so the head's
    nodes are still found by scope.
    """
    from onnx import helper, numpy_helper

    shapes = {v.name: v.type.tensor_type.shape for v in model.graph.value_info}
    done = []
    for i, node in enumerate(list(model.graph.node)):
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, s = list(attrs.get("kernel_shape", [])), list(attrs.get("strides", []))
        dims = _dims(shapes.get(node.input[0]))
        if (len(k) != 2 or k != s or any(attrs.get("pads", [])) or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or multiple % k[0] or multiple % k[1]
                or dims is None or len(dims) != 4 or not isinstance(dims[1], int)):
            continue
        channels = dims[1]
        weight = f"{node.name}_depthwise"
        model.graph.initializer.append(
            numpy_helper.from_array(np.full((channels, 1, k[0], k[1]), 1.0 / (k[0] * k[1]), np.float32), weight)
        )
        conv = helper.make_node("Conv", [node.input[0], weight], list(node.output), name=node.name,
                                group=channels, kernel_shape=k, strides=s)
        conv.metadata_props.extend(node.metadata_props)
        model.graph.node.remove(node)
        model.graph.node.insert(i, conv)
        done.append(node.name)
    return done
