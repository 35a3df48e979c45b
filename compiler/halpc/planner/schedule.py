"""Turn a plan into each device's program: which rows to send, receive, compute, and when.

Every tensor row has one owner once computed: the strip whose share it is. A strip reads the
rows its receptive field needs; those it does not already hold (computed itself, or received for
an earlier strip) it receives from their owners. Per block, a device first sends what others need
from it, then receives, then computes, then sends exits to the host: sends never wait, so no
device can wait on another that waits on it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


from halpc.planner.plan import Plan, Strip
from halpc.analyse.rows import Rows, intersect, subtract
from halpc.analyse.strips import BlockIO, StripRows, block_io, strip_at, strip_macs, strip_weights
from halpc.analyse.trunk import Trunk, tail_io

Step = dict[str, Any]


@dataclass(frozen=True)
class StripJob:
    block: int
    index: int  # strip index within the block
    device: str
    io: BlockIO
    rows: StripRows
    trunk: Trunk = field(repr=False, compare=False)

    @property
    def file(self) -> str:
        return f"block{self.block:02d}_strip{self.index}.onnx"

    @cached_property
    def macs(self) -> int:
        return strip_macs(self.trunk, self.io, self.rows)

    @cached_property
    def int8_macs(self) -> int:
        return strip_macs(self.trunk, self.io, self.rows, integer=True)

    @cached_property
    def weights(self) -> int:
        return strip_weights(self.trunk, self.io, self.rows)


@dataclass(frozen=True)
class Schedule:
    jobs: tuple[StripJob, ...]
    programs: dict[str, list[Step]]
    traffic: dict[tuple[str, str], int]  # (sender, receiver) -> rows x row bytes


def block_jobs(trunk: Trunk, k: int, io: BlockIO, strips: tuple[Strip, ...]) -> list[StripJob]:
    bounds = [strips[0].rows[0]] + [s.rows[1] for s in strips]
    return [
        StripJob(k, j, s.device, io, strip_at(trunk, io, bounds, j), trunk)
        for j, s in enumerate(strips)
    ]


def strip_jobs(trunk: Trunk, plan: Plan) -> list[StripJob]:
    return [
        job
        for k, block in enumerate(plan.blocks)
        for job in block_jobs(trunk, k, block_io(trunk, block.start, block.stop), block.strips)
    ]


class Scheduler:
    """Builds the programs block by block, tracking who holds and who owns which rows.

    `gather` routes every block's output through the host (MoDNN's layer-wise scheme): the
    host collects the whole feature map and hands out what the next block needs.
    """

    def __init__(self, trunk: Trunk, devices: list[str], host: str, gather: bool = False,
                 costing: bool = False) -> None:
        self.trunk, self.devices, self.host, self.gather = trunk, devices, host, gather
        # Costing a block after the one before it only: rows of a tensor made further back (a
        # map waiting beside an SE block's sync point) are taken to be where they are needed.
        self.costing = costing
        full_input = (0, trunk.tensors[trunk.input].rows)
        self.holdings: dict[str, dict[str, list[Rows]]] = {d: {} for d in devices}
        self.holdings[host][trunk.input] = [full_input]
        self.owners: dict[str, list[tuple[str, Rows]]] = {trunk.input: [(host, full_input)]}
        self.traffic: dict[tuple[str, str], int] = {}
        self.exits = set(trunk.exits)
        self.steps: dict[str, list[Step]] = {d: [] for d in devices}
        # The run step that computed each owned piece, and the sends to make right after a run.
        self.producer: dict[tuple[str, str, Rows], Step] = {}
        self.then: dict[int, list[Step]] = {}
        self.streamed: set[int] = set()  # blocks whose input the host streams

    def copy(self) -> Scheduler:
        """An independent scheduler in this one's state (steps are shared: none is changed once made)."""
        other = copy.copy(self)
        other.holdings = {d: {t: list(rows) for t, rows in held.items()} for d, held in self.holdings.items()}
        other.owners, other.traffic, other.producer = dict(self.owners), dict(self.traffic), dict(self.producer)
        other.steps = {d: list(steps) for d, steps in self.steps.items()}
        other.then = {run: list(sends) for run, sends in self.then.items()}
        other.streamed = set(self.streamed)
        return other

    def _message(self, block: int, sender: str, receiver: str, tensor: str, rows: Rows,
                 sends: dict[str, list[Step]], recvs: dict[str, list[Step]],
                 producer: Step | None) -> None:
        """One message, tagged with the block that needs (or, for exits, produced) its rows.

        Rows a run computed are sent right after that run, not when the receiver's block
        starts: the transfer overlaps the sender's next strips (sends never wait, so moving
        one earlier cannot deadlock). Only the host's input rows go out at the block's start.
        """
        head = {"tensor": tensor, "rows": list(rows), "block": block}
        send = {"op": "send", **head, "to": receiver}
        if producer is None:
            sends[sender].append(send)
        else:
            self.then.setdefault(id(producer), []).append(send)
        recvs[receiver].append({"op": "recv", **head, "from": sender})
        size = (rows[1] - rows[0]) * self.trunk.tensors[tensor].row_bytes
        self.traffic[(sender, receiver)] = self.traffic.get((sender, receiver), 0) + size

    def add_block(self, k: int, jobs: list[StripJob], inputs_held: bool = False, stream: bool = False) -> list[Step]:
        """Add one block's steps to every device; return the host's receives of its exits
        (the caller places them: the host must not wait for exits before its next block).

        `inputs_held` starts mid-model (the planner costing one block after another): every
        strip is taken to hold its inputs already. `stream` (see `BlockPlan.stream`): the
        host's sends of rows it holds at the block's start take turns over the receivers, one
        message each, and every receiver runs its strips top down as their rows come in.
        """
        devices, host = self.devices, self.host
        sends: dict[str, list[Step]] = {d: [] for d in devices}
        recvs: dict[str, list[Step]] = {d: [] for d in devices}
        runs: dict[str, list[Step]] = {d: [] for d in devices}
        exit_recvs: dict[str, list[Step]] = {d: [] for d in devices}
        gather_recvs: dict[str, list[Step]] = {d: [] for d in devices}
        new_owners: dict[str, list[tuple[str, Rows]]] = {}
        charged: set[str] = set()
        for job in jobs:
            device = job.device
            held = self.holdings[device]
            for tensor, need in job.rows.inputs.items():
                if inputs_held or (self.costing and tensor not in self.owners):
                    held.setdefault(tensor, []).append(need)
                    continue
                missing = [need]
                for have in held.get(tensor, []):
                    missing = [part for m in missing for part in subtract(m, have)]
                for gap in missing:
                    covered = 0
                    for owner, owned in self.owners[tensor]:
                        piece = intersect(gap, owned)
                        if piece is not None:
                            covered += piece[1] - piece[0]
                            producer = self.producer.get((tensor, owner, owned))
                            self._message(k, owner, device, tensor, piece, sends, recvs, producer)
                            held.setdefault(tensor, []).append(piece)
                    assert covered == gap[1] - gap[0], f"no owner for {tensor} rows {gap}"
            run = {
                "op": "run",
                "block": k,
                "model": job.file,
                "layers": [job.io.start, job.io.stop],  # what the cost model charges per layer
                "macs": job.macs,
                **({"int8_macs": job.int8_macs} if job.int8_macs else {}),
                # A device reads a block's weights once: its other strips of the block find them
                # in cache.
                "weights": 0 if device in charged else job.weights,
                "inputs": {t: list(r) for t, r in job.rows.inputs.items()},
                "outputs": {t: list(r) for t, r in job.rows.outputs.items()},
            }
            runs[device].append(run)
            charged.add(device)
            for tensor, rows in job.rows.outputs.items():
                held.setdefault(tensor, []).append(rows)
                owned = job.rows.owned[tensor]
                new_owners.setdefault(tensor, []).append((device, owned))
                self.producer[(tensor, device, owned)] = run
                if device == host:
                    continue
                if tensor in self.exits:
                    self._message(k, device, host, tensor, owned, sends, exit_recvs, run)
                elif self.gather:
                    self._message(k, device, host, tensor, owned, sends, gather_recvs, run)
        for tensor, parts in new_owners.items():
            if self.gather and tensor not in self.exits:
                whole = (0, self.trunk.tensors[tensor].rows)
                self.holdings[host].setdefault(tensor, []).append(whole)
                parts = [(host, whole)]
            self.owners[tensor] = parts
        if stream:
            sends[host] = _take_turns(sends[host])
            self.streamed.add(k)
        for d in devices:
            self.steps[d] += sends[d] + recvs[d] + runs[d] + gather_recvs[d]
        return exit_recvs[host]

    def programs(self) -> dict[str, list[Step]]:
        """Every device's steps so far, in the order that lets transfers overlap compute.

        Within a block a device first runs the strips whose rows others wait for; each run is
        followed by the sends of the rows it computed and preceded only by the receives it
        needs, so a strip starts while rows for later strips are still on the way."""
        return {device: self._order(steps, device == self.host) for device, steps in self.steps.items()}

    def _order(self, steps: list[Step], host: bool) -> list[Step]:
        program: list[Step] = []
        pending: list[Step] = []  # this block's receives, not yet placed
        group: list[Step] = []  # consecutive runs of one block

        def flush_group() -> None:
            if host or not group or group[0]["block"] not in self.streamed:
                group.sort(key=lambda run: id(run) not in self.then)
            for run in group:
                for recv in [r for r in pending if _feeds(r, run)]:
                    pending.remove(recv)
                    program.append(recv)
                program.extend([run, *self.then.get(id(run), [])])
            program.extend(pending)
            pending.clear()
            group.clear()

        for step in steps:
            if step["op"] == "run" and (not group or group[0]["block"] == step["block"]):
                group.append(step)
                continue
            if group:
                flush_group()
            if step["op"] == "run":
                group.append(step)
            elif step["op"] == "recv" and not group:
                pending.append(step)
            else:
                program.extend(pending)
                pending.clear()
                program.append(step)
        flush_group()
        return program

    def finish(self) -> list[Step]:
        """The host's last steps: the tail on whole tensors, then the graph outputs."""
        steps: list[Step] = []
        tail = tail_io(self.trunk)
        if tail is not None:
            inits = {init.name for init in self.trunk.model.graph.initializer}
            steps.append(
                {
                    "op": "tail",
                    "model": "tail.onnx",
                    "macs": self.trunk.tail_macs,
                    "inputs": [t for t in tail[0] if t not in inits],
                    "outputs": tail[1],
                }
            )
        outputs = [o.name for o in self.trunk.model.graph.output]
        return steps + [{"op": "output", "tensors": outputs}]


def _take_turns(sends: list[Step]) -> list[Step]:
    """The sends in turns: every receiver's first message, then every receiver's second, ...
    (receivers in the order of their first message)."""
    queues: dict[str, list[Step]] = {}
    for send in sends:
        queues.setdefault(send["to"], []).append(send)
    turns = max((len(q) for q in queues.values()), default=0)
    return [q[i] for i in range(turns) for q in queues.values() if i < len(q)]


def _feeds(recv: Step, run: Step) -> bool:
    """Whether a received piece holds rows the run reads."""
    rows = run["inputs"].get(recv["tensor"])
    return rows is not None and intersect(tuple(rows), tuple(recv["rows"])) is not None


def build_schedule(trunk: Trunk, plan: Plan, devices: list[str], host: str) -> Schedule:
    jobs = strip_jobs(trunk, plan)
    scheduler = Scheduler(trunk, devices, host, gather=plan.exchange == "host")
    exit_recvs: list[Step] = []
    for k in range(len(plan.blocks)):
        exit_recvs += scheduler.add_block(k, [j for j in jobs if j.block == k], stream=plan.blocks[k].stream)
    programs = scheduler.programs()
    # Exits are collected last: the host must not wait for them before its next block.
    programs[host] += exit_recvs + scheduler.finish()
    return Schedule(tuple(jobs), programs, scheduler.traffic)


