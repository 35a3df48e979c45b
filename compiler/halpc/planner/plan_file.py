"""Reading a (possibly hand-edited) plan file back: `halpc compile --plan plan.json`.

The document's shape is a pydantic model (:class:`PlanDoc`): types, a non-empty list of blocks,
each with strips of ``{device, rows: [start, stop]}``. Whether the plan fits what is compiled is
plain code, since it needs the trunk and the cluster: the model's sha256 and input shapes, blocks
that follow each other from cut point to cut point, strips of known devices that cover the rows
in order. Every mistake is one :class:`~halpc.errors.HalpcError` line with its place, counting
from 0 as JSON does: ``plan.json: blocks[0].strips[1].rows: starts at 70 but ...``.

Keys the plan carries for people (``layers``, ``rows``, ``predicted``'s contents) and unknown keys
are not checked: a plan is read for what counts, and halpc writes the rest again.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from halpc.analyse.strips import block_io
from halpc.analyse.trunk import Trunk
from halpc.errors import HalpcError
from halpc.inputs.schema import Rule, clip, one_line_error
from halpc.planner.plan import SCHEMA, BlockPlan, Plan, Strip, boundary_name

Fail = Callable[[str, str], HalpcError]


def _name_or_none(value: Any) -> Any:
    """A strategy is a label for people: anything but a non-empty string reads as none ("manual")."""
    return value if isinstance(value, str) and value else None


def _none_if_empty(value: Any) -> Any:
    """An empty or false ``predicted`` (``{}``, ``[]``, ``0``) reads as none, as plans always have."""
    return value or None


class _Object(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class StripEntry(_Object):
    device: str
    rows: Annotated[list[int], Field(min_length=2, max_length=2)]


class BlockEntry(_Object):
    from_: str = Field(alias="from")
    to: str | None = None  # None: the end of the trunk
    rows_of: str | None = None  # for reading; must agree when given
    strips: Annotated[list[StripEntry], Field(min_length=1)]
    stream: bool = False  # see BlockPlan.stream


class ModelEntry(_Object):
    sha256: str
    input_shapes: dict[str, list[int]] | None = None


class PlanDoc(_Object):
    schema_: Literal["halpc-plan/1"] = Field(alias="schema")  # checked first, for its own message
    strategy: Annotated[str | None, BeforeValidator(_name_or_none)] = None  # None: "manual"
    model: ModelEntry
    exchange: Literal["direct", "host"] = "direct"
    blocks: Annotated[list[BlockEntry], Field(min_length=1)]
    predicted: Annotated[dict[str, Any] | None, BeforeValidator(_none_if_empty)] = None


_ROWS = "must be [start, stop], got {got}; give the half-open rows of the block's output this strip computes"
RULES: dict[str, Rule] = {
    "model": Rule("must be an object with sha256 and input_shapes, got {got}; plan the model again",
                  missing="missing; give the model's sha256 and input_shapes, or plan the model again"),
    "model.sha256": Rule("must be the model file's sha256, got {got}; plan the model again",
                         missing="missing; give the model file's sha256, or plan the model again"),
    "model.input_shapes": Rule("must be an object of input name -> [dims], got {got}"),
    "exchange": Rule('is {got}; use "direct" (device to device) or "host"'),
    "blocks": Rule("must be a non-empty list, got {got}; give the blocks, each with from, to and strips",
                   missing="missing; give the blocks (a non-empty list), each with from, to and strips"),
    "blocks[]": Rule("must be an object with from, to and strips, got {got}"),
    "blocks[].from": Rule("must be the cut tensor the block starts at, got {got}; see `halpc inspect`",
                          missing="missing; give the cut tensor the block starts at (the block before's `to`)"),
    "blocks[].to": Rule("must be the name of a cut tensor or null, got {got}; see `halpc inspect` for the cut "
                        "points (null ends the trunk)"),
    "blocks[].rows_of": Rule("must be a tensor name, got {got}; it is for reading only: delete it"),
    "blocks[].strips": Rule("must be a non-empty list of {{device, rows}}, got {got}"),
    "blocks[].strips[]": Rule("must be an object with device and rows, got {got}"),
    "blocks[].strips[].device": Rule("must be a device name, got {got}; use a device of the cluster file",
                                     missing="missing; give the device that computes these rows"),
    "blocks[].strips[].rows": Rule(_ROWS, missing="missing; give the rows as [start, stop]"),
    "blocks[].stream": Rule("must be true or false, got {got}; true streams the block's input from the host "
                            "(the planner sets it on a first block)"),
    "predicted": Rule("must be an object or null, got {got}"),
}


def load_plan(path: str | Path, trunk: Trunk, devices: list[str]) -> Plan:
    """The plan file at ``path``, checked against the trunk and the cluster's device names."""
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

    if not isinstance(data, dict) or data.get("schema") != SCHEMA:  # not a plan at all: one message
        raise fail("schema", f"expected {SCHEMA!r}; write plans with `halpc compile` or `halpc plan`")
    try:
        doc = PlanDoc.model_validate(data)
    except ValidationError as exc:
        raise one_line_error(exc, data, source, RULES, show=lambda v: clip(repr(v))) from None
    if doc.model.sha256 != trunk.model.sha256:
        raise fail("model.sha256", f"the plan was made for another model file than {trunk.model.path}; plan it again")
    shapes = {k: tuple(v) for k, v in (doc.model.input_shapes or {}).items()}
    if shapes != dict(trunk.model.input_shapes):
        raise fail("model.input_shapes",
                   f"{_fmt_shapes(shapes)} but compiling for {_fmt_shapes(trunk.model.input_shapes)}")
    blocks = _blocks(doc.blocks, trunk, devices, fail)
    return Plan(doc.strategy or "manual", trunk.model.sha256, shapes, blocks, doc.predicted or {}, doc.exchange)


def _blocks(entries: list[BlockEntry], trunk: Trunk, devices: list[str], fail: Fail) -> tuple[BlockPlan, ...]:
    """Blocks that follow each other from the input to the end of the trunk, cut point to cut point."""
    cut_of = {c.tensor: c.position for c in trunk.cuts}
    cut_of[trunk.input] = 0
    end = len(trunk.layers)
    blocks: list[BlockPlan] = []
    position = 0
    for b, entry in enumerate(entries):
        where = f"blocks[{b}]"
        if entry.from_ != boundary_name(trunk, position):
            raise fail(f"{where}.from", f"is {entry.from_!r}; blocks must follow each other, so it must be "
                                        f"{boundary_name(trunk, position)!r}")
        if entry.to is None:
            stop = end
        elif entry.to in cut_of and cut_of[entry.to] > position:
            stop = cut_of[entry.to]
        else:
            raise fail(f"{where}.to", f"{entry.to!r} is not a cut point after {entry.from_!r} "
                                      "(see `halpc inspect` for the cut points; null ends the trunk)")
        io = block_io(trunk, position, stop)
        if "rows_of" in entry.model_fields_set and entry.rows_of != io.reference:
            raise fail(f"{where}.rows_of", f"this block's rows are those of {io.reference!r}")
        strips = _strips(entry.strips, trunk.tensors[io.reference].rows, devices, where, fail)
        blocks.append(BlockPlan(position, stop, strips, entry.stream))
        position = stop
    if position != end:
        raise fail("blocks", f"end at {boundary_name(trunk, position)!r}; the last block's `to` must be null")
    return tuple(blocks)


def _strips(entries: list[StripEntry], rows: int, devices: list[str], where: str, fail: Fail) -> tuple[Strip, ...]:
    """Strips of the cluster's devices that cover rows [0, rows) in order, without gaps or overlaps."""
    strips = []
    expected_start = 0
    for s, entry in enumerate(entries):
        at = f"{where}.strips[{s}]"
        if entry.device not in devices:
            raise fail(f"{at}.device", f"{entry.device!r} is not in the cluster ({', '.join(devices)})")
        start, stop = entry.rows
        if start != expected_start:
            raise fail(f"{at}.rows", f"starts at {start} but the strips before end at {expected_start}; strips must "
                                     "cover the rows in order without gaps or overlaps")
        if stop <= start:
            raise fail(f"{at}.rows", f"[{start}, {stop}] is empty; stop must be above start")
        strips.append(Strip(entry.device, (start, stop)))
        expected_start = stop
    if expected_start != rows:
        raise fail(f"{where}.strips", f"cover rows [0, {expected_start}) of {rows}; the last must end at {rows}")
    return tuple(strips)


def _fmt_shapes(shapes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items()) or "(none)"
