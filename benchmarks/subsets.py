"""The planner on uneven clusters, four ways in one run: halp on the whole cluster only (as
before subsets), on the subsets of helpers that pay (`halpc.planner.subsets`), "streamed"
(subsets, a streamed first block offered (`layouts.streamed`), the DP's blocks refined by the
full timeline (`search.refine`)), and as now (later blocks may also go to the host and one
helper, `layouts.one_helper`). VGG-16 224x224, devices of 8 GMAC/s, 1 ms link latency (the
setup of issue 16).

Run: python benchmarks/subsets.py [--models vgg16,resnet18]
Prints: (1) a third device behind a 2 Mbit/s link; (2) predicted latency for 2-5 devices at
10/25/50/100 Mbit/s, and whether one more device ever made the plan slower; (3) how long
planning took for 5 devices.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import models  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.planner import layouts, strategies, subsets  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.planner.strategies import make_plan  # noqa: E402
from strategies import cluster as uniform_cluster  # noqa: E402  (benchmarks/strategies.py)


def cluster(devices: int, mbps: float, slow: dict[str, float] | None = None):
    """host, dev-1, ... of 8 GMAC/s on `mbps` links, 1 ms latency (issue 16's setup)."""
    return uniform_cluster(devices, mbps, latency_ms=1.0, slow=slow)


PLANNERS = ("whole cluster", "subsets", "streamed", "now")


@contextmanager
def planned_as(label: str):
    """halp as before subsets ("whole cluster": the whole cluster only), as before streamed rows
    ("subsets": no streamed first block, no refinement by the full timeline), as before
    per-block helper subsets ("streamed": no `one_helper` layout), or as now."""
    saved = subsets.MAX_SUBSETS, layouts.streamed, strategies.refine, layouts.one_helper
    if label != "now":
        layouts.one_helper = lambda ctx, start, stop: None
    if label not in ("streamed", "now"):
        layouts.streamed = lambda ctx, start, stop: None
        strategies.refine = lambda blocks, latency, *rest: (blocks, latency)
    if label == "whole cluster":
        subsets.MAX_SUBSETS = 1
    try:
        yield
    finally:
        subsets.MAX_SUBSETS, layouts.streamed, strategies.refine, layouts.one_helper = saved


def halp(trunk, cl) -> tuple[float, float, list[str]]:
    """(predicted ms, planning seconds, devices used) of halp."""
    began = time.perf_counter()
    plan = make_plan(context(trunk, cl), "halp")
    return plan.predicted["latency_ms"], time.perf_counter() - began, plan.devices()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,resnet18")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models.build(name, 224, 224), str(path))
            trunk = analyse(load_model(path))
            local = make_plan(context(trunk, cluster(1, 100)), "local").predicted["latency_ms"]
            print(f"\n{name} 224x224, 8 GMAC/s devices, 1 ms latency; local {local:.0f} ms")

            print("\n(1) host + dev-1 at 100 Mbit/s, dev-2's links at 2 Mbit/s: halp speedup")
            for label, cl in (("host + dev-1", cluster(2, 100)), ("+ dev-2 at 2 Mbit/s", cluster(3, 100, {"dev-2": 2}))):
                with planned_as("whole cluster"):
                    before = halp(trunk, cl)
                after = halp(trunk, cl)
                print(f"  {label:<22} whole cluster {local / before[0]:.2f}x   now {local / after[0]:.2f}x "
                      f"(uses {', '.join(after[2])})")

            print("\n(2) halp predicted ms, 2-5 devices; 'slower' marks one more device predicted slower")
            print(f"  {'Mbit/s':>6}  {'planner':<13}" + "".join(f"{n:>8} dev" for n in range(2, 6)))
            times = {}
            for mbps in (10, 25, 50, 100):
                for label in PLANNERS:
                    row = []
                    for n in range(2, 6):
                        with planned_as(label):
                            ms, seconds, _ = halp(trunk, cluster(n, mbps))
                        times[(label, mbps, n)] = seconds
                        row.append(ms)
                    marks = ["" if i == 0 or row[i] <= row[i - 1] * 1.005 else " slower" for i in range(len(row))]
                    cells = "".join(f"{ms:>8.0f}{m:<4}" for ms, m in zip(row, marks))
                    print(f"  {mbps:>6}  {label:<13}{cells}   4 dev {local / row[2]:.2f}x")

            print("\n(3) planning seconds for 5 devices (halp, which also plans dpfp and local)")
            for mbps in (10, 25, 50, 100):
                print(f"  {mbps:>4} Mbit/s: " + ", ".join(f"{label} {times[(label, mbps, 5)]:.2f} s"
                                                      for label in PLANNERS))


if __name__ == "__main__":
    main()
