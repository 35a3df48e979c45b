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
from typing import Any, Sequence

import onnx
import onnxruntime
import zmq

import halpc
from halpc.inputs.cluster import Cluster
from halpc.emit.layout import reference_layout
from halpc.inputs.target import cluster_target, optimized_strips_block
from halpc.planner.schedule import Schedule, build_schedule
from halpc.emit.subgraph import strip_model, tail_model
from halpc.emit.ort_graphs import ort_optimized
from halpc.emit.weights import FolderWeights
from halpc.errors import HalpcError
from halpc.progress import Progress, silent
from halpc.planner.plan import Plan
from halpc.analyse.trunk import Trunk
from halpc.templating import templates
from halpc_stub import keys
from halpc_stub.manifest import Manifest

FORMAT = "halpc-bundle/1"


@dataclass(frozen=True)
class PlanEntry:
    """One plan of a bundle: a model (variant) split for one channel state.

    A bundle holds one plan, or several: the same model planned for several link rates
    (`halpc compile --bandwidths`) and several variants of a model with their accuracies
    (`--variant`), among which the host chooses per task."""

    id: str
    trunk: Trunk
    plan: Plan
    variant: str | None = None  # None: a one-model bundle
    accuracy: float | None = None  # top-1 %, where known
    bandwidths: tuple[float, ...] = ()  # the link rates (Mbit/s) this plan was chosen for
    host: str | None = None  # the source whose frames it runs (a cluster of several sources)


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    files: int
    bytes: int
    strips: int
    schedule: Schedule  # the default plan's
    plans: int = 1




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
    return write_plans([PlanEntry("default", trunk, plan)], cluster, out)


def write_plans(entries: Sequence[PlanEntry], cluster: Cluster, out: str | Path,
                deadline_ms: float | None = None, insecure: bool = False,
                sharing: dict[str, Any] | None = None, progress: Progress = silent) -> BundleSummary:
    """Write a bundle of `entries`; the first is the default plan. Every device gets a new CURVE
    key pair, unless `insecure` (plaintext, unauthenticated traffic). In a cluster of several
    sources each entry names its source (`host`), the first of a source's entries is its
    default, and `sharing` records how the sources share the helpers (`planner.sources`)."""
    out = Path(out)
    check_destination(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        files, size, schedules = _write(list(entries), cluster, staging, deadline_ms, insecure, sharing, progress)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as exc:  # an unwritable folder, a full disk: nothing half-written stays behind
        shutil.rmtree(staging, ignore_errors=True)
        raise HalpcError(f"{out}: cannot write the bundle ({exc.strerror or exc}); choose a writable folder with "
                         "room for it", option="output") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BundleSummary(out, files, size, sum(len(s.jobs) for s in schedules), schedules[0], len(entries))


class _Artifacts:
    """Files written into the bundle with their sha256; a model identical to one already in a
    device's folder (the same strip in two plans) is written once and shared, and its weights
    go to the folder's one weights file (emit.weights); `optimized`: models are written as ONNX
    Runtime optimizes them (emit.ort_graphs)."""

    def __init__(self, root: Path, optimized: bool = False) -> None:
        self.root = root
        self.optimized = optimized
        self.digests: dict[str, str] = {}
        self._shared: dict[tuple[str, str], str] = {}
        self.weights: dict[str, FolderWeights] = {}

    def put(self, rel: str, data: bytes, executable: bool = False) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if executable:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def model(self, folder: str, name: str, model: onnx.ModelProto) -> str:
        """Put model `folder/name`, its weights in the folder's weights file, unless `folder`
        has this model already; the name in use."""
        key = (folder, hashlib.sha256(model.SerializeToString()).hexdigest())
        if key not in self._shared:
            weights = self.weights.setdefault(folder, FolderWeights())
            if self.optimized:
                model = ort_optimized(model)
            self.put(f"{folder}/{name}", weights.externalize(name, model).SerializeToString())
            self._shared[key] = name
        return self._shared[key]

    def put_weights(self) -> None:
        for folder, weights in self.weights.items():
            for name, data in weights.files().items():
                self.put(f"{folder}/{name}", data)


def _write(entries: list[PlanEntry], cluster: Cluster, root: Path, deadline_ms: float | None, insecure: bool,
           sharing: dict[str, Any] | None, progress: Progress):
    block = optimized_strips_block(cluster)  # one decision for the strips written and the manifest
    artifacts = _Artifacts(root, optimized=bool(block))
    several = len(entries) > 1
    plans, schedules = [], []
    for n, entry in enumerate(entries, 1):
        progress(f"writing plan {entry.id} ({n}/{len(entries)})" if several else "writing the strips")
        # One flat folder per device: ONNX Runtime reads external data only from a model's own
        # folder, and every plan's strips share the device's weights file.
        schedule, files = _write_plan(entry, cluster, artifacts, f"{entry.id.replace('/', '.')}." if several else "")
        schedules.append(schedule)
        plan = _plan_fields(entry, schedule, files)
        reference = f"reference/{entry.variant}.onnx" if several else "reference/model.onnx"
        if reference not in artifacts.digests:
            artifacts.put(reference, entry.trunk.model.reference)
        plan["model"]["file"] = reference
        plans.append(plan)
        artifacts.put(f"plans/{entry.id}.json" if several else "plan.json", entry.plan.dumps(entry.trunk).encode())

    artifacts.put_weights()
    manifest = {**_common(entries[0].trunk, cluster, block), **plans[0]}
    if several:
        manifest["alternatives"] = plans[1:]
    if deadline_ms is not None:
        manifest["deadline_ms"] = deadline_ms
    if cluster.sources:
        manifest["sources"] = {s.name: {"rate_hz": s.rate_hz, "plans": [e.id for e in entries if e.host == s.name]}
                               for s in cluster.sources}
        manifest["sharing"] = sharing or {}
    env = templates()
    stub_sources = _stub_sources()
    for device in cluster.devices:
        context = {
            "device": device,
            "bundle_checksum": Manifest(root, manifest).checksum[:12],  # what the stub says it serves
            "plans": len(entries),
            "version": halpc.__version__,
            "onnxruntime": onnxruntime.__version__,
            "steps": len(schedules[0].programs.get(device.name, [])),
            "install_dir": f"/opt/halpc/{device.name}",
            "key_file": None if insecure else keys.secret_file(device.name),
        }
        artifacts.put(f"{device.name}/launch.sh", env.get_template("launch.sh.j2").render(context).encode(), True)
        if not (device.host or device.source):
            unit = env.get_template("halpc-stub.service.j2").render(context)
            artifacts.put(f"{device.name}/halpc-stub.service", unit.encode())
            for name, data in stub_sources.items():
                artifacts.put(f"{device.name}/halpc_stub/{name}", data)
    manifest["artifacts"] = artifacts.digests
    if insecure:
        manifest["insecure"] = True
    else:
        manifest["curve"] = _write_keys(root, cluster)
    text = (json.dumps(manifest, indent=1) + "\n").encode()
    (root / "manifest.json").write_bytes(text)
    for device in cluster.devices:
        # A device folder copied alone to a board carries the manifest it is checked against.
        (root / device.name / "manifest.json").write_bytes(text)
    total = sum((root / rel).stat().st_size for rel in artifacts.digests) + len(text) * (1 + len(cluster))
    key_files = list(root.glob("*/keys/*"))
    total += sum(p.stat().st_size for p in key_files)
    return len(artifacts.digests) + 1 + len(cluster) + len(key_files), total, schedules


def _write_keys(root: Path, cluster: Cluster) -> dict[str, str]:
    """A new CURVE key pair per device: its secret key in its own folder only (0600 in a 0700
    folder), created unreadable to others from the start; the public keys, for the manifest.

    Secret keys are not in `artifacts`: the manifest travels to every device, and a device
    checks its key against its public key in the manifest instead (`halpc_stub.keys.load`),
    which also tells a key of another compile from this one's."""
    publics = {}
    for device in cluster.devices:
        public, secret = zmq.curve_keypair()
        path = root / device.name / keys.secret_file(device.name)
        path.parent.mkdir(mode=0o700)
        path.parent.chmod(0o700)  # whatever the umask
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keys.secret_text(device.name, public, secret))
        publics[device.name] = public.decode()
    return publics


def _write_plan(entry: PlanEntry, cluster: Cluster, artifacts: _Artifacts, prefix: str):
    """Write one plan's strip models (and tail); its programs name the files they run."""
    trunk, host = entry.trunk, entry.host or cluster.host.name
    layout = reference_layout(trunk, cluster_target(cluster))
    names = cluster.view(host).names if entry.host else cluster.names
    schedule = build_schedule(trunk, entry.plan, list(names), host)
    files: dict[tuple[str, str], str] = {}
    for job in schedule.jobs:
        model = strip_model(trunk, job.io, job.rows, f"{job.device}/{prefix}{job.file}", layout)
        # Named by what it computes, so that the same strip in another plan is the same bytes.
        model.graph.name = f"{entry.variant or 'model'} layers {job.io.start}-{job.io.stop} rows {job.rows.outputs}"
        files[(job.device, job.file)] = artifacts.model(job.device, prefix + job.file, model)
    tail = tail_model(trunk, layout)
    if tail is not None:
        tail_prefix = f"{entry.variant}." if entry.variant else ""
        files[(host, "tail.onnx")] = artifacts.model(host, tail_prefix + "tail.onnx", tail)
    return schedule, files


def _plan_fields(entry: PlanEntry, schedule: Schedule, files: dict[tuple[str, str], str]) -> dict[str, Any]:
    """What the manifest says of one plan: its model, programs and the tensors they move."""
    trunk, plan = entry.trunk, entry.plan
    programs = {
        device: [{**s, "model": files[(device, s["model"])]} if "model" in s else s for s in program]
        for device, program in schedule.programs.items()
    }
    graph = trunk.model.graph
    io_tensors: set[str] = {trunk.input, *trunk.exits}
    for program in programs.values():
        for step in program:
            io_tensors.update(step.get("inputs", {}) or [])
            io_tensors.update(step.get("outputs", {}) or [])
            if "tensor" in step:
                io_tensors.add(step["tensor"])
    shapes = _graph_io(trunk)
    return {
        **({"host": entry.host} if entry.host else {}),
        "id": entry.id,
        "variant": entry.variant or trunk.model.path.stem,
        "accuracy": entry.accuracy,
        "bandwidths": list(entry.bandwidths),
        "model": {"file": "", "name": trunk.model.path.name, "sha256": trunk.model.sha256},
        "plan_sha256": plan.checksum(trunk),
        "strategy": plan.strategy,
        "predicted_ms": plan.predicted.get("latency_ms"),
        **({"wait_ms": plan.predicted["wait_ms"]} if "wait_ms" in plan.predicted else {}),
        "spatial_input": trunk.input,
        "inputs": [
            {"name": i.name, "shape": list(shapes[i.name][0]), "dtype": shapes[i.name][1]}
            for i in graph.input
        ],
        "outputs": [{"name": o.name} for o in graph.output],
        "tensors": {
            t: {"shape": list(info.shape), "dtype": info.dtype, "row_axis": info.row_axis}
            for t, info in trunk.tensors.items()
            if t in io_tensors
        },
        "programs": programs,
    }


def _stub_sources() -> dict[str, bytes]:
    """The stub's own source files: a device folder carries the program that runs it."""
    folder = resources.files("halpc_stub")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith(".py")}


def _common(trunk: Trunk, cluster: Cluster, block: int) -> dict[str, Any]:
    """What the manifest says of the bundle as a whole: versions, devices and their costs;
    `block`: the NCHWc block its strips were optimized for, or 0 (plain strips)."""
    from halpc.planner.context import context  # the planner builds on emit

    costs = context(trunk, cluster)
    target = cluster_target(cluster)
    return {
        "format": FORMAT,
        "created_by": f"halpc {halpc.__version__}",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        # What the strips were made exact for; every device must be it (checked at connect).
        "target": {"name": target.name, "arch": target.arch, "nchwc": target.nchwc,
                   "exact": all((d.arch or target.name) == target.name for d in cluster.devices),
                   # The strips are ORT's optimized graphs, their filters reordered for this block.
                   **({"optimized": True, "nchwc_block": block} if block else {})},
        "devices": [
            {"name": d.name, "host": d.host or d.source, "address": d.address, "threads": d.threads,
             "arch": d.arch or target.name, **({"source": True} if d.source else {})}
            for d in cluster.devices
        ],
        "cluster": cluster.to_dict(),
        "cost": {  # what the planner assumed of each device (for `halpc run` to compare)
            name: {"gmacs": costs.speeds[name], "run_overhead_ms": costs.overheads.get(name, 0.0) * 1e3,
                   "weight_gbps": costs.weight_rates.get(name),
                   "message_overhead_ms": costs.message_seconds(name) * 1e3,
                   **({"int8_gmacs": costs.int8_speeds[name]} if name in costs.int8_speeds else {}),
                   **({"layer_fixed_ms": _per_layer_ms(costs.layer_fixed[name])} if name in costs.layer_fixed else {})}
            for name in cluster.names
        },
    }


def _per_layer_ms(prefix: tuple[float, ...]) -> list[float]:
    """Each layer's fixed ms from the cost model's prefix sums (`cost.fixed_prefix`)."""
    return [(b - a) * 1e3 for a, b in zip(prefix, prefix[1:])]


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
