"""A device's predicted peak memory under a plan, and the devices a plan gives more than they have.

A device's weights are in memory once (its folder's weights file, mapped and handed to every
session: halpc.emit.weights), but each strip is one ONNX Runtime session, and each session
still makes its own copies: on a target with NCHWc kernels (x86-64) a reordered copy of every
convolution's filter and more; without them (ARM64) little, but then each session's arena
keeps, after its first run, about two of its largest activations. The factors below are fitted
to `benchmarks/memory.py` on x86-64 (ONNX Runtime 1.2x; VGG-16, ResNet-18 and YOLOv8n, halp and
even over 3 devices) and predict what it measures within the margin given in
benchmarks/README.md; other models and ORT builds will differ by more.
"""
from __future__ import annotations

from dataclasses import dataclass

from halpc.analyse.strips import block_io
from halpc.planner.context import Context
from halpc.planner.plan import Plan

RUNTIME_MB = 64.0  # the stub's process with onnxruntime, numpy and pyzmq loaded, no session (measured)
# Resident bytes a session adds per byte of its weights, beyond the shared copy: ORT's NCHWc
# filter copies and what its kernels prepack, or (no NCHWc) what the kernels prepack alone.
SESSION_FACTOR = {True: 1.85, False: 0.35}


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
    trunk, nchwc = ctx.trunk, ctx.target.nchwc
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
            copies[strip.device] += block_weights * SESSION_FACTOR[nchwc]
            largest = block_largest * share
            arenas[strip.device] += 0 if nchwc else largest  # each session keeps its arena
            rows[strip.device] = max(rows[strip.device], largest)  # a run's transient
    weights = {d: sum(trunk.weight_bytes[p] for p in held[d]) + copies[d] for d in ctx.cluster.names}
    weights[ctx.cluster.host.name] += _tail_weight_bytes(ctx) * (1 + SESSION_FACTOR[False])
    return {d: DeviceMemory(weights[d] / 1e6, (arenas[d] + rows[d]) / 1e6) for d in ctx.cluster.names}


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
