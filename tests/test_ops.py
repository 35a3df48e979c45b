"""Every row-local layer kind the trunk accepts, split into random strips, stays bit-exact.

Each case is a small graph built with onnx.helper and seeded weights, so a failure names the
exact attribute combination that broke.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundles import assert_exact, compile_and_verify, save, trunk_of
from planning import random_plan

RNG = np.random.default_rng(7)


def _weight(name: str, shape) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) or 1
    value = (RNG.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return numpy_helper.from_array(value, name)


def _model(nodes, inits, in_shape, out_name="y", opset=17) -> onnx.ModelProto:
    """The layers, then a pooled head; the last layer's spatial output is a graph output too, so
    that verify compares it whole: the pooled output alone would not see strips swapped or
    shifted (a mean over the rows is the same in any row order)."""
    head = [
        helper.make_node("GlobalAveragePool", [nodes[-1].output[0]], ["gap"]),
        helper.make_node("Flatten", ["gap"], [out_name]),
    ]
    graph = helper.make_graph(
        nodes + head,
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None),
         helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _conv(name, x, cin, cout, k, **attrs):
    group = attrs.get("group", 1)
    kh, kw = (k, k) if isinstance(k, int) else k
    weight = _weight(f"{name}_w", (cout, cin // group, kh, kw))
    bias = numpy_helper.from_array((RNG.standard_normal(cout) * 0.1).astype(np.float32), f"{name}_b")
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name, **attrs)
    return node, [weight, bias]


CASES = {
    "conv5x5_pad2": dict(k=5, pads=[2, 2, 2, 2]),
    "conv3x3_stride2_asymmetric_pads": dict(k=3, strides=[2, 2], pads=[0, 1, 1, 0]),
    "conv3x3_dilation2": dict(k=3, dilations=[2, 2], pads=[2, 2, 2, 2]),
    "conv_same_upper_stride2": dict(k=3, strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv_same_lower_k4": dict(k=4, auto_pad="SAME_LOWER"),
    "conv_valid_k3": dict(k=3, auto_pad="VALID"),
    "conv_7x1_rect": dict(k=(7, 1), pads=[3, 0, 3, 0]),
    "depthwise_stride2": dict(k=3, strides=[2, 2], pads=[1, 1, 1, 1], group=16),
    "grouped_conv": dict(k=3, pads=[1, 1, 1, 1], group=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_conv_variants(case, tmp_path) -> None:
    attrs = dict(CASES[case])
    k = attrs.pop("k")
    first, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c1"], ["r1"])
    second, w2 = _conv("c2", "r1", 16, 16, k, **attrs)
    relu2 = helper.make_node("Relu", ["c2"], ["r2"])
    third, w3 = _conv("c3", "r2", 16, 16, 3, pads=[1, 1, 1, 1])
    _check(_model([first, relu, second, relu2, third], w1 + w2 + w3, [1, 3, 29, 23]), tmp_path)


POOLS = {
    "maxpool_k3s2_ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "maxpool_k2s2_pad_floor": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1])),
    "avgpool_include_pad": ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)),
    "avgpool_exclude_pad_ceil": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "maxpool_dilated": ("MaxPool", dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])),
    "lppool": ("LpPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], p=2)),
}


@pytest.mark.parametrize("case", list(POOLS))
def test_pool_variants(case, tmp_path) -> None:
    op, attrs = POOLS[case]
    first, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1])
    pool = helper.make_node(op, ["c1"], ["p"], **attrs)
    second, w2 = _conv("c2", "p", 16, 16, 3, pads=[1, 1, 1, 1])
    _check(_model([first, pool, second], w1 + w2, [1, 3, 31, 20]), tmp_path)


def test_pointwise_ops_lrn_bn_and_constants(tmp_path) -> None:
    c1, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1])
    c = 16
    inits = w1 + [
        numpy_helper.from_array(RNG.random(c).astype(np.float32) + 0.5, "bn_s"),
        numpy_helper.from_array(RNG.standard_normal(c).astype(np.float32), "bn_b"),
        numpy_helper.from_array(RNG.standard_normal(c).astype(np.float32), "bn_m"),
        numpy_helper.from_array(RNG.random(c).astype(np.float32) + 0.5, "bn_v"),
        numpy_helper.from_array(RNG.random((c, 1, 1)).astype(np.float32), "slope"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(RNG.standard_normal((1, c, 1, 1)).astype(np.float32), "chan_bias"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(2.0, np.float32), "hi"),
    ]
    nodes = [
        c1,
        helper.make_node("LRN", ["c1"], ["lrn"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
        helper.make_node("BatchNormalization", ["lrn", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("PRelu", ["bn", "slope"], ["pr"]),
        helper.make_node("Mul", ["pr", "half"], ["mul"]),
        helper.make_node("Add", ["mul", "chan_bias"], ["add"]),
        helper.make_node("HardSwish", ["add"], ["hs"]),
        helper.make_node("Clip", ["hs", "lo", "hi"], ["clip"]),
        helper.make_node("LeakyRelu", ["clip"], ["lr"], alpha=0.1),
        helper.make_node("Sigmoid", ["lr"], ["sg"]),
        helper.make_node("HardSigmoid", ["sg"], ["hsg"]),
        helper.make_node("Tanh", ["hsg"], ["th"]),
        helper.make_node("Dropout", ["th"], ["dr"]),
        helper.make_node("Identity", ["dr"], ["id"]),
    ]
    c2, w2 = _conv("c2", "id", 16, 16, 3, pads=[1, 1, 1, 1])
    _check(_model(nodes + [c2], inits + w2, [1, 3, 24, 24]), tmp_path)


def test_branches_joins_concat_split_and_residuals(tmp_path) -> None:
    c1, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1])
    a, wa = _conv("a", "c1", 16, 16, 3, pads=[1, 1, 1, 1])
    b, wb = _conv("b", "c1", 16, 16, 5, pads=[2, 2, 2, 2])
    c, wc = _conv("c", "c1", 16, 16, 1)
    nodes = [
        c1, a, b, c,
        helper.make_node("Sum", ["a", "b", "c"], ["sum"]),
        helper.make_node("Mul", ["sum", "c1"], ["gated"]),
        helper.make_node("Concat", ["gated", "a"], ["cat"], axis=1),
        helper.make_node("Split", ["cat"], ["s1", "s2"], axis=1),
        helper.make_node("Add", ["s1", "s2"], ["res"]),
        helper.make_node("MaxPool", ["res"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    d, wd = _conv("d", "p", 16, 16, 3, pads=[1, 1, 1, 1])
    _check(_model(nodes + [d], w1 + wa + wb + wc + wd, [1, 3, 30, 18]), tmp_path)


def test_nearest_upsampling_feature_pyramid(tmp_path) -> None:
    c1, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    c2, w2 = _conv("c2", "c1", 16, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        c1, c2,
        helper.make_node("Resize", ["c2", "", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Concat", ["up", "c1"], ["cat"], axis=1),
    ]
    c3, w3 = _conv("c3", "cat", 32, 16, 3, pads=[1, 1, 1, 1])
    _check(_model(nodes + [c3], w1 + w2 + [scales] + w3, [1, 3, 32, 24]), tmp_path)


TRANSPOSED = {
    "k2s2_unet": dict(k=2, strides=[2, 2]),
    "k3s2_pads_output_padding": dict(k=3, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "k4s2_pad1": dict(k=4, strides=[2, 2], pads=[1, 1, 1, 1]),
    "k3s1_same": dict(k=3, pads=[1, 1, 1, 1]),
    "k1s2_rows_without_input": dict(k=1, strides=[2, 2], output_padding=[1, 0]),
    "k3s3_asymmetric_pads": dict(k=3, strides=[3, 3], pads=[2, 0, 0, 1], output_padding=[2, 1]),
    "k3s2_dilation2": dict(k=3, strides=[2, 2], dilations=[2, 2], pads=[2, 1, 1, 2], output_padding=[1, 1]),
    "k4s2_grouped": dict(k=4, strides=[2, 2], pads=[1, 1, 1, 1], group=4),
    "output_shape_same_upper": dict(k=3, strides=[2, 2], output_shape=[30, 22], auto_pad="SAME_UPPER"),
    "output_shape_notset": dict(k=4, strides=[2, 2], output_shape=[29, 21]),
    "auto_pad_same_lower": dict(k=3, strides=[2, 2], auto_pad="SAME_LOWER"),
    "auto_pad_valid": dict(k=3, strides=[2, 2], auto_pad="VALID"),
}


@pytest.mark.parametrize("case", list(TRANSPOSED))
def test_conv_transpose_variants(case, tmp_path) -> None:
    attrs = dict(TRANSPOSED[case])
    k = attrs.pop("k")
    group = attrs.get("group", 1)
    first, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    weight = _weight("t_w", (16, 16 // group, k, k))
    bias = numpy_helper.from_array((RNG.standard_normal(16) * 0.1).astype(np.float32), "t_b")
    up = helper.make_node("ConvTranspose", ["c1", "t_w", "t_b"], ["t"], name="t", **attrs)
    relu = helper.make_node("Relu", ["t"], ["r"])
    last, w3 = _conv("c3", "r", 16, 8, 3, pads=[1, 1, 1, 1])
    _check(_model([first, up, relu, last], w1 + [weight, bias] + w3, [1, 3, 29, 23]), tmp_path)


RESIZES = {  # scales (or sizes as "out rows x out cols") of a 15x12 map, attributes
    "linear_half_pixel_x2": ([1, 1, 2, 2], dict(mode="linear")),
    "linear_pytorch_half_pixel_sizes_x2": ("30x24", dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    "linear_asymmetric_x4": ([1, 1, 4, 4], dict(mode="linear", coordinate_transformation_mode="asymmetric")),
    "linear_align_corners_x2": ([1, 1, 2, 2], dict(mode="linear", coordinate_transformation_mode="align_corners")),
    "linear_half_pixel_x3": ([1, 1, 3, 3], dict(mode="linear")),
    "linear_half_pixel_sizes_non_integer": ("23x19", dict(mode="linear")),
    "linear_half_pixel_down": ("7x6", dict(mode="linear")),
    "cubic_half_pixel_x2": ([1, 1, 2, 2], dict(mode="cubic")),
    "cubic_align_corners_exclude_outside": ("29x20", dict(mode="cubic", coordinate_transformation_mode="align_corners",
                                                          exclude_outside=1, cubic_coeff_a=-0.5)),
    "cubic_asymmetric_x2": ([1, 1, 2, 2], dict(mode="cubic", coordinate_transformation_mode="asymmetric")),
}


@pytest.mark.parametrize("case", list(RESIZES))
def test_linear_and_cubic_resize_variants(case, tmp_path) -> None:
    """A bilinear (bicubic) decoder step between convolutions: every mode, transform and scale
    kind, resized on the strip's own rows where that is exact, else on the strip zero-padded."""
    size, attrs = RESIZES[case]
    first, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    if isinstance(size, str):
        rows, cols = (int(v) for v in size.split("x"))
        const = numpy_helper.from_array(np.array([1, 16, rows, cols], np.int64), "sizes")
        inputs = ["c1", "", "", "sizes"]
    else:
        const = numpy_helper.from_array(np.array(size, np.float32), "scales")
        inputs = ["c1", "", "scales"]
    up = helper.make_node("Resize", inputs, ["up"], name="up", **attrs)
    last, w3 = _conv("c3", "up", 16, 8, 3, pads=[1, 1, 1, 1])
    _check(_model([first, up, last], w1 + [const] + w3, [1, 3, 29, 23], opset=13), tmp_path)


@pytest.mark.parametrize("transform", ["half_pixel", "align_corners"])
def test_fpn_top_down_adds_a_bilinear_resize_into_a_lateral_conv(transform, tmp_path) -> None:
    """ONNX Runtime fuses the Add into the lateral conv's NCHWc kernel unsplit: the strip's
    resized rows, which reach the Add through a Slice, must be handed over blocked too."""
    c0, w0 = _conv("c0", "x", 3, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    c1, w1 = _conv("c1", "c0", 16, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    lateral, wl = _conv("lat", "c0", 16, 16, 1)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [c0, c1, lateral,
             helper.make_node("Resize", ["c1", "", "scales"], ["up"], name="up", mode="linear",
                              coordinate_transformation_mode=transform),
             helper.make_node("Add", ["lat", "up"], ["sum"], name="sum")]
    last, w3 = _conv("c3", "sum", 16, 8, 3, pads=[1, 1, 1, 1])
    _check(_model(nodes + [last], w0 + w1 + wl + [scales] + w3, [1, 3, 32, 28], opset=13), tmp_path)


def test_opset9_model_with_initializers_as_inputs_and_constant_nodes(tmp_path) -> None:
    c1, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1])
    const = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.25, np.float32))
    )
    nodes = [c1, const, helper.make_node("Mul", ["c1", "k"], ["m"]),
             helper.make_node("Upsample", ["m", "ups"], ["up"], mode="nearest")]
    c2, w2 = _conv("c2", "up", 16, 8, 3, pads=[1, 1, 1, 1])
    inits = w1 + w2 + [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "ups")]
    model = _model(nodes + [c2], inits, [1, 3, 16, 16], opset=9)
    model.ir_version = 3
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
    )
    _check(model, tmp_path)


def _check(model: onnx.ModelProto, tmp_path) -> None:
    path = save(model, tmp_path)
    trunk = trunk_of(path)
    # Everything but the classifier head must be split, or the case tests nothing.
    assert sorted(n.op_type for n in trunk.tail) == ["Flatten", "GlobalAveragePool"]
    exit_ = model.graph.output[1].name  # the trunk's last tensor, compared row for row
    assert exit_ in trunk.tensors and trunk.tensors[exit_].rows > 3

    def exact(checks: list) -> None:
        assert_exact(checks)
        assert {c.name for c in checks} == {"y", exit_}, checks
        info = trunk.tensors[exit_]
        assert all(c.shape[info.row_axis] == info.rows for c in checks if c.name == exit_), checks

    exact(compile_and_verify(path, tmp_path / "even", 3, seeds=2))
    for seed in range(3):
        plan = random_plan(trunk, ["host", "dev-1", "dev-2"], seed)
        exact(compile_and_verify(path, tmp_path / f"p{seed}", 3, plan=plan, seeds=2))
