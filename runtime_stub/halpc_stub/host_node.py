"""What the host's node keeps besides running tasks: the devices' pongs, timelines and link
probes; and what a finished task gives back (`TaskResult`) or a device fault (`Fault`)."""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from halpc_stub import clock, wire
from halpc_stub.errors import BundleError
from halpc_stub.node import Node


MIN_PROBE_GAP_S = 0.0005  # 64 kB in less would be a link faster than 1 Gbit/s


class RunError(BundleError):
    """A device did not answer or did not deliver its rows in time."""


@dataclass
class TaskResult:
    task: int
    outputs: dict[str, np.ndarray]
    start: float  # host clock, seconds
    end: float
    plan: str = "default"  # the id of the bundle plan it ran (or, when `unsplit`, was chosen)
    # Measured timeline, host clock: {"device", "kind", "start", "end", "label", "peer",
    # "bytes"}; the devices' parts arrive just after the task ends and are merged in as they
    # come (at the latest when `stream` ends).
    events: list[dict[str, Any]] = field(default_factory=list)
    fallback: str | None = None  # why it did not run the plan chosen for it (a device down)
    unsplit: bool = False  # computed by the host alone with the unsplit model

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Fault:
    """A task the host gave up because `device` sent nothing for `waited_s` (> `bound_s`)."""

    task: int
    device: str
    at: float  # host clock
    waited_s: float
    bound_s: float
    expected_s: float


class HostNode(Node):
    def __init__(self, *args: Any, session_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_id = session_id
        self.pongs: dict[str, dict[str, Any]] = {}
        self.timelines: dict[tuple[int, str], list[list[Any]]] = {}
        self.probed: list[tuple[str, int, float]] = []  # (device, bytes, seconds between parts)
        self.given_up: OrderedDict[int, None] = OrderedDict()  # tasks whose devices' timelines are dropped
        self.next_probe = 0

    def _ours(self, header: dict[str, Any]) -> None:
        if header["from"] not in self.addresses or header.get("session") != self.session_id:
            raise wire.Rejected(f"{header['kind']} from {header['from']!r} for another session")

    def on_pong(self, header: dict[str, Any], frames: list[Any]) -> None:
        self._ours(header)
        self.pongs[header["from"]] = {**header, "received": clock.now()}

    def on_timeline(self, header: dict[str, Any], frames: list[Any]) -> None:
        self._ours(header)
        events = header.get("events")
        if not isinstance(events, list):
            raise wire.Rejected("timeline without events")
        _, task = wire.task_of(header)
        if task in self.given_up:
            return
        self.timelines[(task, header["from"])] = events

    def on_probed(self, header: dict[str, Any], frames: list[Any]) -> None:
        self._ours(header)
        size, gap = header.get("bytes"), header.get("gap")
        if type(size) is not int or not isinstance(gap, (int, float)) or size <= 0 or gap < 0:
            raise wire.Rejected("probe answer without bytes and gap")
        self.probed.append((header["from"], size, float(gap)))

    def probe(self, device: str, nbytes: int = 64 * 1024, lead: int = 48 * 1024) -> None:
        """Measure `device`'s link: a `lead` message, then `nbytes` right behind it. The answer
        lands in `probed` (see `take_probes`). Together they stay under what a slow link's
        router buffers (~150 kB at 10 Mbit/s); more would be dropped and retransmitted."""
        seq, self.next_probe = self.next_probe, self.next_probe + 1
        for part, size in ((0, lead), (1, nbytes)):
            header = wire.encode({"kind": "probe", "from": self.name, "session": self.session_id,
                                  "seq": seq, "part": part})
            self.send(device, header, np.zeros(size, np.uint8))

    def take_probes(self) -> list[tuple[str, float]]:
        """(device, Mbit/s) of every probe answered since the last call; NaN where the answer
        says nothing about the link: the device found more waiting when it read the first part
        (it answers gap 0), or a gap under MIN_PROBE_GAP_S (it read both parts in one go: it was
        busy when they came)."""
        self.receive(timeout_ms=0)
        found = [(device, size * 8 / gap / 1e6 if gap >= MIN_PROBE_GAP_S else math.nan)
                 for device, size, gap in self.probed]
        self.probed.clear()
        return found

    def merge_timelines(self, results: list[TaskResult], devices: Callable[[TaskResult], list[str]],
                        offsets: dict[str, float], timeout_s: float) -> list[TaskResult]:
        """Merge the timelines of each result's `devices` into it once all have come (waiting up
        to `timeout_s` for them), on the host's clock (`offsets`); the results still waiting."""
        deadline = clock.now() + timeout_s
        waiting = []
        for result in results:
            expected = devices(result)
            while not all((result.task, d) in self.timelines for d in expected) and clock.now() < deadline:
                self.receive(timeout_ms=20)
            if not all((result.task, d) in self.timelines for d in expected) and timeout_s == 0:
                waiting.append(result)
                continue
            events = list(result.events)
            for device in expected:
                offset = offsets.get(device, 0.0)
                for raw in self.timelines.pop((result.task, device), []):
                    if (isinstance(raw, list) and len(raw) == 6 and isinstance(raw[0], str)
                            and isinstance(raw[3], str) and (raw[4] is None or isinstance(raw[4], str))
                            and all(isinstance(v, (int, float)) for v in (raw[1], raw[2], raw[5]))):
                        events.append(event_dict(device, [raw[0], raw[1] - offset, raw[2] - offset, *raw[3:]]))
            result.events = join_sends(events)
        return waiting


def event_dict(device: str, raw: list[Any]) -> dict[str, Any]:
    kind, start, end, label, peer, nbytes = raw
    return {"device": device, "kind": kind, "start": start, "end": end, "label": label, "peer": peer,
            "bytes": nbytes}


def join_sends(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
