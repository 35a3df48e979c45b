"""The onnx wheel's "light" model zoo with real-looking random weights.

``onnx/backend/test/data/light/light_*.onnx`` are opset-9 caffe2 exports of
classic CNNs (AlexNet, ZFNet, VGG-19, SqueezeNet, GoogLeNet, Inception-v2,
ShuffleNet, ResNet-50, DenseNet-121) that the onnx project shrank by
replacing every large weight with ``ConstantOfShape(value=0.02)`` fed by an
int64 ``<weight>__SHAPE`` initializer.  Small tensors (mostly biases and some
BatchNorm statistics) were kept as ordinary trained initializers.

Constant weights make every channel identical, which hides exactly the bugs a
partition compiler can have (channel or halo mix-ups still produce the same
numbers), and the ConstantOfShape subgraph is noise for the partitioner.  So
:func:`load_light_model` turns each ConstantOfShape weight back into a plain
initializer with seeded random values chosen by how the tensor is used, and
then sets every BatchNorm's running mean/variance to the statistics its input
actually has (see :func:`_calibrate_batchnorm` for why).

Usage::

    python examples/light_models.py resnet50 -o resnet50.onnx
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

LIGHT_MODELS: tuple[str, ...] = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)

# Accepted alternative spellings: the onnx model zoo calls AlexNet "bvlc_alexnet".
_ALIASES: dict[str, str] = {"alexnet": "bvlc_alexnet"}

MIN_IR_VERSION = 4  # IR 4 lets initializers exist without being graph inputs.
MIN_RUNNING_VAR = 1e-3  # floor for dead (constant) channels: keeps variance positive, no noise blow-up


def light_model_path(name: str) -> Path:
    """Location of the pristine file inside the installed onnx package."""
    canonical = _ALIASES.get(name.removeprefix("light_"), name.removeprefix("light_"))
    if canonical not in LIGHT_MODELS:
        raise KeyError(f"unknown light model {name!r}; valid names: {', '.join(LIGHT_MODELS)}")
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{canonical}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed onnx package")
    return path


@dataclass(frozen=True)
class _Use:
    """How a weight is consumed: the op and input slot that finally reads it,
    after looking through the shape-only ops caffe2 inserted
    (Reshape of an FC weight, Unsqueeze of a per-channel affine)."""

    op: str
    slot: int
    node: onnx.NodeProto
    shape: tuple[int, ...]  # shape of the tensor as the final consumer sees it


class _Graph:
    """Read-only consumer index over one graph, built once so that role
    lookups stay linear in graph size (DenseNet has ~950 weights)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for slot, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, slot))

    def int_initializer(self, name: str) -> tuple[int, ...]:
        if name not in self.initializers:
            raise ValueError(f"shape tensor {name!r} is not a constant initializer")
        return tuple(int(v) for v in numpy_helper.to_array(self.initializers[name]).ravel())

    def final_use(self, tensor: str, shape: tuple[int, ...]) -> _Use:
        """Follows single-consumer shape-only ops to the op that gives the
        tensor its meaning, so roles are inferred from the graph, not names."""
        uses = self.consumers.get(tensor, [])
        if not uses:
            raise ValueError(f"weight {tensor!r} has no consumer")
        roles = {(n.op_type, slot) for n, slot in uses}
        if len(roles) != 1:
            raise ValueError(f"weight {tensor!r} has ambiguous roles {sorted(roles)}")
        node, slot = uses[0]
        if node.op_type == "Reshape" and slot == 0:
            target = self.int_initializer(node.input[1])
            new_shape = np.zeros(shape, dtype=np.bool_).reshape(
                [shape[i] if d == 0 else d for i, d in enumerate(target)]
            ).shape
            return self.final_use(node.output[0], tuple(new_shape))
        if node.op_type == "Unsqueeze" and slot == 0:
            # The per-channel vector stays per-channel; keep its own shape.
            return self.final_use(node.output[0], shape)
        return _Use(node.op_type, slot, node, shape)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def _random_weight(use: _Use, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values by role: He-normal conv kernels keep ReLU activations at unit
    scale; BN/affine parameters sit near identity (variance strictly
    positive, though running statistics are recalibrated later anyway);
    biases are small so they do not dominate the signal."""
    def normal(std: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def uniform(low: float, high: float) -> np.ndarray:
        value = rng.random(shape, dtype=np.float32)
        value *= np.float32(high - low)
        value += np.float32(low)
        return value

    role = (use.op, use.slot)
    if role == ("Conv", 1):
        fan_in = int(np.prod(use.shape[1:]))
        return normal(math.sqrt(2.0 / fan_in))
    if role == ("Gemm", 1):
        # LeCun-uniform (torch.nn.Linear's default scale): uniform draws are
        # ~3x faster than normal ones, which matters for VGG-19's 120M-entry
        # FC weights, and the exact distribution is irrelevant here.
        out_axis = 0 if _attr(use.node, "transB", 0) else 1
        fan_in = int(np.prod(use.shape)) // use.shape[out_axis]
        bound = math.sqrt(3.0 / fan_in)
        return uniform(-bound, bound)
    if role in {("Conv", 2), ("Gemm", 2), ("Add", 1), ("Add", 0)}:
        return normal(0.01)
    if role in {("BatchNormalization", 1), ("Mul", 1), ("Mul", 0)}:
        return uniform(0.8, 1.2)
    if role in {("BatchNormalization", 2), ("BatchNormalization", 3)}:
        return normal(0.05)
    if role == ("BatchNormalization", 4):
        return uniform(0.8, 1.2)
    raise ValueError(f"no rule for a weight consumed as input {use.slot} of {use.op} ({use.node.name or use.node.output[0]})")


def _is_float_weight(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) >= 1


def _set_initializer(tensor: onnx.TensorProto, name: str, value: np.ndarray) -> None:
    """Fills a TensorProto in place: VGG-19's FC weights are ~500 MB, and
    building a TensorProto first then copying it into the graph doubles the
    cost."""
    tensor.Clear()
    tensor.name = name
    tensor.data_type = onnx.TensorProto.FLOAT
    tensor.dims.extend(value.shape)
    tensor.raw_data = np.ascontiguousarray(value, dtype="<f4").tobytes()


def _materialize_weights(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Replaces ConstantOfShape nodes by random initializers and re-draws the
    few trained float tensors the light files kept, in graph order so a seed
    maps to the same values on every run.

    The kept tensors (biases, some BN statistics) belong to the discarded
    trained kernels; next to random kernels they wreck the scale (GoogLeNet's
    conv1 bias of about -8 kills most channels, a ShuffleNet BN variance of
    5e-14 amplifies ~300x), so they are not worth keeping.
    """
    graph = model.graph
    index = _Graph(graph)
    for tensor in graph.initializer:
        if _is_float_weight(tensor) and tensor.name in index.consumers:
            shape = tuple(tensor.dims)
            _set_initializer(tensor, tensor.name, _random_weight(index.final_use(tensor.name, shape), shape, rng))
    generated: list[int] = []
    for position, node in enumerate(graph.node):
        if node.op_type != "ConstantOfShape":
            continue
        shape = index.int_initializer(node.input[0])
        value = _random_weight(index.final_use(node.output[0], shape), shape, rng)
        _set_initializer(graph.initializer.add(), node.output[0], value)
        generated.append(position)
    for position in reversed(generated):
        del graph.node[position]


def _batch_statistics_probe(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the model where every BatchNormalization normalizes with its
    input's own per-channel mean/variance (training-mode BN, spelled out in
    opset-9 ops) and exposes both as graph outputs.

    Stats of the i-th BN node are ``__calib{i}_mean`` / ``__calib{i}_var``.
    One forward pass of this probe yields, for every BN at once, the
    statistics it sees once all BNs upstream are calibrated too, so no
    layer-by-layer loop is needed.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    stat_names: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            new_nodes.append(node)
            continue
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
        p = f"__calib{len(stat_names) // 2}_"
        graph.initializer.append(numpy_helper.from_array(np.array(eps, dtype=np.float32), p + "eps"))
        new_nodes += [
            helper.make_node("ReduceMean", [x], [p + "mean"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Sub", [x, p + "mean"], [p + "centered"]),
            helper.make_node("Mul", [p + "centered", p + "centered"], [p + "sq"]),
            helper.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Add", [p + "var", p + "eps"], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Div", [p + "centered", p + "std"], [p + "normed"]),
            helper.make_node("Unsqueeze", [scale], [p + "scale"], axes=[1, 2]),
            helper.make_node("Unsqueeze", [bias], [p + "bias"], axes=[1, 2]),
            helper.make_node("Mul", [p + "normed", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], [node.output[0]]),
        ]
        stat_names += [p + "mean", p + "var"]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in stat_names)
    return probe, stat_names


def _random_inputs(graph: onnx.GraphProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for value in graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if not dims or min(dims) <= 0:
            raise ValueError(f"input {value.name!r} has no fixed shape; cannot calibrate BatchNorm")
        feeds[value.name] = rng.standard_normal(dims, dtype=np.float32)
    return feeds


def _calibrate_batchnorm(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Sets each BN's running mean/variance to its input's statistics on one
    standard-normal input, as a trained network's running statistics would be.

    Random running statistics do not normalize anything, so with random
    kernels the scale drifts with depth and every residual Add roughly
    doubles the variance: ResNet-50 logits reach ~2e3 and ShuffleNet ~2e4,
    saturating the softmax into a one-hot vector that hides numerical errors.
    Calibrated, every BN output is ~N(beta, gamma^2) per channel again.
    """
    bn_nodes = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if not bn_nodes:
        return
    probe, stat_names = _batch_statistics_probe(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # same reduction order every run: stable bytes for a seed
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    stats = dict(zip(stat_names, session.run(stat_names, _random_inputs(model.graph, rng))))
    tensors = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for i, node in enumerate(bn_nodes):
        mean_name, var_name = node.input[3], node.input[4]
        if {mean_name, var_name} & seen:
            raise ValueError(f"BatchNorm statistics {mean_name!r}/{var_name!r} are shared between nodes")
        seen |= {mean_name, var_name}
        mean = stats[f"__calib{i}_mean"].reshape(-1)
        var = np.maximum(stats[f"__calib{i}_var"].reshape(-1), np.float32(MIN_RUNNING_VAR))
        _set_initializer(tensors[mean_name], mean_name, mean.astype(np.float32))
        _set_initializer(tensors[var_name], var_name, var.astype(np.float32))


def _drop_dead_constants(graph: onnx.GraphProto) -> None:
    """Removes initializers no node reads (the ``__SHAPE`` tensors once their
    ConstantOfShape is gone, plus stray caffe2 blobs) and, since IR >= 4 allows
    it, takes initializers out of graph.input so the only inputs left are
    the real ones and onnxruntime may constant-fold weights."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    constant = {t.name for t in graph.initializer}
    # Deleted by index, in reverse: rebuilding the repeated field would copy
    # every (possibly huge) surviving tensor.
    for position in reversed(range(len(graph.initializer))):
        if graph.initializer[position].name not in used:
            del graph.initializer[position]
    for position in reversed(range(len(graph.input))):
        if graph.input[position].name in constant:
            del graph.input[position]


def load_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Loads ``light_<name>.onnx`` with seeded random weights and calibrated
    BatchNorm statistics; opset, input name and input shape are kept.

    Every float weight is re-drawn, including the few trained ones the file
    kept (see :func:`_materialize_weights`).  BN statistics come from one
    onnxruntime pass, so they are bit-identical for a seed on one machine and
    onnxruntime version, but may differ in the last bits elsewhere.
    """
    model = onnx.load(str(light_model_path(name)))
    rng = np.random.default_rng(seed)
    _materialize_weights(model, rng)
    _drop_dead_constants(model.graph)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    _calibrate_batchnorm(model, rng)
    # No onnx.checker call here: on the 575 MB VGG-19 it costs seconds per
    # load; tests/test_example_models.py checks every model once instead.
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write an onnx 'light' model with random weights.")
    parser.add_argument("name", help=f"one of: {', '.join(LIGHT_MODELS)}")
    parser.add_argument("-o", "--output", required=True, help="output .onnx path")
    parser.add_argument("--seed", type=int, default=0, help="weight RNG seed (default 0)")
    args = parser.parse_args(argv)
    try:
        model = load_light_model(args.name, seed=args.seed)
    except (KeyError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    onnx.save(model, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
