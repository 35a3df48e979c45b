"""Predicted latency of every strategy, side by side: VGG-16 and MobileNet-V1 1.0 at 224x224,
2/3/4 identical devices (8 GMAC/s), 10/50/100/1000 Mbit/s links (2 ms latency).

Run: python benchmarks/strategies.py [--models vgg16,mobilenet_v1_100] [--devices 2,3,4]
Prints, per model and device count, a table of speedup over `local` per bandwidth, then the
physical bound of the halp plan: the devices it uses, less the halo work it recomputes (devices x
unsplit MACs / the plan's MACs, what it would reach with free links), and how long planning took.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import models  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.planner.schedule import build_schedule  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.planner.strategies import compare  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402

STRATEGIES = ("local", "even", "modnn", "ftp", "dpfp", "halp")


def cluster(devices: int, mbps: float, gmacs: float = 8.0, latency_ms: float = 2.0,
            slow: dict[str, float] | None = None, int8_gmacs: float | None = None):
    """host, dev-1, ... of `gmacs` (and `int8_gmacs`) each on links of `mbps` (used by the other
    benchmarks too); `slow` gives the named devices' links (to every other device) their own rate."""
    names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
    text = f"[network]\nbandwidth_mbps = {mbps}\nlatency_ms = {latency_ms}\n"
    for i, name in enumerate(names):
        text += f'[[device]]\nname = "{name}"\naddress = "10.0.0.{i + 1}:5700"\ngmacs = {gmacs}\n'
        text += f"int8_gmacs = {int8_gmacs}\n" if int8_gmacs else ""
        text += "host = true\n" if i == 0 else ""
    for device, rate in (slow or {}).items():
        for other in names:
            if other != device:
                text += f'[[link]]\nbetween = ["{other}", "{device}"]\nbandwidth_mbps = {rate}\n'
    return parse_cluster(text, source="bench")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,mobilenet_v1_100")
    parser.add_argument("--devices", default="2,3,4")
    parser.add_argument("--bandwidths", default="10,50,100,1000")
    args = parser.parse_args()
    bandwidths = [float(b) for b in args.bandwidths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models.build(name, 224, 224), str(path))
            trunk = analyse(load_model(path))
            for devices in (int(d) for d in args.devices.split(",")):
                print(f"\n{name}, {devices} devices x 8 GMAC/s: speedup over local (predicted ms)")
                print(f"{'strategy':<9}" + "".join(f"{int(b):>18} Mb/s" for b in bandwidths))
                results, bounds, planning = {}, [], []
                for mbps in bandwidths:
                    ctx = context(trunk, cluster(devices, mbps))
                    started = time.perf_counter()
                    plans = compare(ctx, STRATEGIES)
                    planning.append(time.perf_counter() - started)
                    local = plans["local"].predicted["latency_ms"]
                    for s, plan in plans.items():
                        ms = plan.predicted["latency_ms"]
                        results.setdefault(s, []).append(f"{local / ms:5.2f}x ({ms:7.1f})")
                    halp = plans["halp"]
                    schedule = build_schedule(trunk, halp, list(ctx.cluster.names), "host")
                    used = {job.device for job in schedule.jobs}
                    work = sum(job.macs for job in schedule.jobs)
                    bounds.append(f"{trunk.macs / work * len(used):.2f}x" if len(used) > 1 else "local")
                for s in STRATEGIES:
                    print(f"{s:<9}" + "".join(f"{r:>23}" for r in results[s]))
                print(f"{'bound':<9}" + "".join(f"{b:>23}" for b in bounds)
                      + "   (compute bound of the halp plan: devices used x unsplit MACs / its MACs)")
                print(f"planning all strategies took {max(planning):.2f} s at most")


if __name__ == "__main__":
    main()
