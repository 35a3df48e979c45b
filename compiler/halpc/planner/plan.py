"""The Plan: which blocks the trunk is cut into and who computes which rows of each.

A plan is a JSON document that a person can read and edit, and `halpc compile --plan` compiles.
Blocks are named by the cut tensors between them; each block lists strips in row order, each
strip a device and the half-open rows [start, stop) of the block's reference output it owns.
A device may own several strips of one block (HALP's host computes the zones between others).
Reading a plan file back is `halpc.planner.plan_file`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from halpc.errors import HalpcError
from halpc.analyse.strips import block_io
from halpc.analyse.trunk import Trunk

SCHEMA = "halpc-plan/1"


@dataclass(frozen=True)
class Strip:
    device: str
    rows: tuple[int, int]


@dataclass(frozen=True)
class BlockPlan:
    start: int  # layer positions [start, stop)
    stop: int
    strips: tuple[Strip, ...]
    # The host streams the block's input: its sends interleave over the devices, piece by
    # piece, and each device runs its strips top down as their rows arrive (`layouts.streamed`).
    stream: bool = False

    def __hash__(self) -> int:
        # Blocks key the planner's caches and are hashed there millions of times: once each.
        if "_hash" not in self.__dict__:
            object.__setattr__(self, "_hash", hash((self.start, self.stop, self.strips, self.stream)))
        return self.__dict__["_hash"]

    @property
    def boundaries(self) -> list[int]:
        return [self.strips[0].rows[0]] + [s.rows[1] for s in self.strips]


@dataclass(frozen=True)
class Plan:
    strategy: str
    model_sha256: str
    input_shapes: dict[str, tuple[int, ...]]
    blocks: tuple[BlockPlan, ...]
    predicted: dict[str, Any] = field(default_factory=dict)
    exchange: str = "direct"  # "host": every block's output goes through the host (MoDNN)

    def devices(self) -> list[str]:
        seen: list[str] = []
        for block in self.blocks:
            for strip in block.strips:
                if strip.device not in seen:
                    seen.append(strip.device)
        return seen

    def to_json(self, trunk: Trunk) -> dict[str, Any]:
        blocks = []
        for block in self.blocks:
            io = block_io(trunk, block.start, block.stop)
            blocks.append(
                {
                    "from": boundary_name(trunk, block.start),
                    "to": boundary_name(trunk, block.stop),
                    "layers": [block.start, block.stop],
                    "rows_of": io.reference,
                    "rows": trunk.tensors[io.reference].rows,
                    "strips": [{"device": s.device, "rows": list(s.rows)} for s in block.strips],
                    **({"stream": True} if block.stream else {}),
                }
            )
        return {
            "schema": SCHEMA,
            "strategy": self.strategy,
            "model": {
                "sha256": self.model_sha256,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            },
            "exchange": self.exchange,
            "blocks": blocks,
            "predicted": self.predicted,
        }

    def dumps(self, trunk: Trunk) -> str:
        """JSON for people: one strip per line, row ranges on one line."""
        text = json.dumps(self.to_json(trunk), indent=2)
        text = re.sub(
            r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
            lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
            text,
        )
        return re.sub(r'\{\s*("device": "[^"]*"),\s*("rows": \[[^\]]*\])\s*\}', r"{\1, \2}", text) + "\n"

    def checksum(self, trunk: Trunk) -> str:
        text = json.dumps(self.to_json(trunk), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def boundary_name(trunk: Trunk, position: int) -> str | None:
    """The tensor a block starting (or ending) at layer ``position`` is named by in a plan file."""
    if position == 0:
        return trunk.input
    if position == len(trunk.layers):
        return None
    return next(c.tensor for c in trunk.cuts if c.position == position)


def join_neighbours(strips: tuple[Strip, ...]) -> tuple[Strip, ...]:
    """Adjacent strips of one device as one strip: no halo rows between them."""
    joined: list[Strip] = []
    for strip in strips:
        if joined and joined[-1].device == strip.device and joined[-1].rows[1] == strip.rows[0]:
            joined[-1] = Strip(strip.device, (joined[-1].rows[0], strip.rows[1]))
        else:
            joined.append(strip)
    return tuple(joined)


def even_shares(rows: int, devices: list[str]) -> tuple[Strip, ...]:
    """Equal rows per device; the first `rows % n` devices take one more."""
    base, extra = divmod(rows, len(devices))
    strips, start = [], 0
    for i, device in enumerate(devices):
        stop = start + base + (1 if i < extra else 0)
        strips.append(Strip(device, (start, stop)))
        start = stop
    return tuple(strips)


def even_plan(trunk: Trunk, devices: list[str]) -> Plan:
    """Blocks at every cut point, equal rows per device: the plan to compare planners against.

    Deep feature maps can have fewer rows than there are devices (VGG's last pool has 7); such a
    block is shared by as many devices as it has rows, host first. A cluster larger than even the
    biggest feature map cannot be used and is refused.
    """
    positions = [0] + [c.position for c in trunk.cuts] + [len(trunk.layers)]
    ios = [block_io(trunk, start, stop) for start, stop in zip(positions, positions[1:])]
    largest = max(ios, key=lambda io: trunk.tensors[io.reference].rows).reference
    if trunk.tensors[largest].rows < len(devices):
        rows = trunk.tensors[largest].rows
        raise HalpcError(
            f"{len(devices)} devices but the largest feature map to split ({largest!r}) has only "
            f"{rows} rows; use at most {rows} devices or a larger input shape", option="input_shapes"
        )
    blocks = []
    for io in ios:
        rows = trunk.tensors[io.reference].rows
        blocks.append(BlockPlan(io.start, io.stop, even_shares(rows, devices[:rows])))
    return Plan("even", trunk.model.sha256, dict(trunk.model.input_shapes), tuple(blocks))
