"""A device that serves hosts: starts a task when its first rows arrive, answers pings, reports.

A device serves the host of every plan it has work in: one host, or in a bundle of several
sources (cameras) each source that has a plan here. A task is identified by its host's session id
and the task number. Each host has its current session, the one it pinged with last: rows of it
for a task this device has not seen start the task; rows for one it finished or was told to drop
are late and dropped, and so are rows of an older session or of another host's. After each task
the device sends its host the timeline it measured (`timeline`), which `halpc run` shows beside the
prediction. A host that restarts (a new session id) makes the device drop that host's unfinished
tasks, and only those; a host that gives a task up (`cancel`) makes it drop that task. When tasks
of several sources can run, they take turns (`Node.advance`), so that no source waits behind
another's backlog.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from halpc_stub import clock, wire
from halpc_stub.manifest import Manifest
from halpc_stub.session import this_target
from halpc_stub.node import MAX_LIVE_TASKS, Node, PlanPart, TaskKey
from halpc_stub.store import RowStore

log = logging.getLogger("halpc_stub")


class StubNode(Node):
    def __init__(self, manifest: Manifest, device: str, session: Callable[[str], Any],
                 bind: str | None = None, key: str | None = None) -> None:
        super().__init__(manifest, device, session, bind, key)
        self.target = this_target(manifest)  # what the pong tells the host: arch, NCHWc, onnxruntime
        several = bool(manifest.sources)
        self.hosts = list(dict.fromkeys(p.source for p in self.plans.values() if p.program or not several))
        self.current: dict[str, str] = {}  # host -> its current session
        self.served_by: Counter[str] = Counter()  # tasks served per source
        self.probe_marks: dict[tuple[str, int], float | None] = {}  # first part's arrival (None: late)

    def _host(self, header: dict[str, Any]) -> str:
        """The sender, if it is a host this device serves."""
        if header["from"] not in self.hosts:
            raise wire.Rejected(f"{header['kind']} from {header['from']!r}, not the host "
                                f"{' or '.join(map(repr, self.hosts))}")
        return header["from"]

    def _owner(self, session: str) -> str | None:
        return next((host for host, current in self.current.items() if current == session), None)

    def _adopt(self, host: str, session: str) -> None:
        owner = self._owner(session)
        if owner not in (None, host):
            raise wire.Rejected(f"session {session[:16]!r} of {host!r} is the current one of {owner!r}")
        if session != self.current.get(host):
            stale = [key for key, task in self.tasks.items() if task.source == host and key[0] != session]
            if stale:
                log.warning("%s: a new session of %s; dropping %d unfinished task(s)", self.name, host, len(stale))
            for key in stale:
                del self.tasks[key]
            self.current[host] = session

    def on_ping(self, header: dict[str, Any], frames: list[Any]) -> None:
        host = self._host(header)
        session, _ = wire.task_of({**header, "task": 0})
        self._adopt(host, session)
        self.send(host, wire.encode({
            "kind": "pong", "from": self.name, "session": session, "bundle": self.bundle_checksum,
            **self.target, "t": clock.now(), "echo": header.get("t"),
        }))

    def on_probe(self, header: dict[str, Any], frames: list[Any]) -> None:
        arrived = clock.now()
        host = self._host(header)
        session, _ = wire.task_of({**header, "task": 0})
        seq, part, size = wire.probe_part(header, frames)
        if part == 0:
            if len(self.probe_marks) >= 16:
                self.probe_marks.pop(next(iter(self.probe_marks)))
            # With more already waiting, this part came while the device was busy: its time is
            # when it was read, not when it arrived, and the gap would read a link far too fast
            # (1 Gbit/s seen on a 100 Mbit/s link). The answer then says so: gap 0.
            self.probe_marks[(session, seq)] = None if self.waiting() else arrived
            return
        if (session, seq) not in self.probe_marks:
            raise wire.Rejected(f"probe {seq} part 1 without part 0")
        first = self.probe_marks.pop((session, seq))
        self.send(host, wire.encode({
            "kind": "probed", "from": self.name, "session": session, "seq": seq,
            "bytes": size, "gap": 0.0 if first is None else arrived - first,
        }))

    def on_cancel(self, header: dict[str, Any], frames: list[Any]) -> None:
        host = self._host(header)
        key = wire.task_of(header)
        task = self.tasks.get(key)
        owner = task.source if task else self._owner(key[0])
        if owner not in (None, host):
            raise wire.Rejected(f"cancel from {host!r} of task {key[1]} of {owner!r}")
        if task:
            log.warning("%s: the host gave task %d up", self.name, key[1])
        self.forget(key)

    def unknown_task(self, key: TaskKey, plan: PlanPart):
        # A host pings before its first rows: rows of another session than the one that pinged
        # last are late ones of an old host, and must not end the current host's tasks.
        current = self.current.get(plan.source)
        if current not in (None, key[0]):
            raise wire.Rejected(f"rows of host session {key[0][:16]!r}, not the current one of {plan.source!r}")
        self._adopt(plan.source, key[0])
        if len(self.tasks) >= MAX_LIVE_TASKS:
            # Far more than hosts keep in flight: the oldest of the source with the most waits
            # for rows that will not come (its cancel was lost with a link); it goes, so that the
            # device keeps serving, and one flooding source cannot push out another's tasks.
            busiest = Counter(task.source for task in self.tasks.values()).most_common(1)[0][0]
            oldest = next(k for k, task in self.tasks.items() if task.source == busiest)
            log.warning("%s: %d tasks in flight; dropping the oldest of %s, task %d", self.name, len(self.tasks),
                        busiest, oldest[1])
            self.forget(oldest)
        return self.start(key, RowStore(plan.specs), plan)

    def serve(self, stopping: Callable[[], bool]) -> None:
        """Run tasks as their rows arrive until `stopping()` is true."""
        while not stopping():
            if self.receive(timeout_ms=100):
                for task in self.advance():
                    self.served_by[task.source] += 1
                    self.send(task.source, wire.encode({
                        "kind": "timeline", "from": self.name, "source": task.source, "session": task.key[0],
                        "task": task.key[1], "events": task.events,
                    }))

    @property
    def served(self) -> int:
        """Tasks served, all sources together."""
        return sum(self.served_by.values())

    def served_line(self) -> str:
        """'40 tasks', or for several sources '40 tasks (cam-1: 20, cam-2: 20)'."""
        per_source = ", ".join(f"{host}: {self.served_by[host]}" for host in self.hosts)
        return f"{self.served} tasks" + (f" ({per_source})" if len(self.hosts) > 1 else "")
