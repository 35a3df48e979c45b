"""Predicted time of a schedule: every device's program played out (`play`) on a model of the cluster.

The programs are the ones `halpc compile` writes into the manifest and the devices run, so the
prediction is of exactly what will execute. The model:

- a `run` step takes the strip's multiply-accumulates divided by the device's GMAC/s, plus the
  fixed cost of a run and the time to read its weights, where the device's profile gives them;
  where the profile was measured on the same model, also each of the block's layers' own fixed
  cost per run (the intercept of its time against its rows: a thin strip pays it again);
- a `send` leaves at once (the device goes on with its program) but occupies the sender's link:
  one device's sends go out one after the other, each taking bytes / bandwidth, and arrive one
  link latency after they are sent;
- a `recv` waits until its message has arrived;
- where a device's profile measured it, sending or taking in a message also costs the device
  its fixed per-message time (header, ZeroMQ, checks);
- the task ends when the host has run the tail and has every output.

Small enough to check by hand; tests do exactly that.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from halpc.inputs.cluster import Cluster

Step = dict[str, Any]


@dataclass(frozen=True)
class Event:
    device: str
    kind: str  # "compute" | "send" | "wait"
    start: float  # seconds from the start of the task
    end: float
    label: str
    peer: str | None = None


@dataclass(frozen=True)
class Prediction:
    latency_s: float  # until the host has every output
    makespan_s: float  # until the last device is done
    events: tuple[Event, ...] = field(default=())

    def busy(self, device: str, kind: str = "compute") -> float:
        return sum(e.end - e.start for e in self.events if e.device == device and e.kind == kind)


def step_seconds(step: Step, gmacs: float, overhead_s: float = 0.0, weight_gbps: float | None = None,
                 int8_gmacs: float | None = None, layer_fixed: tuple[float, ...] | None = None) -> float:
    """A run's time on a device: its MACs at the device's speed (those of integer convolutions at
    its int8 speed, where known), the fixed cost of a run, and, where the device's profile
    measured it, reading the strip's weights from memory (what dominates a thin strip of a layer
    with large weights) and the fixed costs of the layers the run computes (`layer_fixed`: see
    `fixed_prefix`; the step's `layers` are the block's positions [start, stop))."""
    integer = step.get("int8_macs", 0)
    seconds = (step["macs"] - integer) / (gmacs * 1e9) + integer / ((int8_gmacs or gmacs) * 1e9) + overhead_s
    if weight_gbps:
        seconds += step.get("weights", 0) / (weight_gbps * 1e9)
    if layer_fixed and "layers" in step:
        start, stop = step["layers"]
        seconds += layer_fixed[stop] - layer_fixed[start]
    return seconds


def fixed_prefix(fixed_ms: Mapping[int, float], layers: int, overhead_s: float = 0.0) -> tuple[float, ...]:
    """Seconds of fixed cost of the trunk's layers before each position (len `layers` + 1), from
    a profile's per-layer fixed ms by position. Each layer was timed as a model of its own, so
    its fixed cost holds one run's overhead, which a block pays once (`overhead_s`): less that."""
    prefix = [0.0]
    for position in range(layers):
        prefix.append(prefix[-1] + max(0.0, fixed_ms.get(position, 0.0) / 1e3 - overhead_s))
    return tuple(prefix)


def message_bytes(tensors: dict[str, dict[str, Any]], tensor: str, rows: list[int]) -> int:
    spec = tensors[tensor]
    return _row_bytes(tuple(spec["shape"]), spec["row_axis"], spec["dtype"]) * (rows[1] - rows[0])


@lru_cache(maxsize=None)
def _row_bytes(shape: tuple[int, ...], row_axis: int, dtype: str) -> int:
    return int(np.prod([d for a, d in enumerate(shape) if a != row_axis])) * np.dtype(dtype).itemsize


def play(
    programs: dict[str, list[Step]],
    host: str,
    compute_seconds: Callable[[str, Step], float],
    transfer: Callable[[str, str, int], tuple[float, float]],
    tensors: dict[str, dict[str, Any]],
    message_seconds: Callable[[str], float] | None = None,
    record: bool = True,
) -> Prediction:
    """Play the programs out. `transfer(sender, receiver, bytes)` gives (link busy s, latency s);
    `message_seconds(device)`, the device's own time to send or take in one message. Without
    `record` the prediction has no events (the planner only needs the times)."""
    pc = {d: 0 for d in programs}
    clock = {d: 0.0 for d in programs}
    link_free = {d: 0.0 for d in programs}
    arrivals: dict[tuple[str, str, str, tuple[int, int]], float] = {}
    events: list[Event] = []
    pending = set(programs)
    while pending:
        progressed = False
        for device in sorted(pending):
            program = programs[device]
            while pc[device] < len(program):
                step = program[pc[device]]
                op = step["op"]
                if op == "send":
                    if message_seconds:
                        clock[device] += message_seconds(device)
                    size = message_bytes(tensors, step["tensor"], step["rows"])
                    busy, latency = transfer(device, step["to"], size)
                    start = max(clock[device], link_free[device])
                    link_free[device] = start + busy
                    key = (device, step["to"], step["tensor"], tuple(step["rows"]))
                    arrivals[key] = start + busy + latency
                    if record:
                        events.append(Event(device, "send", start, start + busy, step["tensor"], step["to"]))
                elif op == "recv":
                    key = (step["from"], device, step["tensor"], tuple(step["rows"]))
                    if key not in arrivals:
                        break  # its sender has not got there yet
                    if arrivals[key] > clock[device]:
                        if record:
                            events.append(Event(device, "wait", clock[device], arrivals[key], step["tensor"],
                                                step["from"]))
                        clock[device] = arrivals[key]
                    if message_seconds:
                        clock[device] += message_seconds(device)
                elif op in ("run", "tail"):
                    seconds = compute_seconds(device, step)
                    label = step["model"]
                    if record:
                        events.append(Event(device, "compute", clock[device], clock[device] + seconds, label))
                    clock[device] += seconds
                pc[device] += 1
                progressed = True
            if pc[device] == len(program):
                pending.discard(device)
        if pending and not progressed:
            raise AssertionError(f"schedule deadlock in the cost model: {sorted(pending)}")
    return Prediction(clock[host], max(clock.values()), tuple(events))


def cluster_transfer(cluster: Cluster, rates: Mapping[str, float] | None = None
                     ) -> Callable[[str, str, int], tuple[float, float]]:
    """Link time and latency of a message. `rates` (Mbit/s per device, e.g. measured) give a
    device's own link: a message between two devices crosses both, at the slower one's rate;
    devices not in `rates` keep the cluster file's link."""
    def transfer(sender: str, receiver: str, size: int) -> tuple[float, float]:
        link = cluster.link(sender, receiver)
        mbps = link.bandwidth_mbps
        if rates and (sender in rates or receiver in rates):
            mbps = min(rates.get(sender, math.inf), rates.get(receiver, math.inf))
        return size * 8 / (mbps * 1e6), link.latency_ms / 1e3

    return transfer
