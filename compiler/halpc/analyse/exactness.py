"""Whether a strip computes exactly the unsplit model's rows on a target, layer by layer.

On a target with ONNX Runtime's NCHWc layout (x86-64) every Conv and pool strip is exact
(measured; FINDINGS 1). Off it (ARM64, or x86-64 told not to use it) a Conv runs through MLAS's
im2col + SGEMM, whose K-blocks depend on how many output pixels each call computes: the rules
and their sources are in `mlas_rules`. Pools reduce each window on its own and are exact.

Some element-wise ops (Log, Sin, Cos, Elu, ...) run a 4-wide vector body and a scalar tail that
rounds differently, on every target: an element is exact only if it lands in the tail in the
strip exactly when it does in the whole tensor (measured on both machines with ORT 1.32).

The reference is the unsplit model run with the host's thread count: with MLAS the unsplit
model's own output depends on its threads, so a strip on a device is compared with that.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from halpc.analyse import mlas_rules
from halpc.analyse.ops import Layer, attr
from halpc.analyse.rows import Rows
from halpc.analyse.strips import BlockIO, StripRows
from halpc.analyse.trunk import Trunk
from halpc.inputs.target import Target

# Element-wise ops whose last (n mod 4) elements may round differently (Eigen packet body, scalar
# tail), per MLAS target ("x86_64" includes the NCHWc target: these ops do not use NCHWc).
TAIL_SENSITIVE = {
    "x86_64": frozenset("Log Sin Cos Elu Selu Celu Softplus Mish".split()),
    "aarch64": frozenset("Log Sin Cos Elu Selu Celu Reciprocal Softsign".split()),
}


@dataclass(frozen=True)
class Threads:
    """Intra-op threads of the reference (the host's) and of the device running the strip."""

    reference: int
    strip: int


def conv_geometry(trunk: Trunk, layer: Layer) -> mlas_rules.ConvGeometry:
    """A trunk Conv as ONNX Runtime hands it to MlasConvPrepare."""
    x = trunk.tensors[layer.fmaps[0]].shape
    y = trunk.tensors[layer.outputs[0]].shape
    kernel = tuple(attr(layer.node, "kernel_shape", list(_weight_dims(trunk, layer.node.input[1])[2:])))
    assert layer.pads is not None
    return mlas_rules.ConvGeometry(
        in_channels=x[1], out_channels=y[1], kernel=kernel, in_h=x[2], in_w=x[3],
        stride=tuple(attr(layer.node, "strides", [1, 1])), dilation=tuple(attr(layer.node, "dilations", [1, 1])),
        pads=tuple(layer.pads), group=attr(layer.node, "group", 1), out_h=y[2], out_w=y[3])


def _weight_dims(trunk: Trunk, name: str) -> tuple[int, ...]:
    """A Conv weight's dims: its initializer's, or in a QDQ model the int8 initializer its
    DequantizeLinear reads (same dims)."""
    source = trunk.constants[name].input[0] if name in trunk.constants else name
    return next(tuple(init.dims) for init in trunk.model.graph.initializer if init.name == source)


class ExactnessRules:
    """`why_inexact` per strip, with the per-layer answers cached (the planner asks often)."""

    def __init__(self, trunk: Trunk, target: Target) -> None:
        self.trunk, self.target = trunk, target
        self._conv = lru_cache(maxsize=None)(self._conv_rows_exact)
        self._conv_transpose = lru_cache(maxsize=None)(self._conv_transpose_rows_exact)

    def why_inexact(self, io: BlockIO, rows: StripRows, threads: Threads) -> str | None:
        """None if every layer of the strip computes the unsplit model's values, else the first
        layer that does not, and why."""
        for layer in io.layers(self.trunk):
            out = rows.layer_rows.get(layer.position)
            if out is None:
                continue
            reason = self.layer_inexact(layer, layer.rows_produced(out), threads)
            if reason:
                return f"{layer.name} ({layer.op_type}) rows {out[0]}..{out[1]}: {reason}"
        return None

    def layer_inexact(self, layer: Layer, out: Rows, threads: Threads) -> str | None:
        total = self.trunk.tensors[layer.outputs[0]].rows
        if out == (0, total) and threads.strip == threads.reference:
            return None  # the layer whole, with the reference's threads: the unsplit computation
        arch = self.target.arch
        if layer.op_type in TAIL_SENSITIVE.get(arch, ()):
            return self._tail(layer, out, total, threads)
        if layer.op_type == "ConvTranspose" and not self._conv_transpose(layer.position, out, threads.reference,
                                                                         threads.strip):
            return (f"its SGEMM K-blocks on {self.target.name} differ from the unsplit layer's "
                    f"({threads.strip} thread(s) here, {threads.reference} for the reference)")
        if layer.op_type == "Conv" and self.target.mlas is not None and layer.position not in self.trunk.integer:
            if not self._conv(layer.position, out, threads.reference, threads.strip):
                return (f"its im2col + SGEMM K-blocks on {self.target.name} differ from the unsplit conv's "
                        f"({threads.strip} thread(s) here, {threads.reference} for the reference)")
        return None

    def _conv_rows_exact(self, position: int, out: Rows, reference: int, strip: int) -> bool:
        layer = self.trunk.layers[position]
        geometry = conv_geometry(self.trunk, layer)
        assert layer.window is not None
        lo, hi = layer.window.needed(out)
        pads = layer.window.strip_pads(out)
        return mlas_rules.strip_is_exact(geometry, out, pads, hi - lo, reference, strip, self.target.mlas)

    def _conv_transpose_rows_exact(self, position: int, out: Rows, reference: int, strip: int) -> bool:
        """ONNX Runtime runs a ConvTranspose as one SGEMM (M = Cout/group x kernel, N = input
        pixels, K = Cin/group) and a col2im that adds each output element's terms in kernel order,
        whatever the strip. Every target, NCHWc or not, takes that path: the strip is exact iff
        each of its input pixels lands in a GEMM call with the same kernel and K-blocks as in the
        whole layer (`mlas_rules` rules 3-5), which always holds for K <= 128 (one block)."""
        layer = self.trunk.layers[position]
        x = self.trunk.tensors[layer.fmaps[0]].shape
        weight = _weight_dims(self.trunk, layer.node.input[1])
        group = attr(layer.node, "group", 1)
        m, k = weight[1] * int(np.prod(weight[2:])), x[1] // group
        if k <= mlas_rules.MLAS_SGEMM_STRIDEK:
            return True
        assert layer.transposed is not None
        lo, hi = layer.transposed.needed(out)
        width = x[3]
        gemm = self.target.mlas or "x86_64-nonchwc"  # NCHWc has no ConvTranspose: MLAS's SGEMM

        def calls(pixels: int, threads: int, offset: int = 0) -> list[tuple[int, int, mlas_rules.Signature]]:
            """The SGEMM calls of one group's product (math::Gemm -> MlasGemmBatch), by pixel."""
            return [(offset + a, offset + b, mlas_rules.sgemm_call_signature(m, b - a, k, gemm))
                    for a, b in mlas_rules.gemm_batch_column_ranges(m, pixels, k, threads)]

        full = calls(x[2] * width, reference)
        part = calls((hi - lo) * width, strip, lo * width)
        return all(sig == whole for a, b, sig in part for c, d, whole in full if a < d and c < b)

    def _tail(self, layer: Layer, out: Rows, total: int, threads: Threads) -> str | None:
        """Exact iff no element changes between vector body and scalar tail (see the module)."""
        if threads.strip > 1 or threads.reference > 1:
            return "element-wise op with a scalar tail, split across threads"
        info = self.trunk.tensors[layer.outputs[0]]
        whole = int(np.prod(info.shape))
        part = whole // total * (out[1] - out[0])
        if (part % 4 == 0 and (out[1] < total or whole % 4 == 0)) or (out[1] == total and part % 4 == whole % 4):
            return None
        return "element-wise op whose last (n mod 4) elements round differently (vector body, scalar tail)"
