"""FP16 conversion of an exported FP32 graph, colour math kept in FP32.

The network body (convolutions, BN folded into them, ReLU, pooling, the head)
runs in FP16; the colour-space nodes stay FP32 so uint8 pixels are computed
exactly as the colour spec says:

* pre-processing: ``Cast(gray -> float)``, ``* 1/255`` (and the shape arithmetic
  on ``gray`` that has no convolution upstream);
* post-processing: the ``Concat(Y, UV)``, the YUV -> RGB 1x1 ``Conv``, the clamps,
  ``* 255 + 0.5``, ``Floor``, the ``Cast`` to uint8.

Which nodes those are is found from the graph's structure, not from names
(``colour_nodes``), so it holds for every exporter and head:

* post = ancestors of output ``rgb`` that are not ancestors of output ``uv``;
* pre  = ancestors of ``uv`` with no ``Conv`` on any path from the inputs.

``onnxconverter-common`` inserts the casts at the FP32/FP16 borders; I/O stays
uint8 / float32 (``keep_io_types``). The result is what TensorRT's strongly
typed networks consume: the precision of every layer is fixed in the file.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from engine.core.contract import OUTPUT_RGB, OUTPUT_UV
from engine.core.errors import ColorizerError

# Ops that start the model body: anything downstream of one of these is "network", not colour math.
_BODY_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "Gemm", "MatMul"})


class ExportError(ColorizerError):
    """An export step failed or its result did not pass the checks."""


def producers(graph: Any) -> dict[str, Any]:
    """Tensor name -> the node that writes it (graph inputs and initializers have none)."""
    return {out: node for node in graph.node for out in node.output if out}


def _ancestors(graph: Any, output: str) -> list[Any]:
    """Nodes that ``output`` depends on (including its producer), in no particular order."""
    prod = producers(graph)
    seen: dict[int, Any] = {}
    stack = [output]
    while stack:
        node = prod.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(i for i in node.input if i)
    return list(seen.values())


def colour_nodes(model: Any) -> dict[str, list[str]]:
    """Names of the pre- and post-processing nodes of an exported colorizer graph.

    Raises ``ExportError`` if the graph does not have the contract's outputs or
    if a node has no name (every exporter used here names its nodes).
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    if not {OUTPUT_RGB, OUTPUT_UV} <= outputs:
        raise ExportError(f"graph outputs: expected {OUTPUT_RGB!r} and {OUTPUT_UV!r}, found {sorted(outputs)}")
    uv_anc = _ancestors(graph, OUTPUT_UV)
    uv_ids = {id(n) for n in uv_anc}
    post = [n for n in _ancestors(graph, OUTPUT_RGB) if id(n) not in uv_ids]

    prod = producers(graph)
    tainted: dict[int, bool] = {}  # node -> has a body op at or above it

    def has_body(node: Any) -> bool:
        key = id(node)
        if key not in tainted:
            tainted[key] = False  # graphs are acyclic; guards against malformed input
            tainted[key] = node.op_type in _BODY_OPS or any(
                has_body(prod[i]) for i in node.input if i in prod
            )
        return tainted[key]

    pre = [n for n in uv_anc if not has_body(n)]
    unnamed = [n.op_type for n in pre + post if not n.name]
    if unnamed:
        raise ExportError(f"colour nodes without names ({unnamed}); cannot keep them out of FP16/INT8")
    order = {id(n): i for i, n in enumerate(graph.node)}
    return {
        "pre": [n.name for n in sorted(pre, key=lambda n: order[id(n)])],
        "post": [n.name for n in sorted(post, key=lambda n: order[id(n)])],
    }


_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
# ColorizeGraph.model.members.<k>.head: each member's UV head; model.mean: their average (several members)
HEAD_SCOPE = re.compile(r"model\.members\.\d+\.head|model\.mean")


def head_nodes(model: Any) -> list[str]:
    """Names of the nodes of the model's UV heads (last conv, tanh/softmax, scaling) and of their mean.

    Read from the module scopes the dynamo exporter records on each node
    (``pkg.torch.onnx.name_scopes``) when every convolution still carries them.
    Otherwise (ONNX Runtime's pre-processing rewrites nodes and drops the metadata,
    e.g. when it folds an annealed-mean temperature into the logits) it falls back to
    the structure: the nodes between output ``uv`` and the nearest body op above it,
    where a body op fed by a Softmax (the annealed mean over the bin centres) does
    not count, so a classification head reaches back to its logits convolution.
    INT8 keeps (part of) these in float, so ``uv`` is not squeezed through 8 bits at the end.
    """
    graph = model.graph
    scoped = [(n, _scopes(n)) for n in graph.node]
    if all(sc for n, sc in scoped if n.op_type in _BODY_OPS):
        return [n.name for n, sc in scoped if any(HEAD_SCOPE.fullmatch(s) for s in sc)]
    prod = producers(graph)
    seen: list[Any] = []
    stack = [OUTPUT_UV]
    while stack:
        node = prod.get(stack.pop())
        if node is None or any(node is s for s in seen):
            continue
        seen.append(node)
        source = prod.get(node.input[0]) if node.input else None
        if node.op_type not in _BODY_OPS or (source is not None and source.op_type == "Softmax"):
            stack.extend(i for i in node.input if i)
    return [n.name for n in seen]


def _scopes(node: Any) -> list[str]:
    import ast

    for prop in node.metadata_props:
        if prop.key == _SCOPE_KEY:
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else []
    return []


def convert_to_fp16(model: Any) -> tuple[Any, dict[str, Any]]:
    """FP32 ``onnx.ModelProto`` -> (FP16 model, info for the sidecar). Colour nodes stay FP32."""
    from onnxconverter_common import float16

    nodes = colour_nodes(model)
    if _is_fp16(model):
        raise ExportError("FP16 conversion: expected an FP32 graph, found one that already has FP16 tensors")
    block = nodes["pre"] + nodes["post"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, node_block_list=block, op_block_list=[]
            )
    except (ValueError, KeyError, AssertionError) as e:  # the converter asserts on odd graphs
        raise ExportError(f"FP16 conversion failed ({type(e).__name__}: {e})") from e
    # The converter warns once per tiny weight it flushes to 1e-7 (FP16's subnormal floor); count them.
    flushed = sum("truncated" in str(w.message) for w in caught)
    info = {
        "converter": "onnxconverter_common.float16",
        "keep_io_types": True,
        "fp32_nodes": nodes,
        "values_clamped_to_fp16_range": flushed,
        "fp32_resize_scales": _resize_scales_fp32(converted),
        "fp16_shared_constants": _shared_constants_fp16(converted, set(block)),
    }
    return converted, info


# FP16 body ops whose constant inputs must have the FP16 type of their other inputs: input positions
_TYPED_CONSTANTS = {"Clip": (1, 2), "Mul": (0, 1), "Add": (0, 1), "Sub": (0, 1), "Div": (0, 1)}


def _shared_constants_fp16(model: Any, fp32_nodes: set[str]) -> list[str]:
    """Give FP16 body nodes FP16 copies of constants they share with FP32 nodes.

    The converter leaves an initializer FP32 when an FP32 (colour) node reads it too, e.g. ReLU6's
    ``Clip`` bounds or the 0.5 of the members' mean, which the rounding of the colour math also uses;
    ONNX's type check refuses an FP16 node reading it. Returns the nodes fixed.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    made: dict[str, str] = {}
    fixed = []
    for node in model.graph.node:
        slots = _TYPED_CONSTANTS.get(node.op_type)
        if slots is None or node.name in fp32_nodes:
            continue
        others = [i for k, i in enumerate(node.input) if k not in slots or i not in inits]
        if node.op_type != "Clip" and not others:
            continue  # constants only: nothing says which type the node computes in
        for k in slots:
            init = inits.get(node.input[k]) if len(node.input) > k else None
            if init is None or init.data_type != TensorProto.FLOAT:
                continue
            if init.name not in made:
                half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}_fp16")
                model.graph.initializer.append(half)
                made[init.name] = half.name
            node.input[k] = made[init.name]
            if node.name not in fixed:
                fixed.append(node.name)
    return fixed


def _resize_scales_fp32(model: Any) -> list[str]:
    """Give constant Resize ``scales`` back their FP32 type (ONNX requires float; the converter halves them)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    fixed = []
    for node in model.graph.node:
        init = inits.get(node.input[2]) if node.op_type == "Resize" and len(node.input) > 2 else None
        if init is not None and init.data_type == TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
            fixed.append(init.name)
    return fixed


def _is_fp16(model: Any) -> bool:
    from onnx import TensorProto

    return any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
