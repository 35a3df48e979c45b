"""Build the ONNX model of one strip of one block, and of the host's tail.

The strip graph is the block's own nodes, copied, with the top/bottom pads of windowed layers
edited so that each layer yields exactly the rows the strip needs. It carries only the weights
its nodes use, and its inputs and outputs keep the original tensor names, so a manifest can say
"rows 12..40 of conv3_1" and mean the same tensor in every file.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from halpc.emit.layout import ReferenceLayout
from halpc.analyse.rows import Rows
from halpc.analyse.strips import BlockIO, StripRows
from halpc.analyse.ops import TensorInfo, attr
from halpc.analyse.trunk import Trunk, tail_io
from halpc.inputs.model import inferred_graph


NCHWC_BLOCK = 16  # channels per NCHWc block: 16 with AVX-512, 8 with AVX2 (16 covers both)


class CompilerBug(AssertionError):
    """The compiler built a graph that contradicts its own row arithmetic."""


def _value_info(name: str, info: TensorInfo, rows: Rows | None) -> onnx.ValueInfoProto:
    shape = list(info.shape)
    if rows is not None:
        shape[info.row_axis] = rows[1] - rows[0]
    return helper.make_tensor_value_info(name, info.elem_type, shape)


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, values))


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


class _Anchors:
    """Identity layers that hand a layer its input in ORT's NCHWc layout (float tensors only:
    NCHWc has no integer kernels, and an 8-bit anchor would not even load before opset 12).

    See `layout.ReferenceLayout`: a layer that ran on NCHWc inputs in the unsplit model must do so
    in the strip too, but a strip input or a Slice is plain NCHW to ONNX Runtime. A 1x1 MaxPool
    is the anchor where the channels fill whole NCHWc blocks; where they do not (8, 24, 40
    channels with 16-wide blocks) ORT leaves a pool plain, so the anchor is a 1x1 convolution by
    the identity matrix (x * 1 plus zeros: the same values), which ORT blocks with padding. It
    ends in a Clip to the float range, fused as its activation, so that ORT cannot fuse a residual
    Add into the anchor instead of into the convolution it fused it into unsplit.
    """

    def __init__(self, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int) -> None:
        self.nodes, self.inits, self.opset = nodes, inits, opset
        self.made: dict[str, str] = {}

    def __call__(self, name: str, info: TensorInfo) -> str:
        if name not in self.made:
            out = f"{name}__nchwc"
            channels = info.shape[1]
            # Only an NCHW map has its channels on axis 1 (a channels-last input keeps the pool).
            if info.row_axis == 2 and channels % NCHWC_BLOCK:
                eye = numpy_helper.from_array(np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1),
                                              f"{out}__identity")
                self.inits.append(eye)
                self.nodes.append(helper.make_node("Conv", [name, eye.name], [f"{out}__conv"], name=f"{out}__conv",
                                                   kernel_shape=[1, 1]))
                self.nodes.append(self._clip(f"{out}__conv", out))
            else:
                self.nodes.append(helper.make_node("MaxPool", [name], [out], name=out, kernel_shape=[1, 1]))
            self.made[name] = out
        return self.made[name]

    def _clip(self, tensor: str, out: str) -> onnx.NodeProto:
        big = float(np.finfo(np.float32).max)
        if self.opset < 11:
            return helper.make_node("Clip", [tensor], [out], name=out, min=-big, max=big)
        bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{out}__{n}") for n, v in (("min", -big), ("max", big))]
        self.inits.extend(bounds)
        return helper.make_node("Clip", [tensor, *(b.name for b in bounds)], [out], name=out)


def _slice(tensor: str, out: str, axis: int, rows: Rows, opset: int, new_inits: list) -> onnx.NodeProto:
    """A node copying rows [begin, end) of `tensor` along `axis` into `out`."""
    if opset < 10:
        return helper.make_node("Slice", [tensor], [out], name=f"{out}__slice", axes=[axis], starts=[rows[0]],
                                ends=[rows[1]])
    consts = [numpy_helper.from_array(np.array([value], dtype=np.int64), f"{out}__{suffix}")
              for suffix, value in (("starts", rows[0]), ("ends", rows[1]), ("axes", axis))]
    new_inits.extend(consts)
    return helper.make_node("Slice", [tensor, *(c.name for c in consts)], [out], name=f"{out}__slice")


def _pad_to_full(tensor: str, held: Rows, info: TensorInfo, opset: int, nodes: list, new_inits: list) -> str:
    """Zero rows around `tensor` (rows `held` of a map) up to the map's full height, so that a
    Resize whose coordinates depend on the height computes exactly the unsplit model's."""
    out = f"{tensor}__padded"
    pads = [0] * (2 * len(info.shape))
    pads[info.row_axis], pads[len(info.shape) + info.row_axis] = held[0], info.rows - held[1]
    if opset < 11:
        nodes.append(helper.make_node("Pad", [tensor], [out], name=out, pads=pads))
    else:
        const = numpy_helper.from_array(np.array(pads, np.int64), f"{out}__pads")
        new_inits.append(const)
        nodes.append(helper.make_node("Pad", [tensor, const.name], [out], name=out))
    return out


def _graph_input(name: str, info: TensorInfo, rows: Rows | None, opaque: bool) -> onnx.ValueInfoProto:
    """A graph input; `opaque` hides its channel count so ORT leaves a pool on it plain."""
    value_info = _value_info(name, info, rows)
    if opaque:
        dim = value_info.type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_param = "channels"
    return value_info


def strip_model(
    trunk: Trunk, io: BlockIO, rows: StripRows, name: str, layout: ReferenceLayout
) -> onnx.ModelProto:
    source = trunk.model.proto
    opset = _opset(source)
    inits = {init.name: init for init in source.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    slices: dict[tuple[str, Rows], str] = {}

    def read(tensor: str, need: Rows) -> str:
        """Name of a tensor holding exactly rows `need` of `tensor`, slicing when it holds more."""
        have = rows.held[tensor]
        if have == need:
            return tensor
        if (tensor, need) not in slices:
            out = f"{tensor}__rows_{need[0]}_{need[1]}"
            nodes.append(_slice(tensor, out, trunk.tensors[tensor].row_axis, (need[0] - have[0], need[1] - have[0]),
                                opset, new_inits))
            slices[(tensor, need)] = out
        return slices[(tensor, need)]

    anchor = _Anchors(nodes, new_inits, opset)
    opaque: set[str] = set()
    resized: set[str] = set()  # outputs of an interpolating Resize, which reach consumers through a Slice

    used_inits: set[str] = set()
    for layer in io.layers(trunk):
        out_rows = rows.layer_rows.get(layer.position)
        if out_rows is None:
            continue
        node = copy.deepcopy(layer.node)
        for i, tensor in enumerate(node.input):
            if tensor in layer.fmaps:
                name_in = read(tensor, rows.needs[(layer.position, tensor)])
                if layer.interpolated is not None and not layer.interpolated.shift_invariant:
                    name_in = _pad_to_full(name_in, rows.needs[(layer.position, tensor)], trunk.tensors[tensor],
                                           opset, nodes, new_inits)
                if name_in != tensor or tensor in rows.inputs or tensor in resized:
                    if layout.needs_blocked_input(layer.node) and trunk.tensors[tensor].dtype == "float32":
                        name_in = anchor(name_in, trunk.tensors[tensor])
                    elif layout.needs_opaque_input(layer.node) and tensor in rows.inputs:
                        opaque.add(tensor)
                node.input[i] = name_in
            elif tensor in trunk.constants and tensor not in used_inits:
                nodes.insert(0, copy.deepcopy(trunk.constants[tensor]))  # before every use
                used_inits.update(i for i in trunk.constants[tensor].input if i)
                used_inits.add(tensor)
            elif tensor:
                used_inits.add(tensor)
        if layer.window is not None:
            assert layer.pads is not None
            top, bottom = layer.window.strip_pads(out_rows)
            _drop_attr(node, "auto_pad")
            _set_ints(node, "pads", [top, layer.pads[1], bottom, layer.pads[3]])
        if layer.transposed is not None:
            assert layer.pads is not None
            top, bottom, output_padding = layer.transposed.strip_pads(out_rows)
            _drop_attr(node, "auto_pad")
            _drop_attr(node, "output_shape")
            _set_ints(node, "pads", [top, layer.pads[1], bottom, layer.pads[3]])
            _set_ints(node, "output_padding", [output_padding, attr(layer.node, "output_padding", [0, 0])[1]])
        made = layer.rows_computed(out_rows)
        if (layer.upsample or layer.interpolated) and len(node.input) > 3 and node.input[3]:
            sizes = numpy_helper.to_array(inits[node.input[3]]).copy()
            sizes[trunk.tensors[layer.outputs[0]].row_axis] = made[1] - made[0]
            sized = numpy_helper.from_array(sizes, f"{node.input[3]}__{name}")
            new_inits.append(sized)
            used_inits.discard(node.input[3])
            node.input[3] = sized.name
        if layer.interpolated is not None:
            # The rows at the resized strip's edges saw its border, not the image's: slice them off.
            output = node.output[0]
            resized.add(output)
            node.output[0] = f"{output}__rows_{made[0]}_{made[1]}"
            nodes.append(node)
            node = _slice(node.output[0], output, trunk.tensors[output].row_axis,
                          (out_rows[0] - made[0], out_rows[1] - made[0]), opset, new_inits)
        nodes.append(node)

    model = _new_model(
        source,
        name,
        nodes,
        [_graph_input(t, trunk.tensors[t], r, t in opaque) for t, r in rows.inputs.items()],
        [_value_info(t, trunk.tensors[t], r) for t, r in rows.outputs.items()],
        [inits[n] for n in sorted(used_inits) if n in inits] + new_inits,
    )
    _check_rows(trunk, rows, model, name)
    return model


def _new_model(source: onnx.ModelProto, name: str, nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    """helper.make_model(helper.make_graph(...)) in `source`'s opsets and IR version, built in
    place: make_model copies the graph, weights and all, once more."""
    model = helper.make_model(onnx.GraphProto(name=name), opset_imports=list(source.opset_import),
                              producer_name="halpc")
    model.ir_version = source.ir_version
    graph = model.graph
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(initializers)
    return model


def _check_rows(trunk: Trunk, rows: StripRows, model: onnx.ModelProto, name: str) -> None:
    """Shape inference must agree with the row arithmetic, tensor by tensor."""
    try:
        onnx.checker.check_model(model)
        graph = inferred_graph(model, strict_mode=True)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as exc:
        raise CompilerBug(f"{name}: the strip graph is invalid: {exc}") from exc
    for value_info in list(graph.value_info) + list(graph.output):
        tensor = value_info.name
        if tensor not in rows.held:
            continue
        info = trunk.tensors[tensor]
        dims = value_info.type.tensor_type.shape.dim
        if len(dims) <= info.row_axis or not dims[info.row_axis].HasField("dim_value"):
            continue  # behind a contrib op (QLinearAdd, ...), which ONNX's inference does not know
        got = dims[info.row_axis].dim_value
        want = rows.held[tensor][1] - rows.held[tensor][0]
        if got != want:
            raise CompilerBug(f"{name}: {tensor} has {got} rows, the plan needs {want}")




def tail_model(trunk: Trunk, layout: ReferenceLayout) -> onnx.ModelProto | None:
    """The non-row-local rest of the model, run by the host on whole tensors; None if empty."""
    io = tail_io(trunk)
    if io is None:
        return None
    consumed, output_names = io
    source = trunk.model.proto
    nodes: list[onnx.NodeProto] = []
    anchors: list[onnx.TensorProto] = []
    anchor = _Anchors(nodes, anchors, _opset(source))
    opaque: set[str] = set()
    for original in trunk.tail:
        node = copy.deepcopy(original)
        for i, t in enumerate(node.input):
            if t in trunk.tensors and layout.needs_blocked_input(original) and trunk.tensors[t].dtype == "float32":
                node.input[i] = anchor(t, trunk.tensors[t])
            elif t in trunk.tensors and layout.needs_opaque_input(original):
                opaque.add(t)
        nodes.append(node)
    inits = {init.name: init for init in source.graph.initializer}
    graph_inputs = {i.name: i for i in source.graph.input}
    inputs = []
    for t in consumed:
        if t in trunk.tensors:
            inputs.append(_graph_input(t, trunk.tensors[t], None, t in opaque))
        elif t in graph_inputs:
            inputs.append(graph_inputs[t])
    model = _new_model(source, "tail", nodes, inputs, [o for o in source.graph.output if o.name in output_names],
                       [inits[t] for t in consumed if t in inits] + anchors)
    onnx.checker.check_model(model)
    return model
