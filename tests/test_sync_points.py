"""Squeeze-and-excitation and global-context blocks split: the reduction over every row and the
gate it makes run where the whole map is gathered (a block of their own, or a strip that holds
every row), the devices scale their own rows by the gate. Every variant, and MobileNetV3 and
EfficientNet-B0 built in code, verified bit-exact with even, halp and random uneven plans."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import backbones  # examples/backbones.py
from bundles import assert_exact, compile_and_verify, save, trunk_of
from halpc.analyse.coverage import coverage
from planning import random_plan
from test_ops import RNG, _check, _conv, _model


def _gated(x: str, channels: int, reduce: helper.NodeProto, gate: str, combine: str = "Mul"):
    """reduce -> 1x1 squeeze -> Relu -> 1x1 excite -> gate -> combine(x, gate)."""
    squeeze, ws = _conv("squeeze", reduce.output[0], channels, channels // 2, 1)
    excite, we = _conv("excite", "squeezed", channels // 2, channels, 1)
    nodes = [reduce, squeeze, helper.make_node("Relu", ["squeeze"], ["squeezed"]), excite]
    if gate == "HardSigmoid":
        nodes.append(helper.make_node("HardSigmoid", ["excite"], ["gate"], alpha=1 / 6, beta=0.5))
    elif gate:
        nodes.append(helper.make_node(gate, ["excite"], ["gate"]))
    else:
        nodes.append(helper.make_node("Identity", ["excite"], ["gate"]))
    nodes.append(helper.make_node(combine, [x, "gate"], ["gated"], name="combine"))
    return nodes, ws + we


def _pool(op: str, x: str, **attrs) -> helper.NodeProto:
    return helper.make_node(op, [x], ["pooled"], name="pool", **attrs)


VARIANTS = {
    "se_hardsigmoid": (lambda x: _pool("GlobalAveragePool", x), "HardSigmoid", "Mul"),
    "se_sigmoid": (lambda x: _pool("GlobalAveragePool", x), "Sigmoid", "Mul"),
    "se_reducemean": (lambda x: _pool("ReduceMean", x, axes=[2, 3], keepdims=1), "Sigmoid", "Mul"),
    "se_globalmaxpool": (lambda x: _pool("GlobalMaxPool", x), "Sigmoid", "Mul"),
    "global_context_add": (lambda x: _pool("GlobalAveragePool", x), None, "Add"),
}


@pytest.mark.parametrize("case", list(VARIANTS))
def test_sync_point_variants(case, tmp_path) -> None:
    pool, gate, combine = VARIANTS[case]
    first, w1 = _conv("c1", "x", 3, 16, 3, pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c1"], ["r1"])
    nodes, weights = _gated("r1", 16, pool("r1"), gate, combine)
    last, w3 = _conv("c3", "gated", 16, 16, 3, pads=[1, 1, 1, 1])
    model = _model([first, relu, *nodes, last], w1 + weights + w3, [1, 3, 29, 23])
    trunk = trunk_of(save(model, tmp_path, "probe.onnx"))
    assert {layer.name for layer in trunk.layers} >= {"pool", "combine"}  # the sync point is split
    _check(model, tmp_path)


@pytest.mark.parametrize("channels", [8, 24, 32])
def test_inverted_residual_whose_channels_do_not_fill_nchwc_blocks(channels, tmp_path) -> None:
    """A linear bottleneck's residual: ORT fuses the Add into the projection's NCHWc kernel with
    the block input (8 or 24 channels, padded to 16-wide blocks) as its sum. A strip that gets
    that input plain must hand it over blocked without a pool (ORT leaves a pool on unaligned
    channels plain) and without taking the Add for itself."""
    stem, w0 = _conv("stem", "x", 3, channels, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    expand, w1 = _conv("expand", "stem", channels, 4 * channels, 1)
    dw, w2 = _conv("dw", "expanded", 4 * channels, 4 * channels, 3, pads=[1, 1, 1, 1], group=4 * channels)
    project, w3 = _conv("project", "dwr", 4 * channels, channels, 1)
    nodes = [stem, expand, helper.make_node("Relu", ["expand"], ["expanded"]), dw,
             helper.make_node("Relu", ["dw"], ["dwr"]), project,
             helper.make_node("Add", ["project", "stem"], ["res"])]
    last, w4 = _conv("c4", "res", channels, 16, 3, pads=[1, 1, 1, 1])
    _check(_model(nodes + [last], w0 + w1 + w2 + w3 + w4, [1, 3, 40, 30]), tmp_path)


@pytest.fixture(scope="module", params=sorted(backbones.BACKBONES))
def backbone(request, tmp_path_factory):
    return save(backbones.BACKBONES[request.param](64, 64, seed=2), tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_at_least_90_percent_of_a_backbone_is_split(name, tmp_path) -> None:
    model = backbones.BACKBONES[name](224, 224)
    found = coverage(trunk_of(save(model, tmp_path)))
    classifier = np.prod(next(i.dims for i in model.graph.initializer if i.name == "fc.weight"))
    assert found.model_macs - found.split_macs == classifier and found.share >= 0.9, found  # all but the Gemm
    assert [(e.op, e.reason) for e in found.ends] == [("GlobalAveragePool", "a global pool reads every row")]


@pytest.mark.parametrize("devices", [2, 3, 4])
def test_backbones_verify_bit_exact_with_even_and_random_plans(backbone, devices, tmp_path) -> None:
    names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
    assert_exact(compile_and_verify(backbone, tmp_path / "even", devices, keep=False))
    plan = random_plan(trunk_of(backbone), names, seed=devices)
    assert_exact(compile_and_verify(backbone, tmp_path / "random", devices, plan=plan, keep=False))


def test_backbones_verify_bit_exact_with_halp(backbone, tmp_path) -> None:
    assert_exact(compile_and_verify(backbone, tmp_path / "halp", 3, strategy="halp", keep=False))
