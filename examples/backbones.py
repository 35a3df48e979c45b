"""Backbones of inverted residuals, built in code with seeded weights: MobileNetV2 (Sandler et
al. 2018, ReLU6, no SE) and, with squeeze-and-excitation, MobileNetV3-Large and -Small (Howard
et al. 2019, HardSigmoid gates, HardSwish) and EfficientNet-B0 (Tan and Le 2019, Sigmoid gates,
Swish), the layouts torchvision uses, with the GlobalAveragePool -> Flatten -> Gemm classifier
of `models`.

In an SE block a GlobalAveragePool reads every row of the map, two 1x1 convolutions turn the
pooled vector into a per-channel gate, and a Mul scales the map by it: the sync point halpc
splits around (`analyse.ops`, the host-only block between two cuts).

Usage::

    python examples/backbones.py mobilenet_v3_large -o mnv3.onnx --size 224
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx

from models import INPUT_NAME, GraphBuilder

# (kernel, expanded, out, SE, activation, stride), torchvision's mobilenet_v3 tables.
MOBILENET_V3_LARGE = (
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1), (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1), (5, 960, 160, True, "hswish", 1),
)
MOBILENET_V3_SMALL = (
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1), (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1),
)
# (expansion, out, repeats, stride) of MobileNetV2's seven stages, all 3x3.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
# (expansion, kernel, stride, out, repeats) of EfficientNet-B0's seven stages.
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def _act(b: GraphBuilder, x: str, name: str, kind: str) -> str:
    if kind == "relu":
        return b.relu(x, name)
    if kind == "relu6":
        return b.relu6(x, name)
    if kind == "hswish":
        return b.node("HardSwish", [x], name)
    return b.node("Mul", [x, b.node("Sigmoid", [x], f"{name}_sigmoid")], name)  # swish


def _conv_bn_act(b: GraphBuilder, x: str, name: str, cin: int, cout: int, kernel: int, stride: int = 1,
                 group: int = 1, act: str | None = None) -> str:
    y = b.batch_norm(b.conv(x, name, cin, cout, kernel, stride, kernel // 2, group), f"{name}_bn", cout)
    return _act(b, y, f"{name}_act", act) if act else y


def _squeeze_excite(b: GraphBuilder, x: str, name: str, channels: int, squeezed: int, inner: str, gate: str) -> str:
    pooled = b.node("GlobalAveragePool", [x], f"{name}_pool")
    s = _act(b, b.conv(pooled, f"{name}_fc1", channels, squeezed, 1, bias=True), f"{name}_act", inner)
    s = b.conv(s, f"{name}_fc2", squeezed, channels, 1, bias=True)
    g = b.node("HardSigmoid", [s], f"{name}_gate", alpha=1 / 6, beta=0.5) if gate == "hard" else \
        b.node("Sigmoid", [s], f"{name}_gate")
    return b.node("Mul", [x, g], f"{name}_scale")


def _inverted_residual(b: GraphBuilder, x: str, name: str, cin: int, expanded: int, cout: int, kernel: int,
                       stride: int, act: str, se: tuple[int, str, str] | None) -> str:
    y = x if expanded == cin else _conv_bn_act(b, x, f"{name}_expand", cin, expanded, 1, act=act)
    y = _conv_bn_act(b, y, f"{name}_dw", expanded, expanded, kernel, stride, group=expanded, act=act)
    if se:
        y = _squeeze_excite(b, y, f"{name}_se", expanded, *se)
    y = _conv_bn_act(b, y, f"{name}_project", expanded, cout, 1)
    return b.node("Add", [y, x], f"{name}_add") if stride == 1 and cin == cout else y


def mobilenet_v2(height: int = 224, width: int = 224, seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = _conv_bn_act(b, INPUT_NAME, "stem", 3, 32, 3, 2, act="relu6")
    cin, n = 32, 0
    for expansion, cout, repeats, stride in MOBILENET_V2:
        for r in range(repeats):
            x = _inverted_residual(b, x, f"block{n}", cin, cin * expansion, cout, 3, stride if r == 0 else 1,
                                   "relu6", None)
            cin, n = cout, n + 1
    x = _conv_bn_act(b, x, "last", cin, 1280, 1, act="relu6")
    b.classifier(x, 1280, num_classes)
    return b.model("mobilenet_v2", height, width, num_classes, __doc__ or "")


def mobilenet_v3(table, last: int, height: int = 224, width: int = 224, seed: int = 0,
                 num_classes: int = 1000) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = _conv_bn_act(b, INPUT_NAME, "stem", 3, 16, 3, 2, act="hswish")
    cin = 16
    for i, (kernel, expanded, cout, se, act, stride) in enumerate(table):
        squeeze = (_divisible(expanded / 4), "relu", "hard") if se else None
        x = _inverted_residual(b, x, f"block{i}", cin, expanded, cout, kernel, stride, act, squeeze)
        cin = cout
    x = _conv_bn_act(b, x, "last", cin, 6 * cin, 1, act="hswish")
    b.classifier(x, 6 * cin, num_classes)
    return b.model(f"mobilenet_v3_{last}", height, width, num_classes, __doc__ or "")


def efficientnet_b0(height: int = 224, width: int = 224, seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = _conv_bn_act(b, INPUT_NAME, "stem", 3, 32, 3, 2, act="swish")
    cin, n = 32, 0
    for expansion, kernel, stride, cout, repeats in EFFICIENTNET_B0:
        for r in range(repeats):
            squeeze = (max(1, cin // 4), "swish", "sigmoid")
            x = _inverted_residual(b, x, f"block{n}", cin, cin * expansion, cout, kernel, stride if r == 0 else 1,
                                   "swish", squeeze)
            cin, n = cout, n + 1
    x = _conv_bn_act(b, x, "head", cin, 1280, 1, act="swish")
    b.classifier(x, 1280, num_classes)
    return b.model("efficientnet_b0", height, width, num_classes, __doc__ or "")


BACKBONES = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": lambda h=224, w=224, seed=0: mobilenet_v3(MOBILENET_V3_LARGE, "large", h, w, seed),
    "mobilenet_v3_small": lambda h=224, w=224, seed=0: mobilenet_v3(MOBILENET_V3_SMALL, "small", h, w, seed),
    "efficientnet_b0": efficientnet_b0,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BACKBONES))
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    onnx.save(BACKBONES[args.name](args.size, args.size, args.seed), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
