"""Load an ONNX model the way users bring them and normalise it for analysis.

Users bring exports from many tools: weights as initializers, as Constant nodes, or initializers
that are also listed as graph inputs (opset-9 era); symbolic batch and image dims; shape-dependent
subgraphs (Shape -> Gather -> Reshape) in detector heads. Everything downstream wants one form:
static shapes everywhere, constants as initializers, shape arithmetic folded away. The original
file is kept byte for byte: it is the reference `verify` compares against.
"""
from __future__ import annotations

import hashlib
import heapq
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import shape_inference

from halpc.errors import HalpcError, UsageError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LoadedModel:
    """The normalised model plus what identifies the original file."""

    path: Path
    proto: onnx.ModelProto  # normalised: static shapes, constants folded
    reference: bytes  # the original graph, input dims fixed and weights not inputs: what verify runs
    sha256: str  # of the original file
    input_shapes: dict[str, Shape]

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph



def load_model(path: str | Path, input_shapes: dict[str, Shape] | None = None) -> LoadedModel:
    path = Path(path)
    raw = _read(path)
    proto = _parse(path, raw)
    _lift_initializer_inputs(proto)
    fixed = _fix_input_shapes(path, proto, input_shapes or {})
    # The reference is the user's graph as ORT would run it at this input size: ORT's fusions
    # depend on the shapes it can prove, so a symbolic-dim original rounds differently.
    reference = proto.SerializeToString()
    proto = _fold_and_infer(path, proto)
    return LoadedModel(
        path=path,
        proto=proto,
        reference=reference,
        sha256=hashlib.sha256(raw).hexdigest(),
        input_shapes=fixed,
    )


def _read(path: Path) -> bytes:
    if not path.exists():
        raise HalpcError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise HalpcError(f"{path}: is a folder; give the path of an .onnx model file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HalpcError(f"{path}: cannot read the model ({exc.strerror})") from None


def _parse(path: Path, raw: bytes) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise HalpcError(
            f"{path}: not a valid ONNX model (protobuf parse failed: {exc}); "
            "is the file truncated or of another format?"
        ) from None
    # Protobuf happily parses many non-ONNX byte strings into a mostly empty message.
    if proto.ir_version <= 0 or not proto.graph.node or not proto.opset_import:
        raise HalpcError(
            f"{path}: not an ONNX model (no graph, IR version or opset in it); "
            "export the network to ONNX first"
        )
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError) as exc:
            raise HalpcError(
                f"{path}: its external weight data cannot be read ({exc}); "
                "keep the data file beside the model"
            ) from None
    return proto


def _lift_initializer_inputs(proto: onnx.ModelProto) -> None:
    """Old exporters list every initializer as a graph input too: they are weights, not inputs."""
    inits = {t.name for t in proto.graph.initializer}
    real = [i for i in proto.graph.input if i.name not in inits]
    if len(real) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(real)
        proto.ir_version = max(proto.ir_version, 4)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or "?")
    return dims


def _fix_input_shapes(
    path: Path, proto: onnx.ModelProto, overrides: dict[str, Shape]
) -> dict[str, Shape]:
    names = [i.name for i in proto.graph.input]
    for name in overrides:
        if name not in names:
            raise UsageError(f"{name}=...: the model has no input {name!r} (its inputs: {', '.join(names)})",
                             option="input_shapes")
    fixed: dict[str, Shape] = {}
    for value_info in proto.graph.input:
        dims = _dims(value_info)
        shape = overrides.get(value_info.name)
        if shape is None:
            if any(isinstance(d, str) for d in dims):
                pretty = "x".join(str(d) for d in dims)
                example = "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
                raise UsageError(
                    f"{value_info.name}={example}: fix the dynamic dims of {path}'s input {value_info.name!r} "
                    f"({pretty}) like this (N = the size you will run)", option="input_shapes"
                )
            shape = tuple(int(d) for d in dims)
        else:
            if len(shape) != len(dims):
                raise UsageError(
                    f"{value_info.name}=...: gives {len(shape)} dims but the "
                    f"input has {len(dims)} ({'x'.join(map(str, dims))})", option="input_shapes"
                )
            for given, have in zip(shape, dims):
                if isinstance(have, int) and have != given:
                    raise UsageError(
                        f"{value_info.name}={'x'.join(map(str, shape))} conflicts "
                        f"with the model's fixed input shape {'x'.join(map(str, dims))}", option="input_shapes"
                    )
        tensor_shape = value_info.type.tensor_type.shape
        del tensor_shape.dim[:]
        for d in shape:
            tensor_shape.dim.add().dim_value = d
        fixed[value_info.name] = shape
    return fixed


def _fold_and_infer(path: Path, proto: onnx.ModelProto) -> onnx.ModelProto:
    """Static shapes on every tensor, Constant nodes and shape arithmetic folded to initializers."""
    # Shapes an exporter wrote into value_info/outputs (often with -1) would fight inference.
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
    try:
        proto = _infer_shapes(proto, data_prop=True)
        proto = _fold_constants(proto)
        proto = _infer_shapes(proto, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HalpcError(
            f"{path}: ONNX shape inference failed ({first}); check the model with onnx.checker"
        ) from None
    except Exception as exc:  # onnx-graphsurgeon on a damaged graph: unknown dtypes, non-UTF-8 names...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HalpcError(
            f"{path}: not a valid ONNX model (constant folding failed: {type(exc).__name__} {first}); "
            "is the file damaged? check it with onnx.checker"
        ) from None
    if any(node.domain == "com.microsoft" for node in proto.graph.node):
        _shapes_by_running(proto)
    for value_info in list(proto.graph.value_info) + list(proto.graph.output):
        if value_info.type.HasField("tensor_type") and any(
            isinstance(d, str) for d in _dims(value_info)
        ):
            # Not fatal here: only the spatial trunk needs static shapes, and the trunk analysis
            # refuses the tensors it needs when they are not.
            logging.getLogger(__name__).debug("tensor %s keeps dynamic dims", value_info.name)
    return proto


# Shape inference reads the weights' dims and types, never their values (data propagation reads
# only small integer tensors: shapes, axes, pads), yet onnx serializes the whole model into its
# C++ inference and parses the result back: 3.5 s a pass for VGG-19 (575 MB), 3 ms without them
# (benchmarks/compile_time.py). Sized by their dims: a tensor's ByteSize() costs a serialization.
_WEIGHT_ELEMENTS = 1024
_SHAPE_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def inferred_graph(proto: onnx.ModelProto, **options) -> onnx.GraphProto:
    """The graph onnx's `infer_shapes(proto, **options)` gives, its value_info and outputs
    carrying the shapes, computed on a copy of `proto` whose large weight tensors keep their
    names, dims and types but not their bytes (which the returned graph lacks too)."""
    graph = proto.graph
    shell = onnx.ModelProto(ir_version=proto.ir_version, opset_import=proto.opset_import, functions=proto.functions)
    shell.graph.node.extend(graph.node)
    shell.graph.input.extend(graph.input)
    shell.graph.output.extend(graph.output)
    shell.graph.value_info.extend(graph.value_info)
    for init in graph.initializer:
        if init.data_type in _SHAPE_TYPES or np.prod(init.dims) < _WEIGHT_ELEMENTS:
            shell.graph.initializer.append(init)
        else:
            shell.graph.initializer.add(name=init.name, dims=init.dims, data_type=init.data_type)
    return shape_inference.infer_shapes(shell, **options).graph


def _infer_shapes(proto: onnx.ModelProto, **options) -> onnx.ModelProto:
    """`proto` with the shapes onnx's inference finds on every tensor (see `inferred_graph`)."""
    graph = inferred_graph(proto, **options)
    for field in ("value_info", "output"):
        del getattr(proto.graph, field)[:]
        getattr(proto.graph, field).extend(getattr(graph, field))
    return proto


def _shapes_by_running(proto: onnx.ModelProto) -> None:
    """Shapes and types of the tensors ONNX's shape inference leaves open behind ONNX Runtime's
    contrib ops (QLinearAdd, QLinearConcat, ... of quantized models), from one run of the
    unoptimized model on zeros: the inputs' shapes are static by now, so these are too."""
    import onnxruntime

    graph = proto.graph
    known = {v.name for v in list(graph.value_info) + list(graph.output) + list(graph.input)
             if v.type.tensor_type.HasField("shape") and not any(isinstance(d, str) for d in _dims(v))}
    missing = [o for node in graph.node for o in node.output if o and o not in known]
    if not missing:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in missing)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {}
        for value in graph.input:
            elem = value.type.tensor_type.elem_type
            feeds[value.name] = np.zeros(_dims(value), onnx.helper.tensor_dtype_to_np_dtype(elem))
        values = session.run(missing, feeds)
    except Exception as exc:  # ORT's own error types share no base class
        logging.getLogger(__name__).debug("shapes behind contrib ops left open: %s", exc)
        return
    for name, value in zip(missing, values):
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, list(value.shape)))


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    # onnx-graphsurgeon evaluates constant subgraphs (Constant, Shape of static tensors, the
    # Gather/Concat/Reshape chains of detector heads) with ONNX Runtime itself, so folded values
    # are the ones the reference run computes.
    import onnx_graphsurgeon as gs
    import onnxruntime

    logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)
    graph = gs.import_onnx(proto)
    graph.fold_constants(error_ok=True).cleanup()
    folded = gs.export_onnx(graph, do_type_check=False)
    _sort_stably(folded.graph)
    folded.ir_version = proto.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(proto.opset_import)
    return folded


def _sort_stably(graph: onnx.GraphProto) -> None:
    """Topological order that keeps the file's own order wherever it is already valid.

    The order matters for exactness: where an Add sums two Convs, ONNX Runtime fuses it into
    whichever Conv it meets first, and the sum rounds differently (off NCHWc) depending on which
    one adds the other's result into its GEMM. Strips are emitted in trunk order, so the trunk must
    keep the unsplit model's order (onnx-graphsurgeon's depth-first toposort does not).
    """
    produced = {out for node in graph.node for out in node.output}
    waiting = [{i for i in node.input if i in produced} for node in graph.node]
    consumers: dict[str, list[int]] = {}
    for index, needs in enumerate(waiting):
        for tensor in needs:
            consumers.setdefault(tensor, []).append(index)
    ready = [index for index, needs in enumerate(waiting) if not needs]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for tensor in graph.node[index].output:
            for consumer in consumers.get(tensor, []):
                waiting[consumer].discard(tensor)
                if not waiting[consumer]:
                    heapq.heappush(ready, consumer)
    if len(order) < len(graph.node):
        raise HalpcError(f"graph {graph.name!r} has a cycle: its nodes cannot be put in order")
    nodes = [graph.node[index] for index in order]
    del graph.node[:]
    graph.node.extend(nodes)


def tensor_shapes(proto: onnx.ModelProto) -> dict[str, tuple[Shape | None, int]]:
    """Shape (None where not static) and ONNX element type of every tensor in the graph."""
    info: dict[str, tuple[Shape | None, int]] = {}
    graph = proto.graph
    for value_info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if not value_info.type.HasField("tensor_type"):
            continue
        dims = _dims(value_info)
        shape = None if any(isinstance(d, str) for d in dims) else tuple(int(d) for d in dims)
        info[value_info.name] = (shape, value_info.type.tensor_type.elem_type)
    for init in graph.initializer:
        info[init.name] = (tuple(init.dims), init.data_type)
    return info


def constant_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
