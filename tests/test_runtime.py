"""The runtime end to end: real `halpc-stub` processes on loopback, real sockets, real models.

Each bundle's worker stubs are started from their own launch.sh (as on a board) on ports the
kernel reports free; the host is this test process (`halpc.host.run.run`) or the `halpc run` command.
Every output is compared bit for bit with the unsplit model.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import models  # examples/models.py
from bundles import assert_exact, free_ports, local_cluster, save
from halpc.measure import netlab
from halpc.compile import compile_bundle
from halpc.host.run import RunSummary, local_popen, run, spawn_stubs
from halpc.planner.cost import Prediction
from halpc.planner.names import STRATEGIES
from halpc.host.verify import OutputCheck, random_inputs
from halpc_stub import keys, wire
from halpc_stub.host import RunError, TaskResult
from halpc_stub.manifest import load_manifest

# Slow, far devices would make dpfp/halp keep everything on the host; these make every
# strategy use all three devices.
FAST_LINKS = {"bandwidth_mbps": 2000, "gmacs": 1.0}


def compile_local(tmp_path: Path, name: str, size: int, strategy: str, devices: int = 3,
                  ips: list[str] | None = None, insecure: bool = False) -> Path:
    model = save(models.build(name, size, size, seed=1), tmp_path, f"{name}.onnx")
    cluster = local_cluster(devices, ports=free_ports(devices), ips=ips, **FAST_LINKS)
    out = tmp_path / f"{name}-{strategy}"
    compile_bundle(model, cluster, out, strategy, insecure=insecure)
    return out


def run_exact(bundle: Path, tasks: int, in_flight: int = 2, spawn=local_popen):
    manifest = load_manifest(bundle)
    inputs = [random_inputs(manifest, seed) for seed in range(tasks)]
    summary = run(bundle, inputs, in_flight=in_flight, check=True, spawn=spawn, timeout_s=60)
    first = summary.results[0].task  # after the warm-up task
    assert [r.task for r in summary.results] == list(range(first, first + tasks))
    assert len(summary.checks) == tasks * len(manifest.outputs)
    assert summary.exact, [c for c in summary.checks if not c.exact]
    # Exact outputs alone prove little: after a fault the host recomputes a task with the
    # unsplit model, which is exact too. Every task must have run its plan on its devices.
    fell_back = [(r.task, r.plan, r.fallback, r.unsplit) for r in summary.results if r.fallback or r.unsplit]
    assert not fell_back and not summary.faults, (fell_back, summary.faults)
    assert_devices_computed(manifest, summary)
    return manifest, summary


def assert_devices_computed(manifest, summary) -> None:
    """Each task's measured timeline has one compute event for every model run in every device's
    program of the task's plan, on that device: the workers really ran their strips."""
    for r in summary.results:
        plan = manifest.plan(r.plan)
        expected = sorted((d.name, step["model"]) for d in plan.devices for step in plan.program(d.name)
                          if step["op"] in ("run", "tail"))
        got = sorted((e["device"], e["label"]) for e in r.events if e["kind"] == "compute")
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        assert got == expected, f"task {r.task} ({r.plan}): not computed {missing[:4]} (of {len(missing)}), " \
                                f"computed beyond the plan {extra[:4]} (of {len(extra)})"


def workers_computed(summary) -> set[str]:
    """The devices other than the host that computed in every task, from the measured timelines."""
    per_task = [{e["device"] for e in r.events if e["kind"] == "compute"} - {"host"} for r in summary.results]
    return set.intersection(*per_task)


def workers_used(manifest) -> int:
    return sum(1 for d in manifest.devices if not d.host and manifest.program(d.name))


def test_nothing_checked_is_not_exact() -> None:
    """`RunSummary.exact` and the tests' `assert_exact`: an empty list of checks is no proof."""
    summary = RunSummary([TaskResult(0, {}, 0.0, 1.0)], Prediction(1.0, 1.0), 0.0, 1.0)
    assert summary.exact is False and summary.to_json()["exact"] is None  # run without --check
    summary.checks = [OutputCheck("task 0", "y", (1, 10), True, 0.0)]
    assert summary.exact is True and summary.to_json()["exact"] is True
    summary.checks.append(OutputCheck("task 0", "z", (1, 10), False, 0.5))
    assert summary.exact is False and summary.to_json()["exact"] is False
    with pytest.raises(AssertionError, match="no outputs were checked"):
        assert_exact([])
    with pytest.raises(AssertionError, match="not bit-exact"):
        assert_exact(summary.checks)
    assert_exact(summary.checks[:1])


@pytest.mark.parametrize("strategy", ["halp", "modnn"])
def test_vgg16_on_three_stub_processes_is_exact(strategy: str, tmp_path: Path) -> None:
    manifest, summary = run_exact(compile_local(tmp_path, "vgg16", 64, strategy), tasks=3)
    assert workers_used(manifest) == 2
    # Every device reported its timeline, and the host's sends reached their receivers.
    devices = {e["device"] for r in summary.results for e in r.events}
    assert devices == {"host", "dev-1", "dev-2"}
    assert any(e["kind"] == "compute" and e["device"] == "dev-2" for e in summary.results[0].events)


def test_twenty_tasks_stream_in_order_and_exact(tmp_path: Path) -> None:
    manifest, summary = run_exact(compile_local(tmp_path, "resnet18", 64, "even"), tasks=20, in_flight=3)
    assert summary.throughput > 0
    # Tasks overlapped: with 3 in flight, some task started before the one before it ended.
    starts = [r.start for r in summary.results]
    ends = [r.end for r in summary.results]
    assert any(starts[i + 1] < ends[i] for i in range(len(starts) - 1))


# `exhaustive` is an oracle for small models (test_planner.py runs it end to end); these have
# too many cut points for it.
PLANNED = [s for s in STRATEGIES if s != "exhaustive"]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("vgg16", 96), ("mobilenet_v1_100", 96), ("resnet18", 96)])
@pytest.mark.parametrize("strategy", PLANNED)
def test_every_strategy_and_model_on_loopback(name: str, size: int, strategy: str, tmp_path: Path) -> None:
    manifest, summary = run_exact(compile_local(tmp_path, name, size, strategy), tasks=20, in_flight=2)
    # The run itself, not only the manifest: both workers computed in every one of the 20 tasks
    # (none fell back to the host: run_exact), or, for local, the host alone did.
    assert workers_computed(summary) == (set() if strategy == "local" else {"dev-1", "dev-2"})
    assert workers_used(manifest) == (0 if strategy == "local" else 2)


def test_halpc_run_command_json_and_output(tmp_path: Path) -> None:
    bundle = compile_local(tmp_path, "mobilenet_v1_025", 64, "even")
    out = tmp_path / "y.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "halpc.cli", "run", bundle, "--spawn", "--check", "--tasks", "4",
         "--json", "--output", out],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["exact"] is True and len(report["latency_ms_per_task"]) == 4
    assert report["throughput_per_s"] > 0 and report["speedup"] > 0
    kinds = {(e["device"], e["kind"]) for e in report["timeline"]}
    assert ("dev-1", "compute") in kinds and ("host", "send") in kinds
    assert {e["task"] for e in report["timeline"]} == {0, 1, 2, 3}
    assert np.load(out).shape == (1, 1000)


def test_text_report_shows_speedup_and_timeline(tmp_path: Path) -> None:
    bundle = compile_local(tmp_path, "vgg16", 32, "even")
    proc = subprocess.run([sys.executable, "-m", "halpc.cli", "run", bundle, "--spawn", "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1/1 bit-exact to the unsplit model" in proc.stdout
    assert re.search(r"^ +0 +\d+\.\d +yes$", proc.stdout, re.M), proc.stdout  # task 0's row: exact
    # The speedup over the unsplit model, measured beside the run.
    speedup = re.search(r"^unsplit +\d+\.\d ms on the host \(1 thread\(s\)\): latency (\d+\.\d\d)x, "
                        r"throughput (\d+\.\d\d)x faster split$", proc.stdout, re.M)
    assert speedup and float(speedup[1]) > 0 and float(speedup[2]) > 0, proc.stdout
    assert "latency" in proc.stdout and "dev-2 |" in proc.stdout


def python_without_halpc(folder: Path) -> Path:
    """A board's Python: numpy, onnxruntime and pyzmq, and no halpc. This venv's interpreter with
    -S (no site-packages, so no .pth file of halpc's editable install) and on its path only the
    folders those three packages are in (launch.sh puts the device folder first)."""
    import onnxruntime

    dirs = sorted({str(Path(m.__file__).resolve().parent.parent) for m in (np, onnxruntime, zmq)})
    script = folder / "python-without-halpc"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{os.pathsep.join(dirs)}" '
                      f'exec "{sys.executable}" -S "$@"\n')
    script.chmod(0o755)
    return script


def test_shipped_stub_serves_where_halpc_is_not_installed(tmp_path: Path) -> None:
    """Each worker's folder, copied alone to a fresh place, runs its launch.sh under a Python that
    cannot import halpc (as on a board): `--check` passes, and the stubs serve the host's tasks
    bit-exact with the halpc_stub/ the folder carries."""
    bundle = compile_local(tmp_path, "vgg16", 32, "even")
    manifest = load_manifest(bundle)
    python = python_without_halpc(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HALPC_PYTHON": str(python)}
    boards = {}
    for device in manifest.workers:
        boards[device] = shutil.copytree(bundle / device, tmp_path / "boards" / device / device)  # keeps key modes
    board = boards["dev-1"]
    # The precondition: on that Python, halpc is missing and halpc_stub is the folder's own.
    probe = subprocess.run([python, "-c", "import halpc_stub; print(halpc_stub.__file__); import halpc"],
                           env={**env, "PYTHONPATH": str(board)}, cwd=board.parent, capture_output=True, text=True)
    assert probe.stdout.strip() == str(board / "halpc_stub" / "__init__.py"), probe
    assert "No module named 'halpc'" in probe.stderr, probe.stderr
    for device, folder in boards.items():
        check = subprocess.run([folder / "launch.sh", "--check"], env=env, cwd=folder.parent, capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0 and "Traceback" not in check.stderr, check.stderr
    logs = {device: (tmp_path / f"{device}.log").open("w+") for device in boards}
    procs = {device: subprocess.Popen([folder / "launch.sh"], env=env, cwd=folder.parent, stdout=logs[device],
                                      stderr=subprocess.STDOUT) for device, folder in boards.items()}
    try:
        run_exact(bundle, tasks=3, spawn=None)  # every task on its plan, the workers' strips computed
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for device, log in logs.items():
        log.seek(0)
        text = log.read()
        log.close()
        assert procs[device].returncode == 0 and "Traceback" not in text, text
        assert f"{device}: stopped after 4 tasks, 0 messages rejected" in text, text  # a warm-up task and 3


def test_no_stub_running_is_one_line_error_with_require_all(tmp_path: Path) -> None:
    """(Without --require-all the host runs without them: tests/test_degraded_start.py.)"""
    bundle = compile_local(tmp_path, "vgg16", 32, "even")
    proc = subprocess.run([sys.executable, "-m", "halpc.cli", "run", bundle, "--timeout", "1", "--require-all"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dev-1, dev-2 did not answer" in lines[0] and "halpc-stub" in lines[0]


def test_stub_of_another_plan_is_refused(tmp_path: Path) -> None:
    # Without keys: with them, another compile's stub fails the handshake first (test_security.py).
    a = compile_local(tmp_path, "vgg16", 32, "even", insecure=True)
    b = tmp_path / "other"
    cluster = load_manifest(a).data["cluster"]
    from halpc.inputs.cluster import Cluster
    compile_bundle(save(models.build("vgg16", 32, 32, seed=2), tmp_path, "v2.onnx"),
                   Cluster.from_dict(cluster), b, "even", insecure=True)
    with spawn_stubs(b, load_manifest(b)):
        with pytest.raises(RunError, match=r"dev-\d runs plan \w+, this bundle is plan"):
            run(a, [random_inputs(load_manifest(a), 0)], timeout_s=10)


def test_stub_rejects_bad_messages_and_keeps_serving(tmp_path: Path) -> None:
    """Malformed, foreign and misfit messages are logged and dropped; tasks after them are exact.
    They come with the host's keys: past the handshake, every message is still checked."""
    bundle = compile_local(tmp_path, "vgg16", 32, "even", devices=2)
    manifest = load_manifest(bundle)
    step = next(s for s in manifest.program("dev-1") if s["op"] == "recv")
    spec = manifest.tensors[step["tensor"]]
    good = np.zeros(spec.strip_shape(tuple(step["rows"])), np.dtype(spec.dtype))
    plan = manifest.data["plan_sha256"]

    def header(**changes) -> bytes:
        h = json.loads(wire.rows_header("s1", 0, plan, "host", step, good))
        h.update(changes)
        return json.dumps(h).encode()

    def probe(**changes) -> bytes:
        return wire.encode({"kind": "probe", "from": "host", "session": "s1", "seq": 0, "part": 0, **changes})

    bad = [
        [b"not json"],
        [b"{}"],
        [b"[1, 2]"],
        [header(v=9), good],
        [header(kind="launch"), good],
        [header(plan="0" * 64), good],
        [header(tensor="nope"), good],
        [header(rows=[0, 10**9]), good],
        [header(shape=[1, 2, 3]), good],
        [header(dtype="float64"), good],
        [header(block=99), good],
        [header(task=-1), good],
        [header(session=7), good],
        [header(), np.ascontiguousarray(good[..., :1])],  # truncated buffer
        [header()],  # no buffer
        [header(), good, good],  # extra frame
        [b"x" * 100_000, good],  # oversized header
        [probe(part=1), b"\0" * 100],  # a probe's second part without its first
        [probe(part=0), b"\0" * (wire.MAX_PROBE_BYTES + 1)],  # an oversized probe
        [probe(part=2), b""],
        [probe(seq=-1), b""],
        [probe(**{"from": "dev-1"}), b""],  # the host's connection cannot speak for dev-1
    ]
    inputs = [random_inputs(manifest, s) for s in range(2)]
    with spawn_stubs(bundle, manifest) as stubs:
        assert run(bundle, inputs[:1], check=True, timeout_s=30).exact  # the stub is up
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        keys.load(manifest, "host").client(push, "dev-1")
        push.connect("tcp://" + manifest.device("dev-1").address)
        for frames in bad:
            push.send_multipart(frames)
        time.sleep(0.5)
        push.close()
        context.term()
        summary = run(bundle, inputs, check=True, timeout_s=30)
        log = stubs.log("dev-1")
    assert summary.exact
    reasons = [line for line in log.splitlines() if "rejected a message" in line]
    assert len(reasons) == len(bad), log
    for words in ("not JSON", "protocol version 9", "unknown kind", "is not one of this bundle's plans",
                  "no step receives 'nope'", "expected float32", "block 99", "bad task id -1",
                  "bad session", "buffer of", "rows message with 1 frames", "exceeds",
                  "part 1 without part 0", "probe of", "bad probe part 2", "bad probe sequence number -1",
                  "from 'dev-1' on a connection authenticated as 'host'"):
        assert any(words in r for r in reasons), (words, reasons)


# -- the emulated edge cluster: each worker in its own network namespace behind a tbf link ------

LAB_UNAVAILABLE = netlab.available()


@pytest.fixture(scope="module")
def lab():
    if LAB_UNAVAILABLE:
        pytest.skip(f"no emulated cluster here: {LAB_UNAVAILABLE}")
    with netlab.NetLab({"dev-1": 200, "dev-2": 200}) as lab:
        yield lab


def compile_in_lab(lab, tmp_path: Path, name: str, size: int, strategy: str) -> Path:
    return compile_local(tmp_path, name, size, strategy, ips=[lab.host_ip, lab.ip("dev-1"), lab.ip("dev-2")])


def test_vgg16_on_the_emulated_cluster_is_exact(lab, tmp_path: Path) -> None:
    bundle = compile_in_lab(lab, tmp_path, "vgg16", 64, "halp")
    manifest, summary = run_exact(bundle, tasks=5, spawn=lab.popen)
    assert workers_used(manifest) == 2
    assert manifest.device("dev-1").address.startswith(lab.ip("dev-1"))


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("vgg16", 96), ("mobilenet_v1_100", 96), ("resnet18", 96)])
@pytest.mark.parametrize("strategy", PLANNED)
def test_every_strategy_and_model_on_the_emulated_cluster(lab, name, size, strategy, tmp_path) -> None:
    bundle = compile_in_lab(lab, tmp_path, name, size, strategy)
    manifest, _ = run_exact(bundle, tasks=20, spawn=lab.popen)
    assert workers_used(manifest) == (0 if strategy == "local" else 2)


def test_run_and_stub_errors_are_one_line(tmp_path: Path) -> None:
    bundle = compile_local(tmp_path, "vgg16", 32, "even", devices=2)

    def one_line(argv: list, *words: str) -> None:
        # launch.sh runs $HALPC_PYTHON (as `halpc run --spawn` sets it): this venv's Python.
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HALPC_PYTHON": sys.executable})
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr

    halpc = [sys.executable, "-m", "halpc.cli", "run"]
    one_line(halpc + [tmp_path / "nowhere"], "no manifest.json")
    one_line(halpc + [bundle, "--output", tmp_path / "y.npz"], "give a .npy path")
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((1, 3, 8, 8), np.float32))
    one_line(halpc + [bundle, "--input", bad], "input", "compiled for float32 1x3x32x32")
    # A stub whose port is taken says so and how to fix it.
    manifest = load_manifest(bundle)
    with spawn_stubs(bundle, manifest) as stubs:
        assert run(bundle, [random_inputs(manifest, 0)], check=True, timeout_s=30).exact
        one_line([str(bundle / "dev-1" / "launch.sh")], "cannot listen on", "--bind")
        stubs.check()
    assert not (tmp_path / "y.npz").exists()
    # A tampered strip model: the stub refuses to start, naming the file.
    victim = sorted((bundle / "dev-1").glob("*.onnx"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    one_line([str(bundle / "dev-1" / "launch.sh")], victim.name, "sha256 differs from the manifest")
