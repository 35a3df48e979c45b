"""A device's predicted peak memory under a plan, and the devices a plan gives more than they have.

A device's weights are in memory once (its folder's weights file, mapped and handed to every
session: halpc.emit.weights), but each strip is one ONNX Runtime session, and a session may
make its own copies: one that rewrites plain strips to NCHWc (x86-64) reorders every
convolution's filter for itself; strips shipped as ORT's NCHWc graphs (emit.ort_graphs) and
strips without NCHWc (ARM64) copy little, but then each session's arena keeps, after its first
run, about two of its largest activations. The factors below are fitted to
`benchmarks/memory.py` on x86-64 (ONNX Runtime 1.2x; VGG-16, ResNet-18 and YOLOv8n, halp and
even over 3 devices) and predict what it measures within the margin given in
benchmarks/README.md; other models and ORT builds will differ by more.
"""
from __future__ import annotations

from dataclasses import dataclass

from halpc.analyse.strips import block_io
from halpc.inputs.target import optimized_strips_block
from halpc.planner.context import Context
from halpc.planner.plan import Plan

RUNTIME_MB = 64.0  # the stub's process with onnxruntime, numpy and pyzmq loaded, no session (measured)
# How a device's sessions run its strips: "nchwc", plain strips that ORT rewrites to NCHWc per
# session; "optimized", strips shipped as ORT's NCHWc graphs (emit.ort_graphs); "plain", no NCHWc.
# Resident bytes a session adds per byte of its weights, beyond the shared copy (ORT's reordered
# filters, what its kernels prepack), and whether its arena keeps its activations after a run.
SESSION_FACTOR = {"nchwc": 1.85, "optimized": 0.0, "plain": 0.35}
KEEPS_ARENA = {"nchwc": False, "optimized": True, "plain": True}


@dataclass(frozen=True)
class DeviceMemory:
    weights_mb: float  # the device's weights once, and what each session copies of them
    activations_mb: float  # what the sessions' arenas keep after a run, and the largest strip's rows
    runtime_mb: float = RUNTIME_MB

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.activations_mb + self.runtime_mb


def device_memory(ctx: Context, plan: Plan) -> dict[str, DeviceMemory]:
    """Predicted peak resident memory of each device of the cluster running `plan`'s part (a
    device without strips: the bare runtime; the host also holds the tail's session)."""
    trunk, mode = ctx.trunk, session_mode(ctx)
    out_bytes = [_output_bytes(ctx, layer) for layer in trunk.layers]
    held: dict[str, set[int]] = {d: set() for d in ctx.cluster.names}  # layers whose weights it maps
    copies = {d: 0.0 for d in ctx.cluster.names}
    arenas = {d: 0.0 for d in ctx.cluster.names}
    rows = {d: 0.0 for d in ctx.cluster.names}
    for block in plan.blocks:
        span = range(block.start, block.stop)
        full_rows = trunk.tensors[block_io(trunk, block.start, block.stop).reference].rows
        block_weights = sum(trunk.weight_bytes[p] for p in span)
        block_largest = 2 * max(out_bytes[p] for p in span)  # an input and an output
        for strip in block.strips:
            share = (strip.rows[1] - strip.rows[0]) / full_rows
            held[strip.device].update(span)
            copies[strip.device] += block_weights * SESSION_FACTOR[mode]
            largest = block_largest * share
            arenas[strip.device] += largest if KEEPS_ARENA[mode] else 0
            rows[strip.device] = max(rows[strip.device], largest)  # a run's transient
    weights = {d: sum(trunk.weight_bytes[p] for p in held[d]) + copies[d] for d in ctx.cluster.names}
    weights[ctx.cluster.host.name] += _tail_weight_bytes(ctx) * (1 + SESSION_FACTOR["plain"])
    return {d: DeviceMemory(weights[d] / 1e6, (arenas[d] + rows[d]) / 1e6) for d in ctx.cluster.names}


def session_mode(ctx: Context) -> str:
    """How the devices' sessions will run their strips (see SESSION_FACTOR)."""
    if not ctx.target.nchwc:
        return "plain"
    return "optimized" if optimized_strips_block(ctx.cluster) else "nchwc"


def over_memory(ctx: Context, plan: Plan, found: dict[str, DeviceMemory] | None = None) -> dict[str, str]:
    """The devices whose `memory_mb` the plan's predicted peak (`found`, if already predicted)
    exceeds, each with a phrase that says by how much (a device the plan gives nothing need not
    run at all)."""
    if not ctx.memory_mb:
        return {}
    found = found or device_memory(ctx, plan)
    working = {*plan.devices(), ctx.cluster.host.name}
    return {d: f"needs {found[d].total_mb:.0f} MB, has {limit:g} MB" for d, limit in ctx.memory_mb.items()
            if d in working and found[d].total_mb > limit}


def _output_bytes(ctx: Context, layer) -> float:
    out = ctx.trunk.tensors[layer.outputs[0]]
    return float(out.rows * out.row_bytes)


def _tail_weight_bytes(ctx: Context) -> int:
    sizes = ctx.trunk.initializer_bytes
    return sum(sizes[name] for name in {name for node in ctx.trunk.tail for name in node.input if name in sizes})
