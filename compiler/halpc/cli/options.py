"""Parsing what the command line gives as text into the library's typed arguments, and the
command-line flag of each library parameter that an error message may be about."""
from __future__ import annotations

import re

from halpc.errors import UsageError
from halpc.inputs.model import Shape

# Library parameter (HalpcError.option) -> the flag that sets it.
FLAGS = {
    "input_shapes": "--input-shape", "report": "--report", "output": "-o", "heights": "--heights",
    "bandwidths": "--bandwidths", "variants": "--variant", "plan": "--plan", "strategy": "--strategy",
    "horizon_s": "--horizon-s", "barrier": "--barrier", "output_file": "--output", "input_file": "--input",
    "repeat": "--repeat", "threads": "--threads",
}
ALL_HEIGHTS = "all"


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, Shape]:
    """`NAME=1x3x224x224` options (NAME may itself contain '=' or ':')."""
    shapes: dict[str, Shape] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise UsageError(f"{spec!r}: expected NAME=DIMS with DIMS like 1x3x224x224", option="input_shapes")
        shape = tuple(int(d) for d in dims.split("x"))
        if 0 in shape:
            raise UsageError(f"{spec!r}: every dim must be at least 1", option="input_shapes")
        shapes[name] = shape
    return shapes


def parse_heights(text: str) -> tuple[int | str, ...]:
    """`1,4,16,all` -> (1, 4, 16, "all")."""
    heights: list[int | str] = []
    for part in text.split(","):
        item = part.strip().lower()
        if item == ALL_HEIGHTS:
            value: int | str = ALL_HEIGHTS
        elif item.isdigit() and int(item) >= 1:
            value = int(item)
        else:
            raise UsageError(f"{text!r}: {part.strip()!r} is not a row count; give whole numbers of at least 1 "
                             "and/or 'all', separated by commas, e.g. 1,4,16,all", option="heights")
        if value not in heights:
            heights.append(value)
    return tuple(heights)


def parse_variant(text: str):
    """`FILE.onnx:ACCURACY` (top-1 %), or just `FILE.onnx`."""
    from pathlib import Path

    from halpc.compile import Variant

    path, sep, accuracy = text.rpartition(":")
    if not sep or not accuracy or "/" in accuracy or accuracy.endswith(".onnx"):
        return Variant(Path(text))
    try:
        value = float(accuracy)
    except ValueError:
        raise UsageError(f"{text}: {accuracy!r} is not an accuracy; write FILE.onnx:70.6 (top-1 percent)",
                         option="variants") from None
    if not 0 < value <= 100:
        raise UsageError(f"{text}: accuracy {value:g} is not a percentage in (0, 100]", option="variants")
    return Variant(Path(path), value)


def parse_bandwidths(text: str) -> tuple[float, ...]:
    """`10,25,50` (Mbit/s) -> (10.0, 25.0, 50.0), sorted, each > 0."""
    try:
        levels = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"{text}: give Mbit/s separated by commas, e.g. 10,25,50,100", option="bandwidths") from None
    if not levels or levels[0] <= 0:
        raise UsageError(f"{text}: give positive Mbit/s separated by commas, e.g. 10,25,50,100", option="bandwidths")
    return tuple(levels)


def parse_barrier(text: str) -> tuple[str, int]:
    """`DIR,N` -> (DIR, N)."""
    folder, _, count = text.rpartition(",")
    if not folder or not count.isdigit():
        raise UsageError(f"{text}: give an existing folder and a count, DIR,N", option="barrier")
    return folder, int(count)
