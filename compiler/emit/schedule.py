"""Turn a plan into each device's program: which rows to send, receive, compute, and when.

Every tensor row has one owner once computed: the strip whose share it is. A strip reads the
rows its receptive field needs; those it does not already hold (computed itself, or received for
an earlier strip) it receives from their owners. Per block, a device first sends what others need
from it, then receives, then computes, then sends exits to the host: sends never wait, so no
device can wait on another that waits on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from halpc.plan import Plan
from halpc.rows import Rows, intersect, subtract
from halpc.strips import BlockIO, StripRows, block_io, output_partitions, strip_rows
from halpc.trunk import Trunk

Step = dict[str, Any]


@dataclass(frozen=True)
class StripJob:
    block: int
    index: int  # strip index within the block
    device: str
    io: BlockIO
    rows: StripRows

    @property
    def file(self) -> str:
        return f"block{self.block:02d}_strip{self.index}.onnx"


@dataclass(frozen=True)
class Schedule:
    jobs: tuple[StripJob, ...]
    programs: dict[str, list[Step]]
    traffic: dict[tuple[str, str], int]  # (sender, receiver) -> rows x row bytes


def strip_jobs(trunk: Trunk, plan: Plan) -> list[StripJob]:
    jobs = []
    for k, block in enumerate(plan.blocks):
        io = block_io(trunk, block.start, block.stop)
        partitions = output_partitions(trunk, io, block.boundaries)
        for j, strip in enumerate(block.strips):
            owned = {t: (bounds[j], bounds[j + 1]) for t, bounds in partitions.items()}
            jobs.append(StripJob(k, j, strip.device, io, strip_rows(trunk, io, owned)))
    return jobs


def build_schedule(
    trunk: Trunk, plan: Plan, devices: list[str], host: str, tail: onnx.ModelProto | None
) -> Schedule:
    jobs = strip_jobs(trunk, plan)
    holdings: dict[str, dict[str, list[Rows]]] = {d: {} for d in devices}
    owners: dict[str, list[tuple[str, Rows]]] = {}
    full_input = (0, trunk.tensors[trunk.input].rows)
    holdings[host][trunk.input] = [full_input]
    owners[trunk.input] = [(host, full_input)]
    programs: dict[str, list[Step]] = {d: [] for d in devices}
    traffic: dict[tuple[str, str], int] = {}
    exit_recvs: list[Step] = []
    exits = set(trunk.exits)

    for k in range(len(plan.blocks)):
        sends: dict[str, list[Step]] = {d: [] for d in devices}
        recvs: dict[str, list[Step]] = {d: [] for d in devices}
        runs: dict[str, list[Step]] = {d: [] for d in devices}
        exit_sends: dict[str, list[Step]] = {d: [] for d in devices}
        new_owners: dict[str, list[tuple[str, Rows]]] = {}
        for job in (j for j in jobs if j.block == k):
            device = job.device
            held = holdings[device]
            for tensor, need in job.rows.inputs.items():
                missing = [need]
                for have in held.get(tensor, []):
                    missing = [part for m in missing for part in subtract(m, have)]
                for gap in missing:
                    covered = 0
                    for owner, owned in owners[tensor]:
                        piece = intersect(gap, owned)
                        if piece is None:
                            continue
                        covered += piece[1] - piece[0]
                        sends[owner].append(
                            {"op": "send", "tensor": tensor, "rows": list(piece), "to": device}
                        )
                        recvs[device].append(
                            {"op": "recv", "tensor": tensor, "rows": list(piece), "from": owner}
                        )
                        held.setdefault(tensor, []).append(piece)
                        _count(traffic, trunk, owner, device, tensor, piece)
                    assert covered == gap[1] - gap[0], f"no owner for {tensor} rows {gap}"
            runs[device].append(
                {
                    "op": "run",
                    "block": k,
                    "model": job.file,
                    "inputs": {t: list(r) for t, r in job.rows.inputs.items()},
                    "outputs": {t: list(r) for t, r in job.rows.outputs.items()},
                }
            )
            for tensor, rows in job.rows.outputs.items():
                held.setdefault(tensor, []).append(rows)
                owned = job.rows.owned[tensor]
                new_owners.setdefault(tensor, []).append((device, owned))
                if tensor in exits and device != host:
                    exit_sends[device].append(
                        {"op": "send", "tensor": tensor, "rows": list(owned), "to": host}
                    )
                    exit_recvs.append(
                        {"op": "recv", "tensor": tensor, "rows": list(owned), "from": device}
                    )
                    _count(traffic, trunk, device, host, tensor, owned)
        owners.update(new_owners)
        for d in devices:
            programs[d] += sends[d] + recvs[d] + runs[d] + exit_sends[d]

    programs[host] += exit_recvs
    if tail is not None:
        programs[host].append(
            {
                "op": "tail",
                "model": "tail.onnx",
                "inputs": [i.name for i in tail.graph.input],
                "outputs": [o.name for o in tail.graph.output],
            }
        )
    programs[host].append({"op": "output", "tensors": [o.name for o in trunk.model.graph.output]})
    return Schedule(tuple(jobs), programs, traffic)


def _count(traffic, trunk: Trunk, sender: str, receiver: str, tensor: str, rows: Rows) -> None:
    info = trunk.tensors[tensor]
    row_bytes = 1
    for axis, dim in enumerate(info.shape):
        if axis != info.row_axis:
            row_bytes *= dim
    row_bytes *= np.dtype(info.dtype).itemsize
    key = (sender, receiver)
    traffic[key] = traffic.get(key, 0) + (rows[1] - rows[0]) * row_bytes
