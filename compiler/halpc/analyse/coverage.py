"""How much of a model halpc splits, and where and why the split ends (`halpc inspect`).

The MACs counted are those of the ops that carry a CNN's arithmetic, over the whole graph at
the given input shape: convolutions (Conv, ConvTranspose and their integer twins) and matrix
products (Gemm, MatMul and theirs). `split_macs` are those of the trunk's layers; the rest run
on the host alone, which caps the speedup at 1 / (1 - share + share / devices).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from halpc.analyse.ops import (BINARY, CHANNEL_AXIS_OPS, CONTRIB, ENDS_TRUNK, QUANT_BINARY, QUANT_UNARY,
                               QUANT_WINDOW, QUANTIZE, UNARY, UPSAMPLE, WINDOW, attr, upsample_scales)
from halpc.analyse.resampling import resampled, transposed
from halpc.analyse.trunk import Trunk
from halpc.inputs.model import tensor_shapes

# op -> (input holding the weight or the second factor, input holding the first factor)
MAC_OPS = {"Conv": (1, 0), "ConvInteger": (1, 0), "QLinearConv": (3, 0), "ConvTranspose": (1, 0),
           "Gemm": (1, 0), "MatMul": (1, 0), "MatMulInteger": (1, 0), "QLinearMatMul": (3, 0)}
ROW_LOCAL = UNARY | BINARY | WINDOW | UPSAMPLE | {"ConvTranspose"} | CHANNEL_AXIS_OPS | QUANTIZE | QUANT_WINDOW | QUANT_UNARY | QUANT_BINARY


@dataclass(frozen=True)
class SplitEnd:
    """A node of the tail that reads the trunk: the split ends there, for `reason`."""

    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class Coverage:
    model_macs: int
    split_macs: int
    ends: tuple[SplitEnd, ...]

    @property
    def share(self) -> float:
        return self.split_macs / self.model_macs if self.model_macs else 1.0

    def to_json(self) -> dict[str, Any]:
        return {"model_macs": self.model_macs, "split_macs": self.split_macs, "split_share": round(self.share, 4),
                "ends": [{"node": e.node, "op": e.op, "reason": e.reason} for e in self.ends]}


def coverage(trunk: Trunk) -> Coverage:
    shapes = tensor_shapes(trunk.model.proto)
    in_trunk = {id(layer.node) for layer in trunk.layers}
    model_macs = split_macs = 0
    for node in trunk.model.graph.node:
        macs = node_macs(node, shapes)
        model_macs += macs
        split_macs += macs if id(node) in in_trunk else 0
    ends = tuple(SplitEnd(node.name or node.output[0], node.op_type, why_it_ends(node, trunk, shapes))
                 for node in trunk.tail if set(node.input) & set(trunk.tensors))
    return Coverage(model_macs, split_macs, ends)


def node_macs(node: onnx.NodeProto, shapes: dict) -> int:
    """Multiply-accumulates of one convolution or matrix product (0 for any other op)."""
    if node.op_type not in MAC_OPS or not node.output:
        return 0
    second, first = MAC_OPS[node.op_type]
    out = shapes.get(node.output[0], (None, 0))[0]
    weight = shapes.get(node.input[second], (None, 0))[0] if len(node.input) > second else None
    x = shapes.get(node.input[first], (None, 0))[0]
    if not out or not weight or not x:
        return 0
    if node.op_type == "ConvTranspose":  # every input value meets Cout/group x kernel weights
        return int(np.prod(x)) * int(np.prod(weight[1:]))
    if "Conv" in node.op_type:  # every output value sums Cin/group x kernel products
        return int(np.prod(out)) * int(np.prod(weight[1:]))
    depth = x[0] if node.op_type == "Gemm" and attr(node, "transA", 0) else x[-1]
    return int(np.prod(out)) * int(depth)


def why_it_ends(node: onnx.NodeProto, trunk: Trunk, shapes: dict) -> str:
    """Why `node`, which reads trunk rows, is not split itself."""
    known = set(trunk.tensors) | {i.name for i in trunk.model.graph.initializer} | set(trunk.constants)
    computed = [i for i in node.input if i and i not in known]
    if node.op_type in ENDS_TRUNK:
        return ENDS_TRUNK[node.op_type]
    if node.domain not in ("", "ai.onnx") and not (node.domain == "com.microsoft" and node.op_type in CONTRIB):
        return f"an op of domain {node.domain!r}, which halpc does not split"
    if computed:
        return (f"it also reads {computed[0]!r}, which is computed outside the split (a gate or a "
                "scale from pooled features, as in squeeze-and-excitation): rows alone do not give its output")
    if node.op_type == "DequantizeLinear":  # trunk.py moves it there: not an end of the arithmetic
        return "the host dequantizes the 8-bit rows it gathers (a quarter of the bytes on the wire)"
    reason = _resampling_reason(node, trunk, shapes)
    if reason:
        return reason
    if node.op_type in ROW_LOCAL:
        return f"{node.op_type} with these attributes or shapes does not map output rows to input rows"
    return f"{node.op_type} is not an op halpc knows to work on rows"


def _resampling_reason(node: onnx.NodeProto, trunk: Trunk, shapes: dict) -> str | None:
    """What `resampling` says against a ConvTranspose, Resize or Upsample on trunk rows."""
    x = trunk.tensors.get(node.input[0])
    y = shapes.get(node.output[0], (None, 0))[0]
    if x is None or not y:
        return None
    attrs = {a.name: attr(node, a.name, None) for a in node.attribute}
    inits = {i.name: i for i in trunk.model.graph.initializer}
    if node.op_type == "ConvTranspose" and node.input[1] in inits:
        found = transposed(attrs, tuple(inits[node.input[1]].dims), x.shape, y)
    elif node.op_type in UPSAMPLE:
        opset = next((o.version for o in trunk.model.proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        found = resampled(node.op_type, attrs, upsample_scales(node, inits), x.shape, y, x.row_axis, opset)
    else:
        return None
    return found if isinstance(found, str) else None
