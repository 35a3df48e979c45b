"""What one strip of a fused block computes: the rows of every tensor, from the outputs back.

A block is a run of trunk layers between two cut points. The plan splits the rows of the block's
reference output among strips; every other output of the block (the boundary tensor, exits to
detector heads) is split in proportion. Walking the block's layers backwards gives each tensor
the hull of the rows its consumers need; a layer then produces exactly that hull, and a consumer
that needs fewer rows than a tensor holds (a residual skip beside a 3x3 conv) reads them through
a Slice, an exact copy.
"""
from __future__ import annotations

from dataclasses import dataclass

from halpc.analyse.rows import Rows, hull, proportional_split
from halpc.analyse.ops import Layer
from halpc.analyse.trunk import Trunk


@dataclass(frozen=True)
class BlockIO:
    start: int  # first layer position
    stop: int  # one past the last layer position
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # the boundary tensor (if any), then exits, in production order
    reference: str  # the output whose rows the plan splits

    def layers(self, trunk: Trunk) -> tuple[Layer, ...]:
        return trunk.layers[self.start : self.stop]

    def main_input(self, trunk: Trunk) -> str:
        """The input whose rows the strips split (the largest; others are a gate read whole, a
        skip beside it, ...)."""
        return max(self.inputs, key=lambda t: trunk.tensors[t].rows)


def block_io(trunk: Trunk, start: int, stop: int) -> BlockIO:
    layers = trunk.layers[start:stop]
    produced = {out for layer in layers for out in layer.outputs}
    inputs: list[str] = []
    for layer in layers:
        for t in layer.fmaps:
            if t not in produced and t not in inputs:
                inputs.append(t)
    later = {t for layer in trunk.layers[stop:] for t in layer.fmaps}
    exits = set(trunk.exits)
    outputs = [
        out for layer in layers for out in layer.outputs if out in later or out in exits
    ]
    boundary = [t for t in outputs if t in later]
    if boundary:
        reference = boundary[0]
    else:
        reference = max(outputs, key=lambda t: trunk.tensors[t].rows)  # first of the largest
    return BlockIO(start, stop, tuple(inputs), tuple(outputs), reference)


def strip_at(trunk: Trunk, io: BlockIO, boundaries: list[int], j: int) -> StripRows:
    """Rows of strip j when the block's reference output is split at `boundaries` (one answer
    per block and owned rows: the planner and the exactness rules ask for the same strips in
    many layouts)."""
    parts = output_partitions(trunk, io, boundaries)
    owned = {t: (b[j], b[j + 1]) for t, b in parts.items()}
    key = (io, tuple(owned.items()))
    found = trunk.strip_cache.get(key)
    if found is None:
        found = trunk.strip_cache[key] = strip_rows(trunk, io, owned)
    return found


def output_partitions(trunk: Trunk, io: BlockIO, boundaries: list[int]) -> dict[str, list[int]]:
    """Row boundaries of every block output, given those of the reference output."""
    ref_rows = trunk.tensors[io.reference].rows
    return {
        t: boundaries
        if t == io.reference
        else proportional_split(boundaries, ref_rows, trunk.tensors[t].rows)
        for t in io.outputs
    }


@dataclass(frozen=True)
class StripRows:
    """Row ranges of one strip: what it reads, what each layer makes, what it hands on."""

    inputs: dict[str, Rows]  # block inputs: rows the strip receives
    held: dict[str, Rows]  # every tensor the strip materialises: rows it holds
    layer_rows: dict[int, Rows]  # layer position -> output rows the layer must produce
    needs: dict[tuple[int, str], Rows]  # (layer position, fmap) -> rows the layer reads
    outputs: dict[str, Rows]  # block outputs the strip returns -> rows held
    owned: dict[str, Rows]  # block outputs -> rows this strip is responsible for


def strip_rows(trunk: Trunk, io: BlockIO, owned: dict[str, Rows]) -> StripRows:
    """Rows of every tensor for a strip that owns `owned` rows of the block's outputs."""
    required: dict[str, Rows] = {t: r for t, r in owned.items() if r[0] < r[1]}
    layer_rows: dict[int, Rows] = {}
    needs: dict[tuple[int, str], Rows] = {}
    for layer in reversed(io.layers(trunk)):
        out = None
        for t in layer.outputs:
            out = hull(out, required.get(t))
        if out is None:
            continue  # nothing of this strip depends on the layer
        layer_rows[layer.position] = out
        for t in layer.fmaps:
            need = layer.rows_needed(out, t)
            needs[(layer.position, t)] = need
            required[t] = hull(required.get(t), need)
    held = {t: required[t] for t in io.inputs if t in required}
    for layer in io.layers(trunk):
        if layer.position in layer_rows:
            for t in layer.outputs:
                held[t] = layer.rows_produced(layer_rows[layer.position])
    outputs = {t: held[t] for t in io.outputs if t in required and t in owned and t in held}
    return StripRows(
        inputs={t: held[t] for t in io.inputs if t in held},
        held=held,
        layer_rows=layer_rows,
        needs=needs,
        outputs={t: r for t, r in outputs.items() if owned[t][0] < owned[t][1]},
        owned={t: r for t, r in owned.items() if r[0] < r[1]},
    )


def strip_macs(trunk: Trunk, io: BlockIO, rows: StripRows, integer: bool = False) -> int:
    """Multiply-accumulates of one strip: each layer's share of its rows, halo included
    (`integer`: only those of integer convolutions, `Trunk.integer`)."""
    total = 0
    for layer in io.layers(trunk):
        out = rows.layer_rows.get(layer.position)
        if out is not None and (not integer or layer.position in trunk.integer):
            computed = layer.rows_computed(out)
            total += layer.macs * (computed[1] - computed[0]) // trunk.tensors[layer.outputs[0]].rows
    return total


def strip_weights(trunk: Trunk, io: BlockIO, rows: StripRows) -> int:
    """Weight bytes one run of the strip reads: those of every layer it computes rows of."""
    return sum(trunk.weight_bytes[layer.position] for layer in io.layers(trunk)
               if layer.position in rows.layer_rows)
