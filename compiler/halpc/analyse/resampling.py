"""Row maps of the ops that change how many rows a feature map has: ConvTranspose, and Resize or
Upsample (nearest, linear, cubic).

Each function returns the op's row map, or a reason (a string) why halpc cannot split it
exactly; `ops.classify` turns a reason into the end of the trunk and `inspect` shows it. Shapes
are those shape inference gave; an op whose ONNX Runtime arithmetic would disagree with them is
refused rather than guessed at.
"""
from __future__ import annotations

import math

import numpy as np

from halpc.analyse.rows import Interpolated, Transposed, Upsample
from halpc.inputs.model import Shape

# Resize coordinate transforms a strip can reproduce by slicing a strip resized on its own rows.
SHIFT_INVARIANT = frozenset(("half_pixel", "pytorch_half_pixel", "asymmetric"))


def transposed(attrs: dict, weight: tuple[int, ...], x: Shape, y: Shape) -> tuple[Transposed, tuple[int, ...]] | str:
    """A 2-D ConvTranspose's row map and its explicit [top, left, bottom, right] pads."""
    kernel = list(attrs.get("kernel_shape") or weight[2:])
    if len(kernel) != 2 or len(x) != 4 or len(y) != 4:
        return "only 2-D ConvTranspose is split"
    strides = list(attrs.get("strides") or [1, 1])
    dilations = list(attrs.get("dilations") or [1, 1])
    output_padding = list(attrs.get("output_padding") or [0, 0])
    span = [(kernel[i] - 1) * dilations[i] + 1 for i in range(2)]
    full = [(x[2 + i] - 1) * strides[i] + span[i] + output_padding[i] for i in range(2)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if attrs.get("output_shape") or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if dilations != [1, 1]:
            return "a dilated ConvTranspose with output_shape or auto_pad SAME: give explicit pads"
        # The ONNX spec's rule, which ONNX Runtime 1.32 follows (measured): the padding that gives
        # output_shape (SAME: input x stride), the odd row at the tail for SAME_UPPER only.
        wanted = attrs.get("output_shape") or [x[2] * strides[0], x[3] * strides[1]]
        totals = [max(0, full[i] - wanted[-2 + i]) for i in range(2)]
        heads = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = (heads[0], heads[1], totals[0] - heads[0], totals[1] - heads[1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(attrs.get("pads") or (0, 0, 0, 0))
    if any(full[i] - pads[i] - pads[2 + i] != y[2 + i] for i in range(2)):
        return "ONNX Runtime's output size for this ConvTranspose differs from the model's shapes"
    return Transposed(kernel=span[0], stride=strides[0], pad_top=pads[0], in_rows=x[2]), pads


def resampled(op: str, attrs: dict, scales: np.ndarray | None, x: Shape, y: Shape, row_axis: int,
              opset: int) -> Upsample | Interpolated | str:
    """The row map of a Resize or Upsample; `scales` are its constant scales, if it has them."""
    if any(a != b for axis, (a, b) in enumerate(zip(x, y)) if axis != row_axis and axis < 2):
        return "it resizes the batch or channel axis"
    in_rows, out_rows = x[row_axis], y[row_axis]
    mode = attrs.get("mode", "nearest")
    if op == "Upsample" or opset < 11:
        transform, nearest = "asymmetric", "floor"
    else:
        transform = attrs.get("coordinate_transformation_mode", "half_pixel")
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
    if transform == "tf_crop_and_resize":
        return "tf_crop_and_resize reads a region of interest: not split"
    if attrs.get("antialias", 0) or attrs.get("axes") or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "a Resize with antialias, axes or keep_aspect_ratio_policy is not split"
    # The scale ONNX Runtime computes with: the constant scale, else output over input rows.
    scale = float(scales[row_axis]) if scales is not None and len(scales) else out_rows / in_rows
    sources = [_source(r, scale, in_rows, out_rows, transform) for r in range(out_rows)]
    if mode == "nearest":
        if out_rows % in_rows or any(_nearest(s, nearest, in_rows) != r * in_rows // out_rows
                                     for r, s in enumerate(sources)):
            return "a nearest Resize whose output rows do not each copy row r // scale"
        return Upsample(scale=out_rows // in_rows, in_rows=in_rows)
    if mode not in ("linear", "cubic") or len(x) != 4 or row_axis != 2:
        return f"{mode} resizing of a {len(x)}-D tensor is not split"
    factor = out_rows // in_rows
    shift_invariant = (transform in SHIFT_INVARIANT and out_rows == factor * in_rows and factor == scale
                       and factor & (factor - 1) == 0)  # a power of two: coordinates stay exact
    return Interpolated(sources=tuple(sources), taps=2 if mode == "linear" else 4, scale=factor,
                        shift_invariant=shift_invariant, in_rows=in_rows)


def _source(r: int, scale: float, in_rows: int, out_rows: int, transform: str) -> float:
    """The input coordinate of output row r (ONNX Resize's formulas)."""
    if transform in ("half_pixel", "pytorch_half_pixel"):
        return (r + 0.5) / scale - 0.5 if out_rows > 1 or transform == "half_pixel" else 0.0
    if transform == "half_pixel_symmetric":
        offset = in_rows / 2 * (1 - out_rows / (scale * in_rows))
        return offset + (r + 0.5) / scale - 0.5
    if transform == "tf_half_pixel_for_nn":
        return (r + 0.5) / scale
    if transform == "align_corners":
        return r * (in_rows - 1) / (out_rows - 1) if out_rows > 1 else 0.0
    return r / scale  # asymmetric


def _nearest(x: float, rounding: str, in_rows: int) -> int:
    if rounding == "floor":
        i = math.floor(x)
    elif rounding == "ceil":
        i = math.ceil(x)
    elif rounding == "round_prefer_ceil":
        i = math.floor(x + 0.5)
    else:  # round_prefer_floor
        i = math.ceil(x - 0.5)
    return min(max(i, 0), in_rows - 1)
