"""The CLI's contract for bad input, checked on the real command in a subprocess.

Bad input must give ONE line on stderr that names what is wrong (the file, field or tensor) and
what to do, exit status 1 (or 2 for a wrong command line), no traceback, and nothing
half-written: no -o folder after a failed compile, no hidden `.NAME.partial-*` staging folder
beside it, and an existing good bundle left byte for byte as it was.

Models are small (MobileNet-V1 0.25 at 32x32, a few hand-built graphs) and built once per module;
one positive test compiles and verifies a 64x64 VGG-16.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models  # examples/models.py (conftest puts examples/ on sys.path)

CLUSTER_LOCAL3 = Path(__file__).resolve().parent.parent / "examples" / "cluster_local3.toml"


# -- helpers ------------------------------------------------------------------------------------


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "halpc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def error_line(proc: subprocess.CompletedProcess, *words: str, code: int | tuple[int, ...] = 1) -> str:
    """Assert the one-line-error contract and return the line."""
    codes = code if isinstance(code, tuple) else (code,)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in codes, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one stderr line, got:\n{proc.stderr}"
    line = lines[0]
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} left behind by a failed compile"
    partial = sorted(p.name for p in out.parent.glob(f".{out.name}.partial-*"))
    assert not partial, f"staging folders left behind: {partial}"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
    }


def bundle_files_match_manifest(bundle: Path) -> None:
    """The bundle holds exactly what its manifest names (no stale files from an older bundle)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {d["name"] for d in manifest["devices"]}
    expected = set(manifest["artifacts"]) | {"manifest.json"} | {f"{n}/manifest.json" for n in names}
    expected |= {f"{n}/keys/{n}.key_secret" for n in names if "curve" in manifest}  # not artifacts
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert on_disk == expected


def cluster_toml(names: list[str]) -> str:
    text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 2\n"
    for i, name in enumerate(names):
        text += f'\n[[device]]\nname = "{name}"\naddress = "127.0.0.1:{5800 + i}"\ngmacs = 8.0\n'
        if i == 0:
            text += "host = true\n"
    return text


def save_graph(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# -- module fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    f: dict[str, Path] = {}

    small = models.build("mobilenet_v1_025", height=32, width=32, seed=0)
    f["small"] = root / "small.onnx"
    onnx.save(small, str(f["small"]))
    # Same architecture, other weights: another model file, so another sha256.
    f["other"] = root / "other.onnx"
    onnx.save(models.build("mobilenet_v1_025", height=32, width=32, seed=1), str(f["other"]))

    dynamic = copy.deepcopy(small)
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    for i, param in ((0, "N"), (2, "H"), (3, "W")):
        dims[i].Clear()
        dims[i].dim_param = param
    f["dynamic"] = root / "dynamic.onnx"
    onnx.save(dynamic, str(f["dynamic"]))

    raw = f["small"].read_bytes()
    f["truncated"] = root / "truncated.onnx"
    f["truncated"].write_bytes(raw[: len(raw) // 2])
    f["empty"] = root / "empty.onnx"
    f["empty"].write_bytes(b"")
    f["text"] = root / "notes.onnx"
    f["text"].write_text("this is a text file, not an ONNX model\n")
    f["folder"] = root / "a_folder.onnx"
    f["folder"].mkdir()

    rng = np.random.default_rng(0)
    f["mlp"] = save_graph(
        root / "mlp.onnx",
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), helper.make_node("Relu", ["y"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w")],
    )
    f["relu_image"] = save_graph(
        root / "relu_image.onnx",
        [helper.make_node("Relu", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    f["two_rows"] = save_graph(
        root / "two_rows.onnx",
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["conv"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 2, 8])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")],
    )

    f["cluster2"] = root / "cluster2.toml"
    f["cluster2"].write_text(cluster_toml(["host", "dev-1"]))
    f["bad_toml"] = root / "broken.toml"
    f["bad_toml"].write_text('[[device]\nname = "host"\n')
    f["unknown_field"] = root / "typo.toml"
    f["unknown_field"].write_text(cluster_toml(["host", "dev-1"]).replace("gmacs = 8.0", "gmacs = 8.0\ncolour = 'red'", 1))
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("not a folder\n")
    return f


@pytest.fixture(scope="module")
def good_bundle(files, tmp_path_factory) -> Path:
    """A bundle of the small model split over two devices, compiled once; tests copy it before
    damaging it. `--strategy even` so that every block has a strip on each device (the default
    planner may well keep so small a model on the host alone)."""
    out = tmp_path_factory.mktemp("good") / "bundle"
    proc = run_cli("compile", files["small"], "--cluster", files["cluster2"], "-o", out, "--strategy", "even")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert [s["device"] for s in plan["blocks"][0]["strips"]] == ["host", "dev-1"], plan["blocks"][0]
    assert list((out / "dev-1").glob("*.onnx")), "dev-1 has no model files"
    return out


@pytest.fixture(scope="module")
def plan(good_bundle) -> dict:
    return json.loads((good_bundle / "plan.json").read_text())


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "bundle"


@pytest.fixture
def bundle_copy(good_bundle, tmp_path) -> Path:
    copied = tmp_path / "copy"
    shutil.copytree(good_bundle, copied)
    return copied


def compile_small(files, out, *extra):
    return run_cli("compile", files["small"], "--cluster", files["cluster2"], "-o", out, *extra)


def write_plan(tmp_path: Path, data) -> Path:
    path = tmp_path / "edited-plan.json"
    path.write_text(json.dumps(data, indent=1))
    return path


# -- model --------------------------------------------------------------------------------------


def test_inspect_missing_model(tmp_path):
    error_line(run_cli("inspect", tmp_path / "nope.onnx"), "nope.onnx", "no such file")


def test_compile_missing_model(files, tmp_path, out):
    proc = run_cli("compile", tmp_path / "nope.onnx", "--cluster", files["cluster2"], "-o", out)
    error_line(proc, "nope.onnx", "no such file")
    assert_nothing_written(out)


def test_model_is_a_folder(files, out):
    proc = run_cli("compile", files["folder"], "--cluster", files["cluster2"], "-o", out)
    error_line(proc, "a_folder.onnx", "folder", code=(1, 2))
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "key, words",
    [
        ("text", ["notes.onnx", "ONNX"]),
        ("truncated", ["truncated.onnx", "ONNX"]),
        ("empty", ["empty.onnx", "ONNX"]),
    ],
)
def test_not_an_onnx_model(files, out, key, words):
    proc = run_cli("compile", files[key], "--cluster", files["cluster2"], "-o", out)
    error_line(proc, *words)
    assert_nothing_written(out)


def test_dynamic_dims_suggest_input_shape(files, out):
    proc = run_cli("compile", files["dynamic"], "--cluster", files["cluster2"], "-o", out)
    line = error_line(proc, "dynamic.onnx", "'input'", "--input-shape", code=(1, 2))
    assert "dynamic" in line
    assert_nothing_written(out)


def test_dynamic_dims_fixed_by_input_shape(files, out):
    proc = run_cli(
        "compile", files["dynamic"], "--cluster", files["cluster2"], "-o", out,
        "--input-shape", "input=1x3x32x32", "--strategy", "even",
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("foo=1x3x32x32", ["--input-shape", "'foo'", "input"]),  # unknown input, lists the real one
        ("input=1x3xabc", ["--input-shape", "1x3xabc", "NAME=DIMS"]),  # malformed dims
        ("input=1x3x0x32", ["--input-shape", "1x3x0x32", "at least 1"]),  # a zero dim
        ("input=1x3x32", ["--input-shape", "input", "1x3x32x32"]),  # wrong rank
        ("input=1x3x64x64", ["--input-shape", "1x3x64x64", "1x3x32x32"]),  # conflicts with static dims
    ],
    ids=["unknown-input", "malformed", "zero-dim", "wrong-rank", "conflict"],
)
def test_bad_input_shape(files, out, spec, words):
    proc = compile_small(files, out, "--input-shape", spec)
    error_line(proc, *words, code=2)
    assert_nothing_written(out)


def test_input_shape_on_inspect(files):
    error_line(run_cli("inspect", files["small"], "--input-shape", "x=1x3xabc"), "--input-shape", code=2)


@pytest.mark.parametrize(
    "key, words",
    [("mlp", ["mlp.onnx", "4-D", "x 1x8"]), ("relu_image", ["relu_image.onnx", "spatial"])],
    ids=["no-image-input", "no-conv-or-pool"],
)
def test_no_spatial_layers(files, out, key, words):
    proc = run_cli("compile", files[key], "--cluster", files["cluster2"], "-o", out)
    error_line(proc, *words)
    assert_nothing_written(out)


def test_more_devices_than_rows(files, out):
    # Every feature map of a 1x3x2x8 input has 2 rows: 3 devices cannot share any of them.
    proc = run_cli("compile", files["two_rows"], "--cluster", CLUSTER_LOCAL3, "-o", out)
    error_line(proc, "3 devices", "2 rows", "at most 2 devices")
    assert_nothing_written(out)


# -- cluster ------------------------------------------------------------------------------------


def test_cluster_missing(files, tmp_path, out):
    proc = run_cli("compile", files["small"], "--cluster", tmp_path / "nope.toml", "-o", out)
    error_line(proc, "nope.toml", "not found")
    assert_nothing_written(out)


def test_cluster_invalid_toml(files, out):
    proc = run_cli("compile", files["small"], "--cluster", files["bad_toml"], "-o", out)
    error_line(proc, "broken.toml", "TOML", "line 1")
    assert_nothing_written(out)


def test_cluster_unknown_field(files, out):
    proc = run_cli("compile", files["small"], "--cluster", files["unknown_field"], "-o", out)
    error_line(proc, "typo.toml", "device[1]", "'colour'")
    assert_nothing_written(out)


@pytest.mark.parametrize("name", ["plan.json", "manifest.json"])
def test_device_named_like_a_bundle_file(files, tmp_path, out, name):
    cluster = tmp_path / "clash.toml"
    cluster.write_text(cluster_toml(["host", name]))
    proc = run_cli("compile", files["small"], "--cluster", cluster, "-o", out, "--strategy", "even")
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:  # supporting the name is as good as refusing it
        bundle_files_match_manifest(out)
    else:
        error_line(proc, name)
        assert_nothing_written(out)


# -- plan ---------------------------------------------------------------------------------------


def test_plan_missing(files, tmp_path, out):
    error_line(compile_small(files, out, "--plan", tmp_path / "nope.json"), "nope.json", "no such plan")
    assert_nothing_written(out)


def test_plan_not_json(files, tmp_path, out):
    path = tmp_path / "plan.json"
    path.write_text("strategy: even\nblocks: [")
    error_line(compile_small(files, out, "--plan", path), "plan.json", "JSON")
    assert_nothing_written(out)


def test_plan_as_given_compiles(files, good_bundle, tmp_path, out):
    """The control for the damaged plans below: the undamaged plan compiles."""
    proc = compile_small(files, out, "--plan", good_bundle / "plan.json")
    assert proc.returncode == 0, proc.stderr


def _damage(plan: dict, how: str) -> tuple[object, list[str]]:
    p = copy.deepcopy(plan)
    strips = p["blocks"][0]["strips"]
    if how == "schema":
        p["schema"] = "halpc-plan/999"
        return p, ["schema", "halpc-plan/1"]
    if how == "not-an-object":
        return [p], ["schema"]
    if how == "blocks-not-list":
        p["blocks"] = {"0": p["blocks"][0]}
        return p, ["blocks", "list"]
    if how == "unknown-device":
        strips[1]["device"] = "ghost"
        return p, ["blocks[0].strips[1].device", "'ghost'", "host, dev-1"]
    if how == "gap":
        strips[1]["rows"][0] += 1
        return p, ["blocks[0].strips[1].rows", "gaps"]
    if how == "overlap":
        strips[1]["rows"][0] -= 1
        return p, ["blocks[0].strips[1].rows", "overlaps"]
    if how == "empty-range":
        cut = strips[0]["rows"][1]
        strips.insert(1, {"device": "dev-1", "rows": [cut, cut]})
        return p, ["blocks[0].strips[1].rows", "empty"]
    if how == "short":
        del strips[1:]
        return p, ["blocks[0].strips", f"{p['blocks'][0]['rows']}"]
    if how == "rows-not-pair":
        strips[0]["rows"] = "0-8"
        return p, ["blocks[0].strips[0].rows", "[start, stop]"]
    if how == "exchange":
        p["exchange"] = "broadcast"
        return p, ["exchange", "'broadcast'"]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["schema", "not-an-object", "blocks-not-list", "unknown-device", "gap", "overlap", "empty-range",
     "short", "rows-not-pair", "exchange"],
)
def test_damaged_plan(files, plan, tmp_path, out, how):
    data, words = _damage(plan, how)
    path = write_plan(tmp_path, data)
    error_line(compile_small(files, out, "--plan", path), "edited-plan.json", *words)
    assert_nothing_written(out)


def test_plan_for_another_model(files, good_bundle, out):
    proc = run_cli(
        "compile", files["other"], "--cluster", files["cluster2"], "-o", out,
        "--plan", good_bundle / "plan.json",
    )
    error_line(proc, "plan.json", "model.sha256", "other.onnx")
    assert_nothing_written(out)


@pytest.fixture(scope="module")
def not_a_cut(files) -> str:
    """A tensor of the small model's trunk that is not a cut point."""
    from halpc.inputs.model import load_model
    from halpc.analyse.trunk import analyse

    trunk = analyse(load_model(files["small"]))
    cuts = {c.tensor for c in trunk.cuts}
    return next(o for layer in trunk.layers for o in layer.outputs if o not in cuts)


@pytest.mark.parametrize("kind", ["inner-tensor", "unknown-tensor"])
def test_plan_to_is_not_a_cut_point(files, plan, not_a_cut, tmp_path, out, kind):
    p = copy.deepcopy(plan)
    to = not_a_cut if kind == "inner-tensor" else "no_such_tensor"
    p["blocks"][0]["to"] = to
    path = write_plan(tmp_path, p)
    error_line(compile_small(files, out, "--plan", path), "blocks[0].to", repr(to), "cut point")
    assert_nothing_written(out)


def test_plan_to_of_wrong_type(files, plan, tmp_path, out):
    p = copy.deepcopy(plan)
    p["blocks"][0]["to"] = [p["blocks"][0]["to"]]
    path = write_plan(tmp_path, p)
    error_line(compile_small(files, out, "--plan", path), "blocks[0].to")
    assert_nothing_written(out)


def test_plan_input_shapes_of_wrong_type(files, plan, tmp_path, out):
    p = copy.deepcopy(plan)
    p["model"]["input_shapes"] = [1, 3, 32, 32]
    path = write_plan(tmp_path, p)
    error_line(compile_small(files, out, "--plan", path), "model.input_shapes")
    assert_nothing_written(out)


# -- output -------------------------------------------------------------------------------------


def test_output_is_a_folder_that_is_not_a_bundle(files, tmp_path):
    out = tmp_path / "my-work"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    before = snapshot(out)
    error_line(compile_small(files, out), "my-work", "not a halpc bundle", "-o")
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".my-work.partial-*"))


def test_output_is_a_file(files, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    error_line(compile_small(files, target), "results.txt", code=(1, 2))
    assert target.read_text() == "keep me\n"


def test_output_under_a_file(files, tmp_path):
    parent = tmp_path / "results.txt"
    parent.write_text("keep me\n")
    error_line(compile_small(files, parent / "bundle"), "results.txt")
    assert parent.read_text() == "keep me\n"


@pytest.mark.parametrize("cause", ["model", "plan"])
def test_failed_compile_leaves_old_bundle_untouched(files, plan, bundle_copy, tmp_path, cause):
    before = snapshot(bundle_copy)
    if cause == "model":
        proc = run_cli("compile", files["truncated"], "--cluster", files["cluster2"], "-o", bundle_copy)
    else:
        data, _ = _damage(plan, "gap")
        proc = compile_small(files, bundle_copy, "--plan", write_plan(tmp_path, data))
    error_line(proc)
    assert snapshot(bundle_copy) == before
    assert not list(tmp_path.glob(f".{bundle_copy.name}.partial-*"))


# -- verify -------------------------------------------------------------------------------------


def test_verify_missing_bundle(tmp_path):
    error_line(run_cli("verify", tmp_path / "nowhere"), "nowhere", "manifest.json")


def test_verify_folder_without_manifest(tmp_path):
    folder = tmp_path / "just-a-folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    error_line(run_cli("verify", folder), "just-a-folder", "manifest.json", "halpc compile")


def test_verify_unreadable_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    error_line(run_cli("verify", bundle_copy), "manifest.json", "recompile")


def test_verify_tampered_artifact(bundle_copy):
    victim = sorted((bundle_copy / "dev-1").glob("*.onnx"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    error_line(run_cli("verify", bundle_copy), f"dev-1/{victim.name}", "sha256")


def test_verify_missing_artifact(bundle_copy):
    victim = sorted((bundle_copy / "dev-1").glob("*.onnx"))[0]
    victim.unlink()
    error_line(run_cli("verify", bundle_copy), f"dev-1/{victim.name}", "missing")


def test_verify_manifest_without_onnxruntime(bundle_copy):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    del data["onnxruntime"]
    path.write_text(json.dumps(data))
    error_line(run_cli("verify", bundle_copy), "manifest.json", "onnxruntime")


def test_verify_input_wrong_shape(good_bundle, tmp_path):
    path = tmp_path / "small-image.npy"
    np.save(path, np.zeros((1, 3, 16, 16), np.float32))
    error_line(run_cli("verify", good_bundle, "--input", path), "small-image.npy", "1x3x16x16", "1x3x32x32")


def test_verify_input_not_npy(good_bundle, tmp_path):
    path = tmp_path / "image.txt"
    path.write_text("0 0 0 0\n")
    error_line(run_cli("verify", good_bundle, "--input", path), "image.txt", ".npy")


def test_verify_input_not_npy_gives_no_pickle_advice(good_bundle, tmp_path):
    path = tmp_path / "image.txt"
    path.write_text("0 0 0 0\n")
    line = error_line(run_cli("verify", good_bundle, "--input", path), "image.txt", ".npy")
    assert "pickle" not in line


def test_verify_input_missing(good_bundle, tmp_path):
    error_line(run_cli("verify", good_bundle, "--input", tmp_path / "nope.npy"), "nope.npy")


def test_verify_input_npz_without_the_input(good_bundle, tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, image=np.zeros((1, 3, 32, 32), np.float32))
    error_line(run_cli("verify", good_bundle, "--input", path), "arrays.npz", "input", "image")


# -- click's own usage errors -------------------------------------------------------------------
# halpc turns click's own usage errors into its one-line form too, exit status 2.

USAGE_CASES = {
    "seeds-zero": (["verify", "{bundle}", "--seeds", "0"], ["--seeds"]),
    "seeds-not-int": (["verify", "{bundle}", "--seeds", "many"], ["--seeds"]),
    "model-folder": (["inspect", "{folder}"], ["a_folder.onnx"]),
    "output-file": (["compile", "{small}", "--cluster", "{cluster2}", "-o", "{a_file}"], ["a_file.txt"]),
    "plan-folder": (
        ["compile", "{small}", "--cluster", "{cluster2}", "-o", "{out}", "--plan", "{folder}"],
        ["a_folder.onnx"],
    ),
    "bundle-file": (["verify", "{a_file}"], ["a_file.txt"]),
    "missing-cluster-option": (["compile", "{small}", "-o", "{out}"], ["--cluster"]),
}


@pytest.fixture(scope="module")
def usage_runs(files, good_bundle, tmp_path_factory) -> dict:
    """Each usage case run once (lazily), shared by the two tests below."""
    out = tmp_path_factory.mktemp("usage") / "bundle"
    names = {**{k: str(v) for k, v in files.items()}, "bundle": str(good_bundle), "out": str(out)}
    cache: dict[str, tuple] = {}

    def get(case: str):
        if case not in cache:
            args, words = USAGE_CASES[case]
            cache[case] = (run_cli(*(a.format(**names) for a in args)), words, out)
        return cache[case]

    return get


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_error(files, usage_runs, case):
    proc, words, out = usage_runs(case)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    for word in words:
        assert word in proc.stderr
    assert_nothing_written(out)
    assert files["a_file"].read_text() == "not a folder\n"


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_error_is_one_line(usage_runs, case):
    proc, words, _ = usage_runs(case)
    error_line(proc, *words, code=2)


# -- the good path ------------------------------------------------------------------------------


def test_compile_verify_and_recompile(files, tmp_path):
    vgg = tmp_path / "vgg16-64.onnx"
    onnx.save(models.build("vgg16", height=64, width=64, seed=0), str(vgg))
    out = tmp_path / "vgg-bundle"

    # `even` so that both devices surely compute strips; the recompile below uses the default.
    proc = run_cli("compile", vgg, "--cluster", files["cluster2"], "-o", out, "--strategy", "even")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    bundle_files_match_manifest(out)
    assert list((out / "dev-1").glob("*.onnx")), "dev-1 computes nothing: not a split bundle"
    proc = run_cli("verify", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-exact" in proc.stdout

    # A second compile into the same folder replaces the old bundle whole: no stale files.
    old = json.loads((out / "manifest.json").read_text())["model"]["sha256"]
    proc = run_cli("compile", files["small"], "--cluster", files["cluster2"], "-o", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["sha256"] != old
    assert manifest["model"]["name"] == "small.onnx"
    bundle_files_match_manifest(out)
    assert not list(tmp_path.glob(".vgg-bundle.partial-*"))
    proc = run_cli("verify", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-exact" in proc.stdout


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("artifacts", [], ["artifacts"]),
        ("devices", "host", ["devices"]),
        ("devices", "no-host", ["exactly one host"]),
        ("programs", None, ["programs"]),
    ],
)
def test_verify_hand_edited_manifest(bundle_copy, field, value, words):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    if value == "no-host":
        for device in data["devices"]:
            device["host"] = False
    else:
        data[field] = value
    path.write_text(json.dumps(data))
    error_line(run_cli("verify", bundle_copy), "manifest.json", *words)


# -- plans for several rates, model variants, traces ---------------------------------------------


@pytest.mark.parametrize("extra,words,code", [
    (["--variant", "{small}:abc"], ["'abc' is not an accuracy", "FILE.onnx:70.6"], 2),
    (["--variant", "{small}:150"], ["accuracy 150 is not a percentage"], 2),
    (["--variant", "{other}:50", "--variant", "{other}:60"], ["two variants are named 'other'"], 2),
    (["--variant", "{dynamic}:50"], ["dynamic.onnx", "--input-shape"], 2),
    (["--bandwidths", "10,fast"], ["--bandwidths 10,fast", "e.g. 10,25,50,100"], 2),
    (["--bandwidths", "0,10"], ["positive Mbit/s"], 2),
    (["--bandwidths", "10", "--plan", "{plan}"], ["--plan compiles one plan"], 2),
])
def test_bad_variants_and_bandwidths(files, good_bundle, out, extra, words, code):
    names = {**{k: str(v) for k, v in files.items()}, "plan": str(good_bundle / "plan.json")}
    proc = compile_small(files, out, *[e.format(**names) for e in extra])
    error_line(proc, *words, code=code)
    assert_nothing_written(out)


def test_variants_with_other_inputs(files, tmp_path, out):
    bigger = tmp_path / "bigger.onnx"
    onnx.save(models.build("mobilenet_v1_025", height=64, width=64, seed=0), str(bigger))
    proc = compile_small(files, out, "--variant", f"{bigger}:60")
    error_line(proc, "bigger.onnx", "differ from", "every variant must take the same inputs")
    assert_nothing_written(out)


def test_simulate_errors(files, good_bundle, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,mbps\n0,100\n5,-3\n")
    error_line(run_cli("simulate", good_bundle, "--trace", "ge:"), "--deadline-ms", code=2)
    error_line(run_cli("simulate", good_bundle, "--trace", tmp_path / "none.csv", "--deadline-ms", 10),
               "none.csv")
    error_line(run_cli("simulate", good_bundle, "--trace", trace, "--deadline-ms", 10), "trace.csv:3", "not positive")
    error_line(run_cli("simulate", good_bundle, "--trace", "ge:good=100,colour=red", "--deadline-ms", 10),
               "colour")
    # A bundle of one plan simulates (standalone needs a local plan: said in a note).
    proc = run_cli("simulate", good_bundle, "--trace", "ge:duration=2", "--deadline-ms", 10, "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"fixed", "adaptive", "select"}


def test_run_policy_needs_a_local_plan(good_bundle):
    error_line(run_cli("run", good_bundle, "--policy", "standalone", "--timeout", "1"), "no local plan")
