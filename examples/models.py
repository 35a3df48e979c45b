"""Real CNN architectures built in code, with seeded random weights.

The partition compiler only cares about graph structure, tensor shapes and
numerics that neither overflow nor collapse to zero, so trained weights are
not needed: these builders give reproducible, license-free test models of the
exact layer layout of VGG-16, MobileNet-V1 and ResNet-18 at any input size.

Weights are He-normal so activations keep roughly unit scale through ReLU
stacks, which keeps partitioned-vs-reference comparisons meaningful (a model
whose activations vanish would "match" any wrong implementation).

Usage::

    python examples/models.py resnet18 -o resnet18.onnx --size 224 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
)

# (pointwise output channels, depthwise stride) of the 13 separable blocks.
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
MOBILENET_V1_STEM = 32
MIN_CHANNELS = 8

RESNET_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)


class GraphBuilder:
    """Accumulates nodes and initializers for one model.

    Kept per-model (never module-level) so builders are re-entrant and a given
    seed always draws the same random numbers in the same order.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._relu6_bounds: tuple[str, str] | None = None

    # -- primitives ---------------------------------------------------------

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        """Adds a single-output node whose output tensor is named like the node,
        so partition boundaries in the compiler's reports are readable."""
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    # -- layers -------------------------------------------------------------

    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        group: int = 1,
        bias: bool = False,
    ) -> str:
        fan_in = (cin // group) * kernel * kernel
        inputs = [x, self.const(f"{name}.weight", self.normal((cout, cin // group, kernel, kernel), math.sqrt(2.0 / fan_in)))]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.normal((cout,), 0.01)))
        return self.node(
            "Conv", inputs, name,
            kernel_shape=[kernel, kernel], strides=[stride, stride],
            pads=[pad] * 4, dilations=[1, 1], group=group,
        )

    def batch_norm(self, x: str, name: str, channels: int) -> str:
        """Running statistics near identity: BN at inference is a per-channel
        affine map, so this keeps the He-normal scale while still making every
        BN parameter distinct (a folding bug would show up numerically)."""
        c = (channels,)
        gamma = self.rng.uniform(0.8, 1.2, c).astype(np.float32)
        beta = self.normal(c, 0.05)
        mean = self.normal(c, 0.05)
        var = self.rng.uniform(0.8, 1.2, c).astype(np.float32)
        params = [
            self.const(f"{name}.{suffix}", value)
            for suffix, value in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))
        ]
        return self.node("BatchNormalization", [x, *params], name, epsilon=1e-5)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def relu6(self, x: str, name: str) -> str:
        """Clip with min/max as inputs (opset >= 11); one shared pair of scalar
        initializers, as exporters emit it."""
        if self._relu6_bounds is None:
            self._relu6_bounds = (
                self.const("relu6.min", np.array(0.0, dtype=np.float32)),
                self.const("relu6.max", np.array(6.0, dtype=np.float32)),
            )
        return self.node("Clip", [x, *self._relu6_bounds], name)

    def max_pool(self, x: str, name: str, kernel: int, stride: int, pad: int = 0) -> str:
        return self.node("MaxPool", [x], name, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)

    def classifier(self, x: str, channels: int, num_classes: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm, the head shared by all three."""
        pooled = self.node("GlobalAveragePool", [x], "gap")
        flat = self.node("Flatten", [pooled], "flatten", axis=1)
        weight = self.const("fc.weight", self.normal((num_classes, channels), math.sqrt(1.0 / channels)))
        bias = self.const("fc.bias", self.normal((num_classes,), 0.01))
        return self.node("Gemm", [flat, weight, bias], OUTPUT_NAME, transB=1)

    # -- model --------------------------------------------------------------

    def model(self, graph_name: str, height: int, width: int, num_classes: int, doc: str,
              output: tuple[str, list[int]] | None = None) -> onnx.ModelProto:
        """The graph as a checked model; `output` (name, shape) replaces the class logits."""
        name, shape = output or (OUTPUT_NAME, [1, num_classes])
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, height, width])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="halpc-examples",
            producer_version="1",
            doc_string=doc,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _check_size(height: int, width: int, minimum: int) -> None:
    """Fail with a readable message instead of an ONNX shape-inference error
    deep inside the checker when the input collapses to zero pixels."""
    if height < minimum or width < minimum:
        raise ValueError(f"input {height}x{width} is too small; need at least {minimum}x{minimum}")


def vgg16(height: int = 224, width: int = 224, seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    """VGG-16 feature extractor (13 conv3x3/pad1+ReLU, 5 MaxPool 2x2/s2) with a
    compact GlobalAveragePool -> Gemm(512 -> num_classes) head.

    The original fc6 (25088 x 4096, ~400 MB of float32) is deliberately left
    out: it is irrelevant to spatial partitioning and would make the model too
    big to generate, store and test quickly.
    """
    _check_size(height, width, 32)
    b = GraphBuilder(seed)
    x, cin, conv_i, pool_i = INPUT_NAME, 3, 0, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            pool_i += 1
            x = b.max_pool(x, f"pool{pool_i}", kernel=2, stride=2)
            continue
        conv_i += 1
        cout = int(item)
        x = b.conv(x, f"conv{conv_i}", cin, cout, kernel=3, pad=1, bias=True)
        x = b.relu(x, f"conv{conv_i}_relu")
        cin = cout
    b.classifier(x, cin, num_classes)
    return b.model("vgg16", height, width, num_classes, vgg16.__doc__ or "")


def mobilenet_channels(channels: int, width_multiplier: float) -> int:
    """Channel rounding used by the builder, public so tests and the compiler's
    cost model can predict layer widths without parsing the graph."""
    return max(MIN_CHANNELS, int(channels * width_multiplier))


def mobilenet_v1(
    width_multiplier: float = 1.0,
    height: int = 224,
    width: int = 224,
    seed: int = 0,
    num_classes: int = 1000,
) -> onnx.ModelProto:
    """MobileNet-V1: conv3x3/s2 stem then 13 depthwise-separable blocks
    (depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6), then the
    GlobalAveragePool -> Gemm head.

    Depthwise convolutions (group == channels) are the case where a spatial
    partitioner's halo and channel bookkeeping most often goes wrong, hence
    this model.
    """
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    _check_size(height, width, 32)
    b = GraphBuilder(seed)
    cin = mobilenet_channels(MOBILENET_V1_STEM, width_multiplier)
    x = b.conv(INPUT_NAME, "conv0", 3, cin, kernel=3, stride=2, pad=1)
    x = b.relu6(b.batch_norm(x, "conv0_bn", cin), "conv0_relu")
    for i, (channels, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        cout = mobilenet_channels(channels, width_multiplier)
        x = b.conv(x, f"block{i}_dw", cin, cin, kernel=3, stride=stride, pad=1, group=cin)
        x = b.relu6(b.batch_norm(x, f"block{i}_dw_bn", cin), f"block{i}_dw_relu")
        x = b.conv(x, f"block{i}_pw", cin, cout, kernel=1)
        x = b.relu6(b.batch_norm(x, f"block{i}_pw_bn", cout), f"block{i}_pw_relu")
        cin = cout
    b.classifier(x, cin, num_classes)
    doc = f"MobileNet-V1 width {width_multiplier}. " + (mobilenet_v1.__doc__ or "")
    return b.model(f"mobilenet_v1_{width_multiplier:g}", height, width, num_classes, doc)


def _basic_block(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    """ResNet BasicBlock; the 1x1/s2 projection appears only where the shape
    changes, exactly as in torchvision, so skip-edge fan-out is realistic."""
    y = b.conv(x, f"{name}_conv1", cin, cout, kernel=3, stride=stride, pad=1)
    y = b.relu(b.batch_norm(y, f"{name}_bn1", cout), f"{name}_relu1")
    y = b.conv(y, f"{name}_conv2", cout, cout, kernel=3, pad=1)
    y = b.batch_norm(y, f"{name}_bn2", cout)
    skip = x
    if stride != 1 or cin != cout:
        skip = b.conv(x, f"{name}_down", cin, cout, kernel=1, stride=stride)
        skip = b.batch_norm(skip, f"{name}_down_bn", cout)
    return b.relu(b.node("Add", [y, skip], f"{name}_add"), f"{name}_relu2")


def _bottleneck(b: GraphBuilder, x: str, name: str, cin: int, width: int, stride: int) -> str:
    """ResNet Bottleneck as torchvision builds it (v1.5: the stride on the 3x3), 4x expansion."""
    cout = width * 4
    y = b.relu(b.batch_norm(b.conv(x, f"{name}_conv1", cin, width, kernel=1), f"{name}_bn1", width), f"{name}_relu1")
    y = b.conv(y, f"{name}_conv2", width, width, kernel=3, stride=stride, pad=1)
    y = b.relu(b.batch_norm(y, f"{name}_bn2", width), f"{name}_relu2")
    y = b.batch_norm(b.conv(y, f"{name}_conv3", width, cout, kernel=1), f"{name}_bn3", cout)
    skip = x
    if stride != 1 or cin != cout:
        skip = b.batch_norm(b.conv(x, f"{name}_down", cin, cout, kernel=1, stride=stride), f"{name}_down_bn", cout)
    return b.relu(b.node("Add", [y, skip], f"{name}_add"), f"{name}_relu3")


def _resnet(name: str, repeats: tuple[int, ...], bottleneck: bool, height: int, width: int, seed: int,
            num_classes: int, doc: str) -> onnx.ModelProto:
    _check_size(height, width, 32)
    b = GraphBuilder(seed)
    x = b.conv(INPUT_NAME, "conv1", 3, 64, kernel=7, stride=2, pad=3)
    x = b.relu(b.batch_norm(x, "bn1", 64), "relu1")
    x = b.max_pool(x, "maxpool", kernel=3, stride=2, pad=1)
    cin = 64
    for stage, (channels, count) in enumerate(zip(RESNET_WIDTHS, repeats), start=1):
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            if bottleneck:
                x, cin = _bottleneck(b, x, f"layer{stage}_{block}", cin, channels, stride), channels * 4
            else:
                x, cin = _basic_block(b, x, f"layer{stage}_{block}", cin, channels, stride), channels
    b.classifier(x, cin, num_classes)
    return b.model(name, height, width, num_classes, doc)


def resnet18(height: int = 224, width: int = 224, seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    """ResNet-18: conv7x7/s2 + BN + ReLU, MaxPool 3x3/s2, 4 stages x 2
    BasicBlocks (64, 128, 256, 512), GlobalAveragePool -> Gemm.

    The residual Adds give the compiler non-chain dataflow (a tensor consumed
    twice, by the block body and by the skip edge).
    """
    return _resnet("resnet18", (2, 2, 2, 2), False, height, width, seed, num_classes, resnet18.__doc__ or "")


def resnet50(height: int = 224, width: int = 224, seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    """ResNet-50: the same stem, 3/4/6/3 Bottlenecks (1x1, 3x3, 1x1 to 4x the
    width: 256 ... 2048 channels), GlobalAveragePool -> Gemm."""
    return _resnet("resnet50", (3, 4, 6, 3), True, height, width, seed, num_classes, resnet50.__doc__ or "")


BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "vgg16": vgg16,
    "mobilenet_v1_025": functools.partial(mobilenet_v1, 0.25),
    "mobilenet_v1_050": functools.partial(mobilenet_v1, 0.5),
    "mobilenet_v1_075": functools.partial(mobilenet_v1, 0.75),
    "mobilenet_v1_100": functools.partial(mobilenet_v1, 1.0),
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build(name: str, height: int = 224, width: int = 224, seed: int = 0) -> onnx.ModelProto:
    """Looks a builder up by name with an error that lists the valid names."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(BUILDERS)}") from None
    return builder(height=height, width=width, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a CNN with seeded random weights as ONNX.")
    parser.add_argument("name", help=f"one of: {', '.join(BUILDERS)}")
    parser.add_argument("-o", "--output", required=True, help="output .onnx path")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="weight RNG seed (default 0)")
    args = parser.parse_args(argv)
    if args.name not in BUILDERS:
        print(f"error: unknown model {args.name!r}; valid names: {', '.join(BUILDERS)}", file=sys.stderr)
        return 2
    try:
        model = build(args.name, height=args.size, width=args.size, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    onnx.save(model, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
