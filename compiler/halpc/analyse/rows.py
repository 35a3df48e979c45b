"""How each row-local layer maps output rows to input rows, and how a strip edits the layer.

A strip of a layer computes output rows [a, b) from exactly the input rows their receptive field
covers. For windowed layers (Conv, pooling) the image border is padding: a strip that starts or
ends inside the original padding keeps that much of it, every other strip gets zero padding on
that side, so the strip's first output row lands exactly on row `a` without Slice or Pad nodes.
This is the construction that stays bit-exact with ONNX Runtime (its NCHWc kernels accumulate
every output element in the same order whatever the strip height).
"""
from __future__ import annotations

import math
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


@dataclass(frozen=True)
class Transposed:
    """A transposed convolution along the rows: input row i adds into output rows
    i * stride - pad_top + [0, kernel), each of which sums its contributions in kernel order.

    A strip reads every input row that reaches its output rows and gets top/bottom pads (and an
    output_padding at the image's bottom) that crop its output to exactly those rows; ONNX Runtime
    crops inside its col2im, so each kept element adds the same terms in the same order.
    """

    kernel: int  # effective kernel height: (k - 1) * dilation + 1
    stride: int
    pad_top: int
    in_rows: int

    def needed(self, out: Rows) -> Rows:
        a, b = out
        s, p, k = self.stride, self.pad_top, self.kernel
        # The first and last input rows reaching [a, b), widened (when the kernel is shorter than
        # the stride and rows of `out` get nothing) so that the strip's pads are never negative.
        lo = min(-(-(a + p - k + 1) // s), (a + p) // s)
        hi = max((b - 1 + p) // s + 1, -(-(b + p - k) // s) + 1)
        lo = min(max(lo, 0), self.in_rows - 1)
        return lo, min(max(hi, lo + 1), self.in_rows)

    def strip_pads(self, out: Rows) -> tuple[int, int, int]:
        """(top pad, bottom pad, output_padding) of the strip that yields exactly rows `out`."""
        lo, hi = self.needed(out)
        reach = (hi - 1) * self.stride - self.pad_top + self.kernel  # one past its last window row
        bottom = reach - out[1]
        return out[0] + self.pad_top - lo * self.stride, max(bottom, 0), max(-bottom, 0)


@dataclass(frozen=True)
class Interpolated:
    """Linear or cubic resampling along the rows (Resize): output row r interpolates input rows
    around its source coordinate, `taps` of them, clamped to the image.

    `shift_invariant`: the source coordinate of row r + scale * i is exactly that of r plus i
    (a power-of-two integer scale with half_pixel, pytorch_half_pixel or asymmetric coordinates):
    a strip resizes just the rows it reads and slices off the rows at its edges, which see a
    different border. Otherwise the strip is zero-padded back to the full height, resized as
    the whole image is (the same coordinates and weights) and sliced.
    """

    sources: tuple[float, ...]  # source coordinate of every output row (float64, for halos only)
    taps: int  # 2 linear, 4 cubic
    scale: int  # the integer row scale when shift_invariant
    shift_invariant: bool
    in_rows: int

    def needed(self, out: Rows) -> Rows:
        first, last = self.sources[out[0]], self.sources[out[1] - 1]
        reach = self.taps // 2  # taps floor(x) - reach + 1 .. floor(x) + reach, one more each side
        lo = math.floor(first) - reach
        hi = math.floor(last) + reach + 2
        return max(lo, 0), min(max(hi, 1), self.in_rows)

    def computed(self, out: Rows) -> Rows:
        """Output rows the strip's Resize makes before the slice to `out`."""
        if not self.shift_invariant:
            return 0, len(self.sources)
        lo, hi = self.needed(out)
        return lo * self.scale, hi * self.scale


@dataclass(frozen=True)
class Reduced:
    """A reduction over every row (GlobalAveragePool, ReduceMean over the image): its one output
    row reads them all. A strip computes it from the whole map, gathered where it runs, so the
    reduction is the unsplit model's, value for value."""

    in_rows: int

    def needed(self, out: Rows) -> Rows:
        return 0, self.in_rows

    def produced(self, out: Rows) -> Rows:
        return 0, 1
