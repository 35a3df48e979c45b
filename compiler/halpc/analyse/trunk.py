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

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

import numpy as np
import onnx

from halpc.analyse.ops import BINARY, ENDS_TRUNK, QUANT_WINDOW, QUANTIZE, UNARY, WINDOW, Layer, TensorInfo, attr, classify
from halpc.errors import HalpcError
from halpc.inputs.model import LoadedModel, tensor_shapes

MAX_LIVE = 4  # tensors a cut beside a sync point may carry: the map, the gate, a residual, ...


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
    # QDQ models: weights given as DequantizeLinear of int8 initializers, by output name. A strip
    # or the tail that uses one carries the node (ORT fuses it into the integer conv).
    constants: dict[str, onnx.NodeProto] = field(default_factory=dict)
    # strips.strip_at's answers, by block and owned rows (a strip's rows depend on nothing else).
    strip_cache: dict = field(default_factory=dict, repr=False)

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
                transposed = node.op_type == "Gemm" and attr(node, "transB", 0)
                total += elems * weight[1 if transposed else 0]
            else:
                total += elems
        return total

    def producer(self, tensor: str) -> Layer | None:
        return self._producers.get(tensor)

    @cached_property
    def integer(self) -> frozenset[int]:
        """Positions of the layers ONNX Runtime runs as integer convolutions: QLinearConv and
        ConvInteger, and a QDQ Conv (its input and weight dequantized, its output quantized),
        which ORT fuses into a QLinearConv. They accumulate in integers, exactly, on any CPU."""
        found = set()
        for layer in self.layers:
            if layer.op_type in QUANT_WINDOW and layer.op_type != "QLinearAveragePool":
                found.add(layer.position)
            elif layer.op_type == "Conv" and layer.node.input[1] in self.constants:
                producer = self.producer(layer.fmaps[0])
                consumers = [c for c in self.layers if layer.outputs[0] in c.fmaps]
                if producer is not None and producer.op_type == "DequantizeLinear" and consumers \
                        and all(c.op_type == "QuantizeLinear" for c in consumers) and layer.outputs[0] not in self.exits:
                    found.add(layer.position)
        return frozenset(found)

    @cached_property
    def initializer_bytes(self) -> dict[str, int]:
        """Bytes of each initializer, by name."""
        return {
            init.name: int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            for init in self.model.graph.initializer
        }

    @cached_property
    def weight_bytes(self) -> dict[int, int]:
        """Bytes of constant inputs (weights, biases) per layer position: what a run of a strip
        holding the layer reads from memory however few rows it computes."""
        sizes = dict(self.initializer_bytes)
        for name, node in self.constants.items():
            sizes[name] = sum(sizes.get(i, 0) for i in node.input)
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

    constants = _dequantized_constants(graph, inits)
    known = {**inits, **{name: _placeholder(name, shapes) for name in constants}}
    layers: list[Layer] = []
    tail: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.output and node.output[0] in constants:
            continue
        layer = classify(node, len(layers), tensors, shapes, known, opset)
        if layer is None:
            tail.append(node)
            continue
        layers.append(layer)
    layers, unsynced = _sync_points_only(layers)
    layers, host_side = _dequantize_on_host(layers)
    tail = host_side + unsynced + tail  # in the graph's order: a moved DQ feeds a moved pool
    if not any(layer.window is not None for layer in layers):
        stops = [f"{n.op_type} {n.name or n.output[0]!r}: {ENDS_TRUNK[n.op_type]}" for n in tail
                 if n.op_type in ENDS_TRUNK and set(n.input) & set(tensors)]
        raise HalpcError(
            f"{model.path}: no spatial layers (Conv or pooling) work on the rows of input "
            f"{spatial_input!r}" + (f" ({stops[0]})" if stops else "; halpc splits CNNs whose first layers are convolutions")
        )

    trunk_outputs = {out for layer in layers for out in layer.outputs}
    needed_outside = {i for node in tail for i in node.input} | {o.name for o in graph.output}
    tail = [node for name, node in constants.items() if name in needed_outside] + tail
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
        cuts=_cuts(spatial_input, layers, _whole(layers)),
        tail=tuple(tail),
        constants=constants,
    )
    trunk.receptive_field.update(_receptive_fields(spatial_input, layers))
    return trunk


def _dequantize_on_host(layers: list[Layer]) -> tuple[list[Layer], list[onnx.NodeProto]]:
    """Trunk layers less the DequantizeLinears whose output only the tail reads: the host
    gathers the 8-bit rows and dequantizes them itself (a quarter of the bytes on the wire)."""
    read = {t for layer in layers for t in layer.fmaps}
    moved = [layer for layer in layers if layer.op_type == "DequantizeLinear" and not read & set(layer.outputs)]
    if not moved:
        return layers, []
    kept = [dataclasses.replace(layer, position=i) for i, layer in enumerate(l for l in layers if l not in moved)]
    return kept, [layer.node for layer in moved]


def _dequantized_constants(graph: onnx.GraphProto, inits: dict) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear nodes of initializers only (a QDQ model's weights and biases)."""
    found: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.output) == 1 and all(
                not i or i in inits for i in node.input):
            found[node.output[0]] = node
    return found


def _placeholder(name: str, shapes: dict) -> onnx.TensorProto:
    """A weightless stand-in for a constant, so the row analysis can read its dims."""
    shape, elem_type = shapes.get(name, (None, 0))
    placeholder = onnx.TensorProto(name=name, data_type=elem_type or onnx.TensorProto.FLOAT)
    placeholder.dims.extend(shape or ())
    return placeholder


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
            if (node.op_type in WINDOW or node.op_type in QUANT_WINDOW) and node.input[0] == tensor:
                return axes.index(2)
            if node.op_type == "Transpose":
                perm = attr(node, "perm", list(reversed(range(4))))
                frontier.append((node.output[0], [perm.index(a) for a in axes]))
            elif node.op_type in UNARY or node.op_type in BINARY or node.op_type in QUANTIZE:
                frontier.append((node.output[0], axes))
    return 2


def _cuts(spatial_input: str, layers: list[Layer], whole: set[str]) -> tuple[Cut, ...]:
    """Positions where one tensor is live, and around a sync point (an SE block's reduction and
    the gate it makes) where several are: there the planner may give the reduction and its
    gate a block of their own, run by the host from the gathered map, while the map waits on
    the devices. A cut is named by its newest live tensor."""
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
        live = sorted((t for t, use in last_use.items() if produced_at[t] < position <= use),
                      key=lambda t: produced_at[t])
        syncing = layers[position].reduced is not None or any(t in whole for t in live)
        if (len(live) == 1 or (syncing and len(live) <= MAX_LIVE)) and live[-1] not in seen \
                and not any(_starts_fusion(t, layers[position:]) or _dequantized(t, layers) for t in live):
            seen.add(live[-1])
            cuts.append(Cut(position, live[-1]))
    return tuple(cuts)


def _whole(layers: list[Layer]) -> set[str]:
    """One-row tensors computed from a reduction over every row (an SE block's pooled vector,
    its squeeze and its gate): devices get them whole."""
    whole: set[str] = set()
    for layer in layers:
        if layer.reduced is not None or all(f in whole for f in layer.fmaps):
            whole.update(layer.outputs)
    return whole


def _sync_points_only(layers: list[Layer]) -> tuple[list[Layer], list[onnx.NodeProto]]:
    """Trunk layers less the reductions (and what follows from them alone) whose result no
    row-split layer reads: a classifier's GlobalAveragePool stays in the tail, where the host
    reduces the gathered map as before; an SE block's, which gates the map, is a sync point."""
    whole = _whole(layers)
    read: set[str] = set()
    kept: list[Layer] = []
    for layer in reversed(layers):
        if set(layer.outputs) <= whole and not read & set(layer.outputs):
            continue
        kept.append(layer)
        read.update(layer.fmaps)
    if len(kept) == len(layers):
        return layers, []
    moved = [layer.node for layer in layers if layer not in kept]
    return [dataclasses.replace(layer, position=i) for i, layer in enumerate(reversed(kept))], moved


def _starts_fusion(tensor: str, later: list[Layer]) -> bool:
    """Whether a consumer of `tensor` is a per-pixel op ONNX Runtime may fuse into its producer.

    ORT folds BatchNormalization and constant Add/Mul into a Conv's weights and runs activations
    inside the Conv kernel; a strip that ends between the two would round differently from the
    unsplit model. Cutting only before windowed, upsampling and channel ops keeps every fusion
    group whole.
    """
    return any(
        tensor in layer.fmaps
        and layer.op_type != "DequantizeLinear"  # a quantized tensor: cut before its DQ, see below
        and layer.row_map is None
        and layer.op_type not in ("Concat", "Split", "Transpose")
        and len(set(layer.fmaps)) == 1
        for layer in later
    )


def _dequantized(tensor: str, layers: list[Layer]) -> bool:
    """Whether `tensor` is a DequantizeLinear's output. In a QDQ model ONNX Runtime fuses
    DQ -> op -> Q into one integer op; a cut between the DQ and its op would leave the op float
    on one side, so QDQ models are cut on the quantized tensors only (before the DQ)."""
    return any(tensor in layer.outputs and layer.op_type == "DequantizeLinear" for layer in layers)


def _receptive_fields(spatial_input: str, layers: list[Layer]) -> dict[str, int]:
    """Input rows one row of each trunk tensor depends on, ignoring image borders."""
    field_jump: dict[str, tuple[Fraction, Fraction]] = {spatial_input: (Fraction(1), Fraction(1))}
    for layer in layers:
        rows_read = [t for t in layer.fmaps if t not in layer.broadcast]  # a gate is a sync point
        rf = max(field_jump[t][0] for t in rows_read)
        jump = max(field_jump[t][1] for t in rows_read)
        if layer.window is not None:
            rf, jump = rf + (layer.window.kernel - 1) * jump, jump * layer.window.stride
        elif layer.upsample is not None:
            jump = jump / layer.upsample.scale
        elif layer.transposed is not None:  # an output row sums ceil(kernel / stride) input rows
            t = layer.transposed
            rf, jump = rf + (-(-t.kernel // t.stride) - 1) * jump, jump / t.stride
        elif layer.reduced is not None:
            rf = rf + (layer.reduced.in_rows - 1) * jump
        elif layer.interpolated is not None:
            t = layer.interpolated
            rf, jump = rf + (t.taps - 1) * jump, jump * Fraction(t.in_rows, len(t.sources))
        for out in layer.outputs:
            field_jump[out] = (rf, jump)
    return {t: math.ceil(rf) for t, (rf, _) in field_jump.items()}


def tail_io(trunk: Trunk) -> tuple[list[str], list[str]] | None:
    """Names the tail reads (trunk exits, other graph inputs, weights) and the outputs it makes."""
    if not trunk.tail:
        return None
    produced = {o for node in trunk.tail for o in node.output}
    consumed: list[str] = []
    for node in trunk.tail:
        for t in node.input:
            if t and t not in produced and t not in consumed:
                consumed.append(t)
    outputs = [o.name for o in trunk.model.graph.output if o.name in produced]
    return consumed, outputs
