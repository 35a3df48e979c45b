"""A device profile file (schema `halpc-profile/1`): what `halpc profile` measured on one board.

A cluster file references it with `profile = "device.json"` instead of `gmacs = ...`; the planner
takes the device's GMAC/s and its fixed costs (per run, per message, reading weights) from it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from halpc.errors import HalpcError
from halpc.files import write_atomic
from halpc.inputs.schema import Rule, clip, one_line_error

SCHEMA = "halpc-profile/1"

_Cost = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ProfileDoc(BaseModel):
    """What the planner reads from a profile; the many other measured fields pass unchecked."""

    model_config = ConfigDict(strict=True, extra="allow")

    schema_: Literal["halpc-profile/1"] = Field(alias="schema")  # checked first, for its own message
    gmacs: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    int8_gmacs: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None  # quantized models' convs
    per_run_overhead_ms: _Cost | None = None
    weight_gbps: _Cost | None = None  # None or 0: reading weights costs nothing
    per_message_overhead_ms: _Cost | None = None
    memory_total_mb: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None  # the board's RAM
    layers: dict[str, Any] = Field(default_factory=dict)


_AGAIN = "measure the device again with `halpc profile`"
_RULES = {
    "gmacs": Rule(f"must be a positive number, got {{got}}; {_AGAIN}", missing=f"missing; {_AGAIN}"),
    "int8_gmacs": Rule("must be a positive number or null, got {got}; give the board's int8 conv throughput "
                       "in GMAC/s, or leave it out"),
    "per_run_overhead_ms": Rule(f"must be a number >= 0 or null, got {{got}}; {_AGAIN}"),
    "weight_gbps": Rule(f"must be a number >= 0 or null, got {{got}}; {_AGAIN}"),
    "per_message_overhead_ms": Rule(f"must be a number >= 0 or null, got {{got}}; {_AGAIN}"),
    "memory_total_mb": Rule(f"must be a positive number or null, got {{got}}; {_AGAIN}"),
    "layers": Rule(f"must be an object of per-layer timings, got {{got}}; {_AGAIN}"),
}


def write_profile(profile: dict, path: str | os.PathLike[str]) -> Path:
    """Write the profile as pretty JSON, atomically."""
    return write_atomic(path, dumps(profile) + "\n", "the profile", option="output")


def dumps(value, indent: int = 0) -> str:
    """Pretty JSON with short lists on one line: `"samples": [[1, 0.04], [4, 0.09]]`."""
    if isinstance(value, dict) and value:
        pad = " " * (indent + 2)
        items = (f"{pad}{json.dumps(str(k))}: {dumps(v, indent + 2)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        pad = " " * (indent + 2)
        return "[\n" + ",\n".join(pad + dumps(v, indent + 2) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, allow_nan=False)


def load_profile(path: str | os.PathLike[str]) -> dict:
    """Read and check a profile; a HalpcError naming the file and the field when it is not a usable
    one. The plain dict comes back, every measured field in it (the planner reads a few)."""
    src = Path(path)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HalpcError(f"{src}: device profile not found; measure it with `halpc profile`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HalpcError(f"{src}: cannot read the device profile ({exc})") from None
    except ValueError as exc:
        raise HalpcError(f"{src}: not valid JSON ({exc}); measure it again with `halpc profile`") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:  # not a profile at all: one message
        raise HalpcError(f"{src}: not a halpc device profile (schema must be {SCHEMA!r})")
    try:
        ProfileDoc.model_validate(data)
    except ValidationError as exc:
        raise one_line_error(exc, data, str(src), _RULES, show=lambda v: clip(repr(v))) from None
    return data


def full_height_ms(entry: dict) -> float:
    """A profiled layer's time at full height: the measured sample, else the fitted line's."""
    return next((ms for rows, ms in entry["samples"] if rows == entry["rows"]),
                entry["fixed_ms"] + entry["per_row_ms"] * entry["rows"])
