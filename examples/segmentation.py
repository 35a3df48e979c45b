"""Dense-prediction CNNs built in code, with seeded random weights: the decoders halpc splits to
the output (ConvTranspose, bilinear Resize, skip Concats), so every row of the mask is computed
by the devices and only gathered by the host.

- ``unet``: the U-Net of Ronneberger et al. at a quarter of the width: four levels of two
  conv3x3+ReLU, MaxPool 2x2 down, ConvTranspose k2 s2 up, skip Concats, a 1x1 head.
- ``fpn``: a semantic FPN (Kirillov et al.): a stride-2 conv backbone to 1/16, 1x1 laterals,
  the top-down path with bilinear x2 Resize (half_pixel) and Adds, 3x3 smoothing, the levels
  resized bilinearly to 1/4 and summed, a 1x1 classifier and a bilinear x4 Resize to the input
  size (pytorch_half_pixel with sizes, as torch exports F.interpolate(size=...)).

Usage::

    python examples/segmentation.py unet -o unet.onnx --size 256
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx

from models import INPUT_NAME, GraphBuilder

MASK = "mask"
CLASSES = 8


def _double_conv(b: GraphBuilder, x: str, name: str, cin: int, cout: int) -> str:
    x = b.relu(b.conv(x, f"{name}_conv1", cin, cout, kernel=3, pad=1, bias=True), f"{name}_relu1")
    return b.relu(b.conv(x, f"{name}_conv2", cout, cout, kernel=3, pad=1, bias=True), f"{name}_relu2")


def _up(b: GraphBuilder, x: str, name: str, cin: int, cout: int) -> str:
    weight = b.const(f"{name}.weight", b.normal((cin, cout, 2, 2), np.sqrt(2.0 / cin)))
    return b.node("ConvTranspose", [x, weight], name, kernel_shape=[2, 2], strides=[2, 2])


def unet(height: int = 256, width: int = 256, seed: int = 0, width_base: int = 16) -> onnx.ModelProto:
    if height % 8 or width % 8:
        raise ValueError(f"input {height}x{width}: the U-Net needs both sides divisible by 8")
    b = GraphBuilder(seed)
    channels = [width_base * 2 ** i for i in range(4)]
    skips, x, cin = [], INPUT_NAME, 3
    for level, c in enumerate(channels[:-1]):
        x = _double_conv(b, x, f"enc{level}", cin, c)
        skips.append(x)
        x, cin = b.max_pool(x, f"pool{level}", kernel=2, stride=2), c
    x = _double_conv(b, x, "bottom", cin, channels[-1])
    for level in reversed(range(3)):
        c = channels[level]
        up = _up(b, x, f"up{level}", channels[level + 1], c)
        x = _double_conv(b, b.node("Concat", [up, skips[level]], f"cat{level}", axis=1), f"dec{level}", 2 * c, c)
    b.conv(x, MASK, channels[0], CLASSES, kernel=1, bias=True)
    return b.model("unet", height, width, CLASSES, unet.__doc__ or "", (MASK, [1, CLASSES, height, width]))


def _resize(b: GraphBuilder, x: str, name: str, scale: int) -> str:
    scales = b.const(f"{name}.scales", np.array([1, 1, scale, scale], np.float32))
    return b.node("Resize", [x, "", scales], name, mode="linear", coordinate_transformation_mode="half_pixel")


def fpn(height: int = 256, width: int = 256, seed: int = 0, width_base: int = 32) -> onnx.ModelProto:
    if height % 16 or width % 16:
        raise ValueError(f"input {height}x{width}: the FPN needs both sides divisible by 16")
    b = GraphBuilder(seed)
    x = b.relu(b.conv(INPUT_NAME, "stem", 3, width_base, kernel=3, stride=2, pad=1, bias=True), "stem_relu")
    levels, cin = [], width_base
    for stage in range(3):  # 1/4, 1/8, 1/16
        cout = width_base * 2 ** (stage + 1)
        x = b.relu(b.conv(x, f"c{stage + 2}_down", cin, cout, kernel=3, stride=2, pad=1, bias=True), f"c{stage + 2}_r1")
        x = b.relu(b.conv(x, f"c{stage + 2}_conv", cout, cout, kernel=3, pad=1, bias=True), f"c{stage + 2}_r2")
        levels.append((x, cout))
        cin = cout
    fpn_channels = 64
    top = None
    pyramid = []
    for i in reversed(range(3)):
        lateral = b.conv(levels[i][0], f"lat{i + 2}", levels[i][1], fpn_channels, kernel=1, bias=True)
        top = lateral if top is None else b.node("Add", [lateral, _resize(b, top, f"td{i + 2}", 2)], f"p{i + 2}_sum")
        pyramid.append((i, b.conv(top, f"p{i + 2}", fpn_channels, fpn_channels, kernel=3, pad=1, bias=True)))
    merged = None
    for i, p in pyramid:  # every level to 1/4, then summed
        p = p if i == 0 else _resize(b, p, f"p{i + 2}_to_p2", 2 ** i)
        merged = p if merged is None else b.node("Add", [merged, p], f"merge{i + 2}")
    logits = b.conv(merged, "classifier", fpn_channels, CLASSES, kernel=1, bias=True)
    sizes = b.const("mask.sizes", np.array([1, CLASSES, height, width], np.int64))
    b.node("Resize", [logits, "", "", sizes], MASK, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    return b.model("fpn", height, width, CLASSES, fpn.__doc__ or "", (MASK, [1, CLASSES, height, width]))


SEGMENTERS = {"unet": unet, "fpn": fpn}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SEGMENTERS))
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        model = SEGMENTERS[args.name](args.size, args.size, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    onnx.save(model, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
