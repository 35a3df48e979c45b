"""Find the spatial trunk: the part of the graph that works row-locally on image feature maps.

A node is in the trunk when every output row depends on a known contiguous range of rows of each
feature-map input (convolutions, pooling, nearest upsampling, and everything per-pixel or
per-channel), its other inputs are constants that do not vary along the rows, and its feature-map
inputs are themselves trunk tensors. The first node on a path that fails this ends the trunk
there; it and everything after it (the tail) runs on the host. Cut points are the positions in the
trunk's topological order where exactly one tensor is live: cutting there, devices exchange rows
of that one tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache

import numpy as np
import onnx

from halpc.errors import HalpcError
from halpc.inputs.model import LoadedModel, Shape, tensor_shapes
from halpc.analyse.rows import Rows, Upsample, Window

UNARY = frozenset(
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign Gelu Mish "
    "ThresholdedRelu Exp Log Neg Abs Sqrt Reciprocal Erf Floor Ceil Round Sign Sin Cos Identity "
    "Dropout Cast LRN Clip BatchNormalization PRelu".split()
)
BINARY = frozenset("Add Sub Mul Div Pow Max Min Sum Mean".split())
WINDOW = frozenset("Conv MaxPool AveragePool LpPool".split())
UPSAMPLE = frozenset(("Resize", "Upsample"))
CHANNEL_AXIS_OPS = frozenset(("Concat", "Split", "Softmax", "LogSoftmax", "Hardmax"))


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

    @property
    def name(self) -> str:
        return self.node.name or self.outputs[0]

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def rows_needed(self, out: Rows) -> Rows:
        """Rows of every feature-map input that output rows `out` depend on."""
        if self.window is not None:
            return self.window.needed(out)
        if self.upsample is not None:
            return self.upsample.needed(out)
        return out

    def rows_produced(self, out: Rows) -> Rows:
        """Rows the node yields when given exactly `rows_needed(out)` (a superset of `out`)."""
        return self.upsample.produced(out) if self.upsample is not None else out


@dataclass(frozen=True)
class Cut:
    position: int  # layers[:position] come before the cut
    tensor: str


@dataclass(eq=False)
class Trunk:
    model: LoadedModel
    input: str
    layers: tuple[Layer, ...]
    tensors: dict[str, TensorInfo]
    exits: tuple[str, ...]  # trunk tensors the tail or the graph outputs need, whole
    cuts: tuple[Cut, ...]
    tail: tuple[onnx.NodeProto, ...]
    receptive_field: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @cached_property
    def tail_macs(self) -> int:
        """Rough multiply-accumulates of the tail (matrix products and convolutions dominate)."""
        shapes = tensor_shapes(self.model.proto)
        total = 0
        for node in self.tail:
            out = shapes.get(node.output[0], (None, 0))[0] if node.output else None
            if not out:
                continue
            elems = int(np.prod(out))
            weight = shapes.get(node.input[1], (None, 0))[0] if len(node.input) > 1 else None
            if node.op_type == "Conv" and weight:
                total += elems * int(np.prod(weight[1:]))
            elif node.op_type in ("Gemm", "MatMul") and weight and len(weight) == 2:
                transposed = node.op_type == "Gemm" and _attr(node, "transB", 0)
                total += elems * weight[1 if transposed else 0]
            else:
                total += elems
        return total

    def producer(self, tensor: str) -> Layer | None:
        return self._producers.get(tensor)

    @cached_property
    def weight_bytes(self) -> dict[int, int]:
        """Bytes of constant inputs (weights, biases) per layer position: what a run of a strip
        holding the layer reads from memory however few rows it computes."""
        sizes = {
            init.name: int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            for init in self.model.graph.initializer
        }
        return {layer.position: sum(sizes.get(name, 0) for name in layer.node.input) for layer in self.layers}

    def __post_init__(self) -> None:
        self._producers = {out: layer for layer in self.layers for out in layer.outputs}


def analyse(model: LoadedModel) -> Trunk:
    graph = model.graph
    shapes = tensor_shapes(model.proto)
    inits = {init.name: init for init in graph.initializer}
    spatial_input = _spatial_input(model, shapes)
    row_axis = _input_row_axis(graph, spatial_input)
    shape, elem_type = shapes[spatial_input]
    assert shape is not None
    tensors = {spatial_input: TensorInfo(shape, elem_type, row_axis)}
    opset = next((o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")), 1)

    layers: list[Layer] = []
    tail: list[onnx.NodeProto] = []
    for node in graph.node:
        layer = _classify(node, len(layers), tensors, shapes, inits, opset)
        if layer is None:
            tail.append(node)
            continue
        layers.append(layer)
    if not any(layer.window is not None for layer in layers):
        raise HalpcError(
            f"{model.path}: no spatial layers (Conv or pooling) work on the rows of input "
            f"{spatial_input!r}; halpc splits CNNs whose first layers are convolutions"
        )

    trunk_outputs = {out for layer in layers for out in layer.outputs}
    needed_outside = {i for node in tail for i in node.input} | {o.name for o in graph.output}
    exits = tuple(
        out for layer in layers for out in layer.outputs if out in needed_outside
    )
    trunk_tensors = {t: info for t, info in tensors.items() if t in trunk_outputs or t == spatial_input}
    trunk = Trunk(
        model=model,
        input=spatial_input,
        layers=tuple(layers),
        tensors=trunk_tensors,
        exits=exits,
        cuts=_cuts(spatial_input, layers),
        tail=tuple(tail),
    )
    trunk.receptive_field.update(_receptive_fields(spatial_input, layers))
    return trunk


def _spatial_input(model: LoadedModel, shapes: dict) -> str:
    for value_info in model.graph.input:
        shape, elem_type = shapes.get(value_info.name, (None, 0))
        if shape is not None and len(shape) == 4 and elem_type in _FLOAT_TYPES:
            return value_info.name
    names = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in model.input_shapes.items())
    raise HalpcError(
        f"{model.path}: no 4-D floating-point image input (inputs: {names}); halpc splits CNNs "
        "over the rows of an image"
    )


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def _input_row_axis(graph: onnx.GraphProto, name: str) -> int:
    """The input's row axis: 2 for NCHW, or where a Transpose on the way to a Conv takes it from.

    Channels-last exports (Keras, TFLite converters) transpose NHWC to NCHW before the first Conv;
    their image rows are axis 1 of the input.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    # Walk forward through Transposes and per-pixel ops; map axis 2 of the first window op back.
    frontier = [(name, list(range(4)))]  # (tensor, axis of this tensor for each input axis)
    seen = set()
    while frontier:
        tensor, axes = frontier.pop(0)
        if tensor in seen:
            continue
        seen.add(tensor)
        for node in consumers.get(tensor, []):
            if node.op_type in WINDOW and node.input[0] == tensor:
                return axes.index(2)
            if node.op_type == "Transpose":
                perm = _attr(node, "perm", list(reversed(range(4))))
                frontier.append((node.output[0], [perm.index(a) for a in axes]))
            elif node.op_type in UNARY or node.op_type in BINARY:
                frontier.append((node.output[0], axes))
    return 2


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _classify(
    node: onnx.NodeProto,
    position: int,
    tensors: dict[str, TensorInfo],
    shapes: dict,
    inits: dict[str, onnx.TensorProto],
    opset: int,
) -> Layer | None:
    """The node as a trunk layer, or None when it is not row-local (it goes to the tail)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    fmaps = tuple(i for i in node.input if i in tensors)
    if not fmaps or any(i and i not in tensors and i not in inits for i in node.input):
        return None
    outputs = tuple(o for o in node.output if o)
    first = tensors[fmaps[0]]
    if any(tensors[f].row_axis != first.row_axis or tensors[f].rows != first.rows for f in fmaps):
        return None
    out_infos = []
    for out in outputs:
        shape, elem_type = shapes.get(out, (None, 0))
        if shape is None:
            return None
        out_infos.append((shape, elem_type))

    op = node.op_type
    row_axis = first.row_axis
    window = upsample = pads = None
    if op in WINDOW:
        found = _window(node, fmaps, first, out_infos, inits)
        if found is None:
            return None
        window, pads = found
        out_row_axis = row_axis
    elif op in UPSAMPLE:
        upsample = _upsample(node, first, out_infos, inits, opset)
        if upsample is None:
            return None
        out_row_axis = row_axis
    elif op == "Transpose":
        perm = _attr(node, "perm", list(reversed(range(len(first.shape)))))
        out_row_axis = list(perm).index(row_axis)
    elif op in UNARY or op in BINARY or op in CHANNEL_AXIS_OPS:
        if not _pointwise_ok(node, fmaps, first, out_infos, inits, opset):
            return None
        out_row_axis = row_axis
    else:
        return None

    for shape, _ in out_infos:
        if len(shape) <= out_row_axis:
            return None
    if window is None and upsample is None and any(s[out_row_axis] != first.rows for s, _ in out_infos):
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
        upsample=upsample,
    )


def _pointwise_ok(node, fmaps, first: TensorInfo, out_infos, inits, opset: int) -> bool:
    op = node.op_type
    rank = len(first.shape)
    row_axis = first.row_axis
    if op == "BatchNormalization" and len(out_infos) > 1:
        return False  # training mode: running statistics are not row-local
    if op in ("Concat", "Split"):
        axis = _attr(node, "axis", 0)
        if axis % rank == row_axis or (op == "Concat" and len(fmaps) != len(node.input)):
            return False
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = _attr(node, "axis", 1 if opset < 13 else -1) % rank
        # Before opset 13 the op flattens axis.. into one reduction: it must start after the rows.
        if (opset < 13 and axis <= row_axis) or (opset >= 13 and axis == row_axis):
            return False
    if op == "LRN" or op == "BatchNormalization":
        return row_axis != 1  # both work along axis 1
    # Constant operands broadcast against the feature map: they must not vary along the rows.
    for name in node.input:
        if name in inits and op in BINARY | {"PRelu"}:
            dims = tuple(inits[name].dims)
            if len(dims) > rank:
                return False
            aligned = row_axis - (rank - len(dims))
            if aligned >= 0 and dims[aligned] != 1:
                return False
    return True


def _spatial_attrs(node: onnx.NodeProto, kernel: list[int], in_shape: Shape, out_shape: Shape):
    """Explicit (strides, dilations, pads) for a 2-D window, resolving auto_pad."""
    strides = list(_attr(node, "strides", [1, 1]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
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
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    return strides, dilations, pads


def _window(node, fmaps, first: TensorInfo, out_infos, inits):
    if len(first.shape) != 4 or first.row_axis != 2 or len(out_infos) != 1:
        return None
    if fmaps != (node.input[0],):
        return None  # weights computed from feature maps are not a convolution we can split
    if node.op_type == "Conv":
        kernel = list(_attr(node, "kernel_shape", list(inits[node.input[1]].dims[2:])))
    else:
        kernel = list(_attr(node, "kernel_shape", []))
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


def _nearest_source_row(r: int, scale: float, in_rows: int, out_rows: int, mode: str,
                        nearest: str) -> int:
    """The input row ONNX's nearest Resize reads for output row r (spec formulas)."""
    if mode == "half_pixel":
        x = (r + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        x = (r + 0.5) / scale - 0.5 if out_rows > 1 else 0.0
    elif mode == "tf_half_pixel_for_nn":
        x = (r + 0.5) / scale
    elif mode == "align_corners":
        x = r * (in_rows - 1) / (out_rows - 1) if out_rows > 1 else 0.0
    else:  # asymmetric
        x = r / scale
    if nearest == "floor":
        i = math.floor(x)
    elif nearest == "ceil":
        i = math.ceil(x)
    elif nearest == "round_prefer_ceil":
        i = math.floor(x + 0.5)
    else:  # round_prefer_floor
        i = math.ceil(x - 0.5)
    return min(max(i, 0), in_rows - 1)


def _upsample(node, first: TensorInfo, out_infos, inits, opset: int) -> Upsample | None:
    """Nearest upsampling whose row map is r -> r // s for an integer s, else None."""
    if len(out_infos) != 1 or _attr(node, "mode", "nearest") != "nearest":
        return None
    out_shape = out_infos[0][0]
    in_rows, out_rows = first.rows, out_shape[first.row_axis]
    if out_rows % in_rows:
        return None
    scale = out_rows // in_rows
    # Batch and channel counts must not change: only rows (and columns) are resampled.
    for axis, (a, b) in enumerate(zip(first.shape, out_shape)):
        if axis != first.row_axis and axis < 2 and a != b:
            return None
    for name in node.input[1:]:
        if name and name not in inits:
            return None
    if node.op_type == "Upsample" or opset < 11:
        mode, nearest = "asymmetric", "floor"
    else:
        mode = _attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if mode == "tf_crop_and_resize":
            return None
    if any(
        _nearest_source_row(r, float(scale), in_rows, out_rows, mode, nearest) != r // scale
        for r in range(out_rows)
    ):
        return None
    return Upsample(scale=scale, in_rows=in_rows)


def _macs(node, first: TensorInfo, out_infos, inits) -> int:
    out_elems = sum(int(np.prod(shape)) for shape, _ in out_infos)
    if node.op_type == "Conv":
        weight = inits[node.input[1]].dims
        return out_elems * int(np.prod(weight[1:]))
    if node.op_type in WINDOW:
        return out_elems * int(np.prod(_attr(node, "kernel_shape", [1])))
    return out_elems


def _cuts(spatial_input: str, layers: list[Layer]) -> tuple[Cut, ...]:
    produced_at = {spatial_input: -1}
    last_use: dict[str, int] = {}
    for layer in layers:
        for out in layer.outputs:
            produced_at[out] = layer.position
        for t in layer.fmaps:
            last_use[t] = layer.position
    cuts: list[Cut] = []
    seen = {spatial_input}
    for position in range(1, len(layers)):
        live = [t for t, use in last_use.items() if produced_at[t] < position <= use]
        if len(live) == 1 and live[0] not in seen and not _starts_fusion(live[0], layers[position:]):
            seen.add(live[0])
            cuts.append(Cut(position, live[0]))
    return tuple(cuts)


def _starts_fusion(tensor: str, later: list[Layer]) -> bool:
    """Whether a consumer of `tensor` is a per-pixel op ONNX Runtime may fuse into its producer.

    ORT folds BatchNormalization and constant Add/Mul into a Conv's weights and runs activations
    inside the Conv kernel; a strip that ends between the two would round differently from the
    unsplit model. Cutting only before windowed, upsampling and channel ops keeps every fusion
    group whole.
    """
    return any(
        tensor in layer.fmaps
        and layer.window is None
        and layer.upsample is None
        and layer.op_type not in ("Concat", "Split", "Transpose")
        and len(set(layer.fmaps)) == 1
        for layer in later
    )


def _receptive_fields(spatial_input: str, layers: list[Layer]) -> dict[str, int]:
    """Input rows one row of each trunk tensor depends on, ignoring image borders."""
    field_jump: dict[str, tuple[Fraction, Fraction]] = {spatial_input: (Fraction(1), Fraction(1))}
    for layer in layers:
        rf = max(field_jump[t][0] for t in layer.fmaps)
        jump = max(field_jump[t][1] for t in layer.fmaps)
        if layer.window is not None:
            rf, jump = rf + (layer.window.kernel - 1) * jump, jump * layer.window.stride
        elif layer.upsample is not None:
            jump = jump / layer.upsample.scale
        for out in layer.outputs:
            field_jump[out] = (rf, jump)
    return {t: math.ceil(rf) for t, (rf, _) in field_jump.items()}
