"""Compile a model for a local cluster and verify it, in process: the tests' main tool."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import onnx

from halpc.inputs.cluster import Cluster, parse_cluster
from halpc.compile import compile_bundle
from halpc.inputs.model import load_model
from halpc.inputs.target import TARGETS
from halpc.planner.legal import Legal
from halpc.planner.plan import Plan
from halpc.analyse.trunk import Trunk, analyse
from halpc.host.verify import verify


def free_ports(n: int) -> list[int]:
    """Ports nothing listens on now (the kernel's choice), so runs never meet a stale stub."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_cluster(devices: int, bandwidth_mbps: float = 100, gmacs: float = 8.0,
                  ips: list[str] | None = None, ports: list[int] | None = None) -> Cluster:
    """host, dev-1, ... on 127.0.0.1 (or `ips`), on fixed ports 5700.. unless `ports` are given."""
    text = f"[network]\nbandwidth_mbps = {bandwidth_mbps}\nlatency_ms = 2\n"
    for i in range(devices):
        name = "host" if i == 0 else f"dev-{i}"
        address = f"{ips[i] if ips else '127.0.0.1'}:{ports[i] if ports else 5700 + i}"
        text += f'[[device]]\nname = "{name}"\naddress = "{address}"\ngmacs = {gmacs}\n'
        text += "host = true\n" if i == 0 else ""
    return parse_cluster(text, source=f"local{devices}.toml")


def save(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def trunk_of(path: Path, input_shapes: dict | None = None) -> Trunk:
    return analyse(load_model(path, input_shapes))


def compile_and_verify(
    path: Path,
    out: Path,
    devices: int,
    plan: Plan | None = None,
    input_shapes: dict | None = None,
    seeds: int = 1,
    strategy: str = "even",
    keep: bool = True,
    arch: str | None = None,
) -> list:
    """Compile for `arch` (default: this machine) and verify here; a given plan (a random one) is
    first made exact on that target, as the planner makes its own plans."""
    cluster = local_cluster(devices)
    if plan is not None and arch is not None:
        plan = Legal(trunk_of(path, input_shapes), cluster, TARGETS[arch]).plan(plan)
    compile_bundle(path, cluster, out, strategy, plan, input_shapes, arch=arch)
    checks = verify(out, seeds=seeds)
    if not keep:
        shutil.rmtree(out)  # full-size bundles run to gigabytes over a test session
    return checks


def assert_exact(checks: list) -> None:
    """Every check exact, and at least one: nothing compared proves nothing."""
    assert checks, "no outputs were checked"
    bad = [c for c in checks if not c.exact]
    assert not bad, f"not bit-exact: {bad}"
