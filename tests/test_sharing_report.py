"""`halpc plan` and `halpc simulate` for a cluster of several sources sharing helpers (halpc.whatif.sources).

Two sources (MobileNet-V1 0.25 and ResNet-18, both 64x64) and three helpers. The CLI runs in this
process (as in test_fuzz_cli.py: `halpc.cli.main` with stdout and stderr captured); its numbers
are checked against `compare_sources` / the compiled bundle's own record. Not asserted: that the
matching beats random or greedy on the simulated mean; the cost model does not promise it (the
matching is stable, not optimal, and the simulation's arrivals differ from the model's average).
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from html import escape

import pytest

import models  # examples/models.py (conftest puts examples/ on sys.path)
from bundles import save
from halpc.cli import main as halpc_main
from halpc.inputs.cluster import load_cluster
from halpc.compile import compile_bundle, load_sources
from halpc.planner import matching
from halpc.planner.sources import compare_sources
from halpc.present.sources_report import sources_table
from halpc.whatif.sources import sharing_from_manifest, sharing_json

SOURCES = ("cam-a", "cam-b")
CLUSTER = """[network]
bandwidth_mbps = 100
latency_ms = 2
[[device]]
name = "cam-a"
source = true
model = "small.onnx"
rate_hz = 10
address = "127.0.0.1:5801"
gmacs = 0.2
[[device]]
name = "cam-b"
source = true
model = "resnet.onnx"
rate_hz = 4
address = "127.0.0.1:5802"
gmacs = 0.2
[[device]]
name = "edge-1"
address = "127.0.0.1:5803"
gmacs = 6.0
[[device]]
name = "edge-2"
address = "127.0.0.1:5804"
gmacs = 3.0
[[device]]
name = "edge-3"
address = "127.0.0.1:5805"
gmacs = 2.0
"""


def invoke(*argv: object) -> tuple[int, str, str]:
    """`halpc ARGV` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            halpc_main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code
    return code, out.getvalue(), err.getvalue()


def one_line_error(result: tuple[int, str, str], code: int, *words: str) -> str:
    status, _, err = result
    assert "Traceback" not in err, err
    assert status == code, (status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halpc: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The two-source cluster file and its models, the plan's reference rows, and a bundle
    compiled from it by the matching."""
    root = tmp_path_factory.mktemp("sharing")
    save(models.build("mobilenet_v1_025", 64, 64, seed=1), root, "small.onnx")
    save(models.build("resnet18", 64, 64, seed=1), root, "resnet.onnx")
    cluster_file = root / "c.toml"
    cluster_file.write_text(CLUSTER)
    cluster = load_cluster(cluster_file)
    rows, planned = compare_sources(cluster, load_sources(cluster))
    bundle = root / "bundle"
    compile_bundle(None, cluster_file, bundle, "matching", insecure=True)
    return {"root": root, "cluster": cluster_file, "rows": rows, "planned": planned, "bundle": bundle}


def _show(v: float | None) -> str:
    return "inf" if v is None else f"{v:.1f}"


def test_plan_prints_every_strategy_per_source(setup):
    code, out, err = invoke("plan", "--cluster", setup["cluster"])
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0]
    positions = [header.index(f"{s} mean/p95 ms") for s in matching.STRATEGIES]
    assert positions == sorted(positions)  # matching first, then alone, selfish, greedy, random
    for source in SOURCES:
        line = next(l for l in lines if l.startswith(source + " "))
        cells = [c.strip() for c in line[len(source):].split("  ") if c.strip()]
        expected = [f"{_show(r['mean_ms'])} / {_show(r['p95_ms'])}" for s in matching.STRATEGIES
                    for r in setup["rows"] if r["strategy"] == s and r["source"] == source]
        assert cells == expected
    assert out == sources_table(setup["rows"], setup["planned"]) + "\n"
    m = setup["planned"]["matching"]
    assert m.matching.rounds  # this cluster makes the matching exchange
    assert f"{len(m.matching.rounds)} exchange round(s), stable" in out
    for s in m.sources:  # every partition, with the node it went to
        for p in s.partitions:
            assert any(l.startswith(s.name) and l.split()[2] == str(p.index) and l.split()[7] == m.assignment[p.key]
                       for l in lines)
    for node in ("edge-1", "edge-2", "edge-3"):
        assert any(l.startswith(node + " ") and l.rstrip().endswith("%") for l in lines)


def test_plan_json_round_trips(setup):
    code, out, err = invoke("plan", "--cluster", setup["cluster"], "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got == json.loads(json.dumps(sharing_json(setup["rows"], setup["planned"])))
    assert list(got["plans"]) == list(matching.STRATEGIES)
    code, out, err = invoke("plan", "--cluster", setup["cluster"], "--json", "--strategy", "greedy")
    assert code == 0, err
    one = json.loads(out)
    assert list(one["plans"]) == ["greedy"] and {r["strategy"] for r in one["rows"]} == {"greedy"}


def test_plan_report_page(setup, tmp_path):
    page = tmp_path / "sub" / "sharing.html"
    code, _, err = invoke("plan", "--cluster", setup["cluster"], "--report", page)
    assert code == 0, err
    html = page.read_text()
    assert "<svg" in html and "</html>" in html
    for word in (*SOURCES, *matching.STRATEGIES, "edge-3", "Exchange rounds", "Node utilisation"):
        assert word in html, word
    for r in setup["planned"]["matching"].matching.rounds:  # each exchange, with its partitions and nodes
        for (source, index), a, b in r.moves:
            assert escape(f"{source}#{index} {a} -> {b}") in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not [p for p in page.parent.iterdir() if p.name.endswith(".tmp")]


def test_simulate_bundle_reproduces_compile_time_prediction(setup, tmp_path):
    data = json.loads((setup["bundle"] / "manifest.json").read_text())
    sources, nodes, _ = sharing_from_manifest(data)
    assert [s.name for s in sources] == list(SOURCES)
    for s in sources:  # the partitions exactly as recorded
        assert [(p.gmac, p.in_bytes, p.out_bytes) for p in s.partitions] == [
            (p["gmac"], p["in_bytes"], p["out_bytes"]) for p in data["sharing"]["sources"][s.name]["partitions"]]
    code, out, err = invoke("simulate", setup["bundle"], "--json")
    assert code == 0, err
    got = json.loads(out)
    for row in (r for r in got["rows"] if r["strategy"] == "matching"):
        assert round(row["predicted_ms"], 3) == data["sharing"]["sources"][row["source"]]["predicted_ms"]
    recorded = data["sharing"]["sources"]
    for name, s in got["plans"]["matching"]["sources"].items():  # the same assignment as compiled
        assert [p["node"] for p in s["partitions"]] == [p["node"] for p in recorded[name]["partitions"]]
        assert s["cut"] == recorded[name]["cut"]
    assert {r["strategy"] for r in got["rows"]} == set(matching.STRATEGIES)
    page = tmp_path / "sim.html"
    code, out, err = invoke("simulate", setup["bundle"], "--report", page, "--horizon-s", "5", "--arrivals", "poisson")
    assert code == 0, err
    assert out.startswith("source  matching mean/p95 ms") and "note: " in out
    assert "<svg" in page.read_text()


def test_bad_input_is_one_line(setup, tmp_path):
    cluster = setup["cluster"]
    model = setup["root"] / "small.onnx"
    one_host = tmp_path / "one.toml"
    one_host.write_text('[[device]]\nname = "host"\nhost = true\naddress = "127.0.0.1:5901"\ngmacs = 4.0\n'
                        '[[device]]\nname = "dev-1"\naddress = "127.0.0.1:5902"\ngmacs = 4.0\n')
    one_line_error(invoke("plan", model, "--cluster", one_host, "--strategy", "greedy"), 2, "greedy", "one host")
    one_line_error(invoke("plan", "--cluster", one_host), 2, "MODEL")
    one_line_error(invoke("plan", model, "--cluster", cluster), 2, "leave out MODEL")
    one_line_error(invoke("plan", "--cluster", cluster, "--strategy", "halp"), 2, "halp", "several sources")
    one_line_error(invoke("plan", "--cluster", cluster, "--horizon-s", "0"), 2, "--horizon-s")
    one_line_error(invoke("plan", "--cluster", cluster, "--horizon-s", "nan"), 2, "--horizon-s")
    one_line_error(invoke("plan", "--cluster", cluster, "--horizon-s", "1e12"), 2, "frames")
    one_line_error(invoke("simulate", setup["bundle"], "--horizon-s", "-1"), 2, "--horizon-s")
    one_line_error(invoke("simulate", setup["bundle"], "--trace", "ge:good=100"), 2, "--trace")

    single = tmp_path / "single"
    compile_bundle(model, one_host, single, "even", insecure=True)
    one_line_error(invoke("simulate", single), 2, "--trace")

    for sharing, words in (({}, ("no record",)), ({"sources": {"cam-a": {"rate_hz": 5}}}, ("damaged",))):
        broken = tmp_path / f"broken{len(words[0])}"
        shutil.copytree(setup["bundle"], broken)
        data = json.loads((broken / "manifest.json").read_text())
        (broken / "manifest.json").write_text(json.dumps({**data, "sharing": sharing}))
        one_line_error(invoke("simulate", broken), 1, *words)
