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


def test_softmax_rewrite_drops_the_stale_nchw_shape_record():
    """The Softmax output keeps its name but becomes NHWC: its old (N, K, h, w) value_info must go."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((2, 9, 1, 1), np.float32)
    nodes = [helper.make_node("Softmax", ["x"], ["p"], name="sm", axis=1), helper.make_node("Conv", ["p", "w"], ["y"], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 9, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "h", "w"])],
                          [numpy_helper.from_array(w, "w")],
                          value_info=[helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 9, "h", "w"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    rewrites.softmax_channels_last(model, {"sm", "conv"})
    assert [v.name for v in model.graph.value_info] == []
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    assert dims["p"] == ["N", "h", "w", 9]


def test_eval_dim_and_fixed_factor():
    env = {"N": 2, "H": 224, "W": 96}
    assert rewrites._eval_dim("(((H - 1)//8)) + 1", env) == 28
    assert rewrites._eval_dim("W", env) == 96 and rewrites._eval_dim(32, env) == 32
    assert rewrites._eval_dim("H % 5 * -2", env) == -8
    for bad in ("H ** 2", "__import__('os')", "H +", "max(H, W)", "Q + 1"):
        assert rewrites._eval_dim(bad, env) is None
    level = ["N", 96, "(((H - 1)//8)) + 1", "(((W - 1)//8)) + 1"]
    up = ["N", 96, "(((H - 1)//4)) + 1", "(((W - 1)//4)) + 1"]
    assert rewrites._fixed_factor(level, up) == ([1.0, 1.0, 2.0, 2.0], 8)
    assert rewrites._fixed_factor(["N", 2, "(((H - 1)//4)) + 1", "W"], ["N", 2, "H", "W"]) == ([1.0, 1.0, 4.0, 1.0], 4)
    assert rewrites._fixed_factor(["N", 3, "H", "W"], ["N", 3, "H", "W"]) is None  # no resizing: nothing to rewrite
    assert rewrites._fixed_factor(["N", 3, "H", "W"], ["N", 3, "H + 1", "W"]) is None  # not a factor at any multiple
    assert rewrites._fixed_factor(["N", 3, "H", "W"], ["N", 3, "?", "W"]) is None


def _resize_model(out_dims, size_expr_from, scales_mode="half_pixel", mode="linear"):
    """x (N,4,h,w) -> MaxPool 2 (ceil) -> Resize to x's size -> Add x; like the decoder, shapes recorded as expressions."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Shape", [size_expr_from], ["sz"], name="shape"),
        helper.make_node("Resize", ["p", "", "", "sz"], ["u"], name="up", mode=mode,
                         coordinate_transformation_mode=scales_mode),
        helper.make_node("Add", ["u", "x"], ["y"], name="add"),
        helper.make_node("Shape", ["p"], ["unused"], name="dead"),
    ]
    vi = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 4, "(((H - 1)//2)) + 1", "(((W - 1)//2)) + 1"]),
          helper.make_tensor_value_info("u", TensorProto.FLOAT, out_dims)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                          [numpy_helper.from_array(np.zeros(1, np.float32), "unused_init")], value_info=vi)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_resize_fixed_scales_is_exact_at_multiples_and_refused_elsewhere():
    import onnxruntime as ort
    import pytest

    model = _resize_model(["N", 4, "H", "W"], "x")
    x = np.random.default_rng(3).normal(size=(2, 4, 12, 18)).astype(np.float32)
    run = lambda m, a: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": a})[0]
    want = run(model, x)
    done, multiple = rewrites.resize_fixed_scales(model)
    assert done == {"up": [1.0, 1.0, 2.0, 2.0]} and multiple == 2
    assert sorted(rewrites.prune(model)) == ["dead", "shape"]
    assert [n.op_type for n in model.graph.node] == ["MaxPool", "Resize", "Add"]
    assert [i.name for i in model.graph.initializer] == ["up_scales"]  # the unread initializer went too
    onnx.checker.check_model(model, full_check=True)
    assert np.abs(run(model, x) - want).max() < 1e-6
    with pytest.raises(Exception, match="(?i)broadcast|shape|dimension"):  # 13 rows: 7 pooled, 14 upsampled
        run(model, np.zeros((1, 4, 13, 18), np.float32))


def test_resize_fixed_scales_leaves_what_it_cannot_prove():
    cases = [
        _resize_model(["N", 4, "H", "W"], "x", scales_mode="align_corners"),  # other coordinate mapping
        _resize_model(["N", 4, "H", "W"], "x", mode="cubic"),
        _resize_model(["N", 4, "H + 1", "W"], "x"),  # not a fixed factor
        _resize_model(["N", 4, "?", "W"], "x"),  # not an expression
    ]
    for model in cases:
        before = model.SerializeToString()
        assert rewrites.resize_fixed_scales(model) == ({}, 1)
        assert model.SerializeToString() == before
    bare = _resize_model(["N", 4, "H", "W"], "x")
    del bare.graph.value_info[:]  # no recorded shapes (another exporter)
    assert rewrites.resize_fixed_scales(bare) == ({}, 1)


def test_pool_exclude_pad_only_without_padding():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def pool(**attrs):
        n = helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[4, 4], strides=[4, 4], **attrs)
        g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 10, 13])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])

    x = np.random.default_rng(5).normal(size=(1, 2, 10, 13)).astype(np.float32)
    model = pool(ceil_mode=1, count_include_pad=1)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert rewrites.pool_exclude_pad(model) == ["avg"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)  # overhanging ceil-mode windows: same divisor
    assert rewrites.pool_exclude_pad(pool(ceil_mode=1, count_include_pad=1, pads=[1, 1, 1, 1])) == []  # real padding counts
    assert rewrites.pool_exclude_pad(pool(ceil_mode=1)) == []  # already excluded (the default)


def test_pool_as_depthwise_conv_is_exact_at_the_multiple():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def pool(multiple_ok=True, **attrs):
        n = helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[4, 4], strides=[4, 4], **attrs)
        n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'model.members.0.head']")
        g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "h", "w"])],
                              value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])

    run = lambda m, a: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": a})[0]
    x = np.random.default_rng(6).normal(size=(2, 3, 16, 24)).astype(np.float32)
    model = pool(ceil_mode=1, count_include_pad=0)
    want = run(model, x)
    assert rewrites.pool_as_depthwise_conv(model, 8) == ["avg"]
    (conv,) = model.graph.node
    assert conv.op_type == "Conv" and conv.name == "avg" and conv.metadata_props[0].value == "['', 'model.members.0.head']"
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(run(model, x), want, rtol=1e-6, atol=1e-6)
    assert rewrites.pool_as_depthwise_conv(pool(), 2) == []  # 4 does not divide the multiple: overhangs possible
    assert rewrites.pool_as_depthwise_conv(pool(pads=[1, 1, 1, 1]), 8) == []


def test_pool_exclude_pad_leaves_ceil_mode_before_opset_19():
    """Before AveragePool-19, ONNX Runtime divided an overhanging ceil-mode window by the whole kernel."""
    from onnx import TensorProto, helper

    def pool(opset, ceil):
        n = helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[4, 4], strides=[4, 4],
                             ceil_mode=ceil, count_include_pad=1)
        g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 10, 13])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])

    assert rewrites.pool_exclude_pad(pool(18, 1)) == []
    assert rewrites.pool_exclude_pad(pool(18, 0)) == ["avg"]  # floor mode: no overhang, same math in every opset
    assert rewrites.pool_exclude_pad(pool(19, 1)) == ["avg"]
