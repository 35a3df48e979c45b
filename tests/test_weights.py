"""Weights once per device: each device folder keeps every weight tensor once on disk
(`weights.bin`, however many strips and plans use it), and the stub maps it once and hands
the same memory to every session; on x86-64 with NCHWc, the strips are ORT's NCHWc graphs,
their filters reordered once there too."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import models
from bundles import assert_exact, local_cluster, save, trunk_of
from halpc.compile import compile_bundle
from halpc.host.verify import verify
from halpc.emit.weights import ALIGN, INDEX_FILE, MIN_BYTES, WEIGHTS_FILE
from halpc_stub.errors import BundleError
from halpc_stub.manifest import load_manifest
from halpc_stub.session import load_sessions, nchwc_block, shared_weights, target_mismatch, this_target


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("weights")
    model = save(models.build("vgg16", 96, 96, seed=3), tmp)
    out = tmp / "bundle"
    compile_bundle(model, local_cluster(3, bandwidth_mbps=1000), out, "halp")
    assert_exact(verify(out))
    return model, out


def distinct_tensors(folder: Path) -> dict[bytes, int]:
    """Every initializer of MIN_BYTES or more in the folder's models, read by onnx itself (an
    independent reader of the external data), by content."""
    found = {}
    for path in folder.glob("*.onnx"):
        for init in onnx.load(str(path)).graph.initializer:
            data = onnx.numpy_helper.to_array(init).tobytes()
            if len(data) >= MIN_BYTES:
                found[data] = len(data)
    return found


def test_each_device_folder_keeps_each_weight_once(bundle) -> None:
    model, out = bundle
    manifest = load_manifest(out)
    trunk = trunk_of(model)
    for device in manifest.devices:
        folder = out / device.name
        tensors = distinct_tensors(folder)
        assert tensors, f"{device.name}: no weights"
        stored = (folder / WEIGHTS_FILE).stat().st_size
        assert sum(tensors.values()) <= stored <= sum(tensors.values()) + ALIGN * len(tensors), device.name
        models_bytes = sum(p.stat().st_size for p in folder.glob("*.onnx"))
        assert models_bytes < stored / 4, f"{device.name}: weights left inside the models"
        # Not more than the model holds at all: a tensor two strips (or blocks) share is there once.
        assert stored <= sum(trunk.weight_bytes.values()) + model.stat().st_size * 0.1, device.name


def test_the_stub_hands_every_session_the_same_memory(bundle) -> None:
    _, out = bundle
    manifest = load_manifest(out)
    sessions = load_sessions(manifest, "dev-1")
    index = json.loads((out / "dev-1" / INDEX_FILE).read_text())["models"]
    assert set(index) >= set(sessions)
    by_tensor: dict[tuple, list] = {}
    for file, session in sessions.items():
        assert set(session.shared_initializers) == set(index[file])
        for name, value in session.shared_initializers.items():
            by_tensor.setdefault(tuple(index[file][name][:2]), []).append(value)
    shared = [values for values in by_tensor.values() if len(values) > 1]
    assert shared, "no tensor is used by two strips: the test shows nothing"
    assert all(all(v is values[0] for v in values) for values in shared)


def test_plans_for_several_links_share_one_weights_file(tmp_path) -> None:
    model = save(models.build("vgg16", 64, 64, seed=2), tmp_path)
    out = tmp_path / "bundle"
    compile_bundle(model, local_cluster(3), out, "halp", bandwidths=(10, 1000))
    manifest = load_manifest(out)
    folder = out / "dev-1"
    assert not [p for p in folder.iterdir() if p.is_dir() and p.name not in ("halpc_stub", "keys")]
    per_plan = [{s["model"] for s in plan.program("dev-1") if "model" in s} for plan in manifest.plans]
    per_plan = [files for files in per_plan if files]
    assert len(per_plan) >= 2 and len(set().union(*per_plan)) > max(map(len, per_plan)), per_plan
    assert (folder / WEIGHTS_FILE).stat().st_size <= sum(trunk_of(model).weight_bytes.values()) * 1.05


def test_a_damaged_weights_index_is_one_line(tmp_path) -> None:
    (tmp_path / INDEX_FILE).write_text('{"file": "weights.bin", "models": ')
    with pytest.raises(BundleError, match=r"weights.json: cannot map the device's weights .*copy the device folder"):
        shared_weights(tmp_path / INDEX_FILE)
    assert shared_weights(tmp_path / "none.json") == {}


def test_the_mapped_weights_are_the_model_s(bundle) -> None:
    """Against onnx's own reading of the same external data, tensor by tensor."""
    _, out = bundle
    folder = out / "host"
    values = shared_weights(folder / INDEX_FILE)
    for file, by_name in values.items():
        inits = {i.name: i for i in onnx.load(str(folder / file)).graph.initializer}
        for name, value in by_name.items():
            np.testing.assert_array_equal(value.numpy(), onnx.numpy_helper.to_array(inits[name]))


def test_strips_ship_as_ort_s_nchwc_graphs_and_run_as_they_are(bundle) -> None:
    """Compiled on its target (x86-64 with NCHWc), every convolution of every strip is already
    ORT's NCHWc Conv, its filter reordered in the device's weights file (once, as the test above
    checks), and the stub opens the strips with ORT's optimizations off (verify: bit-exact)."""
    _, out = bundle
    manifest = load_manifest(out)
    assert manifest.data["target"]["optimized"] and manifest.data["target"]["nchwc_block"] == nchwc_block() > 0
    for device in ("host", "dev-1", "dev-2"):
        ops = [(n.domain, n.op_type) for p in (out / device).glob("*.onnx")
               for n in onnx.load(str(p), load_external_data=False).graph.node]
        assert ("com.microsoft.nchwc", "Conv") in ops and ("", "Conv") not in ops, device
    for session in load_sessions(manifest, "dev-1").values():
        assert session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_strips_reordered_for_another_block_are_refused(bundle) -> None:
    """A machine whose NCHWc blocks differ (AVX2 against AVX-512) would read the filters wrong:
    the stub refuses to open them, and the host refuses such a device by its pong."""
    _, out = bundle
    manifest = load_manifest(out)
    other = {8: 16, 16: 8}[nchwc_block()]
    manifest.data["target"]["nchwc_block"] = other
    with pytest.raises(BundleError, match=rf"dev-1: the bundle's strips are ONNX Runtime graphs reordered for NCHWc "
                                          rf"blocks of {other} channels; this machine's ONNX Runtime uses blocks of "
                                          rf"{nchwc_block()}: compile the bundle on a machine like this one"):
        load_sessions(manifest, "dev-1")
    why = target_mismatch(manifest, this_target(manifest), "dev-1")
    assert why and f"(blocks of {nchwc_block()})" in why and f"(blocks of {other})" in why, why
    manifest.data["target"]["nchwc_block"] = nchwc_block()
    assert target_mismatch(manifest, this_target(manifest), "dev-1") is None


def test_a_compile_is_reproducible(tmp_path) -> None:
    """The same model and cluster give the same files, byte for byte (keys aside): ORT's
    optimized strips included, whose node names ORT numbers differently from run to run."""
    import segmentation

    model = save(segmentation.fpn(64, 64), tmp_path)
    artifacts = []
    for n in range(2):
        compile_bundle(model, local_cluster(3), tmp_path / f"b{n}", "even", insecure=True)
        artifacts.append(load_manifest(tmp_path / f"b{n}").data["artifacts"])
    assert sum(name.endswith(".onnx") for name in artifacts[0]) > 10
    assert artifacts[0] == artifacts[1]
