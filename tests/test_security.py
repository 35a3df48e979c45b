"""CURVE keys: each device's secret key only in its folder, every socket authenticated and
encrypted, impostors and plaintext refused, `--insecure` as the explicit opt-out."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

import models  # examples/models.py
from bundles import free_ports, local_cluster, save
from halpc.compile import compile_bundle
from halpc.host.run import run, spawn_stubs
from halpc.host.verify import random_inputs
from halpc_stub import clock, keys, wire
from halpc_stub.errors import BundleError
from halpc_stub.host import HostSession, RunError
from halpc_stub.manifest import load_manifest
from halpc_stub.serve import StubNode
from halpc_stub.session import load_sessions


def compile_small(tmp_path: Path, name: str = "bundle", devices: int = 2, ports: list[int] | None = None,
                  insecure: bool = False) -> Path:
    model = tmp_path / "vgg16.onnx"
    if not model.exists():
        save(models.build("vgg16", 32, 32, seed=1), tmp_path, model.name)
    cluster = local_cluster(devices, bandwidth_mbps=2000, gmacs=1.0, ports=ports or free_ports(devices))
    out = tmp_path / name
    compile_bundle(model, cluster, out, "even", insecure=insecure)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return compile_small(tmp_path_factory.mktemp("security"), devices=3)


def key_of(bundle: Path, device: str) -> Path:
    return bundle / device / keys.secret_file(device)


def cli(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "halpc.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


# -- the keys in the bundle ---------------------------------------------------------------------


def test_each_secret_key_is_private_and_only_in_its_own_folder(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = [d["name"] for d in manifest["devices"]]
    assert set(manifest["curve"]) == set(names) and "insecure" not in manifest
    secrets = {}
    for name in names:
        path = key_of(bundle, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert [p.name for p in path.parent.iterdir()] == [path.name]
        loaded = keys.load(load_manifest(bundle / name), name)  # as on the board: the lone folder
        assert loaded is not None and loaded.public.decode() == manifest["curve"][name]
        secrets[name] = loaded.secret
    assert not any("/keys/" in rel for rel in manifest["artifacts"])  # see bundle._write_keys
    for path in bundle.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            owners = {n for n, secret in secrets.items() if secret in data}
            assert owners <= {path.parent.parent.name if path.parent.name == "keys" else None}, path


def test_every_compile_makes_new_keys(tmp_path: Path) -> None:
    ports = free_ports(2)
    a, b = (compile_small(tmp_path, name, ports=ports) for name in "ab")
    curve = [json.loads((x / "manifest.json").read_text())["curve"] for x in (a, b)]
    assert all(curve[0][d] != curve[1][d] for d in curve[0])
    assert key_of(a, "dev-1").read_bytes() != key_of(b, "dev-1").read_bytes()


# -- a secure run, and what it refuses ----------------------------------------------------------


def test_a_run_with_keys_is_bit_exact(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    inputs = [random_inputs(manifest, seed) for seed in range(3)]
    with spawn_stubs(bundle, manifest) as stubs:
        summary = run(bundle, inputs, check=True, timeout_s=60)
        log = stubs.log("dev-1") + stubs.log("dev-2")
    assert summary.exact and len(summary.results) == 3
    assert "rejected" not in log and "insecure" not in log


@pytest.fixture
def stub(bundle: Path):
    """dev-1's stub in this process: its counters can be read."""
    manifest = load_manifest(bundle)
    node = StubNode(manifest, "dev-1", load_sessions(manifest, "dev-1").__getitem__)
    yield node
    node.close()


def rows_message(bundle: Path, sender: str = "host") -> list:
    """A rows message for dev-1's first receive step that fits the manifest in every field."""
    manifest = load_manifest(bundle)
    step = next(s for s in manifest.program("dev-1") if s["op"] == "recv" and s["from"] == "host")
    spec = manifest.tensors[step["tensor"]]
    array = np.zeros(spec.strip_shape(tuple(step["rows"])), np.dtype(spec.dtype))
    header = json.loads(wire.rows_header("s1", 0, manifest.data["plan_sha256"], "host", step, array))
    return [json.dumps({**header, "from": sender}).encode(), array]


def push_to(bundle: Path, node: StubNode, frames: list, key: keys.DeviceKeys | tuple[bytes, bytes] | None
            ) -> set[int]:
    """Send `frames` to the stub from a socket with a device's keys, a foreign key pair or none;
    let the stub take what arrives; the monitor events of failed handshakes."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    if isinstance(key, keys.DeviceKeys):
        key.client(push, "dev-1")
    elif key is not None:
        push.curve_publickey, push.curve_secretkey = key
        push.curve_serverkey = node.keys.publics["dev-1"]
    monitor = push.get_monitor_socket()
    push.connect("tcp://" + load_manifest(bundle).device("dev-1").address)
    push.send_multipart(frames)
    deadline = clock.now() + 1.0
    while clock.now() < deadline:
        node.receive(timeout_ms=50)
    events = set()
    while monitor.poll(0):
        events.add(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
    push.disable_monitor()
    monitor.close()
    push.close()
    context.term()
    return events


def test_a_plaintext_client_gets_nothing_through(bundle: Path, stub: StubNode) -> None:
    events = push_to(bundle, stub, rows_message(bundle), None)
    assert stub.received == 0 and not stub.tasks
    assert any(event & keys.HANDSHAKE_FAILED for event in events)


def test_a_key_not_in_the_bundle_is_refused(bundle: Path, stub: StubNode) -> None:
    events = push_to(bundle, stub, rows_message(bundle), zmq.curve_keypair())
    assert stub.received == 0 and not stub.tasks
    assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events


def test_a_device_cannot_send_in_another_devices_name(bundle: Path, stub: StubNode) -> None:
    dev2 = keys.load(load_manifest(bundle), "dev-2")
    push_to(bundle, stub, rows_message(bundle, sender="host"), dev2)  # dev-2 posing as the host
    assert (stub.received, stub.rejected) == (1, 1) and not stub.tasks
    host = keys.load(load_manifest(bundle), "host")
    push_to(bundle, stub, rows_message(bundle, sender="host"), host)  # the same message from the host
    assert (stub.received, stub.rejected) == (2, 1) and len(stub.tasks) == 1


def test_a_stub_of_another_compile_is_named_by_the_host(tmp_path: Path) -> None:
    """Same model, plan and ports, other keys: only the keys tell the two bundles apart."""
    ports = free_ports(2)
    ours, theirs = compile_small(tmp_path, "ours", ports=ports), compile_small(tmp_path, "theirs", ports=ports)
    assert load_manifest(ours).checksum == load_manifest(theirs).checksum
    with spawn_stubs(theirs, load_manifest(theirs)) as stubs, HostSession(ours, timeout_s=30) as host:
        with pytest.raises(RunError) as caught:  # at the first failed handshake, not the timeout
            host.connect(watch=stubs.check)
    message = str(caught.value)
    assert "\n" not in message and "did not answer" not in message
    assert "dev-1" in message and "key is not this bundle's" in message and "copy the bundle's dev-1/" in message


# -- --insecure -------------------------------------------------------------------------------------


def test_insecure_bundles_run_in_plaintext_and_say_so(tmp_path: Path) -> None:
    model = save(models.build("vgg16", 32, 32, seed=1), tmp_path, "vgg16.onnx")
    cluster = tmp_path / "cluster.toml"
    ports = free_ports(2)
    cluster.write_text(f'[network]\nbandwidth_mbps = 2000\nlatency_ms = 2\n'
                       f'[[device]]\nname = "host"\naddress = "127.0.0.1:{ports[0]}"\ngmacs = 1.0\nhost = true\n'
                       f'[[device]]\nname = "dev-1"\naddress = "127.0.0.1:{ports[1]}"\ngmacs = 1.0\n')
    out = tmp_path / "plain"
    proc = cli("compile", model, "--cluster", cluster, "-o", out, "--strategy", "even", "--insecure")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: --insecure" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["insecure"] is True and "curve" not in manifest
    assert not list(out.rglob("keys"))
    stub = subprocess.run([out / "dev-1" / "launch.sh", "--check"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HALPC_PYTHON": sys.executable})
    assert stub.returncode == 0 and "unauthenticated and unencrypted" in stub.stderr, stub.stderr
    proc = cli("run", out, "--spawn", "--check", "--tasks", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2/2 bit-exact" in proc.stdout, proc.stdout
    assert [line for line in proc.stderr.splitlines() if "unauthenticated and unencrypted" in line]


# -- key files that cannot be used ------------------------------------------------------------------


def one_line_stub_error(bundle: Path, *words: str) -> None:
    proc = subprocess.run([bundle / "dev-1" / "launch.sh", "--check"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HALPC_PYTHON": sys.executable})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


def test_a_key_open_to_others_is_refused(tmp_path: Path) -> None:
    bundle = compile_small(tmp_path)
    key = key_of(bundle, "dev-1")
    key.chmod(0o644)
    one_line_stub_error(bundle, str(key), "mode 644", "chmod 600")
    key_of(bundle, "host").chmod(0o640)
    with pytest.raises(BundleError, match="open to group or others.*chmod 600"):
        HostSession(bundle)


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.unlink(), ["missing", "copy the whole folder"]),
    (lambda p: p.write_bytes(b"curve\n    public-key = \"short\"\n"), ["not a CURVE key pair"]),
    (lambda p: p.write_bytes(p.read_bytes().replace(b'secret-key = "', b'secret-key = "x')[:-3] + b'"\n'),
     ["not a CURVE key pair"]),
])
def test_a_missing_or_malformed_key_is_one_line(tmp_path: Path, damage, words) -> None:
    bundle = compile_small(tmp_path)
    damage(key_of(bundle, "dev-1"))
    one_line_stub_error(bundle, str(key_of(bundle, "dev-1")), *words)


def test_a_key_of_another_compile_is_refused_by_the_stub(tmp_path: Path) -> None:
    ports = free_ports(2)
    ours, theirs = compile_small(tmp_path, "ours", ports=ports), compile_small(tmp_path, "theirs", ports=ports)
    key_of(ours, "dev-1").write_bytes(key_of(theirs, "dev-1").read_bytes())
    one_line_stub_error(ours, "not the key manifest.json names for dev-1", "copy the whole dev-1/ folder")
