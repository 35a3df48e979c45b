"""Which layers ONNX Runtime runs in its blocked NCHWc layout in the unsplit model.

On x86, ORT_ENABLE_ALL rewrites convolutions and pooling to NCHWc kernels and, depending on
what it knows about a layer's inputs, converts what follows too: a residual Add is fused into
the Conv, BatchNormalization becomes an NCHWc 1x1 kernel, a global pool runs blocked. Those
kernels round differently from the plain ones. A strip graph receives its inputs as plain NCHW
tensors whose shapes ORT knows exactly, which is not how the unsplit model sees them; so to stay
bit-exact, each layer that reads a strip input must run the way it ran unsplit.

ORT renames every tensor it produces in NCHWc (reorder_token_N) and converts back with
ReorderOutput where a plain consumer or a graph output needs the original name. Asking ORT itself
which layers it converted is the only reliable way to know.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from halpc.errors import HalpcError
from halpc.inputs.target import Target, this_machine
from halpc.analyse.trunk import Trunk
from halpc_stub.session import make_session

POOLS = frozenset(("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool"))


@dataclass(frozen=True)
class ReferenceLayout:
    blocked: frozenset[str]  # first outputs of the layers ORT ran as NCHWc kernels
    active: bool = True  # the target rewrites to NCHWc at all (else nothing here applies)

    def needs_blocked_input(self, consumer: onnx.NodeProto) -> bool:
        """The layer ran on NCHWc inputs unsplit; a Conv converts its input by itself."""
        return consumer.output[0] in self.blocked and consumer.op_type != "Conv"

    def needs_opaque_input(self, consumer: onnx.NodeProto) -> bool:
        """A pool ORT left plain because it could not see its input's channels; keep it so."""
        return self.active and consumer.op_type in POOLS and consumer.output[0] not in self.blocked


def reference_layout(trunk: Trunk, target: Target | None = None) -> ReferenceLayout:
    """What ORT's NCHWc rewrite did to the unsplit model on `target` (default: this machine),
    asked of this machine's ORT; a target without NCHWc has nothing to keep."""
    target = target or this_machine()
    if not target.nchwc:
        return ReferenceLayout(frozenset(), active=False)
    if not this_machine().nchwc:
        raise HalpcError(f"the target {target.name} rewrites convolutions to NCHWc, which this machine's "
                         "ONNX Runtime does not: compile for it on an x86-64 machine, or for "
                         "x86_64-nonchwc", option="arch")
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        try:
            # Only the graph is read back: its weights go to a file beside it, unread.
            make_session(trunk.model.reference, optimized_path=str(optimized), weights_apart=True)
        except Exception as exc:  # ORT's error types (InvalidGraph, Fail, ...) derive from Exception only
            raise HalpcError(f"{trunk.model.path}: ONNX Runtime cannot load the model ({exc}); "
                             "is the file damaged? check it with onnx.checker") from None
        graph = onnx.load(str(optimized), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    blocked = set()
    for node in trunk.model.graph.node:
        made_by = producer.get(node.output[0])
        if made_by is None or made_by.domain == "com.microsoft.nchwc":
            blocked.add(node.output[0])
    return ReferenceLayout(frozenset(blocked))
