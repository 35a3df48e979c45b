"""The host's side of a run: `HostSession(bundle).run(inputs) -> outputs`, and streams of tasks.

The host runs its own program (send strips, compute its part and HALP's overlap zones, receive
rows, run the tail) while the devices run theirs. `stream()` keeps several tasks in flight, so
one task's transfers overlap another's compute. Before the first task the host pings every
device: a device that does not answer, or runs another plan or ONNX Runtime build, is an error
that names it.

    with HostSession("bundle/") as host:
        outputs = host.run({"input": x})
        for result in host.stream(frames, in_flight=2):
            print(result.task, result.latency_s)
"""
from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from halpc_stub import wire
from halpc_stub.errors import BundleError
from halpc_stub.executor import host_store
from halpc_stub.manifest import load_manifest
from halpc_stub.node import Node, Task
from halpc_stub.session import load_sessions


class RunError(BundleError):
    """A device did not answer or did not deliver its rows in time."""


@dataclass
class TaskResult:
    task: int
    outputs: dict[str, np.ndarray]
    start: float  # host clock, seconds
    end: float
    # Measured timeline, host clock: {"device", "kind", "start", "end", "label", "peer"}; the
    # devices' parts arrive just after the task ends and are filled in by then `stream` ends.
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.end - self.start


class _HostNode(Node):
    def __init__(self, *args: Any, session_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_id = session_id
        self.pongs: dict[str, dict[str, Any]] = {}
        self.traces: dict[tuple[int, str], list[list[Any]]] = {}

    def _ours(self, header: dict[str, Any]) -> None:
        if header["from"] not in self.addresses or header.get("session") != self.session_id:
            raise wire.Rejected(f"{header['kind']} from {header['from']!r} for another session")

    def on_pong(self, header: dict[str, Any], frames: list[Any]) -> None:
        self._ours(header)
        self.pongs[header["from"]] = {**header, "received": time.time()}

    def on_trace(self, header: dict[str, Any], frames: list[Any]) -> None:
        self._ours(header)
        events = header.get("events")
        if not isinstance(events, list):
            raise wire.Rejected("trace without events")
        self.traces[(header["task"], header["from"])] = events


class HostSession:
    def __init__(self, bundle: str | Path, bind: str | None = None, timeout_s: float = 30.0,
                 check_files: bool = True) -> None:
        self.manifest = load_manifest(bundle)
        host = self.manifest.host
        if check_files:
            self.manifest.check_files(host.name)
        self.timeout_s = timeout_s
        self.workers = [d.name for d in self.manifest.devices if not d.host and self.manifest.program(d.name)]
        sessions = load_sessions(self.manifest, host.name)
        self.node = _HostNode(self.manifest, host.name, sessions.__getitem__, bind,
                              session_id=secrets.token_hex(8))
        self.offsets: dict[str, float] = {}  # device clock minus host clock
        self.connected = False
        self.next_task = 0

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.node.close()

    def connect(self, timeout_s: float | None = None, watch: Callable[[], None] | None = None) -> None:
        """Ping every device that has work until it answers; check its plan and ORT build.

        `watch` is called while waiting (e.g. to raise when a local stub process has died)."""
        node = self.node
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.time() + timeout_s
        pinged: dict[str, float] = {}
        while missing := [d for d in self.workers if d not in node.pongs]:
            now = time.time()
            if now > deadline:
                raise RunError(
                    f"device(s) {', '.join(missing)} did not answer within {timeout_s:g} s at "
                    f"{', '.join(node.addresses[d] for d in missing)}; start `halpc-stub` there "
                    "(each device folder has launch.sh)"
                )
            for device in missing:
                if now - pinged.get(device, 0.0) > 1.0:
                    pinged[device] = now
                    node.send(device, wire.encode({"kind": "ping", "from": node.name,
                                                   "session": node.session_id, "t": now}))
            if watch:
                watch()
            node.receive(timeout_ms=50)
        for device, pong in node.pongs.items():
            if pong.get("plan") != node.plan:
                raise RunError(
                    f"{device} runs plan {str(pong.get('plan'))[:12]}, this bundle is plan "
                    f"{node.plan[:12]}; copy the bundle's {device}/ folder to it again and restart its stub"
                )
            if pong.get("onnxruntime") != onnxruntime.__version__:
                raise RunError(
                    f"{device} runs onnxruntime {pong.get('onnxruntime')}, the host "
                    f"{onnxruntime.__version__}; outputs are bit-exact only with one build on every device"
                )
        for device in self.workers:
            self.offsets[device] = self._clock_offset(device)
        self.connected = True

    def _clock_offset(self, device: str, rounds: int = 5) -> float:
        """The device's clock minus the host's, from the ping with the shortest round trip."""
        node = self.node
        best: tuple[float, float] | None = None
        for _ in range(rounds):
            sent = time.time()
            node.send(device, wire.encode({"kind": "ping", "from": node.name,
                                           "session": node.session_id, "t": sent}))
            deadline = sent + 1.0
            while time.time() < deadline:
                node.receive(timeout_ms=20)
                pong = node.pongs.get(device)
                if pong is not None and pong.get("echo") == sent and isinstance(pong.get("t"), (int, float)):
                    rtt = pong["received"] - sent
                    if best is None or rtt < best[0]:
                        best = (rtt, pong["t"] - (sent + pong["received"]) / 2)
                    break
        return best[1] if best else 0.0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one task, bit-exact to the unsplit model's."""
        (result,) = self.stream([inputs], in_flight=1)
        return result.outputs

    def stream(self, inputs: Iterable[dict[str, np.ndarray]], in_flight: int = 2) -> Iterator[TaskResult]:
        """Results in input order, with up to `in_flight` tasks running at once."""
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        if not self.connected:
            self.connect()
        node = self.node
        pending = iter(inputs)
        active: deque[Task] = deque()
        done: list[TaskResult] = []
        exhausted = False
        while True:
            while not exhausted and len(active) < in_flight:
                arrays = next(pending, None)
                if arrays is None:
                    exhausted = True
                    break
                store = host_store(node.specs, self.manifest.data["spatial_input"], arrays)
                active.append(node.start((node.session_id, self.next_task), store))
                self.next_task += 1
            if not active:
                break
            node.advance()
            while active and active[0].finished is not None:
                task = active.popleft()
                result = TaskResult(task.key[1], task.results, task.started, task.finished)
                result.events = self._host_events(task)
                done.append(result)
                yield result
            if active and not node.receive(timeout_ms=20):
                self._check_progress(active)
        self._await_traces(done)

    def _check_progress(self, active: deque[Task]) -> None:
        now = time.time()
        for task in active:
            if task.waiting is not None and now - task.progressed > self.timeout_s:
                step = task.waiting
                raise RunError(
                    f"task {task.key[1]}: no {step['tensor']} rows {step['rows'][0]}..{step['rows'][1]} "
                    f"from {step['from']} for {self.timeout_s:g} s; is its stub running and reachable "
                    f"at {self.node.addresses[step['from']]}?"
                )

    def _host_events(self, task: Task) -> list[dict[str, Any]]:
        return [_event(self.node.name, e) for e in task.events]

    def _await_traces(self, results: list[TaskResult], timeout_s: float = 2.0) -> None:
        """Wait briefly for the devices' timelines and merge them into each result."""
        node = self.node
        deadline = time.time() + timeout_s
        wanted = {(r.task, d) for r in results for d in self.workers}
        while not wanted <= node.traces.keys() and time.time() < deadline:
            node.receive(timeout_ms=20)
        for result in results:
            events = list(result.events)
            for device in self.workers:
                offset = self.offsets.get(device, 0.0)
                for raw in node.traces.pop((result.task, device), []):
                    if isinstance(raw, list) and len(raw) == 5:
                        raw = [raw[0], raw[1] - offset, raw[2] - offset, raw[3], raw[4]]
                        events.append(_event(device, raw))
            result.events = _join_sends(events)


def _event(device: str, raw: list[Any]) -> dict[str, Any]:
    kind, start, end, label, peer = raw
    return {"device": device, "kind": kind, "start": start, "end": end, "label": label, "peer": peer}


def _join_sends(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A send lasts until its receiver had the rows ("arrive" events, then dropped)."""
    arrivals = {(e["peer"], e["device"], e["label"]): e["start"] for e in events if e["kind"] == "arrive"}
    out = []
    for e in events:
        if e["kind"] == "arrive":
            continue
        if e["kind"] == "send":
            e = {**e, "end": max(e["end"], arrivals.get((e["device"], e["peer"], e["label"]), e["end"]))}
        out.append(e)
    return sorted(out, key=lambda e: (e["start"], e["device"]))
