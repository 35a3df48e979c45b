"""Trunk analysis, plan JSON and the bundle layout, on the example models."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import models
from bundles import assert_exact, compile_and_verify, local_cluster, save, trunk_of
from halpc.compile import compile_bundle
from halpc.errors import HalpcError
from halpc.planner.plan import even_plan
from halpc.planner.plan_file import plan_from_json
from halpc.host.verify import verify


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    return save(models.build("vgg16", 64, 64), tmp_path_factory.mktemp("vgg"))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return save(models.build("resnet18", 64, 64), tmp_path_factory.mktemp("resnet"))


def test_vgg_trunk_cut_points_keep_conv_and_relu_together(vgg) -> None:
    trunk = trunk_of(vgg)
    assert len(trunk.layers) == 31  # 13 conv + 13 relu + 5 pool
    assert [n.op_type for n in trunk.tail] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert trunk.exits == ("pool5",)
    # a cut after every ReLU and pool, never between a Conv and its ReLU (ORT fuses those)
    assert len(trunk.cuts) == 17
    assert all(trunk.producer(c.tensor).op_type in ("Relu", "MaxPool") for c in trunk.cuts)
    rf = trunk.receptive_field
    assert (rf["conv1"], rf["conv2"], rf["pool1"], rf["conv3"], rf["pool5"]) == (3, 5, 6, 10, 212)


def test_resnet_cuts_only_between_residual_blocks(resnet) -> None:
    trunk = trunk_of(resnet)
    producers = {trunk.producer(c.tensor).op_type for c in trunk.cuts}
    assert producers <= {"Relu", "MaxPool"}
    # no cut inside a basic block: both residual inputs would be live
    assert all("_relu1" not in c.tensor for c in trunk.cuts)
    assert len(trunk.cuts) == 9


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "unet", "fpn"])
def test_shapes_inferred_without_the_weights_are_onnx_s_own(name, tmp_path) -> None:
    """load_model runs onnx's shape inference on the graph without its weights' bytes; onnx's
    inference of the loaded model with them (the oracle) finds the same shape on every tensor,
    and the loaded model keeps every weight's values."""
    import segmentation
    from onnx import numpy_helper, shape_inference

    from halpc.inputs.model import load_model

    original = segmentation.unet(64, 64) if name == "unet" else segmentation.fpn(64, 64) if name == "fpn" \
        else models.build(name, 64, 64)
    loaded = load_model(save(original, tmp_path)).proto
    bare = onnx.ModelProto()
    bare.CopyFrom(loaded)
    del bare.graph.value_info[:]
    oracle = shape_inference.infer_shapes(bare, strict_mode=True, data_prop=True).graph
    found = {v.name: v for v in list(loaded.graph.value_info) + list(loaded.graph.output)}
    assert len(found) > len(loaded.graph.node) // 2
    assert found == {v.name: v for v in list(oracle.value_info) + list(oracle.output)}
    weights = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    for init in original.graph.initializer:
        if init.name in weights:
            np.testing.assert_array_equal(weights[init.name], numpy_helper.to_array(init))
    assert sum(w.nbytes for w in weights.values()) >= 0.99 * sum(t.ByteSize() for t in original.graph.initializer)


def test_nhwc_input_rows_are_axis_1(tmp_path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32) * 0.1, "w")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
        ],
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 16, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 20, 16, 8])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = save(model, tmp_path)
    trunk = trunk_of(path)
    assert trunk.tensors["x"].row_axis == 1 and trunk.tensors["y"].row_axis == 1
    assert not trunk.tail and trunk.exits == ("y",)
    assert_exact(compile_and_verify(path, tmp_path / "b", 3, seeds=2))


def test_plan_json_round_trip_and_hand_edit(vgg, tmp_path) -> None:
    out = tmp_path / "b"
    compiled = compile_bundle(vgg, local_cluster(3), out, "even")
    data = json.loads((out / "plan.json").read_text())
    assert data["schema"] == "halpc-plan/1" and data["strategy"] == "even"
    assert data["blocks"][0]["from"] == "input" and data["blocks"][-1]["to"] is None
    again = plan_from_json(data, compiled.trunk, list(compiled.cluster.names))
    assert again.checksum(compiled.trunk) == compiled.plan.checksum(compiled.trunk)

    # A person fuses the first two blocks and gives the host a 1-row strip.
    first, second = data["blocks"][0], data["blocks"][1]
    rows = first["rows"]
    merged = dict(first, to=second["to"], strips=[
        {"device": "host", "rows": [0, 1]},
        {"device": "dev-1", "rows": [1, rows - 5]},
        {"device": "dev-2", "rows": [rows - 5, rows]},
    ])
    del merged["layers"], merged["rows_of"], merged["rows"]
    data["blocks"] = [merged] + data["blocks"][2:]
    data["strategy"] = "manual"
    edited = tmp_path / "plan.json"
    edited.write_text(json.dumps(data))
    result = compile_bundle(vgg, local_cluster(3), tmp_path / "edited", plan=edited)
    assert result.plan.strategy == "manual" and len(result.plan.blocks) == len(compiled.plan.blocks) - 1
    assert_exact(verify(tmp_path / "edited", seeds=2))


def test_bundle_layout_manifest_and_weights(vgg, tmp_path) -> None:
    out = tmp_path / "b"
    compiled = compile_bundle(vgg, local_cluster(3), out, "even")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "halpc-bundle/1"
    for device in ("host", "dev-1", "dev-2"):
        folder = out / device
        assert (folder / "launch.sh").stat().st_mode & 0o111
        assert json.loads((folder / "manifest.json").read_text()) == manifest
        assert manifest["programs"][device]
    assert (out / "host" / "tail.onnx").exists() and not (out / "dev-1" / "tail.onnx").exists()
    # every strip carries only the weights its own layers use (as ORT's NCHWc graph, where this
    # machine is the target, conv1's filter reordered: the same bytes, in another order)
    import onnx

    strip = onnx.load(str(out / "dev-1" / "block00_strip1.onnx"))
    source = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(vgg)).graph.initializer}
    values = sorted(tuple(np.sort(onnx.numpy_helper.to_array(i), axis=None)) for i in strip.graph.initializer)
    assert values == sorted(tuple(np.sort(source[n], axis=None)) for n in ("conv1.weight", "conv1.bias"))
    onnx.checker.check_model(strip, full_check=True)
    stub_files = len(list((Path(__file__).parent.parent / "runtime_stub" / "halpc_stub").glob("*.py")))
    # Each worker folder carries the stub's source and a systemd unit beside its launcher.
    for device in ("dev-1", "dev-2"):
        assert len(list((out / device / "halpc_stub").glob("*.py"))) == stub_files
        assert "ExecStart=/opt/halpc/" + device in (out / device / "halpc-stub.service").read_text()
    assert len(manifest["artifacts"]) == 2 + sum(
        len(b.strips) for b in compiled.plan.blocks
    ) + 1 + 3 + 2 * (stub_files + 1) + 2 * 3  # plan + reference + strips + tail + launchers + stub, unit + weights
    weights = json.loads((out / "dev-1" / "weights.json").read_text())
    assert [size for _, size, *_ in weights["models"]["block00_strip1.onnx"].values()] == [
        source["conv1.weight"].nbytes]  # the bias is under 1 kB


def test_device_folder_copied_alone_passes_the_stub_check(vgg, tmp_path) -> None:
    out = tmp_path / "b"
    compile_bundle(vgg, local_cluster(2), out)
    board = tmp_path / "board"
    shutil.copytree(out / "dev-1", board / "dev-1")
    run = [sys.executable, "-m", "halpc_stub.cli", str(board / "dev-1"), "--device", "dev-1", "--check"]
    ok = subprocess.run(run, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout
    victim = next((board / "dev-1").glob("block*.onnx"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = subprocess.run(run, capture_output=True, text=True)
    assert bad.returncode == 1
    assert victim.name in bad.stderr and "sha256" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_even_plan_shares_small_maps_among_fewer_devices(vgg) -> None:
    trunk = trunk_of(vgg)
    plan = even_plan(trunk, ["a", "b", "c"])
    last = plan.blocks[-1]
    assert [s.device for s in last.strips] == ["a", "b"]  # pool5 has 2 rows at 64x64
    with pytest.raises(HalpcError, match="largest feature map"):
        even_plan(trunk, [f"d{i}" for i in range(65)])
