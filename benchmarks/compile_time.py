"""How long `halpc compile` takes, per stage, for VGG-16 at 224x224 on 2, 3 and 4 devices.

Run: python benchmarks/compile_time.py [--repeat 3]. Stages are timed side by side in one run;
the median of the repeats is printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import models  # noqa: E402
from bundles import local_cluster  # noqa: E402
from halpc.emit.bundle import write_bundle  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.planner.plan import even_plan  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg16.onnx"
        onnx.save(models.build("vgg16", 224, 224), str(path))
        print(f"VGG-16 224x224, {path.stat().st_size / 1e6:.0f} MB model, median of {args.repeat}")
        print(f"{'devices':>7}  {'load+trunk s':>12}  {'plan s':>6}  {'emit s':>6}  {'total s':>7}  {'bundle MB':>9}")
        for devices in (2, 3, 4):
            cluster = local_cluster(devices)
            stages: list[tuple[float, float, float]] = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                trunk = analyse(load_model(path))
                t1 = time.perf_counter()
                plan = even_plan(trunk, list(cluster.names))
                t2 = time.perf_counter()
                summary = write_bundle(trunk, plan, cluster, Path(tmp) / f"b{devices}")
                t3 = time.perf_counter()
                stages.append((t1 - t0, t2 - t1, t3 - t2))
            load, plan_s, emit = (statistics.median(s[i] for s in stages) for i in range(3))
            print(f"{devices:>7}  {load:>12.2f}  {plan_s:>6.3f}  {emit:>6.2f}  {load + plan_s + emit:>7.2f}  {summary.bytes / 1e6:>9.0f}")


if __name__ == "__main__":
    main()
