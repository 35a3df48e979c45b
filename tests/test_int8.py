"""Quantized models (QOperator and QDQ forms, made by ONNX Runtime's own quantize_static) split and stay
bit-exact, on x86 and (slow) under ARM64 emulation, where their integer convolutions need none
of the strip merging float convolutions need; rows travel as one byte a value."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import backbones
import models
from bundles import assert_exact, compile_and_verify, local_cluster, save, trunk_of
from halpc.analyse.strips import block_io
from halpc.compile import compile_bundle
from halpc.inputs.model import tensor_shapes
from halpc.inputs.target import TARGETS
from halpc.planner.context import context
from halpc.planner.legal import Legal
from halpc.planner.plan import even_plan
from halpc_stub import wire
from halpc_stub.manifest import load_manifest
from planning import random_plan
from quantize import quantize
from test_cli_errors import error_line, run_cli
from test_targets import emulated

# (model, per-channel weight scales): residual QLinearAdds, depthwise QLinearConvs, plain chains,
# squeeze-and-excitation (its pool and gate float between DequantizeLinear and QuantizeLinear).
QUANTIZED = {"vgg16": False, "resnet18": True, "mobilenet_v1_100": True, "mobilenet_v2": True,
             "mobilenet_v3_small": True}
FORMS = ("qoperator", "qdq")
# "-folded": quantized after ONNX Runtime's quant_pre_process, which folds BatchNormalization, so
# in the QOperator form each SE block's pool is a QLinearGlobalAveragePool sync point.
MODELS = [f"{name}-{form}" for name in QUANTIZED for form in FORMS] + ["mobilenet_v3_small-qoperator-folded"]
INTEGER_CONVS = ("QLinearConv", "ConvInteger")


def build(name: str, seed: int):
    """A float model of QUANTIZED at 64x64: examples/models.py or backbones.py."""
    return (backbones.BACKBONES[name] if name in backbones.BACKBONES else models.BUILDERS[name])(64, 64, seed=seed)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, request) -> Path:
    name, form, *folded = request.param.split("-")
    folder = tmp_path_factory.mktemp(name)
    float_model = save(build(name, seed=2), folder, f"{name}.onnx")
    return quantize(float_model, folder / f"{name}_{form}.onnx", form, per_channel=QUANTIZED[name],
                    preprocess=bool(folded))


def conv_macs(path: Path) -> tuple[int, int]:
    """(conv MACs in the trunk, in the whole model), from the model's own shapes."""
    trunk = trunk_of(path)
    split = sum(layer.macs for layer in trunk.layers if layer.op_type in (*INTEGER_CONVS, "Conv"))
    shapes = tensor_shapes(trunk.model.proto)
    total = split
    for node in trunk.tail:
        if node.op_type in (*INTEGER_CONVS, "Conv"):
            weight = shapes[node.input[3 if node.op_type == "QLinearConv" else 1]][0]
            total += int(np.prod(shapes[node.output[0]][0])) * int(np.prod(weight[1:]))
    return split, total


@pytest.mark.parametrize("int8_model", MODELS, indirect=True)
def test_the_trunk_takes_every_integer_conv(int8_model: Path) -> None:
    ops = {n.op_type for n in onnx.load(str(int8_model)).graph.node}
    assert ("QLinearConv" in ops) == ("qoperator" in int8_model.name) and "QuantizeLinear" in ops, ops
    split, total = conv_macs(int8_model)
    assert total > 0 and split / total >= 0.9, (split, total)


@pytest.mark.parametrize("int8_model", ["mobilenet_v3_small-qoperator-folded"], indirect=True)
def test_a_quantized_global_pool_is_a_sync_point(int8_model: Path) -> None:
    """Every SE block's QLinearGlobalAveragePool is in the trunk (one row reading every row); the
    classifier's stays in the tail."""
    pools = [n for n in onnx.load(str(int8_model)).graph.node if n.op_type == "QLinearGlobalAveragePool"]
    trunk = trunk_of(int8_model)
    synced = [layer for layer in trunk.layers if layer.op_type == "QLinearGlobalAveragePool"]
    assert len(pools) == 10 and len(synced) == 9, (len(pools), len(synced))
    assert all(layer.reduced is not None for layer in synced)
    assert [n.op_type for n in trunk.tail].count("QLinearGlobalAveragePool") == 1


@pytest.mark.parametrize("int8_model", MODELS, indirect=True)
@pytest.mark.parametrize("devices", [2, 3, 4])
def test_int8_bundles_are_bit_exact(int8_model: Path, devices: int, tmp_path: Path) -> None:
    assert_exact(compile_and_verify(int8_model, tmp_path / "even", devices))
    names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
    plan = random_plan(trunk_of(int8_model), names, seed=devices)  # 1-row strips, several per device
    assert_exact(compile_and_verify(int8_model, tmp_path / "uneven", devices, plan=plan))
    assert_exact(compile_and_verify(int8_model, tmp_path / "halp", devices, strategy="halp"))


@pytest.mark.parametrize("int8_model", ["vgg16-qoperator", "vgg16-qdq"], indirect=True)
def test_int8_strips_need_no_merging_on_arm64_and_travel_as_bytes(int8_model: Path, tmp_path: Path) -> None:
    """The even plan over four devices is legal as it is on aarch64 (integer accumulation), where
    the float model's even plan is not; its rows between blocks are uint8."""
    trunk = trunk_of(int8_model)
    cluster = local_cluster(4)
    plan = even_plan(trunk, list(cluster.names))
    legal = Legal(trunk, cluster, TARGETS["aarch64"])
    assert legal.plan_why_inexact(plan) is None
    assert legal.plan(plan) == plan
    float_trunk = trunk_of(save(models.build("vgg16", 64, 64, seed=2), tmp_path, "float.onnx"))
    assert Legal(float_trunk, cluster, TARGETS["aarch64"]).plan_why_inexact(
        even_plan(float_trunk, list(cluster.names))) is not None
    compile_bundle(int8_model, cluster, tmp_path / "b", plan=plan, arch="aarch64")
    manifest = load_manifest(tmp_path / "b")
    sent = {step["tensor"] for d in manifest.workers for step in manifest.program(d) if step["op"] == "send"}
    assert sent and all(manifest.tensors[t].dtype == "uint8" for t in sent), {t: manifest.tensors[t] for t in sent}


@pytest.mark.parametrize("int8_model", ["vgg16-qoperator"], indirect=True)
def test_the_stub_refuses_rows_of_another_dtype_or_size(int8_model: Path, tmp_path: Path) -> None:
    """Every uint8 receive of a worker in an int8 bundle: the right bytes pass, the same rows as float32 (or
    int8) are refused by name, and a uint8 buffer one byte short is refused."""
    plan = even_plan(trunk_of(int8_model), ["host", "dev-1", "dev-2"])
    compile_bundle(int8_model, local_cluster(3), tmp_path / "b", plan=plan)
    manifest = load_manifest(tmp_path / "b")
    checked = 0
    for device in manifest.workers:
        inbound = wire.Inbound(manifest.data["plan_sha256"], manifest.program(device), manifest.tensors)
        for step in manifest.program(device):
            spec = manifest.tensors.get(step.get("tensor"))
            if step["op"] != "recv" or spec.dtype != "uint8":  # the even plan's first block quantizes the input
                continue
            good = np.zeros(spec.strip_shape(tuple(step["rows"])), np.uint8)

            def frames(array, buffer=None):
                return [wire.rows_header("s", 0, manifest.data["plan_sha256"], step["from"], step, array),
                        buffer if buffer is not None else array.data]

            key, rows = inbound.rows(wire.decode(frames(good)), frames(good))
            assert rows.dtype == np.uint8 and rows.shape == good.shape
            for wrong in (good.astype(np.float32), good.astype(np.int8)):
                with pytest.raises(wire.Rejected, match=f"'{wrong.dtype.name}' .* expected uint8"):
                    inbound.rows(wire.decode(frames(wrong)), frames(wrong))
            with pytest.raises(wire.Rejected, match="buffer of"):
                inbound.rows(wire.decode(frames(good)), frames(good, good.tobytes()[:-1]))
            checked += 1
    assert checked >= 2


def test_the_cost_model_counts_one_byte_a_value(tmp_path: Path) -> None:
    """Moving the same rows of the same model costs a quarter of the bytes once quantized."""
    float_model = save(models.build("vgg16", 64, 64, seed=2), tmp_path, "vgg16.onnx")
    int8_model = quantize(float_model, tmp_path / "vgg16_int8.onnx")
    row_bytes = []
    for path in (float_model, int8_model):
        trunk = trunk_of(path)
        boundary = next(t for t in (block_io(trunk, 0, c.position).outputs[0] for c in trunk.cuts)
                        if trunk.tensors[t].shape[1] == 128)
        row_bytes.append(trunk.tensors[boundary].row_bytes)
    assert row_bytes[0] == 4 * row_bytes[1], row_bytes
    ctx = context(trunk_of(int8_model), local_cluster(2))
    assert ctx.trunk.tensors[ctx.trunk.input].dtype == "float32"  # the host quantizes the input


@pytest.mark.slow
def test_int8_bundles_are_bit_exact_on_arm64(tmp_path: Path) -> None:
    """Every model, 2-4 devices, even and random uneven plans and halp compiled for aarch64,
    verified in one emulated `halpc verify`."""
    emulated()
    bundles = []
    for name, form, *folded in (model.split("-") for model in MODELS):
        float_model = save(build(name, seed=4), tmp_path, f"{name}.onnx")
        path = quantize(float_model, tmp_path / f"{name}_{form}{'_folded' * bool(folded)}.onnx", form,
                        per_channel=QUANTIZED[name], preprocess=bool(folded))
        trunk = trunk_of(path)
        for devices in (2, 3, 4):
            cluster = local_cluster(devices)
            names = list(cluster.names)
            for label, plan in (("even", even_plan(trunk, names)), ("random", random_plan(trunk, names, seed=devices))):
                out = tmp_path / f"{name}-{form}-{devices}-{label}"
                compile_bundle(path, cluster, out, plan=plan, arch="aarch64")
                bundles.append(out)
        bundles.append(tmp_path / f"{name}-{form}-halp")
        compile_bundle(path, local_cluster(3), bundles[-1], "halp", arch="aarch64")
    proc = run_cli("verify", *bundles)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("outputs exact: bit-exact") == len(bundles), proc.stdout


TRAINED = {"yolov8n": {"images": (1, 3, 320, 320)}, "mtcnn_pnet": {"input_1": (1, 120, 160, 3)},
           "ppocr_cls": {"x": (1, 3, 48, 192)}, "ppocr_det": {"x": (1, 3, 320, 320)}}


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(TRAINED))
def test_trained_models_quantized_split_whole_and_exact(name: str, form: str, tmp_path: Path) -> None:
    """YOLOv8n (pyramid, QLinearSigmoid/Mul/Concat), MTCNN's P-Net (channels-last, PRelu) and
    PP-OCR's classifier and text detector (SE blocks; the detector's FPN, Resize and
    ConvTranspose head) from their PyPI wheels, quantized: every conv split; even plans on 2-4
    devices, a random uneven plan and halp on 3, exact here and (compiled for aarch64) under
    ARM64 emulation."""
    import fetch_pretrained

    path = quantize(fetch_pretrained.fetch(name), tmp_path / f"{name}_{form}.onnx", form, input_shapes=TRAINED[name])
    split, total = conv_macs(path)
    assert split / total >= 0.9, (split, total)
    for devices in (2, 3, 4):
        assert_exact(compile_and_verify(path, tmp_path / f"b{devices}", devices, keep=False))
    plan = random_plan(trunk_of(path), ["host", "dev-1", "dev-2"], seed=3)
    assert_exact(compile_and_verify(path, tmp_path / "random", 3, plan=plan, keep=False))
    assert_exact(compile_and_verify(path, tmp_path / "halp", 3, strategy="halp", keep=False))
    emulated()
    arm64 = [tmp_path / "arm64-random", tmp_path / "arm64-halp"]
    legal = Legal(trunk_of(path), local_cluster(3), TARGETS["aarch64"]).plan(plan)  # merges float strips ARM64 can't take
    compile_bundle(path, local_cluster(3), arm64[0], plan=legal, arch="aarch64")
    compile_bundle(path, local_cluster(3), arm64[1], "halp", arch="aarch64")
    proc = run_cli("verify", *arm64)
    assert proc.returncode == 0 and proc.stdout.count("outputs exact: bit-exact") == 2, proc.stdout + proc.stderr


def test_dynamic_quantization_is_refused_with_the_way_out(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_model = save(models.build("vgg16", 32, 32, seed=2), tmp_path, "vgg16.onnx")
    dynamic = tmp_path / "vgg16_dynamic.onnx"
    quantize_dynamic(str(float_model), str(dynamic), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    error_line(run_cli("inspect", dynamic), "DynamicQuantizeLinear", "whole tensor", "quantize_static")


def test_the_int8_rate_prices_integer_convolutions_only(tmp_path: Path) -> None:
    """`int8_gmacs` in the cluster file speeds up the quantized model's integer convolutions in
    the cost model (and its bundle's own prediction), and leaves the float model alone."""
    from halpc.inputs.cluster import parse_cluster
    from halpc.planner.predict import predict_bundle
    from halpc.planner.strategies import compare

    float_model = save(models.build("vgg16", 64, 64, seed=2), tmp_path, "vgg16.onnx")
    int8_model = quantize(float_model, tmp_path / "vgg16_int8.onnx")
    base = local_cluster(2)

    def with_int8(rate: float):
        text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 2\n" + "".join(
            f'[[device]]\nname = "{d.name}"\naddress = "{d.address}"\ngmacs = 8.0\nint8_gmacs = {rate}\n'
            + ("host = true\n" if d.host else "") for d in base.devices)
        return parse_cluster(text, source="int8.toml")

    def local_ms(path: Path, cluster) -> float:
        return compare(context(trunk_of(path), cluster), ("local",))["local"].predicted["latency_ms"]

    assert local_ms(float_model, with_int8(32.0)) == local_ms(float_model, base)
    slow, fast = local_ms(int8_model, base), local_ms(int8_model, with_int8(32.0))
    assert 3.5 < slow / fast <= 4.0, (slow, fast)  # nearly every MAC is an integer one
    compile_bundle(int8_model, with_int8(32.0), tmp_path / "b", "halp")
    manifest = load_manifest(tmp_path / "b")
    assert manifest.data["cost"]["dev-1"]["int8_gmacs"] == 32.0
    assert predict_bundle(manifest.data).latency_s * 1e3 == pytest.approx(manifest.data["predicted_ms"], rel=1e-3)
