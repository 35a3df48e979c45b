"""The messages between devices, and the checks every received message passes before it is used.

A message is a list of ZeroMQ frames: first a small JSON header, then (for rows) the raw array
buffer, sent and received without copies. Kinds:

- ``rows``: ``{"v", "kind", "session", "task", "plan", "from", "block", "tensor", "rows",
  "dtype", "shape"}`` and the array; the rows one device's program sends another's.
- ``ping`` / ``pong``: the host asks a device whether it is up and runs the same plan; the pong
  carries the device's plan checksum, ONNX Runtime version and clock.
- ``timeline``: after each task a device sends the host what it measured of that task.
- ``cancel``: the host gave a task up (a device of it failed, see `halpc_stub.host`): the device
  drops the task, and any rows for it that come later.
- ``probe`` / ``probed``: the host measures a link it has not used lately: it sends two
  padding messages back to back (``part`` 0 then 1); the first drains any burst allowance, and
  the device answers with the gap between their arrivals, over which the second crossed the
  link at the link's rate (packet-train dispersion).

Nothing here trusts the sender: a header is parsed only if it is small, is JSON, and every field
has the type and value the manifest allows; a rows buffer is used only if it is exactly the
size its (checked) dtype and shape say. Anything else raises `Rejected` with the reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from halpc_stub.store import TensorSpec

VERSION = 1
MAX_HEADER_BYTES = 64 * 1024  # timelines of big programs are the largest headers
MAX_PROBE_BYTES = 1 << 20
KINDS = ("rows", "ping", "pong", "timeline", "probe", "probed", "cancel")
TWO_FRAMES = ("rows", "probe")


class Rejected(ValueError):
    """A message that does not fit the manifest; the reason says which field and why."""


def encode(header: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **header}, separators=(",", ":")).encode()


def decode(frames: list[Any]) -> dict[str, Any]:
    """The checked header of a message: its version and kind, and the frame count for the kind."""
    if not frames:
        raise Rejected("empty message")
    raw = frames[0].bytes if hasattr(frames[0], "bytes") else frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise Rejected(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise Rejected("header is not JSON") from None
    if not isinstance(header, dict):
        raise Rejected("header is not a JSON object")
    if header.get("v") != VERSION or type(header.get("v")) is not int:
        raise Rejected(f"protocol version {header.get('v')!r}, expected {VERSION}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise Rejected(f"unknown kind {kind!r}")
    if len(frames) != (2 if kind in TWO_FRAMES else 1):
        raise Rejected(f"{kind} message with {len(frames)} frames")
    if not isinstance(header.get("from"), str):
        raise Rejected("no sender")
    return header


def task_of(header: dict[str, Any]) -> tuple[str, int]:
    session, task = header.get("session"), header.get("task")
    if not isinstance(session, str) or not 0 < len(session) <= 64:
        raise Rejected("bad session id")
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        raise Rejected(f"bad task id {task!r}")
    return session, task


def probe_part(header: dict[str, Any], frames: list[Any]) -> tuple[int, int, int]:
    """(sequence number, part, padding bytes) of a probe, once checked."""
    seq, part = header.get("seq"), header.get("part")
    if type(seq) is not int or seq < 0:
        raise Rejected(f"bad probe sequence number {seq!r}")
    if part not in (0, 1) or type(part) is not int:
        raise Rejected(f"bad probe part {part!r}")
    size = len(frames[1].buffer if hasattr(frames[1], "buffer") else memoryview(frames[1]))
    if size > MAX_PROBE_BYTES:
        raise Rejected(f"probe of {size} bytes exceeds {MAX_PROBE_BYTES}")
    return seq, part, size


def rows_header(session: str, task: int, plan: str, sender: str, step: dict[str, Any],
                array: np.ndarray) -> bytes:
    return encode({
        "kind": "rows", "session": session, "task": task, "plan": plan, "from": sender,
        "block": step.get("block"), "tensor": step["tensor"], "rows": step["rows"],
        "dtype": array.dtype.name, "shape": list(array.shape),
    })


@dataclass(frozen=True)
class _Expect:
    block: int | None
    dtype: np.dtype
    shape: tuple[int, ...]


class Inbound:
    """What one device may receive under one plan: exactly the `recv` steps of its program."""

    def __init__(self, plan: str, program: list[dict[str, Any]], specs: dict[str, TensorSpec]) -> None:
        self.plan_checksum = plan
        self._expect: dict[tuple[str, str, tuple[int, int]], _Expect] = {}
        for step in program:
            if step["op"] == "recv":
                spec = specs[step["tensor"]]
                rows = tuple(step["rows"])
                self._expect[(step["from"], step["tensor"], rows)] = _Expect(
                    step.get("block"), np.dtype(spec.dtype), spec.strip_shape(rows)
                )

    def rows(self, header: dict[str, Any], frames: list[Any]) -> tuple[tuple[str, str, tuple[int, int]], np.ndarray]:
        """The key (sender, tensor, rows) and a read-only array over the buffer, once checked."""
        if header.get("plan") != self.plan_checksum:
            raise Rejected(f"plan {str(header.get('plan'))[:12]!r} is not this device's plan {self.plan_checksum[:12]}")
        rows = header.get("rows")
        if not (isinstance(rows, list) and len(rows) == 2 and all(type(r) is int for r in rows)):
            raise Rejected(f"bad rows {rows!r}")
        key = (header["from"], header.get("tensor"), (rows[0], rows[1]))
        expect = self._expect.get(key) if isinstance(key[1], str) else None  # type: ignore[arg-type]
        if expect is None:
            raise Rejected(f"no step receives {key[1]!r} rows {rows} from {key[0]!r}")
        if header.get("block") != expect.block or isinstance(header.get("block"), bool):
            raise Rejected(f"block {header.get('block')!r}, the program has {expect.block}")
        if header.get("dtype") != expect.dtype.name or header.get("shape") != list(expect.shape):
            raise Rejected(
                f"{header.get('dtype')!r} {header.get('shape')!r} for {key[1]!r} rows {rows}, "
                f"expected {expect.dtype.name} {list(expect.shape)}"
            )
        buffer = frames[1].buffer if hasattr(frames[1], "buffer") else memoryview(frames[1])
        if buffer.nbytes != expect.dtype.itemsize * int(np.prod(expect.shape)):
            raise Rejected(f"buffer of {buffer.nbytes} bytes for {key[1]!r} rows {rows}")
        return key, np.frombuffer(buffer, dtype=expect.dtype).reshape(expect.shape)
