"""The host's side of a run: `HostSession(bundle).run(inputs) -> outputs`, and streams of tasks.

The host runs its own program (send strips, compute its part and HALP's overlap zones, receive
rows, run the tail) while the devices run theirs. `stream()` keeps several tasks in flight, so
one task's transfers overlap another's compute. Before the first task the host pings every
device: one that runs another plan, ONNX Runtime build or target is an error that names it; one
that does not answer is left out for now (see Start below).

Faults: a task waits for a device's rows FAULT_FACTOR times its expected time (the plan's
predicted latency, or the recent measured one when slower) plus FAULT_MARGIN_S, counted from
when it last progressed or came to the front of the stream. Then the host pings the task's
devices: a pause of the whole machine (a VM's stolen time) or of one process silences a live
device too, and such a device answers once it runs again. If each answers within PROBE_FACTOR
times the expected time plus PROBE_MARGIN_S, the task waits once more as long; else, or when
that wait runs out too, the host gives the task up (a `cancel` to its devices; rows that come
later are dropped by task id), marks the device down, and recomputes the task with the unsplit
model, from the inputs it holds: the output is the unsplit model's, bit for bit. The device
waited for may itself be waiting for another's rows, so every device of the task is marked down
and pinged; those alive answer at once. Every task in flight that uses a device marked down is
recomputed likewise, and the next ones run the same variant's fastest plan without down
devices, or the unsplit model. A device marked down is pinged every REPING_S and is back in use
once it answers with the bundle's plan.

Start: the host waits for the devices at most START_S (or a task's fault bound, when longer),
not the whole `timeout_s`: a device still off then is marked down, said in one line, and taken
in when it answers, as after a fault; tasks meanwhile run without it. `require_all` waits the
whole `timeout_s` and refuses to start without every device.

In a bundle of several sources (cameras) each source is the host of its own plans: a
`HostSession` runs as one of them (`source`), and the devices serve every source's tasks.

    with HostSession("bundle/") as host:
        outputs = host.run({"input": x})
        for result in host.stream(frames, in_flight=2):
            print(result.task, result.latency_s)
"""
from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from halpc_stub import clock, keys, wire
from halpc_stub.executor import host_store
from halpc_stub.manifest import load_manifest
from halpc_stub.host_node import Fault, HostNode, RunError, TaskResult, event_dict
from halpc_stub.node import PlanPart, Task, TaskKey, remember
from halpc_stub.session import bundle_nchwc, load_sessions, make_session, target_mismatch, this_target

log = logging.getLogger("halpc_stub")


# See the module. Silence and answer together: a fault is noticed in under 2x the predicted
# time + 100 ms (the host looks every 10 ms).
FAULT_FACTOR, FAULT_MARGIN_S = 1.5, 0.05  # silence before the host pings a task's devices
PROBE_FACTOR, PROBE_MARGIN_S = 0.3, 0.03  # how long they have to answer
REPING_S = 0.5
START_S = 2.0  # a stub that is up answers a ping in milliseconds; one loading its models, in seconds
RECENT = 16  # measured task times per plan kept for the expected time


class HostSession:
    def __init__(self, bundle: str | Path, bind: str | None = None, timeout_s: float = 30.0,
                 check_files: bool = True, source: str | None = None, allow_inexact: bool = False,
                 require_all: bool = False) -> None:
        # The bundle as this source sees it (its plans only); the bundle itself for one source.
        self.manifest = load_manifest(bundle).for_source(source)
        host = self.manifest.host
        if check_files:
            self.manifest.check_files(host.name)
        # Every device, the host too, must run what the bundle was compiled for (`allow_inexact`:
        # a warning instead; outputs then differ from the unsplit model's by ~1e-6).
        self.allow_inexact = allow_inexact
        if why := target_mismatch(self.manifest, this_target(self.manifest), f"this host ({host.name})"):
            if not allow_inexact:
                raise RunError(why)
            log.warning("--allow-inexact: %s", why)
        self.timeout_s = timeout_s
        self.require_all = require_all
        self.workers = self.manifest.workers
        sessions = load_sessions(self.manifest, host.name)
        self.node = HostNode(self.manifest, host.name, sessions.__getitem__, bind,
                              session_id=secrets.token_hex(8))
        self.offsets: dict[str, float] = {}  # device clock minus host clock
        self.connected = False
        self.next_task = 0
        self.down: dict[str, float] = {}  # device -> when it was marked down
        self.faults: list[Fault] = []
        self._pinged: dict[str, float] = {}
        self._wrong_plan: set[str] = set()  # devices down that answered with another plan (said once)
        self._times: dict[str, deque[float]] = {}  # plan id -> recent task times, front to done
        self._unsplit: dict[Path, Any] = {}  # reference model -> its session, opened at a first fault
        # The front task silent past its first wait: (its key, when its devices were pinged,
        # when the last of them answered).
        self._silence: tuple[TaskKey, float, float | None] | None = None

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.node.close()

    def connect(self, timeout_s: float | None = None, watch: Callable[[], None] | None = None,
                start_s: float | None = None) -> None:
        """Ping every device that has work until it answers; check its plan and ORT build.

        Devices that have not answered after `start_s` (default: see the module) are marked
        down and the run starts without them, unless `require_all`. `watch` is called while
        waiting (e.g. to raise when a local stub process has died)."""
        node = self.node
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not self.require_all:
            timeout_s = min(timeout_s, start_s if start_s is not None else self.start_s())
        deadline = clock.now() + timeout_s
        pinged: dict[str, float] = {}
        while missing := [d for d in self.workers if d not in node.pongs]:
            now = clock.now()
            if now > deadline and not self.require_all:
                for device in missing:
                    self.down[device] = now
                    self._pinged[device] = pinged.get(device, now)
                    log.warning("%s did not answer within %.1f s at %s: starting without it (it is taken in "
                                "when it answers)", device, timeout_s, node.addresses[device])
                break
            if now > deadline:
                raise RunError(
                    f"device(s) {', '.join(missing)} did not answer within {timeout_s:g} s at "
                    f"{', '.join(node.addresses[d] for d in missing)}; start `halpc-stub` there "
                    "(each device folder has launch.sh)"
                )
            for device in missing:
                if now - pinged.get(device, 0.0) > 1.0:
                    pinged[device] = now
                    self._ping(device, now)
            if watch:
                watch()
            node.receive(timeout_ms=50)
            for device in missing:
                if why := keys.handshake_failure(node.monitors.get(device)):
                    raise RunError(
                        f"{device} at {node.addresses[device]} {why}: its key is not this bundle's (a stub "
                        f"of another compile, or of an --insecure one); copy the bundle's {device}/ folder "
                        "to it again and restart its stub"
                    )
        for device, pong in node.pongs.items():
            if device in self.down:
                continue
            if pong.get("bundle") != node.bundle_checksum:
                raise RunError(
                    f"{device} runs plan {str(pong.get('bundle'))[:12]}, this bundle is plan "
                    f"{node.bundle_checksum[:12]}; copy the bundle's {device}/ folder to it again and restart its stub"
                )
            if why := target_mismatch(self.manifest, pong, device):
                if not self.allow_inexact:
                    raise RunError(why)
                log.warning("--allow-inexact: %s", why)
        for device in self.workers:
            if device not in self.down:
                self.offsets[device] = self._clock_offset(device)
        self.connected = True

    def start_s(self) -> float:
        """How long `connect` waits for devices before starting without those still silent."""
        return max(START_S, self.bound_s(self.node.default))

    def _clock_offset(self, device: str, rounds: int = 5) -> float:
        """The device's clock minus the host's, from the ping with the shortest round trip."""
        node = self.node
        best: tuple[float, float] | None = None
        for _ in range(rounds):
            sent = clock.now()
            self._ping(device, sent)
            deadline = sent + 1.0
            while clock.now() < deadline:
                node.receive(timeout_ms=20)
                pong = node.pongs.get(device)
                if pong is not None and pong.get("echo") == sent and isinstance(pong.get("t"), (int, float)):
                    rtt = pong["received"] - sent
                    if best is None or rtt < best[0]:
                        best = (rtt, pong["t"] - (sent + pong["received"]) / 2)
                    break
        return best[1] if best else 0.0

    def _ping(self, device: str, now: float) -> None:
        self.node.send(device, wire.encode({"kind": "ping", "from": self.node.name,
                                            "session": self.node.session_id, "t": now}))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one task, bit-exact to the unsplit model's."""
        (result,) = self.stream([inputs], in_flight=1)
        return result.outputs

    def stream(self, inputs: Iterable[dict[str, np.ndarray]], in_flight: int = 2,
               choose: Callable[[int], str] | None = None,
               period_s: float | None = None) -> Iterator[TaskResult]:
        """Results in input order, with up to `in_flight` tasks running at once.

        `choose(task)` names the plan each task runs (default: the bundle's default plan); a
        task runs under one plan from start to end. A result is yielded as soon as the task
        is done, before the next one starts; the devices' timelines are merged into it as
        they arrive. With `period_s` the k-th input starts no earlier than k periods after
        the first (a camera's frames); the tasks in flight go on meanwhile."""
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        if not self.connected:
            self.connect()
        node = self.node
        pending = iter(inputs)
        active: deque[Task | TaskResult] = deque()  # a result: computed on the host alone
        held: dict[int, dict[str, np.ndarray]] = {}  # the inputs of the tasks in flight
        unmerged: list[TaskResult] = []
        exhausted = False
        front_since = clock.now()  # when active[0] came to the front
        first, origin = self.next_task, clock.now()
        while True:
            while not exhausted and len(active) < in_flight:
                due = origin + (self.next_task - first) * (period_s or 0.0)
                if clock.now() < due:
                    break  # the next frame is not there yet
                arrays = next(pending, None)
                if arrays is None:
                    exhausted = True
                    break
                chosen = node.plan_by_id(choose(self.next_task)) if choose else node.default
                held[self.next_task] = arrays
                active.append(self._start(self.next_task, chosen, arrays))
                self.next_task += 1
            if not active and exhausted:
                break
            node.advance()
            while active and (isinstance(active[0], TaskResult) or active[0].finished is not None):
                done = active.popleft()
                result = done if isinstance(done, TaskResult) else self._result(done, front_since)
                del held[result.task]
                unmerged.append(result)
                yield result
                front_since = clock.now()
            unmerged = self._merge_timelines(unmerged)
            wait_ms = 10 if active else (0 if exhausted else max(0, min(10, int((due - clock.now()) * 1e3))))
            node.receive(timeout_ms=wait_ms)
            self._watch(active, held, front_since)
        self._merge_timelines(unmerged, timeout_s=2.0)

    # --- faults --------------------------------------------------------------------------------

    def devices_of(self, plan: PlanPart) -> set[str]:
        return {d for d in self.workers if plan.manifest.program(d)}

    def expected_s(self, plan: PlanPart) -> float:
        """What a task of `plan` takes: its predicted latency (plus, in a bundle of several
        sources, the longest it may queue on a helper behind the other sources' frames), or the
        recent measured median when that is longer (a slower machine than profiled);
        `timeout_s` when neither is known."""
        data = plan.manifest.data
        predicted = data.get("predicted_ms")
        recent = sorted(self._times.get(plan.id, ()))
        if predicted is None and not recent:
            return self.timeout_s
        return max(((predicted or 0.0) + (data.get("wait_ms") or 0.0)) / 1000,
                   recent[len(recent) // 2] if recent else 0.0)

    def silent_s(self, plan: PlanPart) -> float:
        """How long a task of `plan` waits for a device before the host asks if it is alive."""
        return FAULT_FACTOR * self.expected_s(plan) + FAULT_MARGIN_S

    def answer_s(self, plan: PlanPart) -> float:
        """How long the devices of a silent task of `plan` have to answer a ping."""
        return PROBE_FACTOR * self.expected_s(plan) + PROBE_MARGIN_S

    def bound_s(self, plan: PlanPart) -> float:
        """How long a task of `plan` may wait for a dead device before the host gives up on it."""
        return self.silent_s(plan) + self.answer_s(plan)

    def _start(self, number: int, chosen: PlanPart, arrays: dict[str, np.ndarray]) -> Task | TaskResult:
        """Start a task under `chosen`; if a device of it is down, under the same variant's
        fastest plan without down devices, or on the host alone."""
        down = sorted(self.down.keys() & self.devices_of(chosen))
        plan = chosen
        if down:
            variant = chosen.manifest.data.get("variant")
            plan = min((p for p in self.node.plans.values() if p.manifest.data.get("variant") == variant
                        and not self.down.keys() & self.devices_of(p)), key=self.expected_s, default=None)
            if plan is None:
                return self._on_host(number, chosen, arrays, f"{', '.join(down)} down")
        store = host_store(plan.specs, plan.manifest.data["spatial_input"], arrays)
        task = self.node.start((self.node.session_id, number), store, plan)
        task.note = f"{', '.join(down)} down" if down else None
        return task

    def _result(self, task: Task, front_since: float) -> TaskResult:
        assert task.finished is not None
        self._times.setdefault(task.plan.id, deque(maxlen=RECENT)).append(
            task.finished - max(task.started, front_since))
        return TaskResult(task.key[1], task.results, task.started, task.finished, task.plan.id,
                          self._host_events(task), fallback=task.note)

    def _watch(self, active: deque[Task | TaskResult], held: dict[int, dict[str, np.ndarray]],
               front_since: float) -> None:
        """Give the front task up when its device is past the bound; take devices back."""
        now = clock.now()
        self._readmit(now)
        front = active[0] if active else None
        if not isinstance(front, Task) or front.runnable:
            return  # not waiting, or its rows came: the next advance() takes them
        since = max(front.progressed, front_since)
        if now - since <= self.silent_s(front.plan) or self._alive(front, since, now):
            return
        step, device = front.waiting, front.waiting["from"]
        waited, bound = now - since, self.bound_s(front.plan)
        self.faults.append(Fault(front.key[1], device, now, waited, bound, self.expected_s(front.plan)))
        reason = (f"no {step['tensor']} rows {step['rows'][0]}..{step['rows'][1]} from {device} "
                  f"for {waited * 1000:.0f} ms (bound {bound * 1000:.0f} ms)")
        # The device waited for may itself wait for another one's rows: every device of the
        # task goes down, and those alive are back as soon as they answer a ping.
        suspects = self.devices_of(front.plan)
        for suspect in suspects:
            self.down[suspect] = now
            self._pinged.pop(suspect, None)
        log.warning("task %d: %s; %s down until they answer, their tasks recomputed on the host",
                    front.key[1], reason, ", ".join(sorted(suspects)))
        for i, task in enumerate(active):
            if isinstance(task, Task) and suspects & self.devices_of(task.plan):
                active[i] = self._give_up(task, held[task.key[1]], reason)
        self._readmit(now)

    def _alive(self, task: Task, since: float, now: float) -> bool:
        """Whether `task`, silent past its first wait, may wait on: its devices are pinged; it
        waits while they may still answer, and once every one has, as long again."""
        silence = self._silence
        if silence is None or silence[0] != task.key or silence[1] < since:  # progress since: a new silence
            self._silence = (task.key, now, None)
            log.info("task %d: no rows for %.0f ms: pinging its devices", task.key[1], (now - since) * 1e3)
            for device in self.devices_of(task.plan):
                self._ping(device, now)
            return True
        key, pinged, answered = silence
        if answered is None:
            times = [self.node.pongs.get(d, {}).get("received", -math.inf) for d in self.devices_of(task.plan)]
            if min(times) >= pinged:
                self._silence = (key, pinged, max(times))
                log.info("task %d: no rows for %.0f ms, but its devices answer: waiting on", key[1],
                         (now - since) * 1e3)
                return True
            return now - pinged <= self.answer_s(task.plan)
        return now - answered <= self.silent_s(task.plan)

    def _give_up(self, task: Task, arrays: dict[str, np.ndarray], reason: str) -> TaskResult:
        node = self.node
        node.forget(task.key)
        remember(node.given_up, task.key[1])
        for device in self.devices_of(task.plan):  # a down device gets it when it is back
            node.send(device, wire.encode({"kind": "cancel", "from": node.name, "session": node.session_id,
                                           "task": task.key[1]}))
        return self._on_host(task.key[1], task.plan, arrays, reason, task.started)

    def _on_host(self, number: int, plan: PlanPart, arrays: dict[str, np.ndarray], reason: str,
                 started: float | None = None) -> TaskResult:
        """The task's outputs from the unsplit model of its plan's variant, on the host."""
        path = plan.manifest.reference_model()
        session = self._unsplit.get(path)
        if session is None:
            if not path.exists():
                raise RunError(f"task {number}: {reason}, and {path}, the unsplit model the host recomputes "
                               "tasks with, is missing; copy the bundle's reference/ folder to the host")
            session = self._unsplit[path] = make_session(str(path), self.manifest.host.threads,
                                                              nchwc=bundle_nchwc(self.manifest))
        at = clock.now()
        names = plan.manifest.outputs
        outputs = dict(zip(names, session.run(names, arrays)))
        end = clock.now()
        events = [event_dict(self.node.name, ["compute", at, end, "unsplit model", None, 0])]
        return TaskResult(number, outputs, at if started is None else started, end, plan.id, events,
                          fallback=reason, unsplit=True)

    def _readmit(self, now: float) -> None:
        """Ping the devices marked down; take back those that answered since."""
        for device, since in list(self.down.items()):
            pong = self.node.pongs.get(device)
            if pong is not None and pong["received"] > since:
                wrong_target = not self.allow_inexact and target_mismatch(self.manifest, pong, device)
                if pong.get("bundle") != self.node.bundle_checksum:
                    if device not in self._wrong_plan:
                        self._wrong_plan.add(device)
                        log.warning("%s answers, but runs plan %s, not this bundle's %s: it stays down until it "
                                    "serves this bundle (copy the device's folder again)", device,
                                    str(pong.get("bundle"))[:12], self.node.bundle_checksum[:12])
                elif wrong_target:
                    if device not in self._wrong_plan:
                        self._wrong_plan.add(device)
                        log.warning("%s answers, but %s: it stays down", device, wrong_target)
                else:
                    del self.down[device]
                    self._wrong_plan.discard(device)
                    if isinstance(pong.get("t"), (int, float)) and isinstance(pong.get("echo"), (int, float)):
                        self.offsets[device] = pong["t"] - (pong["echo"] + pong["received"]) / 2
                    log.warning("%s answers after %.1f s: in use", device, now - since)
            if device in self.down and now - self._pinged.get(device, 0.0) >= REPING_S:
                self._pinged[device] = now
                self._ping(device, now)

    def probe(self, device: str) -> None:
        """Measure `device`'s link; the answer comes from `take_probes` (see `HostNode.probe`)."""
        self.node.probe(device)

    def take_probes(self) -> list[tuple[str, float]]:
        return self.node.take_probes()

    def _host_events(self, task: Task) -> list[dict[str, Any]]:
        return [event_dict(self.node.name, e) for e in task.events]

    def _merge_timelines(self, results: list[TaskResult], timeout_s: float = 0.0) -> list[TaskResult]:
        """Merge the devices' timelines into every result whose devices have all sent theirs
        (waiting up to `timeout_s` for them); the results still waiting."""
        node = self.node
        return node.merge_timelines(results, lambda r: [] if r.unsplit else sorted(
            self.devices_of(node.plan_by_id(r.plan))), self.offsets, timeout_s)


__all__ = ["Fault", "HostSession", "RunError", "TaskResult"]
