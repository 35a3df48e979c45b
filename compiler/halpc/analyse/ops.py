"""Per-op row arithmetic: which ONNX nodes work row-locally on feature maps, and how.

`classify` turns one node into a trunk `Layer` (or None: not row-local, it ends the trunk on
that path): windowed ops (Conv, pooling) get a `rows.Window`, ConvTranspose and Resize the row
maps of `resampling`, per-pixel and per-channel ops map each row to itself. A new op kind is
added here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import onnx
from onnx import numpy_helper

from halpc.analyse.resampling import resampled, transposed
from halpc.analyse.rows import Interpolated, Reduced, Rows, Transposed, Upsample, Window
from halpc.inputs.model import Shape

UNARY = frozenset(
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign Gelu Mish "
    "ThresholdedRelu Exp Log Neg Abs Sqrt Reciprocal Erf Floor Ceil Round Sign Sin Cos Identity "
    "Dropout Cast LRN Clip BatchNormalization PRelu".split()
)
BINARY = frozenset("Add Sub Mul Div Pow Max Min Sum Mean".split())
WINDOW = frozenset("Conv MaxPool AveragePool LpPool".split())
UPSAMPLE = frozenset(("Resize", "Upsample"))
# Reductions over the whole image: the sync points of squeeze-and-excitation blocks.
REDUCE = frozenset(("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "QLinearGlobalAveragePool"))
CHANNEL_AXIS_OPS = frozenset(("Concat", "Split", "Softmax", "LogSoftmax", "Hardmax"))
# Quantized models (QOperator form): the integer twins of the ops above, each a row-local op whose
# scales and zero points are constants. Integer convolutions accumulate exactly, so their strips
# are exact on every CPU. ONNX Runtime's contrib ops live in the com.microsoft domain.
QUANTIZE = frozenset(("QuantizeLinear", "DequantizeLinear"))
QUANT_WINDOW = frozenset(("QLinearConv", "ConvInteger", "QLinearAveragePool"))
QUANT_UNARY = frozenset(("QLinearSigmoid", "QLinearLeakyRelu"))
QUANT_BINARY = frozenset(("QLinearAdd", "QLinearMul"))
CONTRIB = frozenset(("QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAdd", "QLinearMul",
                     "QLinearConcat", "QLinearGlobalAveragePool"))
# Where a windowed op keeps its weight: the input that gives a Conv's kernel shape and MACs.
WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}


# Why an op ends the trunk, where the reason is not just "not row-local" (shown by `inspect`).
ENDS_TRUNK = {
    "DynamicQuantizeLinear": "dynamic quantization takes its scale from the whole tensor, which no strip "
                             "holds; quantize statically (onnxruntime.quantization.quantize_static) to split on",
    "GlobalAveragePool": "a global pool reads every row",
    "QLinearGlobalAveragePool": "a global pool reads every row",
}


@dataclass(frozen=True)
class TensorInfo:
    shape: Shape
    elem_type: int
    row_axis: int

    @property
    def rows(self) -> int:
        return self.shape[self.row_axis]

    @property
    def dtype(self) -> str:
        return _dtype_name(self.elem_type)

    @cached_property
    def row_bytes(self) -> int:
        """Bytes of one row: every axis but the row axis, times the element size."""
        other = [d for a, d in enumerate(self.shape) if a != self.row_axis]
        return int(np.prod(other)) * np.dtype(self.dtype).itemsize


@lru_cache(maxsize=None)
def _dtype_name(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


@dataclass(frozen=True, eq=False)
class Layer:
    """One trunk node, with what a strip needs to know about it."""

    position: int
    node: onnx.NodeProto
    fmaps: tuple[str, ...]  # feature-map inputs, in the node's input order
    outputs: tuple[str, ...]
    macs: int
    window: Window | None = None
    pads: tuple[int, int, int, int] | None = None  # a window's explicit [top, left, bottom, right]
    upsample: Upsample | None = None
    transposed: Transposed | None = None
    interpolated: Interpolated | None = None
    reduced: Reduced | None = None
    # One-row feature maps (an SE gate) a binary op broadcasts along the rows: read whole.
    broadcast: frozenset[str] = frozenset()

    @property
    def row_map(self) -> Window | Upsample | Transposed | Interpolated | Reduced | None:
        """How output rows map to input rows; None: each row to itself."""
        return self.window or self.upsample or self.transposed or self.interpolated or self.reduced

    @property
    def name(self) -> str:
        return self.node.name or self.outputs[0]

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def rows_needed(self, out: Rows, fmap: str | None = None) -> Rows:
        """Rows of feature-map input `fmap` (default: any but a broadcast one) that output rows
        `out` depend on."""
        if fmap in self.broadcast:
            return 0, 1
        return out if self.row_map is None else self.row_map.needed(out)

    def rows_produced(self, out: Rows) -> Rows:
        """Rows the node yields when given exactly `rows_needed(out)` (a superset of `out`)."""
        made = self.upsample or self.reduced
        return made.produced(out) if made is not None else out

    def rows_computed(self, out: Rows) -> Rows:
        """Rows the node computes to yield `rows_produced(out)`: more for a Resize that
        resamples a taller strip (`Interpolated`), which the strip then slices."""
        return self.interpolated.computed(out) if self.interpolated is not None else self.rows_produced(out)


def attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def classify(
    node: onnx.NodeProto,
    position: int,
    tensors: dict[str, TensorInfo],
    shapes: dict,
    inits: dict[str, onnx.TensorProto],
    opset: int,
) -> Layer | None:
    """The node as a trunk layer, or None when it is not row-local (it goes to the tail)."""
    if node.domain not in ("", "ai.onnx") and not (node.domain == "com.microsoft" and node.op_type in CONTRIB):
        return None
    fmaps = tuple(i for i in node.input if i in tensors)
    if not fmaps or any(i and i not in tensors and i not in inits for i in node.input):
        return None
    outputs = tuple(o for o in node.output if o)
    first = tensors[max(fmaps, key=lambda f: tensors[f].rows)]  # the map the output rows follow
    broadcast = frozenset(f for f in fmaps if tensors[f].rows == 1 < first.rows
                          and len(tensors[f].shape) == len(first.shape))
    if broadcast and node.op_type not in BINARY | QUANT_BINARY:
        return None
    if any(tensors[f].row_axis != first.row_axis or (tensors[f].rows != first.rows and f not in broadcast)
           for f in fmaps):
        return None
    out_infos = []
    for out in outputs:
        shape, elem_type = shapes.get(out, (None, 0))
        if shape is None:
            return None
        out_infos.append((shape, elem_type))

    op = node.op_type
    row_axis = first.row_axis
    window = pads = row_map = None
    if op == "ConvTranspose":
        if fmaps != (node.input[0],) or len(out_infos) != 1:
            return None
        found = transposed(_attrs(node), tuple(inits[node.input[1]].dims), first.shape, out_infos[0][0])
        if isinstance(found, str) or row_axis != 2:
            return None
        row_map, pads = found
        out_row_axis = row_axis
    elif op in WINDOW or op in QUANT_WINDOW:
        found = _window(node, fmaps, first, out_infos, inits)
        if found is None:
            return None
        window, pads = found
        out_row_axis = row_axis
    elif op in UPSAMPLE:
        if len(out_infos) != 1 or any(n and n not in inits for n in node.input[1:]):
            return None
        row_map = resampled(op, _attrs(node), upsample_scales(node, inits), first.shape, out_infos[0][0],
                            row_axis, opset)
        if isinstance(row_map, str):
            return None
        out_row_axis = row_axis
    elif op in REDUCE:
        row_map = _reduced(node, first, out_infos, inits, opset)
        if row_map is None:
            return None
        out_row_axis = row_axis
    elif op == "Transpose":
        perm = attr(node, "perm", list(reversed(range(len(first.shape)))))
        out_row_axis = list(perm).index(row_axis)
    elif op in UNARY or op in BINARY or op in CHANNEL_AXIS_OPS or op in QUANTIZE | QUANT_UNARY | QUANT_BINARY \
            or op == "QLinearConcat":
        if not _pointwise_ok(node, fmaps, first, out_infos, inits, opset):
            return None
        out_row_axis = row_axis
    else:
        return None

    for shape, _ in out_infos:
        if len(shape) <= out_row_axis:
            return None
    if window is None and row_map is None and any(s[out_row_axis] != first.rows for s, _ in out_infos):
        return None
    for out, (shape, elem_type) in zip(outputs, out_infos):
        tensors[out] = TensorInfo(shape, elem_type, out_row_axis)
    return Layer(
        position=position,
        node=node,
        fmaps=fmaps,
        outputs=outputs,
        macs=_macs(node, first, out_infos, inits),
        window=window,
        pads=pads,
        upsample=row_map if isinstance(row_map, Upsample) else None,
        transposed=row_map if isinstance(row_map, Transposed) else None,
        interpolated=row_map if isinstance(row_map, Interpolated) else None,
        reduced=row_map if isinstance(row_map, Reduced) else None,
        broadcast=broadcast,
    )


def _pointwise_ok(node, fmaps, first: TensorInfo, out_infos, inits, opset: int) -> bool:
    op = node.op_type
    rank = len(first.shape)
    row_axis = first.row_axis
    if op == "BatchNormalization" and len(out_infos) > 1:
        return False  # training mode: running statistics are not row-local
    if op in ("Concat", "Split"):
        axis = attr(node, "axis", 0)
        if axis % rank == row_axis or (op == "Concat" and len(fmaps) != len(node.input)):
            return False
    if op == "QLinearConcat":  # Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
        if attr(node, "axis", 0) % rank == row_axis or len(fmaps) != (len(node.input) - 2) // 3:
            return False
    if op in QUANTIZE:  # per tensor, or per channel along `axis`
        axis = attr(node, "axis", 1) % rank
        if axis == row_axis and any(len(inits[n].dims) > 0 for n in node.input[1:] if n in inits):
            return False
        return all(n in inits for n in node.input[1:] if n)
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = attr(node, "axis", 1 if opset < 13 else -1) % rank
        # Before opset 13 the op flattens axis.. into one reduction: it must start after the rows.
        if (opset < 13 and axis <= row_axis) or (opset >= 13 and axis == row_axis):
            return False
    if op == "LRN" or op == "BatchNormalization":
        return row_axis != 1  # both work along axis 1
    # Constant operands broadcast against the feature map: they must not vary along the rows.
    for name in node.input:
        if name in inits and op in BINARY | QUANT_BINARY | {"PRelu"}:
            dims = tuple(inits[name].dims)
            if len(dims) > rank:
                return False
            aligned = row_axis - (rank - len(dims))
            if aligned >= 0 and dims[aligned] != 1:
                return False
    return True


def _spatial_attrs(node: onnx.NodeProto, kernel: list[int], in_shape: Shape, out_shape: Shape):
    """Explicit (strides, dilations, pads) for a 2-D window, resolving auto_pad."""
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for i in range(2):
            k = (kernel[i] - 1) * dilations[i] + 1
            total = max((out_shape[2 + i] - 1) * strides[i] + k - in_shape[2 + i], 0)
            small, big = total // 2, total - total // 2
            pads_begin.append(small if auto_pad == "SAME_UPPER" else big)
            pads_end.append(big if auto_pad == "SAME_UPPER" else small)
        pads = pads_begin + pads_end
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
    return strides, dilations, pads


def _window(node, fmaps, first: TensorInfo, out_infos, inits):
    if len(first.shape) != 4 or first.row_axis != 2 or len(out_infos) != 1:
        return None
    if fmaps != (node.input[0],):
        return None  # weights computed from feature maps are not a convolution we can split
    if node.op_type in WEIGHT_INPUT:
        kernel = list(attr(node, "kernel_shape", list(inits[node.input[WEIGHT_INPUT[node.op_type]]].dims[2:])))
    else:
        kernel = list(attr(node, "kernel_shape", []))
    if len(kernel) != 2:
        return None
    out_shape = out_infos[0][0]
    if len(out_shape) != 4:  # a damaged model's shapes: not a layer to split
        return None
    strides, dilations, pads = _spatial_attrs(node, kernel, first.shape, out_shape)
    window = Window(
        kernel=(kernel[0] - 1) * dilations[0] + 1,
        stride=strides[0],
        pad_top=pads[0],
        pad_bottom=pads[2],
        in_rows=first.shape[2],
        out_rows=out_shape[2],
    )
    if window.pad_top >= window.kernel or window.pad_bottom >= window.kernel:
        return None  # some windows lie wholly in the padding: the row arithmetic assumes none do
    return window, tuple(pads)


def _reduced(node, first: TensorInfo, out_infos, inits, opset: int) -> Reduced | None:
    """A reduction of an NCHW map over both image axes that keeps them (one row, one column)."""
    if len(first.shape) != 4 or first.row_axis != 2 or len(out_infos) != 1 or list(out_infos[0][0][2:]) != [1, 1]:
        return None  # also QLinearGlobalAveragePool's channels_last form, whose rows are axis 1
    if node.op_type.startswith("Reduce"):
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1] in inits:  # opset 18: an input
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        if not attr(node, "keepdims", 1) or sorted(a % 4 for a in axes or ()) != [2, 3]:
            return None
    return Reduced(first.rows)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: attr(node, a.name, None) for a in node.attribute}


def upsample_scales(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """A Resize's or Upsample's constant scales (None when it gives sizes instead)."""
    if node.op_type == "Upsample" and attr(node, "scales", None):
        return np.array(attr(node, "scales", None), np.float32)  # opset 7: an attribute
    index = 1 if node.op_type == "Upsample" or len(node.input) == 2 else 2  # Resize-10: (X, scales)
    if len(node.input) > index and node.input[index] in inits:
        return numpy_helper.to_array(inits[node.input[index]])
    return None


def _macs(node, first: TensorInfo, out_infos, inits) -> int:
    out_elems = sum(int(np.prod(shape)) for shape, _ in out_infos)
    if node.op_type == "ConvTranspose":  # every input value meets Cout/group x kernel weights
        return int(np.prod(first.shape)) * int(np.prod(inits[node.input[1]].dims[1:]))
    if node.op_type in REDUCE:  # reads every value once
        return int(np.prod(first.shape))
    if node.op_type in WEIGHT_INPUT:
        weight = inits[node.input[WEIGHT_INPUT[node.op_type]]].dims
        return out_elems * int(np.prod(weight[1:]))
    if node.op_type in WINDOW or node.op_type in QUANT_WINDOW:
        return out_elems * int(np.prod(attr(node, "kernel_shape", [1])))
    return out_elems


