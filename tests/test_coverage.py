"""`halpc inspect`: how much of a model's MACs halpc splits, where the split ends and why."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import models  # examples/models.py
from bundles import save, trunk_of
from halpc.analyse.coverage import coverage
from test_cli_errors import run_cli


def _se_unet(rng: np.random.Generator) -> onnx.ModelProto:
    """conv 3->8 3x3 (16x16), an SE gate (GAP, 1x1 8->2, Relu, 1x1 2->8, HardSigmoid, Mul), a
    ConvTranspose 8->4 k2 s2 (32x32), a linear Resize back to 16x16, a 1x1 4->2 conv."""
    inits, nodes = [], []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    nodes += [
        helper.make_node("Conv", ["x", weight("w0", 8, 3, 3, 3)], ["c0"], pads=[1, 1, 1, 1], name="c0"),
        helper.make_node("GlobalAveragePool", ["c0"], ["g"], name="gap"),
        helper.make_node("Conv", ["g", weight("w1", 2, 8, 1, 1)], ["s1"], name="squeeze"),
        helper.make_node("Relu", ["s1"], ["s1r"]),
        helper.make_node("Conv", ["s1r", weight("w2", 8, 2, 1, 1)], ["s2"], name="excite"),
        helper.make_node("HardSigmoid", ["s2"], ["gate"]),
        helper.make_node("Mul", ["c0", "gate"], ["se"], name="scale"),
        helper.make_node("ConvTranspose", ["se", weight("wt", 8, 4, 2, 2)], ["up"], strides=[2, 2], name="up"),
        helper.make_node("Resize", ["up", "", "scales"], ["down"], mode="linear", name="resize"),
        helper.make_node("Conv", ["down", weight("w3", 2, 4, 1, 1)], ["y"], name="head"),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales"))
    graph = helper.make_graph(nodes, "se_unet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# The same MACs by hand: output values x weights each sums (ConvTranspose: input values x the
# weights each meets).
SE_UNET_MACS = {
    "c0": 8 * 16 * 16 * 3 * 3 * 3,
    "squeeze": 2 * 8,
    "excite": 8 * 2,
    "up": 8 * 16 * 16 * 4 * 2 * 2,
    "head": 2 * 16 * 16 * 4,
}


def test_an_se_block_and_a_decoder_split_whole(tmp_path) -> None:
    trunk = trunk_of(save(_se_unet(np.random.default_rng(0)), tmp_path))
    found = coverage(trunk)
    assert found.model_macs == found.split_macs == sum(SE_UNET_MACS.values())
    assert found.ends == () and trunk.tail == ()


def test_a_gate_computed_by_a_flatten_and_gemm_ends_the_split_with_its_reason(tmp_path) -> None:
    """SE blocks whose FCs are Gemms on a flattened vector (Keras exports) are not split: the
    Flatten is not a layer of rows."""
    model = _se_unet(np.random.default_rng(0))
    graph = model.graph
    squeeze = next(n for n in graph.node if n.name == "squeeze")
    flat = helper.make_node("Flatten", ["g"], ["g_flat"], name="flatten")
    gemm = helper.make_node("Gemm", ["g_flat", "w1_2d"], ["s1_flat"], transB=1, name="squeeze")
    shape = helper.make_node("Reshape", ["s1_flat", "s1_shape"], ["s1"], name="unflatten")
    graph.initializer.extend([numpy_helper.from_array(np.ones((2, 8), np.float32), "w1_2d"),
                              numpy_helper.from_array(np.array([1, 2, 1, 1], np.int64), "s1_shape")])
    position = list(graph.node).index(squeeze)
    graph.node.remove(squeeze)
    for i, node in enumerate((flat, gemm, shape)):
        graph.node.insert(position + i, node)
    found = coverage(trunk_of(save(model, tmp_path)))
    reasons = {e.node: e.reason for e in found.ends}
    assert set(reasons) == {"gap", "scale"}
    assert reasons["gap"] == "a global pool reads every row"
    assert "reads 'gate', which is computed outside the split" in reasons["scale"]


def test_inspect_json_and_text_say_what_is_split(tmp_path) -> None:
    path = save(models.build("vgg16", 64, 64), tmp_path)
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert data["split_macs"] == trunk_of(path).macs - sum(  # the trunk's MACs less pooling's
        layer.macs for layer in trunk_of(path).layers if layer.op_type != "Conv")
    assert len(convs) == 13 and data["model_macs"] > data["split_macs"] > 0.99 * data["model_macs"]
    assert data["ends"] == [{"node": "gap", "op": "GlobalAveragePool", "reason": "a global pool reads every row"}]
    text = run_cli("inspect", path).stdout
    assert "split      100% of the model's " in text and "ends at    GlobalAveragePool 'gap'" in text
    bad = run_cli("inspect", tmp_path / "missing.onnx", "--json")
    assert bad.returncode in (1, 2) and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1


def test_a_decoder_splits_to_the_output_and_an_unsplittable_resize_says_why(tmp_path) -> None:
    model = _se_unet(np.random.default_rng(1))
    graph = model.graph
    # Take the SE gate out: ConvTranspose, linear Resize and head conv all split, to the output.
    keep = [n for n in graph.node if n.name not in ("gap", "squeeze", "excite", "scale")
            and n.output[0] not in ("s1r", "gate")]
    for node in keep:
        if node.name == "up":
            node.input[0] = "c0"
    del graph.node[:]
    graph.node.extend(keep)
    found = coverage(trunk_of(save(model, tmp_path)))
    assert found.ends == ()
    assert found.model_macs == found.split_macs == sum(SE_UNET_MACS[n] for n in ("c0", "up", "head"))
    # A Resize that reads a region of interest is not split: its own reason.
    for node in graph.node:
        if node.name == "resize":
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("mode", "linear"),
                                   helper.make_attribute("coordinate_transformation_mode", "tf_crop_and_resize")])
    found = coverage(trunk_of(save(model, tmp_path, "roi.onnx")))
    assert [(e.node, e.op) for e in found.ends] == [("resize", "Resize")]
    assert found.ends[0].reason == "tf_crop_and_resize reads a region of interest: not split"
