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


MIN_PROBE_GAP_S = 0.0005  # 64 kB in less would be a link faster than 1 Gbit/s


class RunError(BundleError):
    """A device did not answer or did not deliver its rows in time."""


@dataclass
class TaskResult:
    task: int
    outputs: dict[str, np.ndarray]
    start: float  # host clock, seconds
    end: float
    plan: str = "default"  # the id of the bundle plan it ran
    # Measured timeline, host clock: {"device", "kind", "start", "end", "label", "peer",
    # "bytes"}; the devices' parts arrive just after the task ends and are merged in as they
    # come (at the latest when `stream` ends).
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
        self.probed: list[tuple[str, int, float]] = []  # (device, bytes, seconds between parts)

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

    def on_probed(self, header: dict[str, Any], frames: list[Any]) -> None:
        self._ours(header)
        size, gap = header.get("bytes"), header.get("gap")
        if type(size) is not int or not isinstance(gap, (int, float)) or size <= 0 or gap < 0:
            raise wire.Rejected("probe answer without bytes and gap")
        self.probed.append((header["from"], size, float(gap)))


class HostSession:
    def __init__(self, bundle: str | Path, bind: str | None = None, timeout_s: float = 30.0,
                 check_files: bool = True) -> None:
        self.manifest = load_manifest(bundle)
        host = self.manifest.host
        if check_files:
            self.manifest.check_files(host.name)
        self.timeout_s = timeout_s
        self.workers = self.manifest.workers
        sessions = load_sessions(self.manifest, host.name)
        self.node = _HostNode(self.manifest, host.name, sessions.__getitem__, bind,
                              session_id=secrets.token_hex(8))
        self.offsets: dict[str, float] = {}  # device clock minus host clock
        self.connected = False
        self.next_task = 0
        self.next_probe = 0

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

    def stream(self, inputs: Iterable[dict[str, np.ndarray]], in_flight: int = 2,
               choose: Callable[[int], str] | None = None) -> Iterator[TaskResult]:
        """Results in input order, with up to `in_flight` tasks running at once.

        `choose(task)` names the plan each task runs (default: the bundle's default plan); a
        task runs under one plan from start to end. A result is yielded as soon as the task
        is done, before the next one starts; the devices' timelines are merged into it as
        they arrive."""
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        if not self.connected:
            self.connect()
        node = self.node
        pending = iter(inputs)
        active: deque[Task] = deque()
        unmerged: list[TaskResult] = []
        exhausted = False
        while True:
            while not exhausted and len(active) < in_flight:
                arrays = next(pending, None)
                if arrays is None:
                    exhausted = True
                    break
                plan = node.plan_by_id(choose(self.next_task)) if choose else node.default
                store = host_store(plan.specs, plan.manifest.data["spatial_input"], arrays)
                active.append(node.start((node.session_id, self.next_task), store, plan))
                self.next_task += 1
            if not active:
                break
            node.advance()
            while active and active[0].finished is not None:
                task = active.popleft()
                result = TaskResult(task.key[1], task.results, task.started, task.finished, task.plan.id,
                                    self._host_events(task))
                unmerged.append(result)
                yield result
            unmerged = self._merge_traces(unmerged)
            if active and not node.receive(timeout_ms=20):
                self._check_progress(active)
        self._merge_traces(unmerged, timeout_s=2.0)

    def probe(self, device: str, nbytes: int = 64 * 1024, lead: int = 48 * 1024) -> None:
        """Measure `device`'s link: a `lead` message, then `nbytes` right behind it. The answer
        lands in `probed` (see `take_probes`). Together they stay under what a slow link's
        router buffers (~150 kB at 10 Mbit/s); more would be dropped and retransmitted."""
        seq, self.next_probe = self.next_probe, self.next_probe + 1
        for part, size in ((0, lead), (1, nbytes)):
            header = wire.encode({"kind": "probe", "from": self.node.name, "session": self.node.session_id,
                                  "seq": seq, "part": part})
            self.node.send(device, header, np.zeros(size, np.uint8))

    def take_probes(self) -> list[tuple[str, float]]:
        """(device, Mbit/s) of every probe answered since the last call."""
        self.node.receive(timeout_ms=0)
        # A gap under MIN_PROBE_GAP_S means the device read both parts in one go (it was busy
        # when they came): it says nothing about the link.
        found = [(device, size * 8 / gap / 1e6) for device, size, gap in self.node.probed if gap >= MIN_PROBE_GAP_S]
        self.node.probed.clear()
        return found

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

    def _merge_traces(self, results: list[TaskResult], timeout_s: float = 0.0) -> list[TaskResult]:
        """Merge the devices' timelines into every result whose devices have all sent theirs
        (waiting up to `timeout_s` for them); the results still waiting."""
        node = self.node
        deadline = time.time() + timeout_s
        waiting = []
        for result in results:
            devices = [d for d in self.workers if node.plan_by_id(result.plan).manifest.program(d)]
            while not all((result.task, d) in node.traces for d in devices) and time.time() < deadline:
                node.receive(timeout_ms=20)
            if not all((result.task, d) in node.traces for d in devices) and timeout_s == 0:
                waiting.append(result)
                continue
            events = list(result.events)
            for device in devices:
                offset = self.offsets.get(device, 0.0)
                for raw in node.traces.pop((result.task, device), []):
                    if isinstance(raw, list) and len(raw) == 6:
                        events.append(_event(device, [raw[0], raw[1] - offset, raw[2] - offset, *raw[3:]]))
            result.events = _join_sends(events)
        return waiting


def _event(device: str, raw: list[Any]) -> dict[str, Any]:
    kind, start, end, label, peer, nbytes = raw
    return {"device": device, "kind": kind, "start": start, "end": end, "label": label, "peer": peer,
            "bytes": nbytes}


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
