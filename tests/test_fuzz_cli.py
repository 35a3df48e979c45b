"""Damaged inputs to the command line (hypothesis): models, cluster files, plans, bundle manifests.

The CLI's contract (see test_cli_errors.py) for any input, however damaged: exit status 0, 1 or 2;
on failure exactly one error line on stderr ("halpc: error: ..." or "halpc-stub: error: ..."),
no traceback anywhere; a failed `compile -o NEW` leaves nothing behind (no NEW, no staging
folder). A damaged model may still be a valid model (a flipped weight bit): success is fine.

Commands run in this process (`halpc.cli.main`, `halpc_stub.cli.main`) with stdout and stderr
captured, so that thousands of cases fit in a minute; an exception that escapes `main` is exactly
the traceback a user would see. A few cases also run as real processes, where ONNX Runtime's own
C++ logging would show on stderr too.

Each test asserts that every example it asked hypothesis for ran (`Cases.report`); run with -s
to see the counts ("fuzz: N CLI runs").
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import resource
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import models  # examples/models.py
from fuzzing import FUZZ, Cases
from halpc.cli import main as halpc_main
from halpc_stub.cli import main as stub_main

CLUSTER_LOCAL3 = Path(__file__).resolve().parent.parent / "examples" / "cluster_local3.toml"

COUNTS = Cases("CLI runs")  # per test



# -- running the CLI ----------------------------------------------------------------------------


@dataclass
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str


def invoke(argv: list[Any], stub: bool = False) -> Outcome:
    """`halpc ARGV` (or `halpc-stub ARGV`) in this process. An exception other than SystemExit
    escapes: that is the traceback the real command would print."""
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = stub_main(argv) if stub else halpc_main(argv)
        except SystemExit as exc:
            code = exc.code
    return Outcome(argv, 0 if code is None else code, out.getvalue(), err.getvalue())


def check_contract(result: Outcome, test: str) -> Outcome:
    """Exit 0, 1 or 2; a failure says so in exactly one error line; never a traceback."""
    COUNTS[test] += 1
    with contextlib.suppress(InvalidArgument):  # outside a hypothesis test: nothing to note
        note(f"{' '.join(result.argv)} -> {result.code}: {result.err.strip()[:300]}")
    assert "Traceback" not in result.out + result.err, result
    assert result.code in (0, 1, 2), result
    lines = [line for line in result.err.strip().splitlines() if "warning:" not in line.lower()]
    if result.code != 0:
        assert len(lines) == 1, f"expected one error line, got:\n{result.err}"
        assert lines[0].startswith(("halpc: error: ", "halpc-stub: error: ")), lines[0]
        assert len(lines[0]) > len("halpc: error: ") + 10, lines[0]
    return result


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} left behind by a failed compile"
    partial = sorted(p.name for p in out.parent.glob(f".{out.name}.partial-*"))
    assert not partial, f"staging folders left behind: {partial}"


def compile_to_fresh(argv: list[Any], out: Path, test: str) -> Outcome:
    """`halpc compile ARGV -o OUT` to a path that does not exist: all or nothing."""
    assert not out.exists()
    result = check_contract(invoke(["compile", *argv, "-o", out]), test)
    if result.code == 0:
        assert (out / "manifest.json").is_file()
        shutil.rmtree(out)
    assert_nothing_written(out)
    return result


# -- inputs -------------------------------------------------------------------------------------


def micro_cnn(seed: int = 0, size: int = 16):
    """So few weights that a random byte of the file is as likely structure as weight."""
    b = models.GraphBuilder(seed)
    x = b.relu(b.conv("input", "c1", 3, 4, 3, pad=1, bias=True), "r1")
    x = b.max_pool(x, "p1", 2, 2)
    x = b.relu(b.conv(x, "c2", 4, 4, 3, pad=1, bias=True), "r2")
    x = b.classifier(x, 4, 3)
    return b.model("micro", size, size, 3, "a very small CNN for fuzzing")


@dataclass
class Inputs:
    root: Path
    model: Path  # the micro CNN
    model_bytes: bytes
    cluster: Path  # examples/cluster_local3.toml
    cluster_text: str
    plan: dict  # the good bundle's plan.json
    bundle: Path  # compiled from model, cluster and plan (with CURVE keys unless compile cannot)
    manifest: dict


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("fuzz-cli")
    model = root / "micro.onnx"
    model.write_bytes(micro_cnn().SerializeToString())
    cluster = root / "cluster.toml"
    shutil.copy(CLUSTER_LOCAL3, cluster)
    bundle = root / "good"
    result = invoke(["compile", model, "--cluster", cluster, "-o", bundle, "--strategy", "even"])
    assert result.code == 0, result
    plan = json.loads((bundle / "plan.json").read_text())
    assert {s["device"] for b in plan["blocks"] for s in b["strips"]} == {"host", "dev-1", "dev-2"}
    yield Inputs(root, model, model.read_bytes(), cluster, cluster.read_text(), plan, bundle,
                 json.loads((bundle / "manifest.json").read_text()))
    print(f"\nfuzz: {sum(COUNTS.values())} CLI runs in all ({dict(COUNTS)})")


# -- damage -------------------------------------------------------------------------------------


@st.composite
def damaged_bytes(draw, raw: bytes) -> bytes:
    """Bit flips, a truncation, a zeroed or garbage range, a cut-out or repeated range."""
    data = bytearray(raw)
    how = draw(st.sampled_from(["flip", "flips", "truncate", "zero", "garbage", "cut", "repeat"]))
    at = draw(st.integers(0, len(data) - 1))
    span = draw(st.integers(1, 64))
    if how == "flip":
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif how == "flips":
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=2, max_size=16)):
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del data[at:]
    elif how == "zero":
        data[at:at + span] = bytes(len(data[at:at + span]))
    elif how == "garbage":
        data[at:at + span] = draw(st.binary(min_size=1, max_size=span))
    elif how == "cut":
        del data[at:at + span]
    else:
        data[at:at] = data[at:at + span]
    return bytes(data)


HOSTILE = [
    None, True, False, 0, 1, -1, 2, 7, 2 ** 31, 2 ** 63, 10 ** 30, -(10 ** 30), 0.5, -0.0, 1e308, 1e-300,
    float("nan"), float("inf"), "", " ", "x", "\n", "a\nb", "\x00", "\ud800", "\u00e9\u6f22", "../../etc/passwd",
    "/", ".", "..", "dev-1", "host", "dev-9", "float32", "int64", "nope", "x" * 300, [], [0], [1, 2], [0, 0],
    [-1, 3], [2, 1], [1, 2, 3], ["a"], [None], [[]], {}, {"a": 1}, {"name": "x"},
]
hostile = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(HOSTILE), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=5))


def _tweak(draw, value: Any, doc_strings: list[str]) -> Any:
    """A value of the same type, a little off."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(st.sampled_from([value + 1, value - 1, -value, 0, value * 1000, 2 ** 40, -1]))
    if isinstance(value, float):
        return draw(st.sampled_from([value * 2, -value, 0.0, value + 1e-9, 1e300]))
    if isinstance(value, str):
        return draw(st.sampled_from([value + "x", value[:-1], value.upper(), "", *doc_strings]))
    if isinstance(value, list):
        if not value:
            return [None]
        how = draw(st.sampled_from(["shorter", "longer", "reversed", "emptied"]))
        return {"shorter": value[:-1], "longer": value + value[-1:], "reversed": value[::-1], "emptied": []}[how]
    if isinstance(value, dict):
        return {} if value else {"x": 1}
    return 0


@st.composite
def damaged_json(draw, doc: Any) -> bytes:
    """The document as bytes, damaged: at a random depth a key deleted, a value replaced by a
    hostile one or by a slightly different one of its type, two values swapped; or the bytes of
    its text damaged."""
    text = json.dumps(doc, indent=1).encode()
    if draw(st.integers(0, 4)) == 0:
        return draw(damaged_bytes(text))
    doc = copy.deepcopy(doc)
    strings = sorted({v for v in _walk(doc) if isinstance(v, str)})[:200]
    parent, key, node = None, None, doc
    while isinstance(node, (dict, list)) and node and (parent is None or draw(st.integers(0, 9)) < 7):
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, draw(st.sampled_from(keys))
        node = parent[key]
    if parent is None:
        return b"{}"
    how = draw(st.sampled_from(["delete", "hostile", "hostile", "tweak", "tweak", "swap"]))
    if how == "delete":
        del parent[key]
    elif how == "hostile":
        parent[key] = draw(hostile)
    elif how == "tweak":
        parent[key] = _tweak(draw, node, strings)
    else:
        keys = sorted(parent) if isinstance(parent, dict) else list(range(len(parent)))
        other = draw(st.sampled_from(keys))
        parent[key], parent[other] = parent[other], parent[key]
    return json.dumps(doc, indent=1).encode()


def _walk(value: Any):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


TOML_VALUES = ['""', '"x"', "-1", "0", "1e999", "nan", "inf", "-inf", "true", "[1, 2]", "{a = 1}", '"\\u0000"',
               "99999999999999999999", "0.0", '"127.0.0.1:0"', '"[::1]:5701"', '"host"', '"dev-1"', '"../x"',
               '"a b"', "1979-05-27", "'''\nx'''", '"' + "x" * 300 + '"', "[]", '["host", "host"]']


@st.composite
def damaged_toml(draw, text: str) -> bytes:
    """Line edits of a cluster file: lines deleted, duplicated, swapped, a value replaced, a
    table header broken, garbage inserted; or its bytes damaged."""
    lines = text.splitlines()
    how = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "value", "value", "header", "garbage",
                                "bytes"]))
    i = draw(st.integers(0, len(lines) - 1))
    j = draw(st.integers(0, len(lines) - 1))
    if how == "bytes":
        return draw(damaged_bytes(text.encode()))
    if how == "delete":
        del lines[i]
    elif how == "duplicate":
        lines.insert(j, lines[i])
    elif how == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif how == "value":
        assigned = [n for n, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]
        n = draw(st.sampled_from(assigned))
        key = lines[n].split("=", 1)[0]
        lines[n] = f"{key}= {draw(st.sampled_from(TOML_VALUES))}"
    elif how == "header":
        headers = [n for n, line in enumerate(lines) if line.startswith("[")]
        n = draw(st.sampled_from(headers))
        lines[n] = draw(st.sampled_from(["[device]", "[[device]", "[[link]]", "[[network]]", "[[devices]]", "[x]",
                                         "device", "[[device]]\n[[device]]", "[network]"]))
    else:
        lines.insert(i, draw(st.text(max_size=20)))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


# -- the fuzz tests -----------------------------------------------------------------------------


def test_damaged_onnx_inspect_and_plan(inputs, tmp_path):
    """Bit flips, truncations, zeroed and garbage ranges of a real small model file."""
    path = tmp_path / "damaged.onnx"
    test = "onnx inspect/plan"

    examples = 700

    @settings(FUZZ, max_examples=examples)
    @given(data=damaged_bytes(inputs.model_bytes))
    def check(data):
        path.write_bytes(data)
        check_contract(invoke(["inspect", path]), test)
        check_contract(invoke(["plan", path, "--cluster", inputs.cluster, "--strategy", "even"]), test)
        COUNTS.example(test)

    check()
    COUNTS.report(test, examples=examples, cases=2 * examples)


def test_damaged_onnx_compile(inputs, tmp_path):
    """The same damage through `compile -o NEW`: a bundle, or one error line and nothing written."""
    path = tmp_path / "damaged.onnx"
    out = tmp_path / "out" / "bundle"
    test = "onnx compile"

    examples = 150

    @settings(FUZZ, max_examples=examples)
    @given(data=damaged_bytes(inputs.model_bytes))
    def check(data):
        path.write_bytes(data)
        compile_to_fresh([path, "--cluster", inputs.cluster, "--strategy", "even"], out, test)
        COUNTS.example(test)

    check()
    COUNTS.report(test, examples=examples, cases=examples)


def test_damaged_cluster_file(inputs, tmp_path):
    """Random edits of examples/cluster_local3.toml, through `plan` (and `compile` for some)."""
    path = tmp_path / "damaged.toml"
    out = tmp_path / "out" / "bundle"
    test = "cluster toml"
    compiled: list[bytes] = []
    examples = 600

    @settings(FUZZ, max_examples=examples)
    @given(data=damaged_toml(inputs.cluster_text), also_compile=st.integers(0, 9))
    def check(data, also_compile):
        path.write_bytes(data)
        check_contract(invoke(["plan", inputs.model, "--cluster", path, "--strategy", "even"]), test)
        if also_compile == 0:
            compile_to_fresh([inputs.model, "--cluster", path, "--strategy", "even"], out, test)
            compiled.append(data)
        COUNTS.example(test)

    check()
    COUNTS.report(test, examples=examples, cases=examples + examples // 20)
    assert len(compiled) >= examples // 20, len(compiled)  # about one in ten also compiles


def test_damaged_plan_file(inputs, tmp_path):
    """A bundle's plan.json, damaged, compiled with `--plan`."""
    path = tmp_path / "damaged-plan.json"
    out = tmp_path / "out" / "bundle"
    test = "plan json"

    examples = 500

    @settings(FUZZ, max_examples=examples)
    @given(data=damaged_json(inputs.plan))
    def check(data):
        path.write_bytes(data)
        compile_to_fresh([inputs.model, "--cluster", inputs.cluster, "--plan", path], out, test)
        COUNTS.example(test)

    check()
    COUNTS.report(test, examples=examples, cases=examples)


@pytest.fixture
def memory_cap():
    """A damaged manifest may name huge tensors: let allocation fail rather than the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 16 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_damaged_manifest(inputs, tmp_path, memory_cap):
    """A bundle whose manifest.json (the root one, or a device folder's) is damaged: `halpc
    verify` and `halpc-stub --check` fail with one line (or, for a harmless edit, pass)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(inputs.bundle, bundle)
    good = (bundle / "manifest.json").read_bytes()
    test = "manifest"

    examples = 700

    @settings(FUZZ, max_examples=examples)
    @given(data=damaged_json(inputs.manifest), where=st.sampled_from(["root", "dev-1", "dev-2"]))
    def check(data, where):
        target = bundle / "manifest.json" if where == "root" else bundle / where / "manifest.json"
        target.write_bytes(data)
        try:
            if where == "root":
                check_contract(invoke(["verify", bundle]), test)
                check_contract(invoke([bundle, "--device", "dev-1", "--check"], stub=True), test)
            else:
                check_contract(invoke([bundle / where, "--device", where, "--check"], stub=True), test)
        finally:
            target.write_bytes(good)
        COUNTS.example(test)

    check()
    COUNTS.report(test, examples=examples, cases=examples)


def test_undamaged_inputs_still_work(inputs, tmp_path):
    """The inputs every case above damages, undamaged: each command succeeds."""
    test = "undamaged"
    for argv in (["inspect", inputs.model], ["plan", inputs.model, "--cluster", inputs.cluster],
                 ["verify", inputs.bundle]):
        assert check_contract(invoke(argv), test).code == 0
    for device in ("dev-1", "dev-2"):
        assert check_contract(invoke([inputs.bundle, "--device", device, "--check"], stub=True), test).code == 0
        assert check_contract(invoke([inputs.bundle / device, "--device", device, "--check"], stub=True),
                              test).code == 0
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(inputs.plan))
    out = tmp_path / "again"
    assert compile_to_fresh([inputs.model, "--cluster", inputs.cluster, "--plan", plan], out, test).code == 0
    assert tomllib.loads(inputs.cluster_text)["device"]
    COUNTS.report(test, cases=8)


# -- a few as real processes --------------------------------------------------------------------


def test_damaged_inputs_in_real_processes(inputs, tmp_path):
    """Stderr as a user sees it, ONNX Runtime's own logging included: still one line."""
    raw = inputs.model_bytes
    cases = []
    for name, data in [("truncated", raw[: len(raw) * 2 // 3]), ("zeroed", raw[:200] + bytes(400) + raw[600:]),
                       ("flipped", bytes(b ^ (0x10 if i % 97 == 5 else 0) for i, b in enumerate(raw)))]:
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        cases.append(["halpc.cli", "compile", path, "--cluster", inputs.cluster, "-o", tmp_path / f"out-{name}"])
    toml = tmp_path / "broken.toml"
    toml.write_text(inputs.cluster_text.replace('name = "dev-1"', 'name = ["dev-1"]'))
    cases.append(["halpc.cli", "plan", inputs.model, "--cluster", toml])
    bundle = tmp_path / "bundle"
    shutil.copytree(inputs.bundle, bundle)
    manifest = copy.deepcopy(inputs.manifest)
    manifest["inputs"][0]["shape"] = [1, 3, 17, 16]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "dev-1" / "manifest.json").write_text(json.dumps({**inputs.manifest, "devices": 3}))
    cases += [["halpc.cli", "verify", bundle], ["halpc_stub.cli", bundle / "dev-1", "--device", "dev-1", "--check"]]
    for module, *argv in cases:
        proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                              timeout=120)
        result = check_contract(Outcome([module, *map(str, argv)], proc.returncode, proc.stdout, proc.stderr),
                                "real processes")
        if argv[0] == "compile" and result.code != 0:
            assert_nothing_written(Path(argv[-1]))
    COUNTS.report("real processes", cases=len(cases))
