"""Row arithmetic, checked against hand-computed cases (FINDINGS §1's formulas)."""
from __future__ import annotations

import numpy as np

from halpc.analyse.rows import Transposed, Upsample, Window, hull, intersect, proportional_split, subtract


def test_conv3x3_pad1_interior_strip_reads_one_halo_row_each_side() -> None:
    conv = Window(kernel=3, stride=1, pad_top=1, pad_bottom=1, in_rows=224, out_rows=224)
    assert conv.needed((10, 20)) == (9, 21)
    assert conv.strip_pads((10, 20)) == (0, 0)


def test_top_and_bottom_strips_keep_the_image_border_padding() -> None:
    conv = Window(kernel=3, stride=1, pad_top=1, pad_bottom=1, in_rows=224, out_rows=224)
    assert conv.needed((0, 5)) == (0, 6)
    assert conv.strip_pads((0, 5)) == (1, 0)
    assert conv.needed((220, 224)) == (219, 224)
    assert conv.strip_pads((220, 224)) == (0, 1)


def test_stride2_pad1_kernel3() -> None:
    # out row r reads input rows 2r-1 .. 2r+1
    conv = Window(kernel=3, stride=2, pad_top=1, pad_bottom=1, in_rows=224, out_rows=112)
    assert conv.needed((0, 1)) == (0, 2)
    assert conv.strip_pads((0, 1)) == (1, 0)
    assert conv.needed((5, 8)) == (9, 16)
    assert conv.strip_pads((5, 8)) == (0, 0)
    # the last output row's window ends at row 223 + 1 = 224 -> no bottom padding used
    assert conv.needed((111, 112)) == (221, 224)
    assert conv.strip_pads((111, 112)) == (0, 1)


def test_unused_bottom_padding_is_dropped_unless_last_row_is_read() -> None:
    # 1x1 stride 2 on 8 rows: out rows read 0,2,4,6; rows 7 is never read
    conv = Window(kernel=1, stride=2, pad_top=0, pad_bottom=0, in_rows=8, out_rows=4)
    assert conv.needed((2, 4)) == (4, 7)
    assert conv.strip_pads((2, 4)) == (0, 0)


def test_ceil_mode_pool_keeps_original_bottom_pad_on_last_strip() -> None:
    # MaxPool k=3 s=2 ceil_mode on 8 rows -> 4 rows; the last window overhangs by one row
    pool = Window(kernel=3, stride=2, pad_top=0, pad_bottom=0, in_rows=8, out_rows=4)
    assert pool.needed((3, 4)) == (6, 8)
    assert pool.strip_pads((3, 4)) == (0, 0)


def test_dilated_kernel_counts_effective_height() -> None:
    conv = Window(kernel=5, stride=1, pad_top=2, pad_bottom=2, in_rows=32, out_rows=32)  # 3x3 dil 2
    assert conv.needed((10, 11)) == (8, 13)


def test_nearest_upsample_by_two() -> None:
    up = Upsample(scale=2, in_rows=10)
    assert up.needed((3, 8)) == (1, 4)
    assert up.produced((3, 8)) == (2, 8)


def test_range_helpers() -> None:
    assert hull((2, 5), (7, 9)) == (2, 9)
    assert hull(None, (1, 2)) == (1, 2)
    assert intersect((0, 5), (5, 9)) is None
    assert intersect((0, 6), (5, 9)) == (5, 6)
    assert subtract((0, 10), (3, 5)) == [(0, 3), (5, 10)]
    assert subtract((0, 10), (0, 10)) == []
    assert proportional_split([0, 3, 7, 14], 14, 7) == [0, 2, 4, 7]


def test_transposed_strips_read_every_contributing_row_and_yield_exactly_their_rows() -> None:
    """Against brute force: input row i reaches output rows i*s - pad + [0, kernel)."""
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(300):
        k, s, h = int(rng.integers(1, 7)), int(rng.integers(1, 4)), int(rng.integers(1, 12))
        pad_top, pad_bottom, op = int(rng.integers(0, k)), int(rng.integers(0, k)), int(rng.integers(0, s))
        out_rows = (h - 1) * s + k + op - pad_top - pad_bottom
        if out_rows < 1:
            continue
        t = Transposed(kernel=k, stride=s, pad_top=pad_top, in_rows=h)
        a = int(rng.integers(0, out_rows))
        b = int(rng.integers(a + 1, out_rows + 1))
        lo, hi = t.needed((a, b))
        reaching = [i for i in range(h) if any(a <= i * s - pad_top + m < b for m in range(k))]
        assert 0 <= lo < hi <= h and all(lo <= i < hi for i in reaching), (k, s, pad_top, h, a, b)
        top, bottom, extra = t.strip_pads((a, b))
        assert min(top, bottom, extra) >= 0 and extra <= op
        assert (hi - lo - 1) * s + k + extra - top - bottom == b - a  # ONNX's output size: exactly [a, b)
        checked += 1
    assert checked > 200
