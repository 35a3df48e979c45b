"""A device that serves a host: starts a task when its first rows arrive, answers pings, reports.

A task is identified by the host's session id and the task number. Rows of the host session
that pinged last, for a task this device has not seen, start it; rows for one it finished or
was told to drop are late and dropped, and so are rows of an older session. After each task the
device sends the host the timeline it measured (`trace`), which `halpc run` shows beside the
prediction. A host that restarts (a new session id) makes the device drop the old session's
unfinished tasks; a host that gives a task up (`cancel`) makes it drop that task.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import onnxruntime

from halpc_stub import wire
from halpc_stub.manifest import Manifest
from halpc_stub.node import MAX_LIVE_TASKS, Node, PlanRun, TaskKey
from halpc_stub.store import RowStore

log = logging.getLogger("halpc_stub")


class StubNode(Node):
    def __init__(self, manifest: Manifest, device: str, session: Callable[[str], Any],
                 bind: str | None = None, key: str | None = None) -> None:
        super().__init__(manifest, device, session, bind, key)
        self.host = manifest.host.name
        self.current_session: str | None = None
        self.served = 0
        self.probe_marks: dict[tuple[str, int], float] = {}  # first part's arrival

    def _adopt(self, session: str) -> None:
        if session != self.current_session:
            stale = [key for key in self.tasks if key[0] != session]
            if stale:
                log.warning("%s: a new host session; dropping %d unfinished task(s)", self.name, len(stale))
            for key in stale:
                del self.tasks[key]
            self.current_session = session

    def on_ping(self, header: dict[str, Any], frames: list[Any]) -> None:
        if header["from"] != self.host:
            raise wire.Rejected(f"ping from {header['from']!r}, not the host {self.host!r}")
        session, _ = wire.task_of({**header, "task": 0})
        self._adopt(session)
        self.send(self.host, wire.encode({
            "kind": "pong", "from": self.name, "session": session, "plan": self.plan,
            "onnxruntime": onnxruntime.__version__, "t": time.time(), "echo": header.get("t"),
        }))

    def on_probe(self, header: dict[str, Any], frames: list[Any]) -> None:
        arrived = time.time()
        if header["from"] != self.host:
            raise wire.Rejected(f"probe from {header['from']!r}, not the host {self.host!r}")
        session, _ = wire.task_of({**header, "task": 0})
        seq, part, size = wire.probe_part(header, frames)
        if part == 0:
            if len(self.probe_marks) >= 16:
                self.probe_marks.pop(next(iter(self.probe_marks)))
            self.probe_marks[(session, seq)] = arrived
            return
        first = self.probe_marks.pop((session, seq), None)
        if first is None:
            raise wire.Rejected(f"probe {seq} part 1 without part 0")
        self.send(self.host, wire.encode({
            "kind": "probed", "from": self.name, "session": session, "seq": seq,
            "bytes": size, "gap": arrived - first,
        }))

    def on_cancel(self, header: dict[str, Any], frames: list[Any]) -> None:
        if header["from"] != self.host:
            raise wire.Rejected(f"cancel from {header['from']!r}, not the host {self.host!r}")
        key = wire.task_of(header)
        if key in self.tasks:
            log.warning("%s: the host gave task %d up", self.name, key[1])
        self.forget(key)

    def unknown_task(self, key: TaskKey, plan: PlanRun):
        # A host pings before its first rows: rows of another session than the one that pinged
        # last are late ones of an old host, and must not end the current host's tasks.
        if self.current_session not in (None, key[0]):
            raise wire.Rejected(f"rows of host session {key[0][:16]!r}, not the current one")
        self._adopt(key[0])
        if len(self.tasks) >= MAX_LIVE_TASKS:
            # Far more than a host keeps in flight: the oldest waits for rows that will not come
            # (its cancel was lost with a link); it goes, so that the device keeps serving.
            oldest = next(iter(self.tasks))
            log.warning("%s: %d tasks in flight; dropping the oldest, task %d", self.name, len(self.tasks), oldest[1])
            self.forget(oldest)
        return self.start(key, RowStore(plan.specs), plan)

    def serve(self, stopping: Callable[[], bool]) -> None:
        """Run tasks as their rows arrive until `stopping()` is true."""
        while not stopping():
            if self.receive(timeout_ms=100):
                for task in self.advance():
                    self.served += 1
                    self.send(self.host, wire.encode({
                        "kind": "trace", "from": self.name, "session": task.key[0],
                        "task": task.key[1], "events": task.events,
                    }))
