"""One device on the network: its sockets, its tasks in flight, and the loop that runs them.

Every device, the host included, listens on one ZeroMQ PULL socket at its manifest address and
pushes to its peers through one PUSH socket each. Sends never block (no high-water mark) and the
ZeroMQ I/O thread moves bytes while ONNX Runtime computes, so one task's transfers overlap
another's compute. Each task is a `run_program` generator with its own row store and inbox;
`advance()` runs every task that can go on until it waits for rows (the tasks of several sources
in turns), `receive()` files arriving rows into their task's inbox. Messages are checked against
the manifest first (`wire.Inbound`); a bad one is logged with its reason and dropped, and never
stops the device.
"""
from __future__ import annotations

import ipaddress
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zmq

from halpc_stub import clock, keys, wire
from halpc_stub.errors import BundleError
from halpc_stub.executor import run_program
from halpc_stub.manifest import Manifest
from halpc_stub.store import RowStore, TensorSpec

log = logging.getLogger("halpc_stub")
# Messages queued toward one peer at most. A task sends a peer a few dozen messages; a peer that
# has not taken this many is gone, and queueing more for it would only grow without limit.
PEER_QUEUE = 1000

TaskKey = tuple[str, int]  # (host session, task id)
RowsKey = tuple[str, str, tuple[int, int]]  # (sender, tensor, rows)
MAX_LIVE_TASKS = 64
REMEMBER_FINISHED = 4096


def remember(seen: OrderedDict[Any, None], key: Any) -> None:
    """Add `key` to `seen`, forgetting the oldest beyond REMEMBER_FINISHED: late messages come
    within seconds, or not at all."""
    seen[key] = None
    if len(seen) > REMEMBER_FINISHED:
        seen.popitem(last=False)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind_endpoint(address: str) -> str:
    """Listen on the manifest address's IP, or on every interface when it is a host name."""
    host, port = split_address(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"tcp://*:{port}"
    return f"tcp://[{ip}]:{port}" if ip.version == 6 else f"tcp://{ip}:{port}"


def _is_ipv6(address: str) -> bool:
    return ":" in split_address(address)[0]


def connect_endpoint(address: str) -> str:
    host, port = split_address(address)
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


@dataclass(frozen=True)
class PlanPart:
    """What a device runs under one of the bundle's plans."""

    id: str
    checksum: str
    program: list[dict[str, Any]]
    specs: dict[str, TensorSpec]
    inbound: wire.Inbound
    manifest: Manifest
    source: str  # the host that holds the plan's input and output


@dataclass
class Task:
    key: TaskKey
    plan: PlanPart
    results: dict[str, np.ndarray] = field(default_factory=dict)
    inbox: dict[RowsKey, np.ndarray] = field(default_factory=dict)
    events: list[list[Any]] = field(default_factory=list)  # [kind, start, end, label, peer, bytes]
    started: float = field(default_factory=clock.now)
    progressed: float = field(default_factory=clock.now)
    waiting: dict[str, Any] | None = None  # the recv step it is blocked in
    runner: Iterator[None] | None = None
    finished: float | None = None
    note: str | None = None  # the host's: why it runs another plan than the one chosen

    @property
    def source(self) -> str:
        return self.plan.source

    @property
    def runnable(self) -> bool:
        """Not run yet, or the rows of the recv it is blocked in have come."""
        step = self.waiting
        return step is None or (step["from"], step["tensor"], tuple(step["rows"])) in self.inbox

    def record(self, kind: str, start: float, end: float, label: str, peer: str | None, nbytes: int = 0) -> None:
        self.events.append([kind, start, end, label, peer, nbytes])


class _TaskTransport:
    def __init__(self, node: Node, task: Task) -> None:
        self.node, self.task = node, task

    def send(self, step: dict[str, Any], array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        header = wire.rows_header(self.task.key[0], self.task.key[1], self.task.plan.checksum, self.node.name,
                                  step, array)
        self.node.send(step["to"], header, array)

    def try_recv(self, step: dict[str, Any]) -> np.ndarray | None:
        array = self.task.inbox.pop((step["from"], step["tensor"], tuple(step["rows"])), None)
        if array is None:
            self.task.waiting = step
        else:
            self.task.waiting = None
            self.task.progressed = clock.now()
        return array


class Node:
    def __init__(
        self,
        manifest: Manifest,
        device: str,
        session: Callable[[str], Any],
        bind: str | None = None,
        key: str | None = None,  # the secret key file, if not the one in the device's folder
    ) -> None:
        entry = manifest.device(device)
        self.name = entry.name
        self.manifest = manifest
        self.bundle_checksum: str = manifest.checksum  # over every plan: what the host checks a device runs
        self.plans: dict[str, PlanPart] = {}  # by plan checksum, as rows headers name them
        for view in manifest.plans:
            program, specs = view.program(device), view.tensors
            checksum = view.data["plan_sha256"]
            self.plans[checksum] = PlanPart(view.id, checksum, program, specs,
                                           wire.Inbound(checksum, program, specs), view, view.host.name)
        self.default = next(iter(self.plans.values()))
        self.session = session
        self.addresses = {d.name: d.address for d in manifest.devices}
        self.keys = keys.load(manifest, device, key)  # None: an --insecure bundle, plaintext
        self.context = zmq.Context()
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.RCVHWM, 0)
        self.auth = self.keys.serve(self.context, self.inbox) if self.keys else None
        self.endpoint = bind or bind_endpoint(entry.address)
        if self.endpoint.startswith("tcp://[") or _is_ipv6(entry.address):
            self.inbox.setsockopt(zmq.IPV6, 1)
        try:
            self.inbox.bind(self.endpoint)
        except zmq.ZMQError as exc:
            if self.auth:
                self.auth.stop()
            self.context.destroy(linger=0)
            raise BundleError(
                f"{device}: cannot listen on {self.endpoint} ({exc}); stop what uses the port, "
                "or pass --bind tcp://IP:PORT with an address of this machine"
            ) from None
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)
        self.peers: dict[str, zmq.Socket] = {}
        self.monitors: dict[str, zmq.Socket] = {}  # each PUSH socket's failed handshakes
        self.tasks: OrderedDict[TaskKey, Task] = OrderedDict()
        self.finished: OrderedDict[TaskKey, None] = OrderedDict()
        self.rejected = 0
        self.received = 0
        self.dropped: dict[str, int] = {}  # peer -> messages dropped because its queue was full
        self.turns: dict[str, int] = {}  # source -> when (in services) one of its tasks last ran
        self._services = itertools.count()

    # --- sockets -------------------------------------------------------------------------------

    def send(self, to: str, header: bytes, array: np.ndarray | None = None) -> None:
        """Queue a message for `to`. The queue toward each peer is bounded (PEER_QUEUE): a live
        peer drains it as fast as its link allows, so only a peer that is gone (or cut off)
        fills it, and what would pile up for it is dropped (counted in `dropped`) instead of
        growing without limit; the host's fault handling recovers the rows such a peer lost."""
        sock = self.peers.get(to)
        if sock is None:
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, PEER_QUEUE)
            sock.setsockopt(zmq.LINGER, 2000)
            if _is_ipv6(self.addresses[to]):
                sock.setsockopt(zmq.IPV6, 1)
            if self.keys:
                self.keys.client(sock, to)
            self.monitors[to] = keys.watch(sock)
            sock.connect(connect_endpoint(self.addresses[to]))
            self.peers[to] = sock
        try:
            if array is None:
                sock.send(header, zmq.NOBLOCK)
            else:
                sock.send_multipart([header, array], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped[to] = self.dropped.get(to, 0) + 1
            if self.dropped[to] == 1:
                log.warning("%s: %d messages wait for %s, which takes none: dropping what else is sent to it "
                            "until it does", self.name, PEER_QUEUE, to)

    def receive(self, timeout_ms: int) -> int:
        """Take every waiting message, after waiting up to `timeout_ms` for the first."""
        count = 0
        if not self.poller.poll(timeout_ms):
            return 0
        while True:
            try:
                frames = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return count
            count += 1
            self.received += 1
            try:
                header = wire.decode(frames)
                if self.keys:
                    keys.check_sender(header, frames[0])
                self.dispatch(header, frames)
            except wire.Rejected as exc:
                self.rejected += 1
                log.warning("%s: rejected a message: %s", self.name, exc)

    def waiting(self) -> bool:
        """Whether another message is already waiting to be read."""
        return bool(self.inbox.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def close(self) -> None:
        for sock in [*self.peers.values(), *self.monitors.values()]:
            sock.close()
        self.inbox.close()
        if self.auth:  # after the inbox: without it, CURVE would admit any key
            self.auth.stop()
        self.context.term()

    # --- tasks ---------------------------------------------------------------------------------

    def plan_by_id(self, plan_id: str) -> PlanPart:
        for plan in self.plans.values():
            if plan.id == plan_id:
                return plan
        self.manifest.plan(plan_id)  # raises the BundleError that names the known plans
        raise AssertionError(plan_id)

    def start(self, key: TaskKey, store: RowStore, plan: PlanPart | None = None) -> Task:
        task = Task(key, plan or self.default)
        task.runner = run_program(
            task.plan.program, store, self.session, _TaskTransport(self, task), task.results, task.record
        )
        self.tasks[key] = task
        return task

    def advance(self) -> list[Task]:
        """Run every task that can go on until it waits for rows; return those that finished.

        The sources take turns, one task each per round, oldest first within a source; the
        source served longest ago goes first, so the one served last goes last next time. With
        one source: oldest first."""
        queues: dict[str, list[Task]] = {}
        for task in self.tasks.values():
            if task.runnable:
                queues.setdefault(task.source, []).append(task)
        order = sorted(queues, key=lambda source: self.turns.get(source, -1))
        done = []
        for task in itertools.chain.from_iterable(itertools.zip_longest(*(queues[s] for s in order))):
            if task is None:
                continue
            self.turns[task.source] = next(self._services)
            try:
                next(task.runner)  # type: ignore[arg-type]
            except StopIteration:
                task.finished = clock.now()
                self.forget(task.key)
                done.append(task)
        return done

    def forget(self, key: TaskKey) -> None:
        """End a task (done or given up); rows that still come for it are late and dropped."""
        self.tasks.pop(key, None)
        remember(self.finished, key)

    def dispatch(self, header: dict[str, Any], frames: list[Any]) -> None:
        handler = getattr(self, f"on_{header['kind']}")
        handler(header, frames)

    def on_rows(self, header: dict[str, Any], frames: list[Any]) -> None:
        key = wire.task_of(header)
        plan = self.plans.get(header["plan"]) if isinstance(header.get("plan"), str) else None
        if plan is None:
            raise wire.Rejected(f"plan {str(header.get('plan'))[:12]!r} is not one of this bundle's plans")
        rows_key, array = plan.inbound.rows(header, frames)
        task = self.tasks.get(key)
        if task is None:
            if key in self.finished:
                raise wire.Rejected(f"late rows for finished task {key[1]}")
            task = self.unknown_task(key, plan)
        elif task.plan is not plan:
            raise wire.Rejected(f"task {key[1]} runs plan {task.plan.id!r}, these rows are of plan {plan.id!r}")
        if rows_key in task.inbox:
            raise wire.Rejected(f"task {key[1]}: {rows_key[1]!r} rows {list(rows_key[2])} received twice")
        task.inbox[rows_key] = array
        now = clock.now()
        task.record("arrive", now, now, f"{rows_key[1]} rows {rows_key[2][0]}..{rows_key[2][1]}", rows_key[0],
                   array.nbytes)

    def unknown_task(self, key: TaskKey, plan: PlanPart) -> Task:
        raise wire.Rejected(f"rows for unknown task {key[1]}")

    def on_ping(self, header: dict[str, Any], frames: list[Any]) -> None:
        raise wire.Rejected("ping sent to a device that does not answer pings")

    def on_pong(self, header: dict[str, Any], frames: list[Any]) -> None:
        raise wire.Rejected("unexpected pong")

    def on_timeline(self, header: dict[str, Any], frames: list[Any]) -> None:
        raise wire.Rejected("unexpected timeline")

    def on_probe(self, header: dict[str, Any], frames: list[Any]) -> None:
        raise wire.Rejected("probe sent to a device that does not answer probes")

    def on_probed(self, header: dict[str, Any], frames: list[Any]) -> None:
        raise wire.Rejected("unexpected probe answer")

    def on_cancel(self, header: dict[str, Any], frames: list[Any]) -> None:
        raise wire.Rejected("cancel sent to a device that runs no host's tasks")
