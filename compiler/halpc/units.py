"""How numbers are written for people and for JSON, one way each: milliseconds, MACs, shapes."""
from __future__ import annotations

import math
from collections.abc import Sequence


def ms(seconds: float, decimals: int = 1) -> str:
    """Seconds as milliseconds without the unit: `ms(0.0123)` is "12.3"; inf stays "inf"."""
    return f"{seconds * 1e3:.{decimals}f}" if math.isfinite(seconds) else "inf"


def ms_or_none(seconds: float, decimals: int = 6) -> float | None:
    """Milliseconds as a JSON number, rounded; None for an overloaded node's inf."""
    return round(seconds * 1e3, decimals) if math.isfinite(seconds) else None


def macs(count: float) -> str:
    """A multiply-accumulate count with a unit prefix: 15.37G, 924.84M, 100.35k."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(int(count))


def shape(dims: Sequence[int]) -> str:
    return "x".join(map(str, dims))
