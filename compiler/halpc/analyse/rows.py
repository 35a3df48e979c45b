"""How each row-local layer maps output rows to input rows, and how a strip edits the layer.

A strip of a layer computes output rows [a, b) from exactly the input rows their receptive field
covers. For windowed layers (Conv, pooling) the image border is padding: a strip that starts or
ends inside the original padding keeps that much of it, every other strip gets zero padding on
that side, so the strip's first output row lands exactly on row `a` without Slice or Pad nodes.
This is the construction that stays bit-exact with ONNX Runtime (its NCHWc kernels accumulate
every output element in the same order whatever the strip height).
"""
from __future__ import annotations

from dataclasses import dataclass

Rows = tuple[int, int]
"""A half-open range of rows [start, stop)."""


def hull(a: Rows | None, b: Rows | None) -> Rows | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


def intersect(a: Rows, b: Rows) -> Rows | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


def subtract(a: Rows, b: Rows) -> list[Rows]:
    """The parts of `a` outside `b` (zero, one or two ranges)."""
    parts = [(a[0], min(a[1], b[0])), (max(a[0], b[1]), a[1])]
    return [p for p in parts if p[0] < p[1]]


def proportional_split(boundaries: list[int], ref_rows: int, rows: int) -> list[int]:
    """Map strip boundaries on a tensor of `ref_rows` rows onto one of `rows` rows.

    Used for outputs of a block other than the one the plan splits (detector heads, side exits):
    any partition is exact, a proportional one keeps every device's share of work similar.
    """
    return [0] + [round(b * rows / ref_rows) for b in boundaries[1:-1]] + [rows]


@dataclass(frozen=True)
class Window:
    """A sliding window along the rows: Conv, MaxPool, AveragePool, LpPool."""

    kernel: int  # effective kernel height: (k - 1) * dilation + 1
    stride: int
    pad_top: int
    pad_bottom: int
    in_rows: int
    out_rows: int

    def raw_input(self, out: Rows) -> Rows:
        """Input rows of the windows of `out`, before clipping to the image (may be < 0)."""
        a, b = out
        return (a * self.stride - self.pad_top, (b - 1) * self.stride - self.pad_top + self.kernel)

    def needed(self, out: Rows) -> Rows:
        lo, hi = self.raw_input(out)
        return (max(0, lo), min(self.in_rows, hi))

    def strip_pads(self, out: Rows) -> tuple[int, int]:
        """Top and bottom pads that make the strip's windows land exactly on rows `out`.

        The last strip keeps the original bottom pad when it consumes the last input row: with
        ceil_mode or unused padding the original arithmetic must stay in force there.
        """
        raw_lo, raw_hi = self.raw_input(out)
        lo, hi = self.needed(out)
        bottom = self.pad_bottom if out[1] == self.out_rows and hi == self.in_rows else raw_hi - hi
        return lo - raw_lo, bottom


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour upsampling by an integer factor: output row r copies input row r // s."""

    scale: int
    in_rows: int

    def needed(self, out: Rows) -> Rows:
        return (out[0] // self.scale, (out[1] - 1) // self.scale + 1)

    def produced(self, out: Rows) -> Rows:
        lo, hi = self.needed(out)
        return (lo * self.scale, hi * self.scale)
