"""Write the bundle: one folder per device, a manifest with checksums, launchers from templates.

The bundle is assembled in a temporary folder beside the target and moved into place only when
complete, so a failed compile leaves nothing half-written, and a re-compile replaces an old
bundle in one step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import onnx
import onnxruntime

import halpc
from halpc.cluster import Cluster
from halpc.emit.layout import reference_layout
from halpc.emit.schedule import Schedule, build_schedule
from halpc.emit.subgraph import strip_model, tail_model
from halpc.errors import HalpcError
from halpc.plan import Plan
from halpc.trunk import Trunk

FORMAT = "halpc-bundle/1"


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    files: int
    bytes: int
    strips: int
    schedule: Schedule


def templates() -> jinja2.Environment:
    folder = resources.files("halpc.templates")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(["html"]),
    )


def check_destination(out: Path) -> None:
    """Refuse to replace a folder that is not a bundle: it may hold someone's work."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").exists())):
        raise HalpcError(
            f"{out}: exists and is not a halpc bundle; choose another -o folder or remove it"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise HalpcError(f"{out}: {parent} is a file, not a folder; choose another -o path")
            break


def write_bundle(trunk: Trunk, plan: Plan, cluster: Cluster, out: str | Path) -> BundleSummary:
    out = Path(out)
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        summary = _write(trunk, plan, cluster, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BundleSummary(out, summary[0], summary[1], len(summary[2].jobs), summary[2])


def _write(trunk: Trunk, plan: Plan, cluster: Cluster, root: Path):
    host = cluster.host.name
    layout = reference_layout(trunk)
    tail = tail_model(trunk, layout)
    schedule = build_schedule(trunk, plan, list(cluster.names), host)
    artifacts: dict[str, str] = {}

    def put(rel: str, data: bytes, executable: bool = False) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if executable:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        artifacts[rel] = hashlib.sha256(data).hexdigest()

    for job in schedule.jobs:
        model = strip_model(trunk, job.io, job.rows, f"{job.device}/{job.file}", layout)
        put(f"{job.device}/{job.file}", model.SerializeToString())
    if tail is not None:
        put(f"{host}/tail.onnx", tail.SerializeToString())
    put("reference/model.onnx", trunk.model.reference)
    put("plan.json", plan.dumps(trunk).encode())

    manifest = _manifest(trunk, plan, cluster, schedule)
    env = templates()
    stub_sources = _stub_sources()
    for device in cluster.devices:
        context = {
            "device": device,
            "bundle_plan": manifest["plan_sha256"][:12],
            "version": halpc.__version__,
            "onnxruntime": onnxruntime.__version__,
            "steps": len(schedule.programs[device.name]),
            "install_dir": f"/opt/halpc/{device.name}",
        }
        put(f"{device.name}/launch.sh", env.get_template("launch.sh.j2").render(context).encode(), True)
        if not device.host:
            unit = env.get_template("halpc-stub.service.j2").render(context)
            put(f"{device.name}/halpc-stub.service", unit.encode())
            for name, data in stub_sources.items():
                put(f"{device.name}/halpc_stub/{name}", data)
    manifest["artifacts"] = artifacts
    text = (json.dumps(manifest, indent=1) + "\n").encode()
    (root / "manifest.json").write_bytes(text)
    for device in cluster.devices:
        # A device folder copied alone to a board carries the manifest it is checked against.
        (root / device.name / "manifest.json").write_bytes(text)
    total = sum((root / rel).stat().st_size for rel in artifacts) + len(text) * (1 + len(cluster))
    return len(artifacts) + 1 + len(cluster), total, schedule


def _stub_sources() -> dict[str, bytes]:
    """The stub's own source files: a device folder carries the program that runs it."""
    folder = resources.files("halpc_stub")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith(".py")}


def _manifest(trunk: Trunk, plan: Plan, cluster: Cluster, schedule: Schedule) -> dict[str, Any]:
    from halpc.planner import context  # the planner builds on emit

    costs = context(trunk, cluster)
    graph = trunk.model.graph
    io_tensors: set[str] = set()
    for program in schedule.programs.values():
        for step in program:
            io_tensors.update(step.get("inputs", {}) or [])
            io_tensors.update(step.get("outputs", {}) or [])
            if "tensor" in step:
                io_tensors.add(step["tensor"])
    io_tensors.update(t for t in trunk.exits)
    io_tensors.add(trunk.input)
    tensors = {
        t: {"shape": list(info.shape), "dtype": info.dtype, "row_axis": info.row_axis}
        for t, info in trunk.tensors.items()
        if t in io_tensors
    }
    shapes = _graph_io(trunk)
    return {
        "format": FORMAT,
        "created_by": f"halpc {halpc.__version__}",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "model": {
            "file": "reference/model.onnx",
            "name": trunk.model.path.name,
            "sha256": trunk.model.sha256,
        },
        "plan_sha256": plan.checksum(trunk),
        "strategy": plan.strategy,
        "spatial_input": trunk.input,
        "inputs": [
            {"name": i.name, "shape": list(shapes[i.name][0]), "dtype": shapes[i.name][1]}
            for i in graph.input
        ],
        "outputs": [{"name": o.name} for o in graph.output],
        "devices": [
            {"name": d.name, "host": d.host, "address": d.address, "threads": d.threads}
            for d in cluster.devices
        ],
        "cluster": cluster.to_dict(),
        "cost": {  # what the planner assumed of each device (for `halpc run` to compare)
            name: {"gmacs": costs.speeds[name], "run_overhead_ms": costs.overheads.get(name, 0.0) * 1e3,
                   "weight_gbps": costs.weight_rates.get(name),
                   "message_overhead_ms": costs.message_seconds(name) * 1e3}
            for name in cluster.names
        },
        "tensors": tensors,
        "programs": schedule.programs,
    }


def _graph_io(trunk: Trunk) -> dict[str, tuple[tuple[int, ...], str]]:
    result = {}
    for value_info in trunk.model.graph.input:
        tensor_type = value_info.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        result[value_info.name] = (
            tuple(d.dim_value for d in tensor_type.shape.dim),
            str(dtype),
        )
    return result
