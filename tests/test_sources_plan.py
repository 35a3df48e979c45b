"""Several sources in one cluster file: parsing, exact partitions of real models, the matching's
plans, and one bundle serving every source, bit-exact per source (`halpc verify`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import models  # examples/models.py
from bundles import assert_exact, save, trunk_of
from halpc.inputs.cluster import Cluster, load_cluster, parse_cluster
from halpc.compile import compile_bundle
from halpc.errors import HalpcError
from halpc.planner import matching
from halpc.planner.sources import cutting, plan_sources
from halpc.analyse.strips import block_io, strip_at, strip_macs
from halpc.host.verify import verify
from halpc_stub.manifest import load_manifest


def source_cluster(folder: Path, sources: list[tuple[str, str, float]], helpers: list[tuple[str, float]],
                   mbps: float = 100, source_gmacs: float = 1.0) -> Path:
    """A cluster file of sources (name, model file, rate Hz) and helpers (name, GMAC/s) on loopback."""
    text = f"[network]\nbandwidth_mbps = {mbps}\nlatency_ms = 2\n"
    port = 5900
    for name, model, rate in sources:
        port += 1
        text += (f'[[device]]\nname = "{name}"\nsource = true\nmodel = "{model}"\nrate_hz = {rate}\n'
                 f'address = "127.0.0.1:{port}"\ngmacs = {source_gmacs}\n')
    for name, gmacs in helpers:
        port += 1
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{port}"\ngmacs = {gmacs}\n'
    path = folder / "cluster.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> Path:
    """MobileNet-V1 0.25 and VGG-16 at 64x64 on two 1-GMAC/s cameras sharing two helpers."""
    tmp = tmp_path_factory.mktemp("sources")
    save(models.build("mobilenet_v1_025", 64, 64, seed=1), tmp, "mobilenet.onnx")
    save(models.build("vgg16", 64, 64, seed=1), tmp, "vgg16.onnx")
    return source_cluster(tmp, [("cam-1", "mobilenet.onnx", 10), ("cam-2", "vgg16.onnx", 5)],
                          [("edge-1", 8.0), ("edge-2", 3.0)])


def test_a_cluster_of_sources_parses_and_each_source_sees_itself_as_the_host(two_sources: Path) -> None:
    cluster = load_cluster(two_sources)
    assert [d.name for d in cluster.sources] == ["cam-1", "cam-2"]
    assert cluster.device("cam-2").model == str(two_sources.parent / "vgg16.onnx")
    assert cluster.device("cam-2").rate_hz == 5.0
    view = cluster.view("cam-2")
    assert view.host.name == "cam-2" and view.names == ("cam-2", "edge-1", "edge-2")
    assert Cluster.from_dict(cluster.to_dict()).devices == cluster.devices


@pytest.mark.parametrize("entry, message", [
    ('source = true\nrate_hz = 5', "device[1].model: must be the path of the source's ONNX model"),
    ('source = true\nmodel = "m.onnx"', "device[1].rate_hz: must be a positive number"),
    ('source = true\nmodel = "m.onnx"\nrate_hz = 0', "device[1].rate_hz: must be a positive number"),
    ('source = true\nmodel = "m.onnx"\nrate_hz = 5\nhost = true', "device[1].host: a source is the host"),
    ('model = "m.onnx"', "device[1].model: only a source has a model"),
    ('source = "yes"', "device[1].source: must be true or false"),
])
def test_source_fields_are_checked(entry: str, message: str) -> None:
    text = f'[[device]]\nname = "cam"\naddress = "127.0.0.1:1"\ngmacs = 1\n{entry}\n'
    text += '[[device]]\nname = "edge"\naddress = "127.0.0.1:2"\ngmacs = 1\n'
    with pytest.raises(HalpcError) as error:
        parse_cluster(text, source="c.toml")
    assert str(error.value).startswith(f"c.toml: {message}")


def test_sources_and_a_host_do_not_mix() -> None:
    text = ('[[device]]\nname = "cam"\naddress = "127.0.0.1:1"\ngmacs = 1\nsource = true\nmodel = "m.onnx"\n'
            'rate_hz = 5\n[[device]]\nname = "h"\naddress = "127.0.0.1:2"\ngmacs = 1\nhost = true\n')
    with pytest.raises(HalpcError, match="^c.toml: device.2..host: a cluster of several sources has no host"):
        parse_cluster(text, source="c.toml")


def test_partitions_are_the_exact_strips(two_sources: Path) -> None:
    cluster = load_cluster(two_sources)
    trunk = trunk_of(two_sources.parent / "vgg16.onnx")
    for cut in [c.position for c in trunk.cuts][:4]:
        c = cutting(trunk, cluster, "cam-2", cut)
        io = block_io(trunk, 0, cut)
        rows = trunk.tensors[io.reference].rows
        assert c.bounds[0] == 0 and c.bounds[-1] == rows and len(c.partitions) == min(3, rows)
        sizes = [b - a for a, b in zip(c.bounds, c.bounds[1:])]
        assert sizes == sorted(sizes, reverse=True)  # sized for 8, 3 and 1 GMAC/s, fastest first
        for k, p in enumerate(c.partitions):
            strip = strip_at(trunk, io, list(c.bounds), k)
            assert p.gmac == strip_macs(trunk, io, strip) / 1e9
            (segment,) = strip.inputs.values()
            assert p.in_bytes == (segment[1] - segment[0]) * trunk.tensors[trunk.input].row_bytes
            assert p.out_bytes == sizes[k] * trunk.tensors[io.reference].row_bytes
        # Halos: the strips together compute more than the block once.
        assert sum(p.gmac for p in c.partitions) >= sum(l.macs for l in io.layers(trunk)) / 1e9


def test_the_matching_plans_each_source_and_ends_stable(two_sources: Path) -> None:
    cluster = load_cluster(two_sources)
    trunks = {"cam-1": trunk_of(two_sources.parent / "mobilenet.onnx"),
              "cam-2": trunk_of(two_sources.parent / "vgg16.onnx")}
    planned = plan_sources(cluster, trunks)
    assert planned.matching is not None and planned.matching.stable
    assert matching.blocking_pairs(planned.matching) == []
    for name, plan in planned.plans.items():
        cut = planned.cuttings[name]
        first = plan.blocks[0]
        assert (first.start, first.stop) == (0, cut.cut)
        assert {s.device for s in first.strips} == {planned.assignment[p.key] for p in cut.partitions}
        assert set(plan.devices()) <= {name, "edge-1", "edge-2"}  # never the other camera
        assert plan.predicted["shared_ms"] == pytest.approx(planned.evaluation.latency[name] * 1e3, abs=1e-3)
    # VGG-16 alone on its 1-GMAC/s camera takes over a second; the helpers take most of it.
    assert planned.evaluation.latency["cam-2"] < 0.5 * trunks["cam-2"].macs / 1e9
    # Every baseline makes plans from the same partitions.
    for strategy in ("alone", "selfish", "greedy", "random"):
        other = plan_sources(cluster, trunks, strategy)
        assert other.matching is None and set(other.plans) == {"cam-1", "cam-2"}
    alone = plan_sources(cluster, trunks, "alone")
    assert all(set(p.devices()) == {name} for name, p in alone.plans.items())


def test_one_bundle_serves_every_source_bit_exact(two_sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    compiled = compile_bundle(None, two_sources, out, "matching", insecure=True)
    manifest = load_manifest(out)
    assert manifest.data["sources"] == {"cam-1": {"rate_hz": 10.0, "plans": ["cam-1/matching"]},
                                        "cam-2": {"rate_hz": 5.0, "plans": ["cam-2/matching"]}}
    assert manifest.data["sharing"]["matching"]["stable"] is True
    assert [p.host.name for p in manifest.plans] == ["cam-1", "cam-2"]
    assert {e.host for e in compiled.entries} == {"cam-1", "cam-2"}
    checks = verify(out, seeds=2)
    assert len(checks) == 4 and all(c.exact for c in checks), checks
    # Each camera's launcher runs `halpc run --source` as itself; helpers carry the stub.
    assert '--source "cam-2"' in (out / "cam-2" / "launch.sh").read_text()
    assert (out / "edge-1" / "halpc_stub" / "serve.py").exists() and not (out / "cam-1" / "halpc_stub").exists()
    # Each source's plans, planned alone with halp (what each would do ignoring the other).
    compile_bundle(None, two_sources, tmp_path / "halp", "halp", insecure=True)
    assert_exact(verify(tmp_path / "halp"))


def test_cli_errors_for_sources_are_one_line(two_sources: Path, tmp_path: Path) -> None:
    def halpc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "halpc.cli", *args], capture_output=True, text=True, timeout=120)

    model = str(two_sources.parent / "vgg16.onnx")
    proc = halpc("compile", model, "--cluster", str(two_sources), "-o", str(tmp_path / "b"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "names each source's model" in proc.stderr
    one_host = tmp_path / "one.toml"
    one_host.write_text('[[device]]\nname = "h"\nhost = true\naddress = "127.0.0.1:1"\ngmacs = 1\n')
    proc = halpc("compile", model, "--cluster", str(one_host), "-o", str(tmp_path / "b"), "--strategy", "matching")
    assert proc.returncode == 2 and "shares helpers among several sources" in proc.stderr
    # Two different models under one file name would share reference/NAME.onnx.
    (tmp_path / "a").mkdir()
    save(models.build("mobilenet_v1_025", 64, 64, seed=2), tmp_path / "a", "vgg16.onnx")
    clash = source_cluster(tmp_path, [("cam-1", str(tmp_path / "a" / "vgg16.onnx"), 5), ("cam-2", model, 5)],
                           [("edge-1", 4.0)])
    proc = halpc("compile", "--cluster", str(clash), "-o", str(tmp_path / "b"))
    assert proc.returncode == 1 and "two different models are named vgg16.onnx" in proc.stderr
    assert not (tmp_path / "b").exists()
