"""The Plan: which blocks the trunk is cut into and who computes which rows of each.

A plan is a JSON document that a person can read and edit, and `halpc compile --plan` compiles.
Blocks are named by the cut tensors between them; each block lists strips in row order, each
strip a device and the half-open rows [start, stop) of the block's reference output it owns.
A device may own several strips of one block (HALP's host computes the zones between others).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
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
                    "from": _boundary_name(trunk, block.start),
                    "to": _boundary_name(trunk, block.stop),
                    "layers": [block.start, block.stop],
                    "rows_of": io.reference,
                    "rows": trunk.tensors[io.reference].rows,
                    "strips": [{"device": s.device, "rows": list(s.rows)} for s in block.strips],
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


def _boundary_name(trunk: Trunk, position: int) -> str | None:
    if position == 0:
        return trunk.input
    if position == len(trunk.layers):
        return None
    return next(c.tensor for c in trunk.cuts if c.position == position)


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


def load_plan(path: str | Path, trunk: Trunk, devices: list[str]) -> Plan:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HalpcError(f"{path}: no such plan file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HalpcError(f"{path}: not a readable JSON plan ({exc})") from None
    return plan_from_json(data, trunk, devices, source=str(path))


def plan_from_json(data: Any, trunk: Trunk, devices: list[str], source: str = "plan") -> Plan:
    """Validate a (possibly hand-edited) plan against the model and the cluster."""

    def fail(where: str, what: str) -> HalpcError:
        return HalpcError(f"{source}: {where}: {what}")

    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise fail("schema", f"expected {SCHEMA!r}; write plans with `halpc compile` or `halpc plan`")
    model = data.get("model")
    if not isinstance(model, dict) or model.get("sha256") != trunk.model.sha256:
        raise fail(
            "model.sha256",
            f"the plan was made for another model file than {trunk.model.path}; plan it again",
        )
    raw_shapes = model.get("input_shapes") or {}
    if not isinstance(raw_shapes, dict) or not all(isinstance(v, list) for v in raw_shapes.values()):
        raise fail("model.input_shapes", "must be an object of input name -> [dims]")
    shapes = {k: tuple(v) for k, v in raw_shapes.items()}
    if shapes != dict(trunk.model.input_shapes):
        raise fail(
            "model.input_shapes",
            f"{_fmt_shapes(shapes)} but compiling for {_fmt_shapes(trunk.model.input_shapes)}",
        )
    raw_blocks = data.get("blocks")
    if not isinstance(raw_blocks, list) or not raw_blocks:
        raise fail("blocks", "must be a non-empty list")
    cut_of = {c.tensor: c.position for c in trunk.cuts}
    cut_of[trunk.input] = 0
    end = len(trunk.layers)
    blocks: list[BlockPlan] = []
    position = 0
    for b, raw in enumerate(raw_blocks):
        where = f"blocks[{b}]"
        if not isinstance(raw, dict):
            raise fail(where, "must be an object with from, to and strips")
        if raw.get("from") != _boundary_name(trunk, position):
            raise fail(
                f"{where}.from",
                f"is {raw.get('from')!r}; blocks must follow each other, so it must be "
                f"{_boundary_name(trunk, position)!r}",
            )
        to = raw.get("to")
        if to is None:
            stop = end
        elif isinstance(to, str) and to in cut_of and cut_of[to] > position:
            stop = cut_of[to]
        else:
            raise fail(
                f"{where}.to",
                f"{to!r} is not a cut point after {raw.get('from')!r} "
                "(see `halpc inspect` for the cut points; null ends the trunk)",
            )
        io = block_io(trunk, position, stop)
        if raw.get("rows_of", io.reference) != io.reference:
            raise fail(f"{where}.rows_of", f"this block's rows are those of {io.reference!r}")
        strips = _strips(raw.get("strips"), trunk.tensors[io.reference].rows, devices, where, fail)
        blocks.append(BlockPlan(position, stop, strips))
        position = stop
    if position != end:
        raise fail("blocks", f"end at {_boundary_name(trunk, position)!r}; the last block's `to` must be null")
    predicted = data.get("predicted") or {}
    if not isinstance(predicted, dict):
        raise fail("predicted", "must be an object or null")
    exchange = data.get("exchange", "direct")
    if exchange not in ("direct", "host"):
        raise fail("exchange", f"is {exchange!r}; use \"direct\" (device to device) or \"host\"")
    strategy = data.get("strategy")
    return Plan(
        strategy if isinstance(strategy, str) and strategy else "manual",
        trunk.model.sha256, shapes, tuple(blocks), predicted, exchange,
    )


def _strips(raw, rows: int, devices: list[str], where: str, fail) -> tuple[Strip, ...]:
    if not isinstance(raw, list) or not raw:
        raise fail(f"{where}.strips", "must be a non-empty list of {device, rows}")
    strips = []
    expected_start = 0
    for s, item in enumerate(raw):
        at = f"{where}.strips[{s}]"
        if not isinstance(item, dict):
            raise fail(at, "must be an object with device and rows")
        device = item.get("device")
        if device not in devices:
            raise fail(f"{at}.device", f"{device!r} is not in the cluster ({', '.join(devices)})")
        span = item.get("rows")
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise fail(f"{at}.rows", f"must be [start, stop], got {span!r}")
        start, stop = span
        if start != expected_start:
            raise fail(
                f"{at}.rows",
                f"starts at {start} but the strips before end at {expected_start}; strips must "
                "cover the rows in order without gaps or overlaps",
            )
        if stop <= start:
            raise fail(f"{at}.rows", f"[{start}, {stop}] is empty; stop must be above start")
        strips.append(Strip(device, (start, stop)))
        expected_start = stop
    if expected_start != rows:
        raise fail(f"{where}.strips", f"cover rows [0, {expected_start}) of {rows}; the last must end at {rows}")
    return tuple(strips)


def _fmt_shapes(shapes: dict) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items()) or "(none)"
