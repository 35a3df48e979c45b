"""Float vs INT8 on slow links: predicted halp speedup over `local` and bytes on the wire per
frame, the same cluster for both (4 devices of 8 GMAC/s, 2 ms latency), side by side.

The int8 models are the float ones through ONNX Runtime's quantize_static (QOperator form,
uint8 activations, int8 weights, seeded calibration). Column `int8`: the cluster gives no
`int8_gmacs`, so an integer MAC is charged what a float one is and the difference is the bytes
alone. Column `int8 2x`: the same cluster with `int8_gmacs` twice `gmacs` (the bundled Pi 4 and
Jetson Nano estimates): each device's share is cheaper, and so is `local`.

Run: python benchmarks/int8.py [--models vgg16,resnet18,resnet50] [--size 224] [--bandwidths 10,25,100]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import models  # noqa: E402
from quantize import quantize  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.planner.schedule import build_schedule  # noqa: E402
from halpc.planner.strategies import compare  # noqa: E402
from strategies import cluster  # noqa: E402  (benchmarks/strategies.py)

GMACS = 8.0  # every device's float rate


def sent_bytes(trunk, plan, devices: list[str]) -> int:
    return sum(build_schedule(trunk, plan, devices, "host").traffic.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,resnet18,resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--bandwidths", default="10,25,100")
    args = parser.parse_args()
    print(f"halp over {args.devices} devices x {GMACS:g} GMAC/s: speedup over local, kB sent per frame")
    print(f"{'model':<10} {'Mbit/s':>7} {'float':>7} {'int8':>7} {'int8/float':>10} {'int8 2x':>8} "
          f"{'float kB':>9} {'int8 kB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models.build(name, args.size, args.size), str(path))
            int8 = analyse(load_model(quantize(path, Path(tmp) / f"{name}_int8.onnx")))
            runs = {"float": (analyse(load_model(path)), None), "int8": (int8, None), "int8 2x": (int8, 2 * GMACS)}
            for mbps in (float(b) for b in args.bandwidths.split(",")):
                speedup, kilobytes = {}, {}
                for kind, (trunk, int8_gmacs) in runs.items():
                    ctx = context(trunk, cluster(args.devices, mbps, GMACS, int8_gmacs=int8_gmacs))
                    plans = compare(ctx, ("local", "halp"))
                    speedup[kind] = plans["local"].predicted["latency_ms"] / plans["halp"].predicted["latency_ms"]
                    kilobytes[kind] = sent_bytes(trunk, plans["halp"], list(ctx.cluster.names)) / 1e3
                print(f"{name:<10} {mbps:>7g} {speedup['float']:>6.2f}x {speedup['int8']:>6.2f}x "
                      f"{speedup['int8'] / speedup['float']:>10.2f} {speedup['int8 2x']:>7.2f}x "
                      f"{kilobytes['float']:>9.0f} {kilobytes['int8']:>8.0f}")


if __name__ == "__main__":
    main()
