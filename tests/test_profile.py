"""`halpc profile`: measuring a device, the profile file, and a cluster file that references it.

One tiny VGG-16 (32x32) is profiled once per module with three strip heights and one timed run
per measurement, so the whole file takes a few seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models  # examples/models.py (conftest puts examples/ on sys.path)
from bundles import save, trunk_of
from halpc.inputs.cluster import load_cluster
from halpc.errors import HalpcError, UsageError
from halpc.planner.context import DeviceCosts, context, device_costs, device_speeds
from halpc.inputs.profile_file import SCHEMA, load_profile, write_profile
from halpc.cli.options import parse_heights
from halpc.measure.profiler import ALL, check_writable, fit_line, profile_device
from halpc.present.tables import profile_table

PROFILES = Path(__file__).resolve().parent.parent / "examples" / "profiles"
ESTIMATES = ("raspberry_pi_4.json", "raspberry_pi_5.json", "jetson_nano_cpu.json")


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    return trunk_of(save(models.build("vgg16", 32, 32), folder, "vgg16_32.onnx"))


@pytest.fixture(scope="module")
def measured(trunk) -> dict:
    return profile_device(trunk, heights=(1, 4, ALL), threads=1, repeat=1)


def cluster_file(folder: Path, profile: str | None, gmacs: float | None = None) -> Path:
    """Three devices; dev-1 gives `profile` (and `gmacs` only when given)."""
    text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 2\n"
    for i, name in enumerate(("host", "dev-1", "dev-2")):
        text += f'\n[[device]]\nname = "{name}"\naddress = "127.0.0.1:{5900 + i}"\n'
        if i == 0:
            text += "host = true\n"
        if name == "dev-1" and profile is not None:
            text += f'profile = "{profile}"\n'
            if gmacs is not None:
                text += f"gmacs = {gmacs}\n"
        else:
            text += "gmacs = 8.0\n"
    path = folder / "cluster.toml"
    path.write_text(text)
    return path


# -- the measurement ------------------------------------------------------------------------------


def test_schema(measured, trunk):
    assert measured["schema"] == SCHEMA
    assert measured["measured"] is True
    for key in ("device", "machine", "processor", "onnxruntime"):
        assert isinstance(measured[key], str)
    assert measured["threads"] == 1
    assert measured["model"] == {
        "file": "vgg16_32.onnx",
        "sha256": trunk.model.sha256,
        "input_shapes": {"input": [1, 3, 32, 32]},
    }
    assert measured["gmacs"] > 0
    assert measured["per_run_overhead_ms"] > 0
    assert measured["per_message_overhead_ms"] > 0
    # VGG-16's largest layer at 32x32 still has 9.4 MB of weights: their cold read is measured.
    assert measured["weight_gbps"] is None or measured["weight_gbps"] > 0.1
    assert measured["trunk"]["macs"] == trunk.macs and measured["trunk"]["ms"] > 0
    assert json.loads(json.dumps(measured)) == measured  # plain JSON, no numpy scalars


def test_every_windowed_layer_is_measured(measured, trunk):
    windowed = [layer for layer in trunk.layers if layer.window is not None]
    assert list(measured["layers"]) == [layer.name for layer in windowed]  # 13 convs, 5 pools
    for layer in windowed:
        entry = measured["layers"][layer.name]
        rows = trunk.tensors[layer.outputs[0]].rows
        assert entry["op"] == layer.op_type and entry["macs"] == layer.macs
        assert entry["rows"] == rows
        # Heights 1, 4 and all, clipped to the layer's rows and deduplicated (pool5 has 1 row).
        assert [r for r, _ in entry["samples"]] == sorted({1, min(4, rows), rows})
        assert all(ms > 0 for _, ms in entry["samples"])
        assert entry["fixed_ms"] >= 0 and entry["per_row_ms"] >= 0


def test_per_row_time_grows_with_macs(measured, trunk):
    layers = measured["layers"]
    macs_per_row = np.array([e["macs"] / e["rows"] for e in layers.values()])
    per_row = np.array([e["per_row_ms"] for e in layers.values()])
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    spearman = np.corrcoef(rank(macs_per_row), rank(per_row))[0, 1]
    assert spearman > 0.5, (spearman, macs_per_row, per_row)
    convs = [e["per_row_ms"] for e in layers.values() if e["op"] == "Conv"]
    pools = [e["per_row_ms"] for e in layers.values() if e["op"] == "MaxPool"]
    assert max(convs) > 3 * max(pools)


def test_fit_line():
    fixed, per_row = fit_line([1, 2, 4, 8], [1.5, 2.0, 3.0, 5.0])
    assert fixed == pytest.approx(1.0) and per_row == pytest.approx(0.5)
    # A negative intercept is not a time: the fit goes through the origin instead.
    fixed, per_row = fit_line([1, 2, 4], [0.5, 1.5, 3.5])
    assert fixed == 0 and per_row > 0
    # Time that does not grow with rows: all fixed.
    fixed, per_row = fit_line([1, 2, 4], [3.0, 2.0, 1.0])
    assert fixed == pytest.approx(2.0) and per_row == 0
    assert fit_line([7], [3.5]) == (0.0, 0.5)  # one height: all of it per row


def test_table(measured):
    text = profile_table(measured)
    assert "conv13" in text and "pool1" in text and "GMAC/s" in text


# -- options and files ----------------------------------------------------------------------------


def test_parse_heights():
    assert parse_heights("1,4,16,all") == (1, 4, 16, ALL)
    assert parse_heights(" 8 , ALL,8") == (8, ALL)
    for bad in ("", "0", "1,,4", "-2", "1.5", "full", "4x"):
        with pytest.raises(UsageError, match="row count|positive|whole numbers") as info:
            parse_heights(bad)
        assert info.value.exit_code == 2 and info.value.option == "heights"


def test_write_profile_atomic(measured, tmp_path):
    path = tmp_path / "dev.json"
    path.write_text("old")
    write_profile(measured, path)
    assert json.loads(path.read_text()) == measured
    assert path.read_text().startswith("{\n  ")  # pretty
    assert [p.name for p in tmp_path.iterdir()] == ["dev.json"]  # no temp file left behind
    assert load_profile(path)["gmacs"] == measured["gmacs"]


def test_unwritable_output(measured, tmp_path):
    missing = tmp_path / "no_such_folder" / "dev.json"
    for call in (lambda: check_writable(missing), lambda: write_profile(measured, missing)):
        with pytest.raises(HalpcError, match="no_such_folder"):
            call()
    with pytest.raises(HalpcError, match="is a folder"):
        check_writable(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(HalpcError, match="locked"):
            check_writable(locked / "dev.json")


# -- a cluster file that references a profile ------------------------------------------------------


def test_cluster_uses_profile_gmacs(measured, tmp_path):
    write_profile(measured, tmp_path / "p.json")
    cluster = load_cluster(cluster_file(tmp_path, "p.json"))
    dev = next(d for d in cluster.devices if d.name == "dev-1")
    assert dev.gmacs is None and Path(dev.profile) == tmp_path / "p.json"
    assert device_speeds(cluster) == {"host": 8.0, "dev-1": measured["gmacs"], "dev-2": 8.0}


@pytest.mark.parametrize("content", ["{not json", '{"schema": "halpc-profile/1"}', "[1, 2]",
                                     '{"gmacs": "fast"}'])
def test_broken_profile_names_the_file(tmp_path, content):
    (tmp_path / "p.json").write_text(content)
    cluster = load_cluster(cluster_file(tmp_path, "p.json"))
    with pytest.raises(HalpcError, match="p.json"):
        device_speeds(cluster)
    with pytest.raises(HalpcError, match="p.json"):
        load_profile(tmp_path / "p.json")


@pytest.mark.parametrize("key, value, words", [
    ("gmacs", None, ["gmacs: missing"]),
    ("gmacs", True, ["gmacs: must be a positive number, got True"]),
    ("per_run_overhead_ms", -1, ["per_run_overhead_ms: must be a number >= 0 or null, got -1"]),
    ("per_run_overhead_ms", "1.5", ["per_run_overhead_ms:", "got '1.5'"]),
    ("weight_gbps", -2.0, ["weight_gbps: must be a number >= 0 or null"]),
    ("per_message_overhead_ms", True, ["per_message_overhead_ms:", "got True"]),
    ("layers", [], ["layers: must be an object of per-layer timings, got []"]),
])
def test_profile_figures_the_planner_reads_are_checked(tmp_path, key, value, words):
    """The schema checks every figure the planner reads (a negative overhead or a string used to
    pass, or fail later with a traceback); the message names the file and the field."""
    data = {"schema": SCHEMA, "gmacs": 4.0, "per_run_overhead_ms": 1.0, "layers": {}, "note": "kept"}
    if value is None:
        del data[key]
    else:
        data[key] = value
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(HalpcError) as info:
        load_profile(tmp_path / "p.json")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'p.json'}: ") and "\n" not in message, message
    assert all(w in message for w in words), message


def test_profile_keeps_every_field_and_null_costs(tmp_path):
    data = {"schema": SCHEMA, "gmacs": 4, "per_run_overhead_ms": None, "weight_gbps": 0,
            "per_message_overhead_ms": None, "measured": False, "extra": {"any": [1]}}
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert load_profile(tmp_path / "p.json") == data


def test_missing_profile_names_the_file(tmp_path):
    cluster = load_cluster(cluster_file(tmp_path, "absent.json"))
    with pytest.raises(HalpcError, match="absent.json"):
        device_speeds(cluster)


# -- the example profiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ESTIMATES)
def test_example_estimates(name, tmp_path):
    """An estimate (no layers) named by its absolute path: the cluster takes its GMAC/s."""
    profile = load_profile(PROFILES / name)
    assert profile["measured"] is False and profile["layers"] == {}
    assert "ESTIMATE" in profile["estimate_note"]
    assert 0.5 < profile["gmacs"] < 50
    cluster = load_cluster(cluster_file(tmp_path, str(PROFILES / name)))
    assert device_speeds(cluster)["dev-1"] == profile["gmacs"]


# (The committed examples/profiles/this_machine.json is checked in test_example_models.py, with
# the other example files: it is data a user copies, not code.)


def test_measured_profile_drives_the_cost_model(measured, trunk, tmp_path):
    """What `profile_device` measured, written and named by a cluster file, is what the planner
    costs the device with: its GMAC/s and the fixed costs of a run, of a message and of reading
    weights; a device without a profile has only its GMAC/s."""
    write_profile(measured, tmp_path / "p.json")
    cluster = load_cluster(cluster_file(tmp_path, "p.json"))
    costs = device_costs(cluster)
    dev = costs["dev-1"]
    assert dev.gmacs == measured["gmacs"]
    assert dev.run_overhead_s == pytest.approx(measured["per_run_overhead_ms"] / 1e3)
    assert dev.message_overhead_s == pytest.approx(measured["per_message_overhead_ms"] / 1e3)
    assert dev.weight_gbps == measured["weight_gbps"]
    assert costs["host"] == costs["dev-2"] == DeviceCosts(8.0)
    planning = context(trunk, cluster)
    assert planning.speeds == {"host": 8.0, "dev-1": measured["gmacs"], "dev-2": 8.0}
    assert planning.overheads == {"dev-1": dev.run_overhead_s}
    assert planning.message_overheads == {"dev-1": dev.message_overhead_s}


# -- the command ------------------------------------------------------------------------------------


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "halpc.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_profile(trunk, tmp_path):
    out = tmp_path / "dev.json"
    proc = run_cli("profile", trunk.model.path, "-o", out, "--heights", "1,all", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr
    assert "GMAC/s" in proc.stdout and "conv13" in proc.stdout and f"wrote {out}" in proc.stdout
    profile = load_profile(out)
    assert profile["settings"] == {"heights": [1, "all"], "repeat": 1}
    assert profile["measured"] is True and profile["threads"] == 1 and profile["gmacs"] > 0
    assert profile["model"]["sha256"] == trunk.model.sha256
    windowed = [layer.name for layer in trunk.layers if layer.window is not None]
    assert list(profile["layers"]) == windowed
    assert all(len(e["samples"]) == len({1, e["rows"]}) for e in profile["layers"].values())


@pytest.mark.parametrize("args, codes, word", [
    (("--heights", "1,zero"), (2,), "--heights"),
    (("--repeat", "0"), (2,), "--repeat"),
    (("-o", "{tmp}/no_such_folder/dev.json"), (1,), "no_such_folder"),
    (("-o", "{tmp}"), (1, 2), "{tmp}"),  # a folder: click's own check may answer (exit 2)
])
def test_cli_profile_bad_input(trunk, tmp_path, args, codes, word):
    args = tuple(a.format(tmp=tmp_path) for a in args)
    if "-o" not in args:
        args += ("-o", tmp_path / "dev.json")
    proc = run_cli("profile", trunk.model.path, *args)
    assert proc.returncode in codes and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and word.format(tmp=tmp_path) in lines[0], proc.stderr
    assert not (tmp_path / "dev.json").exists()


def test_a_quantized_model_is_profiled_with_its_int8_rate(tmp_path):
    """The profile of a quantized model carries int8_gmacs: its integer convolutions' MACs over
    the whole trunk's full-height time, which the planner then prices them at; a float profile
    has none."""
    from quantize import quantize

    float_model = save(models.build("vgg16", 32, 32, seed=2), tmp_path, "vgg16.onnx")
    int8_trunk = trunk_of(quantize(float_model, tmp_path / "vgg16_qdq.onnx", "qdq", per_channel=False))
    assert int8_trunk.integer
    profile = profile_device(int8_trunk, heights=(1, ALL), threads=1, repeat=1)
    integer_macs = sum(layer.macs for layer in int8_trunk.layers if layer.position in int8_trunk.integer)
    assert integer_macs > 0.95 * int8_trunk.macs
    expected = integer_macs / profile["trunk"]["ms"] / 1e6
    assert profile["int8_gmacs"] == pytest.approx(expected, rel=2e-3) and profile["int8_gmacs"] > 0
    assert "integer convolutions:" in profile_table(profile)
    path = tmp_path / "int8.json"
    write_profile(profile, path)
    costs = device_costs(load_cluster(cluster_file(tmp_path, path.name)))
    assert costs["dev-1"].int8_gmacs == profile["int8_gmacs"]
    assert profile_device(trunk_of(float_model), heights=(ALL,), threads=1, repeat=1)["int8_gmacs"] is None
