"""What exactness on ARM boards costs, and what checking it costs.

1. Predicted speedup of the halp plan over `local`, side by side, when the plan must be exact on
   x86_64 (ONNX Runtime's NCHWc kernels: every strip exact) and on aarch64 (im2col + SGEMM: the
   planner merges the strips whose K-blocks would differ): VGG-16 and ResNet-18 at 224x224 on
   Raspberry-Pi-class devices (4 GMAC/s) at 50 and 100 Mbit/s.
2. Wall time of `halpc verify` of one bundle natively (x86_64, NCHWc) and under ARM64 emulation
   (aarch64 bundle, qemu-user), the same model and device count, measured in one run; skipped
   with the reason when the emulated environment is not built (`make arm64-env`).

Run: python benchmarks/targets.py [--devices 3,4] [--no-emulation]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import models  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.host import emulation  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.inputs.target import TARGETS  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.planner.strategies import compare  # noqa: E402
from strategies import cluster  # noqa: E402  (benchmarks/strategies.py)


def pi_cluster(devices: int, mbps: float):
    """Raspberry-Pi-class boards: 4 GMAC/s, 3 ms WiFi latency."""
    return cluster(devices, mbps, gmacs=4.0, latency_ms=3.0)


def speedups(devices: list[int], bandwidths: list[float]) -> None:
    print("halp speedup over local (predicted), exact on x86_64 vs exact on aarch64, 4 GMAC/s devices")
    print(f"{'model':<10} {'devices':>7} {'Mbit/s':>7} {'x86_64':>8} {'aarch64':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("vgg16", "resnet18"):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models.build(name, 224, 224), str(path))
            trunk = analyse(load_model(path))
            for n in devices:
                for mbps in bandwidths:
                    got = {}
                    for target in ("x86_64", "aarch64"):
                        plans = compare(context(trunk, pi_cluster(n, mbps), TARGETS[target]), ("local", "halp"))
                        got[target] = plans["local"].predicted["latency_ms"] / plans["halp"].predicted["latency_ms"]
                    print(f"{name:<10} {n:>7} {mbps:>7g} {got['x86_64']:>7.2f}x {got['aarch64']:>7.2f}x "
                          f"{got['aarch64'] / got['x86_64']:>6.2f}")


def verify_times(devices: int) -> None:
    print(f"\nhalpc verify, VGG-16 64x64 and ResNet-18 64x64, halp over {devices} devices, one seed")
    if why := emulation.unavailable():
        print(f"emulated verify skipped: {why}")
        return
    print(f"{'model':<10} {'x86_64 s':>9} {'aarch64 (emulated) s':>21} {'ratio':>6}")
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for name in ("vgg16", "resnet18"):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models.build(name, 64, 64), str(path))
            seconds = {}
            for arch in ("x86_64", "aarch64"):
                bundle = Path(tmp) / f"{name}-{arch}"
                compile_bundle(path, pi_cluster(devices, 100), bundle, "halp", arch=arch, insecure=True)
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "halpc.cli", "verify", str(bundle), "--quiet"],
                                      capture_output=True, text=True)
                seconds[arch] = time.perf_counter() - started
                if proc.returncode != 0:
                    raise SystemExit(f"verify of {bundle} failed: {proc.stdout}{proc.stderr}")
            print(f"{name:<10} {seconds['x86_64']:>9.1f} {seconds['aarch64']:>21.1f} "
                  f"{seconds['aarch64'] / seconds['x86_64']:>6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", default="3,4")
    parser.add_argument("--bandwidths", default="50,100")
    parser.add_argument("--no-emulation", action="store_true")
    args = parser.parse_args()
    devices = [int(d) for d in args.devices.split(",")]
    speedups(devices, [float(b) for b in args.bandwidths.split(",")])
    if not args.no_emulation:
        verify_times(devices[0])


if __name__ == "__main__":
    main()
