"""Bundles of several sources (cameras), at run time: each source the host of its own plans, one
helper device (a stub) serving every source's tasks at once, in turns.

Real `halpc-stub` processes on loopback for the end-to-end test; `StubNode`s built in this
process, fed raw messages (`halpc_stub.wire`), for sessions, cancels and the turns.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models  # examples/models.py
from bundles import free_ports, save
from halpc.measure import netlab
from halpc.inputs.cluster import parse_cluster
from halpc.compile import compile_bundle
from halpc.present.tables import sources_run_table
from halpc.host.run import run_sources, spawn_stubs
from halpc.host.verify import random_inputs
from halpc_stub import wire
from halpc_stub.errors import BundleError
from halpc_stub.host import HostSession
from halpc_stub.manifest import load_manifest
from halpc_stub.serve import StubNode
from halpc_stub.session import load_sessions, make_session

RATES = {"cam-1": 10.0, "cam-2": 20.0}
PLANS = {"cam-1": "cam-1/even", "cam-2": "cam-2/even"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """(a two-source bundle: VGG-16 on cam-1, MobileNet on cam-2, each in even strips with the
    helper dev-1; cam-1's model in a one-host bundle of cam-1 and dev-1)."""
    root = tmp_path_factory.mktemp("sources")
    cam1, cam2, dev1 = free_ports(3)
    save(models.build("vgg16", 32, 32, seed=1), root, "vgg16.onnx")
    save(models.build("mobilenet_v1_025", 32, 32, seed=1), root, "mobilenet_v1_025.onnx")
    text = "[network]\nbandwidth_mbps = 2000\nlatency_ms = 2\n"
    for source, model, port in (("cam-1", "vgg16", cam1), ("cam-2", "mobilenet_v1_025", cam2)):
        text += (f'[[device]]\nname = "{source}"\nsource = true\nmodel = "{model}.onnx"\nrate_hz = {RATES[source]}\n'
                 f'address = "127.0.0.1:{port}"\ngmacs = 1.0\n')
    text += f'[[device]]\nname = "dev-1"\naddress = "127.0.0.1:{dev1}"\ngmacs = 1.0\n'
    cluster = parse_cluster(text, source="sources.toml", base_dir=root)
    compile_bundle(None, cluster, root / "bundle", "even", insecure=True)
    one_host = (f'[[device]]\nname = "cam-1"\nhost = true\naddress = "127.0.0.1:{cam1}"\ngmacs = 1.0\n'
                f'[[device]]\nname = "dev-1"\naddress = "127.0.0.1:{dev1}"\ngmacs = 1.0\n')
    compile_bundle(root / "vgg16.onnx", parse_cluster(one_host), root / "cam-1", "even", insecure=True)
    return root / "bundle", root / "cam-1"


@pytest.fixture
def bundle(bundles) -> Path:
    return bundles[0]


# -- the manifest -------------------------------------------------------------------------------


def test_source_views_and_the_whole_bundles_checksum(bundles) -> None:
    bundle, one = bundles
    whole = load_manifest(bundle)
    assert whole.sources == ["cam-1", "cam-2"] and whole.workers == ["dev-1"]
    plans = [p.data["plan_sha256"] for p in whole.plans]
    assert whole.checksum == hashlib.sha256(" ".join(plans).encode()).hexdigest()
    whole.check_files()
    for source, model in (("cam-1", "vgg16"), ("cam-2", "mobilenet_v1_025")):
        view = whole.for_source(source)
        assert view.host.name == source and view.sources == [] and view.workers == ["dev-1"]
        assert [p.id for p in view.plans] == [PLANS[source]] and view.id == PLANS[source]
        assert view.checksum == whole.checksum  # what dev-1 answers pings with
        assert view.data["model"]["name"] == f"{model}.onnx" and view.reference_model().exists()
        assert all(p.host.name == source for p in view.plans)
        assert view.for_source(None) is view and view.for_source(source) is view
        view.check_files(source)
    assert whole.plan(PLANS["cam-2"]).host.name == "cam-2"
    with pytest.raises(BundleError, match=r"no source 'cam-9' in this bundle \(cam-1, cam-2\)"):
        whole.for_source("cam-9")
    with pytest.raises(BundleError, match=r"serves several sources \(cam-1, cam-2\); give --source NAME"):
        whole.for_source(None)
    with pytest.raises(BundleError, match=r"serves several sources \(cam-1, cam-2\); give --source NAME"):
        HostSession(bundle)
    single = load_manifest(one)  # a one-source bundle is its own view
    assert single.sources == [] and single.for_source(None) is single and single.for_source("cam-1") is single
    with pytest.raises(BundleError, match=r"no source 'cam-2' in this bundle \(cam-1\)"):
        single.for_source("cam-2")


def _damaged(bundle: Path, tmp_path: Path, change) -> str:
    """The one-line error of loading the bundle's manifest after `change(data)`."""
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    folder = tmp_path / f"damaged-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as info:
        load_manifest(folder)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.endswith("; recompile the bundle"), message
    return message


def test_structure_of_a_bundle_of_several_sources(bundle: Path, tmp_path: Path) -> None:
    def set_rate(rate):
        return lambda d: d["sources"]["cam-1"].update(rate_hz=rate)

    cases = [
        (lambda d: d["alternatives"][0].pop("host"), "alternatives[0].host must name the source"),
        (lambda d: d.pop("host"), "host must name the source that holds the plan's input and output"),
        (lambda d: d["alternatives"][0].update(host="dev-1"), "alternatives[0].host must name the source"),
        (lambda d: d.pop("sources"), "devices must have exactly one host (several only with a 'sources'"),
        (set_rate(0), "sources must give each host device (cam-1, cam-2) a positive rate_hz"),
        (set_rate(math.inf), "sources must give each host device"),
        (set_rate("10"), "sources must give each host device"),
        (set_rate(True), "sources must give each host device"),
        (lambda d: d["sources"].pop("cam-2"), "sources must give each host device"),
        (lambda d: d["sources"]["cam-1"].update(plans=[]), "sources must give each host device"),
        (lambda d: d["sources"]["cam-1"].update(plans=[PLANS["cam-2"]]),
         "sources.cam-1.plans must name plans of cam-1"),
        (lambda d: d["sources"]["cam-2"].update(plans=["nope"]), "sources.cam-2.plans must name plans of cam-2"),
        (lambda d: d["alternatives"][0]["programs"].update({"cam-1": d["programs"]["cam-1"]}),
         "alternatives[0].programs.cam-1 is another source's"),
    ]
    for change, words in cases:
        assert words in _damaged(bundle, tmp_path, change)


def test_halpc_run_of_several_sources_needs_one(bundle: Path) -> None:
    for extra, words in (([], f"halpc: error: {bundle} serves several sources (cam-1, cam-2); give --source NAME"),
                         (["--source", "cam-9"], "no source 'cam-9' in this bundle (cam-1, cam-2)")):
        proc = subprocess.run([sys.executable, "-m", "halpc.cli", "run", str(bundle), *extra],
                              capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and words in lines[0], proc.stderr


# -- one stub, several hosts: sessions, cancels, turns ------------------------------------------


class Stub:
    """A `StubNode` of dev-1 in this process; its sends are captured, messages fed directly."""

    def __init__(self, bundle: Path) -> None:
        self.manifest = load_manifest(bundle)
        self.node = StubNode(self.manifest, "dev-1", load_sessions(self.manifest, "dev-1").__getitem__,
                             bind=f"tcp://127.0.0.1:{free_ports(1)[0]}")
        self.sent: list[tuple[str, dict]] = []
        self.node.send = lambda to, header, array=None: self.sent.append((to, json.loads(header)))

    def deliver(self, frames: list) -> str | None:
        try:
            self.node.dispatch(wire.decode(frames), frames)
        except wire.Rejected as exc:
            return str(exc)
        return None

    def rows(self, source: str, session: str, task: int) -> str | None:
        """The first rows dev-1 receives in a task of `source`'s plan: they start the task."""
        plan = self.manifest.plan(PLANS[source])
        step = next(s for s in plan.program("dev-1") if s["op"] == "recv")
        spec = plan.tensors[step["tensor"]]
        array = np.zeros(spec.strip_shape(tuple(step["rows"])), np.dtype(spec.dtype))
        return self.deliver([wire.rows_header(session, task, plan.data["plan_sha256"], step["from"], step, array),
                             array])

    def message(self, kind: str, sender: str, session: str, **fields) -> str | None:
        return self.deliver([wire.encode({"kind": kind, "from": sender, "session": session, "t": 1.0, **fields})])


def test_each_source_has_its_own_session(bundle: Path) -> None:
    stub = Stub(bundle)
    node = stub.node
    try:
        assert node.hosts == ["cam-1", "cam-2"]
        assert stub.message("ping", "cam-1", "a1") is None
        assert stub.rows("cam-1", "a1", 0) is None
        # cam-2's plan in cam-1's session: refused, whoever sent it.
        assert "session 'a1' of 'cam-2' is the current one of 'cam-1'" in stub.rows("cam-2", "a1", 7)
        assert stub.message("ping", "cam-2", "b1") is None and ("a1", 0) in node.tasks
        assert stub.rows("cam-2", "b1", 0) is None
        # cam-2 restarts: its old task goes, cam-1's stays; rows of its old session are late.
        assert stub.message("ping", "cam-2", "b2") is None
        assert ("b1", 0) not in node.tasks and ("a1", 0) in node.tasks
        assert "rows of host session 'b1', not the current one of 'cam-2'" in stub.rows("cam-2", "b1", 1)
        assert "is the current one of 'cam-1'" in stub.message("ping", "cam-2", "a1")
        assert stub.rows("cam-2", "b2", 0) is None
        # A cancel ends only the sender's own task.
        assert "cancel from 'cam-1' of task 0 of 'cam-2'" in stub.message("cancel", "cam-1", "b2", task=0)
        assert ("b2", 0) in node.tasks
        assert stub.message("cancel", "cam-2", "b2", task=0) is None and ("b2", 0) not in node.tasks
        assert "late rows for finished task 0" in stub.rows("cam-2", "b2", 0)
        assert "ping from 'dev-1', not the host 'cam-1' or 'cam-2'" in stub.message("ping", "dev-1", "x")
        assert [(to, h["session"]) for to, h in stub.sent if h["kind"] == "pong"] == [
            ("cam-1", "a1"), ("cam-2", "b1"), ("cam-2", "b2")]
        # cam-1 floods the device with tasks it never finishes: its own oldest ones go, not cam-2's.
        assert stub.rows("cam-2", "b2", 1) is None
        for task in range(1, 80):
            assert stub.rows("cam-1", "a1", task) is None
        assert len(node.tasks) <= 64 and ("b2", 1) in node.tasks and ("a1", 79) in node.tasks
    finally:
        node.close()


def test_sources_take_turns(bundle: Path) -> None:
    """Six tasks of cam-1 can run, then one of cam-2 arrives: cam-2's runs second, not seventh."""
    stub = Stub(bundle)
    node = stub.node
    order: list[tuple[str, int]] = []

    def done_at_once(task):  # a task's runner that ends on its first turn
        order.append((task.source, task.key[1]))
        return
        yield

    def one_round(started: list[tuple[str, int]]) -> None:
        """Start tasks (source, number), then run `StubNode.serve`'s loop body once."""
        for source, number in started:
            assert stub.rows(source, f"{source}-session", number) is None
        for task in node.tasks.values():
            task.runner = done_at_once(task)
        stops = iter([False, True])
        node.receive = lambda timeout_ms: 1
        node.serve(lambda: next(stops))

    try:
        one_round([("cam-1", n) for n in range(6)] + [("cam-2", 0)])
        assert order[:3] == [("cam-1", 0), ("cam-2", 0), ("cam-1", 1)]
        assert [n for source, n in order if source == "cam-1"] == list(range(6)) and not node.tasks
        traces = [(to, h["source"], h["task"]) for to, h in stub.sent if h["kind"] == "timeline"]
        assert [(to, n) for to, _, n in traces] == order and all(to == source for to, source, _ in traces)
        assert node.served_by == {"cam-1": 6, "cam-2": 1} and node.served_line() == "7 tasks (cam-1: 6, cam-2: 1)"
        # cam-1 was served last: next time, cam-2 goes first.
        order.clear()
        one_round([("cam-1", 6), ("cam-2", 1)])
        assert order == [("cam-2", 1), ("cam-1", 6)]
    finally:
        node.close()


# -- end to end: two hosts stream through one stub process --------------------------------------


def test_two_sources_stream_through_one_stub(bundle: Path, tmp_path: Path) -> None:
    """cam-2 runs as `halpc run --source cam-2` (paced at its rate) while cam-1 streams from this
    process through the same dev-1 stub: every output is its own model's, bit for bit."""
    whole = load_manifest(bundle)
    cam1 = whole.for_source("cam-1")
    pool = [random_inputs(cam1, seed) for seed in range(3)]
    reference = make_session(str(cam1.reference_model()))
    expected = [reference.run(cam1.outputs, x) for x in pool]
    tasks = 8
    # Files, not pipes: a full pipe would stop `halpc run` before it exits.
    with open(tmp_path / "dev-1.out", "w+") as out, open(tmp_path / "run.json", "w+") as run_out, \
            open(tmp_path / "run.err", "w+") as run_err:
        with spawn_stubs(bundle, whole, stdout=out) as stubs, \
                HostSession(bundle, source="cam-1", timeout_s=60) as host:
            host.connect(watch=stubs.check)
            proc = subprocess.Popen(
                [sys.executable, "-m", "halpc.cli", "run", str(bundle), "--source", "cam-2", "--tasks", str(tasks),
                 "--check", "--json", "--timeout", "60"], stdout=run_out, stderr=run_err)

            def frames():  # from before cam-2's run starts until it is over
                for i in itertools.count():
                    if i >= 1000 or (i >= tasks and proc.poll() is not None):
                        return
                    yield pool[i % len(pool)]

            results = list(host.stream(frames(), in_flight=2))
            proc.wait(timeout=120)
            stubs.check()
        out.seek(0), run_out.seek(0), run_err.seek(0)
        stub_lines, stdout, stderr = out.read().splitlines(), run_out.read(), run_err.read()
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["exact"] is True and len(report["latency_ms_per_task"]) == tasks
    assert all(not t.get("fallback") for t in report["tasks"])
    # Paced at cam-2's 20 Hz without --period-ms: task k starts k * 50 ms after the first.
    starts = {}
    for e in report["timeline"]:
        starts[e["task"]] = min(starts.get(e["task"], math.inf), e["start_ms"])
    assert all(starts[k] >= k * 50 - 1 for k in range(tasks)), starts
    # Waiting for the next frame does not hold up the one in flight (a few ms of MobileNet here):
    # a host that slept until the next frame's time saw every task end a period late.
    assert sorted(report["latency_ms_per_task"])[tasks // 2] < 35, report["latency_ms_per_task"]
    assert [r.task for r in results] == list(range(len(results)))
    for result in results:
        assert not result.unsplit and result.fallback is None
        for name, array in zip(cam1.outputs, expected[result.task % len(pool)]):
            assert result.outputs[name].tobytes() == array.tobytes(), f"cam-1 task {result.task}: {name}"
    n1, n2 = len(results), tasks + 1  # cam-2: a warm-up task first
    assert any("listening on" in line and "serving cam-1, cam-2" in line for line in stub_lines), stub_lines
    assert (f"halpc-stub: dev-1: stopped after {n1 + n2} tasks (cam-1: {n1}, cam-2: {n2}), "
            "0 messages rejected") in stub_lines, stub_lines


# -- end to end on the emulated cluster: the matching's plans, helpers of different speeds -------


@pytest.mark.slow
def test_two_cameras_share_two_helpers_on_the_emulated_cluster(tmp_path: Path) -> None:
    """Two cameras (0.15 core each, in their own network namespaces) share edge-1 (2 ONNX
    Runtime threads, a whole core) and edge-2 (1 thread, half a core) over 100 Mbit/s links:
    compiled with the matching, every source's `halpc run` at once, every output bit-exact.

    At a quarter core the ResNet camera's offload was marginal (predicted 53 ms against 56 alone)
    and it stayed alone whenever the helpers measured 20% slower, as they did once in CI; at 0.15
    both cameras offload with helpers measured anywhere from half to 1.2x their usual speed."""
    why = netlab.available() or netlab.cpu_limits_available()
    if why:
        pytest.skip(f"no emulated cluster with CPU limits here: {why}")
    save(models.build("vgg16", 64, 64, seed=1), tmp_path, "vgg16.onnx")
    save(models.build("resnet18", 128, 128, seed=1), tmp_path, "resnet18.onnx")
    cpu = {"cam-1": 0.15, "cam-2": 0.15, "edge-1": 1.0, "edge-2": 0.5}
    threads = {"edge-1": 2}
    with netlab.NetLab({name: 100 for name in cpu}, cpu=cpu) as lab:
        text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 1\n"
        for name in cpu:  # each board's GMAC/s measured under its CPU share, with its threads
            gmacs = lab.gmacs(name, tmp_path / "vgg16.onnx", threads.get(name, 1))
            text += (f'[[device]]\nname = "{name}"\naddress = "{lab.ip(name)}:5700"\ngmacs = {gmacs:.3f}\n'
                     f'threads = {threads.get(name, 1)}\n')
            if name.startswith("cam"):
                text += f'source = true\nmodel = "{"vgg16" if name == "cam-1" else "resnet18"}.onnx"\nrate_hz = 3\n'
        (tmp_path / "cluster.toml").write_text(text)
        compile_bundle(None, tmp_path / "cluster.toml", tmp_path / "bundle", "matching")
        manifest = load_manifest(tmp_path / "bundle")
        for source in ("cam-1", "cam-2"):  # each camera offloads to a helper
            assert set(manifest.for_source(source).workers) & {"edge-1", "edge-2"}, (text, manifest.data["sharing"])
        summaries = run_sources(tmp_path / "bundle", 9, lab.popen, check=True)
    for source, summary in summaries.items():
        assert summary["exact"] is True and len(summary["latency_ms_per_task"]) == 9, (source, summary)
        # A task the host gave up (a helper slower than its bound) is still exact, recomputed on
        # the camera; queueing behind the other camera is in the bound (`wait_ms`), so few if any.
        assert len(summary["faults"]) <= 3, (source, summary["faults"])
    together = min(s["ended"] for s in summaries.values()) - max(s["started"] for s in summaries.values())
    assert together > 1.5, summaries  # the cameras' 3 s streams ran at the same time
    print(sources_run_table(manifest, summaries))
