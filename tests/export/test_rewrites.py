"""export.rewrites: graph rewrites applied after tracing keep the numbers and the contract."""

from __future__ import annotations

import numpy as np
import onnx

from export import rewrites


def test_softmax_channels_last_rewrite_is_exact():
    """Softmax over channels + 1x1 conv (with bias; from float and from per-tensor DQ input) == the rewrite."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = rng.normal(size=(2, 9, 1, 1)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    for quantized in (False, True):
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                 numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z")]
        pre = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
               helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["logits"], name="dq")] if quantized else []
        nodes = pre + [helper.make_node("Softmax", ["logits" if quantized else "x"], ["p"], name="sm", axis=1),
                       helper.make_node("Conv", ["p", "w", "b"], ["y"], name="conv")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 9, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, None, None])], inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
        x = rng.normal(0, 3, size=(2, 9, 5, 7)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        done = rewrites.softmax_channels_last(model, {"sm", "conv"})
        onnx.checker.check_model(model)
        assert set(done) == {"sm", "conv"} and "Conv" not in [n.op_type for n in model.graph.node]
        assert ("sm_to_nhwc" in done["sm"]) is (not quantized)  # with a DQ, the Transpose is on the 8-bit side
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    assert rewrites.softmax_channels_last(model, set()) == {}  # only the named (FP32 head) nodes
