"""Hostile input to the stub's message handling (hypothesis).

A device takes messages from anyone who reaches its port. Whatever arrives, the only thing that
may come out of `Node.dispatch` is `wire.Rejected` (logged and dropped); anything else would stop
the stub (`serve` has no other handler). After the noise the device must still run a valid task
bit for bit as the bundle's in-process reference run does, and its memory must stay bounded.

One small CNN is compiled as two variants (two plans that both use every device) for three
devices on loopback, once per module. A `StubNode` for dev-1 and a `HostNode` are built in this
process; their sends are captured instead of leaving on sockets, and messages are fed through
`pump`, which mirrors `Node.receive`'s per-message body and then runs `StubNode.serve` itself for
one round (its advance-and-report loop). One test goes over real sockets: a raw PUSH floods a
served stub, then a real `HostSession` runs tasks through it.

One more runs against a bundle with CURVE keys: messages whose `from` is not the device their
connection authenticated as (`keys.check_sender`).

Each test asserts that every example it asked hypothesis for ran (`Cases.report`); run with -s
to see the counts ("fuzz: N stub messages").
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import Phase, given, note, settings
from hypothesis import strategies as st

import models  # examples/models.py
from fuzzing import FUZZ, Cases
from bundles import free_ports, local_cluster, save
from halpc.compile import Variant, compile_bundle
from halpc.host.verify import random_inputs
from halpc_stub import clock, keys, wire
from halpc_stub.executor import host_store, run_program
from halpc_stub.host import HostSession, TaskResult
from halpc_stub.host_node import HostNode
from halpc_stub.manifest import load_manifest
from halpc_stub.node import MAX_LIVE_TASKS, REMEMBER_FINISHED
from halpc_stub.serve import StubNode
from halpc_stub.session import load_sessions, make_session
from halpc_stub.store import RowStore

DEVICE = "dev-1"  # receives from the host and from dev-2: the most recv steps
MAX_PROBE_MARKS = 16  # StubNode.on_probe keeps at most this many first parts

COUNTS = Cases("stub messages")  # per test



# -- the bundle and its reference run -------------------------------------------------------------


def tiny_cnn(seed: int, size: int = 24):
    b = models.GraphBuilder(seed)
    x = b.relu(b.conv("input", "c1", 3, 8, 3, pad=1, bias=True), "r1")
    x = b.relu(b.conv(x, "c2", 8, 8, 3, pad=1, bias=True), "r2")
    x = b.max_pool(x, "p1", 2, 2)
    x = b.relu(b.conv(x, "c3", 8, 16, 3, pad=1, bias=True), "r3")
    x = b.relu(b.conv(x, "c4", 16, 16, 3, pad=1, bias=True), "r4")
    x = b.classifier(x, 16, 10)
    return b.model("tiny", size, size, 10, "a small CNN for fuzzing")


def compile_tiny(root: Path, insecure: bool = True) -> Path:
    """Two variants of the tiny CNN, `even` over three loopback devices on free ports; plaintext
    (messages are fed in process, without CURVE frames) unless `insecure` is False."""
    first, second = save(tiny_cnn(1), root, "tiny.onnx"), save(tiny_cnn(2), root, "tiny2.onnx")
    cluster = local_cluster(3, ports=free_ports(3), bandwidth_mbps=2000, gmacs=1.0)
    out = root / "bundle"
    compile_bundle(first, cluster, out, "even", accuracy=70.0, variants=[Variant(second, 60.0)], insecure=insecure)
    return out


@dataclass(repr=False)
class PlanRef:
    """One plan as `DEVICE` sees it, with a reference run of one task."""

    def __repr__(self) -> str:
        return f"<plan {self.id}>"

    id: str
    checksum: str
    inbound: list[tuple[str, dict[str, Any], np.ndarray]]  # (sender, its send step, array)
    outbound: dict[tuple[str, str, tuple[int, int]], np.ndarray]  # (to, tensor, rows) -> array

    def frames(self, i: int, session: str, task: int) -> list[bytes]:
        sender, step, array = self.inbound[i]
        return [wire.rows_header(session, task, self.checksum, sender, step, array), array.tobytes()]


def reference_run(plan, inputs: dict[str, np.ndarray], sessions) -> list[tuple[str, dict[str, Any], np.ndarray]]:
    """Every message of one task of `plan`, every device interleaved in this process (as `halpc
    verify` runs it), in the order sent."""
    log: list[tuple[str, dict[str, Any], np.ndarray]] = []
    box: dict[tuple[str, str, str, tuple[int, int]], np.ndarray] = {}

    class Transport:
        def __init__(self, device: str) -> None:
            self.device = device

        def send(self, step: dict[str, Any], array: np.ndarray) -> None:
            array = np.array(array, copy=True)
            log.append((self.device, step, array))
            box[(self.device, step["to"], step["tensor"], tuple(step["rows"]))] = array

        def try_recv(self, step: dict[str, Any]) -> np.ndarray | None:
            return box.pop((step["from"], self.device, step["tensor"], tuple(step["rows"])), None)

    runners = {}
    for device in plan.devices:
        store = (host_store(plan.tensors, plan.data["spatial_input"], inputs) if device.host
                 else RowStore(plan.tensors))
        runners[device.name] = run_program(plan.program(device.name), store,
                                           lambda f, d=device.name: sessions(d, f), Transport(device.name), {})
    while runners:
        for name in list(runners):
            try:
                next(runners[name])
            except StopIteration:
                del runners[name]
    return log


@dataclass
class World:
    bundle: Path
    manifest: Any
    plans: list[PlanRef]
    node: StubNode
    host: HostNode
    sent: list[tuple[str, dict[str, Any], np.ndarray | None]] = field(default_factory=list)
    host_sent: list[tuple[str, dict[str, Any], np.ndarray | None]] = field(default_factory=list)
    sessions: itertools.count = field(default_factory=itertools.count)


def capture(into: list):
    def send(to: str, header: bytes, array: np.ndarray | None = None) -> None:
        into.append((to, json.loads(header), None if array is None else np.array(array, copy=True)))
        if len(into) > 10_000:  # a long fuzz run's replies: keep the recent ones
            del into[:5_000]
    return send


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    bundle = compile_tiny(tmp_path_factory.mktemp("fuzz-stub"))
    manifest = load_manifest(bundle)
    opened: dict[tuple[str, str], Any] = {}

    def sessions(device: str, file: str):
        if (device, file) not in opened:
            opened[(device, file)] = make_session(str(manifest.path(device, file)), manifest.device(device).threads)
        return opened[(device, file)]

    inputs = random_inputs(manifest, 0)
    plans = []
    for plan in manifest.plans:
        if not plan.program(DEVICE):
            continue  # the host-alone plans
        log = reference_run(plan, inputs, sessions)
        plans.append(PlanRef(
            plan.id, plan.data["plan_sha256"],
            [(sender, step, array) for sender, step, array in log if step["to"] == DEVICE],
            {(step["to"], step["tensor"], tuple(step["rows"])): array
             for sender, step, array in log if sender == DEVICE},
        ))
    assert len(plans) == 2 and all(p.inbound and p.outbound for p in plans)
    assert {len(p.inbound) for p in plans} == {len(plans[0].inbound)}  # same strips, other weights

    port, host_port = free_ports(2)
    node = StubNode(manifest, DEVICE, load_sessions(manifest, DEVICE).__getitem__, f"tcp://127.0.0.1:{port}")
    host = HostNode(manifest, manifest.host.name, load_sessions(manifest, manifest.host.name).__getitem__,
                     f"tcp://127.0.0.1:{host_port}", session_id="fuzz-host-session")
    w = World(bundle, manifest, plans, node, host)
    node.send = capture(w.sent)  # type: ignore[method-assign]
    host.send = capture(w.host_sent)  # type: ignore[method-assign]
    yield w
    node.close()
    host.close()
    print(f"\nfuzz: {sum(COUNTS.values())} stub messages in all ({dict(COUNTS)})")


# -- feeding messages ---------------------------------------------------------------------------


def deliver(node, frames: list[bytes]) -> str | None:
    """`Node.receive`'s body for one message: the reason it was rejected, or None.

    Only `wire.Rejected` may come out of `dispatch`; anything else fails the test (in `serve` it
    would stop the stub)."""
    frames = [zmq.Frame(f) for f in frames]
    node.received += 1
    try:
        header = wire.decode(frames)
        if getattr(node, "keys", None):  # a CURVE bundle; the fuzz bundle is --insecure
            raise AssertionError("the fuzz bundle must be insecure: in-process frames carry no User-Id")
        node.dispatch(header, frames)
    except wire.Rejected as exc:
        node.rejected += 1
        reason = str(exc)
        assert reason.strip() and len(reason.splitlines()) == 1, f"reason is not one line: {reason!r}"
        return reason
    return None


def hello(w: World, session: str) -> None:
    """The host's ping that opens a session: a stub takes rows of the session that pinged last."""
    ping = wire.encode({"kind": "ping", "from": w.manifest.host.name, "session": session, "t": 1.0})
    assert deliver(w.node, [ping]) is None


def pump(node: StubNode, batch: list[list[bytes]]) -> list[str | None]:
    """Deliver `batch` as one `receive()` would, then let `StubNode.serve` run its loop body once
    (advance every task, report the finished ones to the host)."""
    outcomes: list[str | None] = []
    pending = [batch]

    def receive(timeout_ms: int) -> int:
        for frames in pending.pop():
            outcomes.append(deliver(node, frames))
        return len(batch)

    node.receive = receive  # type: ignore[method-assign]
    try:
        node.serve(lambda: not pending)
    finally:
        del node.receive
    return outcomes


def check_bounds(w: World) -> None:
    node = w.node
    assert len(node.tasks) <= MAX_LIVE_TASKS
    assert len(node.finished) <= REMEMBER_FINISHED
    assert len(node.probe_marks) <= MAX_PROBE_MARKS
    recvs = {p.checksum: len(p.inbound) for p in w.plans}
    for task in node.tasks.values():
        assert len(task.inbox) <= recvs[task.plan.checksum]


def rows_sent(sent, session: str, task: int) -> dict[tuple[str, str, tuple[int, int]], np.ndarray]:
    found = {}
    for to, header, array in sent:
        if header.get("kind") == "rows" and header.get("session") == session and header.get("task") == task:
            key = (to, header["tensor"], tuple(header["rows"]))
            assert key not in found, f"{key} sent twice"
            found[key] = array
    return found


def assert_exact(got: dict, expected: dict) -> None:
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for key, array in got.items():
        ref = expected[key]
        assert array.dtype == ref.dtype and array.shape == ref.shape, key
        assert array.tobytes() == ref.tobytes(), f"{key} differs from the reference run"


def run_valid_task(w: World, plan: PlanRef | None = None, seed: int = 0) -> None:
    """A fresh host session's task, rows in a shuffled order: it must finish, bit-exact."""
    plan = plan or w.plans[0]
    session, task = f"valid-{next(w.sessions)}", 0
    order = list(range(len(plan.inbound)))
    random.Random(seed).shuffle(order)
    hello(w, session)
    w.sent.clear()
    outcomes = pump(w.node, [plan.frames(i, session, task) for i in order])
    assert outcomes == [None] * len(order), outcomes
    assert (session, task) in w.node.finished and (session, task) not in w.node.tasks
    assert_exact(rows_sent(w.sent, session, task), plan.outbound)
    traces = [h for to, h, _ in w.sent if h["kind"] == "timeline" and h["session"] == session]
    assert len(traces) == 1 and traces[0]["task"] == task and w.sent[-1][0] == w.manifest.host.name


def test_valid_tasks_match_the_reference(world):
    for plan in world.plans:
        for seed in range(3):
            run_valid_task(world, plan, seed)


# -- strategies ---------------------------------------------------------------------------------

SESSIONS = st.sampled_from(["s0", "s1", "fuzz-host-session", "x" * 64, "x" * 65, "", "\u00e9\u6f22", "0"])
TASKS = st.integers(0, 5)

# Values no header field should ever make the node choke on: a pool of the usual suspects (cheap
# to draw) and small generated JSON (wrong types, huge and negative ints, bools for ints, nested
# objects, unicode with surrogates and control characters, NaN and infinities).
HOSTILE = [
    None, True, False, 0, 1, 2, -1, -(2 ** 63), 2 ** 31, 2 ** 63, 2 ** 64, 10 ** 300, -(10 ** 300), 0.0, -0.0, 1.5,
    1.0, 1e308, float("nan"), float("inf"), float("-inf"), "", " ", "0", "1", "a", "\n", "a\nb", "\r", "\x00",
    "\ud800", "\udfff", "\u00e9\u6f22\U0001f600", "\u202e", "x" * 65, "x" * 64, "x" * 10_000, "NaN", "null",
    "rows", "ping", "probe", "cancel", "timeline", "host", "dev-1", "dev-2", "HOST", "dev-1 ", "float32", "float64",
    "float16", "int64", "uint8", "bool", "object", "<f4", "r1", "r3", "input", "p1", "default",
    [], [0], [1, 2], [0, 1], [7, 8], [8, 7], [-1, 5], [1, 2, 3], ["a", "b"], [True, False], [1.0, 2.0], [[1, 2]],
    [None, None], [2 ** 63, 2 ** 63 + 1], [1, 8, 12, 24], [1, 8, 1, 24], [0, 0, 0, 0], [-1, 8, 1, 24], {},
    {"a": 1}, {"rows": [0, 1]}, {"v": 1}, [[]] * 3, [["compute", 1.0, 2.0, "x", None, 0]],
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs", "Cc"])), max_size=12),
)
small_json = st.recursive(
    scalars, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=6,
)
json_values = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(HOSTILE), st.sampled_from(HOSTILE), small_json)
FIELDS = ["v", "kind", "from", "session", "task", "plan", "block", "tensor", "rows", "dtype", "shape",
          "seq", "part", "t", "echo", "events", "bytes", "gap", "onnxruntime"]


def base_message(w: World, data, kind: str) -> tuple[dict[str, Any], list[bytes]]:
    """A message of `kind` that a device could well receive, as (header, extra frames)."""
    session = data.draw(SESSIONS, "session")
    host, devices = w.manifest.host.name, [d.name for d in w.manifest.devices if not d.host]
    if kind == "rows":
        plan = data.draw(st.sampled_from(w.plans), "plan")
        i = data.draw(st.integers(0, len(plan.inbound) - 1), "row message")
        frames = plan.frames(i, session, data.draw(TASKS, "task"))
        return json.loads(frames[0]), frames[1:]
    if kind == "probe":
        size = data.draw(st.sampled_from([0, 1, 1000, wire.MAX_PROBE_BYTES, wire.MAX_PROBE_BYTES + 1]), "padding")
        return ({"v": 1, "kind": "probe", "from": host, "session": session,
                 "seq": data.draw(st.integers(0, 3), "seq"), "part": data.draw(st.sampled_from([0, 1]), "part")},
                [bytes(size)])
    if kind == "ping":
        return {"v": 1, "kind": "ping", "from": host, "session": session, "t": clock.now()}, []
    if kind == "cancel":
        return {"v": 1, "kind": "cancel", "from": host, "session": session, "task": data.draw(TASKS, "task")}, []
    sender = data.draw(st.sampled_from(devices), "sender")
    if kind == "pong":
        return ({"v": 1, "kind": "pong", "from": sender, "session": session, "bundle": w.node.bundle_checksum,
                 "onnxruntime": "1", "t": clock.now(), "echo": 1.0}, [])
    if kind == "timeline":
        return ({"v": 1, "kind": "timeline", "from": sender, "session": session, "task": data.draw(TASKS, "task"),
                 "events": data.draw(st.one_of(
                     st.just([["compute", 1.0, 2.0, "x.onnx", None, 0], ["send", 1.0, 2.0, "r1 rows 0..1", "host", 4]]),
                     st.lists(st.lists(json_values, min_size=6, max_size=6), max_size=3)), "events")},
                [])
    assert kind == "probed"
    return ({"v": 1, "kind": "probed", "from": sender, "session": session, "seq": 0, "bytes": 65536,
             "gap": 0.001}, [])


def mutate(data, header: dict[str, Any], extra: list[bytes]) -> list[bytes]:
    """Change, add or delete one or two header fields; sometimes also the frame count."""
    header = dict(header)
    for _ in range(data.draw(st.integers(1, 2), "mutations")):
        key = data.draw(st.sampled_from(sorted(set(header) | set(FIELDS))), "field")
        if data.draw(st.booleans(), "delete"):
            header.pop(key, None)
        else:
            header[key] = data.draw(json_values, f"value of {key}")
    frames = [json.dumps(header).encode(), *extra]
    how = data.draw(st.sampled_from(["keep"] * 6 + ["drop last", "add", "add empty"]), "frames")
    if how == "drop last":
        frames = frames[:-1] or [b""]
    elif how == "add":
        frames.append(data.draw(st.binary(max_size=64), "extra frame"))
    elif how == "add empty":
        frames.append(b"")
    return frames


# -- the fuzz tests -----------------------------------------------------------------------------


def test_mutated_headers(world):
    """Valid messages of every kind with one or two fields deleted or replaced by hostile values
    (wrong types, huge and negative ints, bools for ints, nested objects, unicode, NaN)."""

    examples = 2000

    @settings(FUZZ, max_examples=examples)
    @given(data=st.data(), kind=st.sampled_from(wire.KINDS))
    def check(data, kind):
        header, extra = base_message(world, data, kind)
        frames = mutate(data, header, extra)
        COUNTS["mutated headers"] += 1
        pump(world.node, [frames])
        check_bounds(world)
        COUNTS.example("mutated headers")

    check()
    run_valid_task(world)
    COUNTS.report("mutated headers", examples=examples, cases=examples)


def test_every_field_with_line_breaks_and_odd_types(world):
    """Each field of a valid message of each kind, set in turn to each of a few values that have
    broken loggers and parsers before: every rejection is still one line (`deliver` checks)."""
    odd = ["a\nb", "\r\n", "\u2028", "\x1b[31m", "\ud800", ["\n"], {"\n": 1}, 10 ** 300, float("nan"), True, None]

    examples = len(wire.KINDS) * 3

    @settings(FUZZ, max_examples=examples, phases=[Phase.generate])
    @given(data=st.data(), kind=st.sampled_from(wire.KINDS))
    def check(data, kind):
        header, extra = base_message(world, data, kind)
        for key in sorted(set(header) | set(FIELDS)):
            for value in odd:
                COUNTS["odd fields"] += 2
                pump(world.node, [[json.dumps({**header, key: value}).encode(), *extra]])
                deliver(world.host, [json.dumps({**header, key: value, "session": world.host.session_id}).encode(),
                                     *extra])
        check_bounds(world)
        COUNTS.example("odd fields")

    check()
    world.host.timelines.clear()
    world.host.probed.clear()
    run_valid_task(world)
    # Every example sets each of at least the FIELDS in turn to each odd value, on both nodes.
    COUNTS.report("odd fields", examples=examples, cases=examples * len(FIELDS) * len(odd) * 2)


def test_a_probe_part_read_with_more_waiting_answers_gap_zero(world):
    """The stub times a probe's two parts as it reads them. Where more was already waiting when
    it read the first (it was busy as they came), that time is when it was read, not when it
    arrived, and the gap would read a link far too fast: the answer says gap 0 (the host reads
    it as saying nothing). With nothing waiting the gap is what it measured."""
    host = world.manifest.host.name
    session = "probe-session"
    hello(world, session)

    def probe(seq: int, waiting: bool) -> float:
        parts = [[wire.encode({"kind": "probe", "from": host, "session": session, "seq": seq, "part": part}),
                  np.zeros(size, np.uint8).tobytes()] for part, size in ((0, 1024), (1, 4096))]
        pusher = world.node.context.socket(zmq.PUSH)
        try:
            if waiting:  # a message in the inbox, not yet read, while the first part is handled
                pusher.connect(world.node.endpoint)
                pusher.send_multipart([wire.encode({"kind": "ping", "from": host, "session": session, "t": 2.0})])
                deadline = time.monotonic() + 5
                while not world.node.waiting() and time.monotonic() < deadline:
                    time.sleep(0.001)
            assert deliver(world.node, parts[0]) is None
            time.sleep(0.002)
            assert deliver(world.node, parts[1]) is None
        finally:
            pusher.close(linger=0)
        world.node.receive(timeout_ms=0)  # the waiting ping, read at last
        (answer,) = [h for _, h, _ in world.sent
                     if h["kind"] == "probed" and h["session"] == session and h["seq"] == seq]
        return answer["gap"]

    assert probe(1, waiting=False) >= 0.002
    assert probe(2, waiting=True) == 0.0


def test_random_frames(world):
    """Random bytes, random JSON, deep nesting, oversized headers, 0 to 4 frames."""
    header_bytes = st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"v": st.just(1), "kind": st.sampled_from(wire.KINDS)},
                              optional={k: json_values for k in FIELDS if k not in ("v", "kind")}).map(lambda v: json.dumps(v).encode()),
        st.integers(1, 200_000).map(lambda d: (b"[" * d + b"]" * d)[: wire.MAX_HEADER_BYTES]),
        st.integers(1, 40_000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
        st.sampled_from([b"", b"{}", b"null", b"[]", b'"x"', b"1e999", b"-0", b"\xff\xfe", b"\x00" * 10,
                         b'{"v": 1}', b'{"v": true, "kind": "ping", "from": "host", "session": "s"}',
                         b" " * (wire.MAX_HEADER_BYTES + 1), b'{"v":1,"kind":"ping","from":"host","session":"s",'
                         b'"t":' + b"9" * 5000 + b"}"]),
    )

    examples = 2000

    @settings(FUZZ, max_examples=examples)
    @given(first=header_bytes, rest=st.lists(st.binary(max_size=300), max_size=3),
           batch=st.integers(1, 3))
    def check(first, rest, batch):
        note(repr(first[:200]))
        COUNTS["random frames"] += batch
        pump(world.node, [[first, *rest]] * batch)
        check_bounds(world)
        COUNTS.example("random frames")

    check()
    run_valid_task(world)
    COUNTS.report("random frames", examples=examples, cases=examples)


def test_rows_buffers_and_shapes(world):
    """Rows whose buffer is truncated, oversized or another message's, whose dtype or shape is
    off: rejected, unless header and buffer are exactly right (then accepted)."""
    dtypes = st.sampled_from(["float32", "float64", "float16", "int8", "int64", "uint8", "bool", "complex64",
                              "object", "V4", "<f4", "float32 ", "Float32", "", "f"])

    examples = 1500

    @settings(FUZZ, max_examples=examples)
    @given(data=st.data())
    def check(data):
        plan = data.draw(st.sampled_from(world.plans))
        i = data.draw(st.integers(0, len(plan.inbound) - 1))
        session = f"buffers-{data.draw(st.integers(0, 3))}"
        hello(world, session)
        header_raw, buffer = plan.frames(i, session, data.draw(TASKS))
        header = json.loads(header_raw)
        valid_header = dict(header)
        what = data.draw(st.sampled_from(["buffer", "dtype", "shape", "both", "other message"]))
        if what in ("dtype", "both"):
            header["dtype"] = data.draw(dtypes)
        if what in ("shape", "both"):
            shape = list(header["shape"])
            how = data.draw(st.sampled_from(["bump", "swap", "drop", "add", "negative", "zero", "huge", "float"]))
            axis = data.draw(st.integers(0, len(shape) - 1))
            if how == "bump":
                shape[axis] += data.draw(st.sampled_from([-1, 1]))
            elif how == "swap":
                shape = shape[::-1]
            elif how == "drop":
                del shape[axis]
            elif how == "add":
                shape.insert(axis, 1)
            elif how == "negative":
                shape[axis] = -shape[axis]
            elif how == "zero":
                shape[axis] = 0
            elif how == "huge":
                shape[axis] = 2 ** 62
            else:
                shape[axis] = float(shape[axis])
            header["shape"] = shape
        if what in ("buffer", "both"):
            n = len(buffer)
            size = data.draw(st.sampled_from([0, 1, n - 1, n - 4, n + 1, n + 4, 2 * n, n // 2, n]))
            buffer = (buffer * 3)[:size]
        if what == "other message":
            j = data.draw(st.integers(0, len(plan.inbound) - 1))
            buffer = plan.inbound[j][2].tobytes()
        right = header == valid_header and len(buffer) == len(plan.inbound[i][2].tobytes())
        COUNTS["rows buffers"] += 1
        (outcome,) = pump(world.node, [[json.dumps(header).encode(), buffer]])
        note(f"{what}: {outcome}")
        if not right:
            assert outcome is not None, f"accepted a damaged rows message ({what})"
        elif outcome is not None:  # valid: only ever refused as a repeat or a late one
            assert "twice" in outcome or "late rows" in outcome or "runs plan" in outcome, outcome
        check_bounds(world)
        COUNTS.example("rows buffers")

    check()
    run_valid_task(world)
    COUNTS.report("rows buffers", examples=examples, cases=examples)


@st.composite
def scenarios(draw, plans: int, messages: int):
    """Up to three tasks of one host session: each its rows of one plan in a random order (a
    few left out), interleaved with duplicates, rows of the other plan, cancels, pings and
    probes (part 1 before, without, or after part 0), cut into receive() batches."""
    tasks = draw(st.integers(1, 3))
    events: list[tuple] = []
    for t in range(tasks):
        plan = draw(st.integers(0, plans - 1))
        left_out = draw(st.one_of(st.just(frozenset()), st.frozensets(st.integers(0, messages - 1), max_size=2)))
        events += [("rows", t, plan, i) for i in range(messages) if i not in left_out]
    events = list(draw(st.permutations(events)))
    extra = st.one_of(
        st.tuples(st.just("rows"), st.integers(0, tasks), st.integers(0, plans - 1), st.integers(0, messages - 1)),
        st.tuples(st.just("cancel"), st.integers(0, tasks)),
        st.tuples(st.just("probe"), st.integers(0, 2), st.sampled_from([0, 1])),
        st.tuples(st.just("ping")),
    )
    for event in draw(st.lists(extra, max_size=8)):
        events.insert(draw(st.integers(0, len(events))), event)
    cuts = draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    batches, batch = [], []
    for event, cut in zip(events, cuts):
        batch.append(event)
        if cut:
            batches.append(batch)
            batch = []
    return batches + ([batch] if batch else [])


def test_out_of_order_sequences(world):
    """Rows of a task shuffled, duplicated, left out, of another plan, after the task finished or
    was cancelled; probes out of order. A model of the protocol says which tasks finish and which
    probes are answered; the finished ones must be bit-exact."""
    w = world
    messages = len(w.plans[0].inbound)
    host = w.manifest.host.name

    examples = 400

    @settings(FUZZ, max_examples=examples)
    @given(batches=scenarios(len(w.plans), messages))
    def check(batches):
        session = f"seq-{next(w.sessions)}"
        w.sent.clear()
        hello(w, session)
        tasks: dict[int, dict[str, Any]] = {}  # the model: plan, rows got, done/cancelled
        marks: set[int] = set()
        answered, pongs = 0, 1
        for batch in batches:
            frames = []
            for event in batch:
                kind = event[0]
                if kind == "rows":
                    _, t, p, i = event
                    frames.append(w.plans[p].frames(i, session, t))
                    state = tasks.setdefault(t, {"plan": p, "got": set(), "end": None})
                    if state["end"] is None and state["plan"] == p:
                        state["got"].add(i)
                elif kind == "cancel":
                    frames.append([wire.encode({"kind": "cancel", "from": host, "session": session, "task": event[1]})])
                    state = tasks.setdefault(event[1], {"plan": None, "got": set(), "end": None})
                    state["end"] = state["end"] or "cancelled"
                elif kind == "probe":
                    _, seq, part = event
                    frames.append([wire.encode({"kind": "probe", "from": host, "session": session, "seq": seq,
                                                "part": part}), bytes(100)])
                    if part == 0:
                        marks.add(seq)
                    elif seq in marks:
                        marks.discard(seq)
                        answered += 1
                else:
                    frames.append([wire.encode({"kind": "ping", "from": host, "session": session, "t": 1.0})])
                    pongs += 1
            COUNTS["sequences"] += len(frames)
            pump(w.node, frames)
            for state in tasks.values():  # serve advances after each batch
                if state["end"] is None and len(state["got"]) == messages:
                    state["end"] = "done"
            check_bounds(w)
        traces = {h["task"] for to, h, _ in w.sent if h["kind"] == "timeline" and h["session"] == session}
        assert traces == {t for t, s in tasks.items() if s["end"] == "done"}
        for t, state in tasks.items():
            live = (session, t) in w.node.tasks
            assert live == (state["end"] is None), (t, state)
            got = rows_sent(w.sent, session, t)
            if state["plan"] is None:
                assert not got
                continue
            expected = w.plans[state["plan"]].outbound
            if state["end"] == "done":
                assert_exact(got, expected)
            else:  # what it sent so far is right
                assert_exact(got, {k: expected[k] for k in got})
        kinds = Counter(h["kind"] for to, h, _ in w.sent if h.get("session") == session)
        assert kinds["probed"] == answered and kinds["pong"] == pongs
        assert all(to == host for to, h, _ in w.sent if h["kind"] != "rows")
        COUNTS.example("sequences")

    check()
    run_valid_task(world, world.plans[1])
    # Every example sends at least one task's rows less the two left out.
    COUNTS.report("sequences", examples=examples, cases=examples * (messages - 2))


def test_host_node_messages(world):
    """The host's side: pongs, traces and probe answers from the devices (right session or not)
    with fields mutated; accepted traces must merge into a result without error."""
    w = world
    host = w.host
    session = HostSession.__new__(HostSession)  # only what `_merge_timelines` reads
    session.node, session.workers = host, w.manifest.workers
    session.offsets = {d: 0.0 for d in session.workers}
    default = w.manifest.plans[0]
    devices = [d for d in session.workers if default.program(d)]

    examples = 1500

    @settings(FUZZ, max_examples=examples)
    @given(data=st.data(), kind=st.sampled_from(wire.KINDS), damage=st.booleans())
    def check(data, kind, damage):
        header, extra = base_message(w, data, kind)
        if data.draw(st.booleans(), "our session"):
            header["session"] = host.session_id
        frames = mutate(data, header, extra) if damage else [json.dumps(header).encode(), *extra]
        COUNTS["host node"] += 1
        deliver(host, frames)
        assert len(host.tasks) == 0 and len(host.pongs) <= len(w.manifest.devices)
        # What `stream` does with a task's traces: once every device's came, merge them into the
        # task's result (the other devices' traces are valid ones).
        for task in {t for t, _ in host.timelines}:
            for device in devices:
                if (task, device) not in host.timelines:
                    deliver(host, [wire.encode({"kind": "timeline", "from": device, "session": host.session_id,
                                                "task": task, "events": [["compute", 1.0, 2.0, "m", None, 0]]})])
            result = TaskResult(task, {}, 0.0, 1.0, default.id, [])
            assert session._merge_timelines([result]) == []
            assert all((task, d) not in host.timelines for d in devices)
            assert all(isinstance(e["start"], (int, float)) for e in result.events)
        assert not host.timelines
        # ... and with probe answers.
        for device, mbps in session.take_probes():
            assert device in w.manifest.workers and not mbps < 0  # NaN: says nothing
        assert not host.probed
        COUNTS.example("host node")

    check()
    COUNTS.report("host node", examples=examples, cases=examples)


# -- over real sockets --------------------------------------------------------------------------


def junk_messages(w: World, rng: random.Random, count: int) -> list[list[bytes]]:
    """Random, truncated and damaged multipart messages (no valid ones: those would start tasks)."""
    plan = w.plans[0]
    out = []
    for n in range(count):
        header, buffer = plan.frames(rng.randrange(len(plan.inbound)), f"junk-{rng.randrange(4)}", rng.randrange(9))
        kind = rng.randrange(8)
        if kind == 0:
            frames = [rng.randbytes(rng.randrange(300)) for _ in range(rng.randrange(1, 4))]
        elif kind == 1:
            frames = [header[: rng.randrange(len(header))], buffer]
        elif kind == 2:
            frames = [header, buffer[: rng.randrange(len(buffer))]]
        elif kind == 3:
            frames = [header]
        elif kind == 4:
            frames = [header, buffer, buffer]
        elif kind == 5:
            data = json.loads(header)
            data[rng.choice(sorted(data))] = rng.choice([None, -1, 2 ** 80, [1, 2], {"a": 1}, "\ud800", True, 1.5])
            frames = [json.dumps(data).encode(), buffer]
        elif kind == 6:
            frames = [b"[" * 50_000, b"x"]
        else:
            flipped = bytearray(header)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            frames = [bytes(flipped), buffer[:-1]]
        out.append(frames)
    return out


def test_flood_over_a_socket_then_exact_tasks(world, tmp_path):
    """A raw PUSH sends a few hundred junk messages to served stubs; the host's tasks then run
    through them exactly as the unsplit model."""
    bundle = compile_tiny(tmp_path)
    manifest = load_manifest(bundle)
    stubs = [StubNode(manifest, name, load_sessions(manifest, name).__getitem__) for name in manifest.workers]
    stop = threading.Event()
    threads = [threading.Thread(target=s.serve, args=(stop.is_set,), daemon=True) for s in stubs]
    for t in threads:
        t.start()
    context = zmq.Context()
    try:
        rng = random.Random(0)
        sent = 0
        for stub in stubs:
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(stub.endpoint.replace("*", "127.0.0.1"))
            for frames in junk_messages(world, rng, 200):
                push.send_multipart(frames)
                sent += 1
            push.close()
        deadline = clock.now() + 30
        while sum(s.received for s in stubs) < sent and clock.now() < deadline:
            time.sleep(0.01)
        COUNTS["socket flood"] += sent
        # (more when a junk message that fits started a task whose rows went to the other stub)
        assert sum(s.received for s in stubs) >= sent
        # A few damaged ones still fit the manifest (e.g. another session id): at most a handful.
        assert sum(s.rejected for s in stubs) >= sent - 10
        assert all(t.is_alive() for t in threads)
        reference = make_session(str(manifest.reference_model()), 1)
        inputs = [random_inputs(manifest, seed) for seed in range(3)]
        with HostSession(bundle, timeout_s=30) as host:
            results = list(host.stream(inputs, in_flight=2))
        for result, arrays in zip(results, inputs):
            assert not getattr(result, "unsplit", False), result.fallback
            expected = reference.run(manifest.outputs, arrays)
            for name, array in zip(manifest.outputs, expected):
                assert result.outputs[name].tobytes() == array.tobytes()
        assert all(t.is_alive() for t in threads)
        assert sum(s.served for s in stubs) == 3 * len(stubs)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in stubs:
            s.close()
        context.destroy(linger=0)
    COUNTS.report("socket flood", cases=400)


def test_forged_senders_over_curve_are_rejected(tmp_path):
    """With CURVE keys (the bundle above is --insecure), every connection to a stub is
    authenticated as one device. A message of any kind whose header says it is from anyone else,
    however valid otherwise (a rows message from the device that does send those rows, a ping
    from the host), is rejected by `keys.check_sender`, counted, and logged with that reason; the
    stubs then serve the host's tasks bit-exact."""
    bundle = compile_tiny(tmp_path, insecure=False)
    manifest = load_manifest(bundle)
    assert not keys.insecure(manifest) and set(manifest.data["curve"]) == {d.name for d in manifest.devices}
    names = [d.name for d in manifest.devices]
    reasons: list[str] = []

    class Reasons(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "rejected a message" in record.getMessage():
                reasons.append(record.getMessage())

    handler = Reasons()
    logging.getLogger("halpc_stub").addHandler(handler)
    stubs = {name: StubNode(manifest, name, load_sessions(manifest, name).__getitem__) for name in manifest.workers}
    assert all(s.keys is not None for s in stubs.values())
    stop = threading.Event()
    threads = [threading.Thread(target=s.serve, args=(stop.is_set,), daemon=True) for s in stubs.values()]
    for t in threads:
        t.start()
    context = zmq.Context()
    pushes = {}  # (authenticated as, stub) -> a CURVE client with that device's key
    for target in stubs:
        for sender in names:
            if sender != target:
                push = pushes[(sender, target)] = context.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                keys.load(manifest, sender).client(push, target)
                push.connect("tcp://" + manifest.device(target).address)
    default = manifest.plans[0]
    odd = st.sampled_from(["", " ", "HOST", "host ", " dev-1", "dev-1\n", "dev-9", "Dev-2", "\u00e9", "x" * 65,
                           "dev-1\x00", "*"])
    test = "forged senders"
    examples = 300

    def message(data, kind: str, claimed: str, target: str) -> list[bytes]:
        """A message of `kind` to `target`, valid but for its sender: `claimed`."""
        session = data.draw(st.sampled_from(["s0", "fuzz-host-session"]), "session")
        task = data.draw(TASKS, "task")
        if kind == "rows":
            steps = [s for s in default.program(target) if s["op"] == "recv"]
            own = [s for s in steps if s["from"] == claimed]  # rows `claimed` does send, if any
            step = data.draw(st.sampled_from(own or steps), "recv step")
            spec = default.tensors[step["tensor"]]
            array = np.zeros(spec.strip_shape(tuple(step["rows"])), np.dtype(spec.dtype))
            return [wire.rows_header(session, task, default.data["plan_sha256"], claimed, step, array),
                    array.tobytes()]
        header: dict[str, Any] = {"kind": kind, "from": claimed, "session": session}
        extra: list[bytes] = []
        if kind == "ping":
            header["t"] = clock.now()
        elif kind == "probe":
            header.update(seq=data.draw(st.integers(0, 3), "seq"), part=data.draw(st.sampled_from([0, 1]), "part"))
            extra = [bytes(1000)]
        elif kind == "cancel":
            header["task"] = task
        elif kind == "pong":
            header.update(bundle=stubs[target].bundle_checksum, onnxruntime="1", t=clock.now(), echo=1.0)
        elif kind == "timeline":
            header.update(task=task, events=[["compute", 1.0, 2.0, "x.onnx", None, 0]])
        else:
            assert kind == "probed"
            header.update(seq=0, bytes=65536, gap=0.001)
        return [wire.encode(header), *extra]

    def wait(until, seconds: float = 10.0) -> bool:
        deadline = clock.now() + seconds
        while not until() and clock.now() < deadline:
            time.sleep(0.001)
        return until()

    try:
        @settings(FUZZ, max_examples=examples)
        @given(data=st.data(), kind=st.sampled_from(wire.KINDS))
        def check(data, kind):
            target = data.draw(st.sampled_from(sorted(stubs)), "stub")
            sender = data.draw(st.sampled_from([n for n in names if n != target]), "authenticated as")
            claimed = data.draw(st.one_of(st.sampled_from([n for n in names if n != sender]), odd,
                                          st.text(max_size=8)), "claimed sender")
            if claimed == sender:  # (st.text drew the very name)
                claimed += "!"
            node = stubs[target]
            received, rejected, logged = node.received, node.rejected, len(reasons)
            pushes[(sender, target)].send_multipart(message(data, kind, claimed, target))
            COUNTS[test] += 1
            assert wait(lambda: node.received > received), f"{target} never took the message"
            assert wait(lambda: node.rejected > rejected and len(reasons) > logged, 1.0), \
                f"{target} accepted a {kind} message from {claimed!r} on {sender}'s connection"
            assert (node.received, node.rejected, len(reasons)) == (received + 1, rejected + 1, logged + 1)
            assert reasons[-1] == (f"{target}: rejected a message: message from {claimed!r} on a connection "
                                   f"authenticated as {sender!r}"), reasons[-1]
            assert not node.tasks and all(t.is_alive() for t in threads)
            COUNTS.example(test)

        check()
        assert sum(s.rejected for s in stubs.values()) == sum(s.received for s in stubs.values()) == COUNTS[test]
        # The stubs serve on: the host's tasks run through them, bit-exact, none recomputed.
        reference = make_session(str(manifest.reference_model()), 1)
        inputs = [random_inputs(manifest, seed) for seed in range(3)]
        with HostSession(bundle, timeout_s=30) as session:
            session.connect()
            results = list(session.stream(inputs, in_flight=2))
        for result, arrays in zip(results, inputs):
            assert not result.unsplit and not result.fallback, result.fallback
            for name, array in zip(manifest.outputs, reference.run(manifest.outputs, arrays)):
                assert result.outputs[name].tobytes() == array.tobytes()
        assert all(t.is_alive() for t in threads) and sum(s.served for s in stubs.values()) == 3 * len(stubs)
        assert sum(s.rejected for s in stubs.values()) == COUNTS[test]  # the host's own messages pass
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for push in pushes.values():
            push.close()
        for stub in stubs.values():
            stub.close()
        context.destroy(linger=0)
        logging.getLogger("halpc_stub").removeHandler(handler)
    COUNTS.report(test, examples=examples, cases=examples)
