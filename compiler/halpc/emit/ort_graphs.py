"""Strips as the graphs ONNX Runtime runs them, for devices with NCHWc kernels.

On x86-64, ORT rewrites each convolution to its NCHWc layout when a session opens, and each
session keeps its own reordered copy of the filters, which no shared initializer can replace:
a device with three strips of a block held that block's filters four times (VGG-16 halp: 1.8x
the memory of one unsplit session). Written as ORT optimized them, the reordered filters are
initializers like any other, and the device's weights file (emit.weights) holds each once.
The stub then opens them with ORT's optimizations off (`halpc_stub.session.strip_session`):
the same kernels on the same graph, so the outputs are the same bits.
"""
from __future__ import annotations

import os
import tempfile

import onnx

from halpc_stub.session import make_session


def ort_optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` as this machine's ONNX Runtime optimizes it, with halpc's session options."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        make_session(model.SerializeToString(), optimized_path=path)
        optimized = onnx.load(path)
    optimized.graph.name = model.graph.name
    # ORT names the nodes it adds from a counter shared across the session's optimizer passes,
    # in an order that varies between runs (ReorderOutput_token_39 here, _41 there); named by
    # position, the same strip is the same bytes in every compile.
    for index, node in enumerate(optimized.graph.node):
        node.name = f"{node.op_type}_{index}"
    return optimized
