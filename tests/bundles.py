"""Compile a model for a local cluster and verify it, in process: the tests' main tool."""
from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from halpc.cluster import Cluster, parse_cluster
from halpc.compile import compile_bundle
from halpc.model import load_model
from halpc.plan import Plan
from halpc.trunk import Trunk, analyse
from halpc.verify import verify


def local_cluster(devices: int) -> Cluster:
    text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 2\n"
    for i in range(devices):
        name = "host" if i == 0 else f"dev-{i}"
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{5700 + i}"\ngmacs = 8.0\n'
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
) -> list:
    compile_bundle(path, local_cluster(devices), out, strategy, plan, input_shapes)
    checks = verify(out, seeds=seeds)
    if not keep:
        shutil.rmtree(out)  # full-size bundles run to gigabytes over a test session
    return checks


def assert_exact(checks: list) -> None:
    bad = [c for c in checks if not c.exact]
    assert not bad, f"not bit-exact: {bad}"
