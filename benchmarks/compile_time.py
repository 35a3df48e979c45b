"""How long `halpc compile` takes, per stage, on 2, 3 and 4 devices, and what shape inference
costs with and without the weights' bytes.

Run: python benchmarks/compile_time.py [--models vgg16,vgg19] [--repeat 3]. `vgg16` is the
builder's VGG-16 at 224x224; other names are the onnx wheel's light models (examples/light_models.py).
Stages are timed side by side in one run; the median of the repeats is printed, with the
kernel's share of the time (`sys s`: mostly zeroing fresh pages for copies of the weights).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import light_models  # noqa: E402
import models  # noqa: E402
from bundles import local_cluster  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc.emit.bundle import write_bundle  # noqa: E402
from halpc.inputs.model import inferred_graph, load_model  # noqa: E402
from halpc.planner.plan import even_plan  # noqa: E402


def timed(step):
    """(result, wall seconds, kernel seconds) of step()."""
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
    result = step()
    return result, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def shape_inference_side_by_side(proto: onnx.ModelProto, repeat: int) -> None:
    whole, bare = [], []
    for _ in range(repeat):  # alternating, so that both see the same moment of the machine
        whole.append(timed(lambda: shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True))[1])
        bare.append(timed(lambda: inferred_graph(proto, strict_mode=True, data_prop=True))[1])
    a, b = statistics.median(whole), statistics.median(bare)
    print(f"  shape inference, onnx on the whole model {a:.3f} s, without the weights' bytes "
          f"(inputs.model.inferred_graph) {b:.4f} s: {a / b:.0f}x")


def bench(name: str, tmp: Path, repeat: int) -> None:
    path = tmp / f"{name}.onnx"
    onnx.save(models.build("vgg16", 224, 224) if name == "vgg16" else light_models.load_light_model(name), str(path))
    print(f"{name}, {path.stat().st_size / 1e6:.0f} MB model, median of {repeat}")
    print(f"{'devices':>7}  {'load+trunk s':>12}  {'plan s':>6}  {'emit s':>6}  {'total s':>7}  {'sys s':>6}  "
          f"{'bundle MB':>9}")
    for devices in (2, 3, 4):
        cluster = local_cluster(devices)
        stages: list[tuple[float, float, float, float]] = []
        for _ in range(repeat):
            trunk, load, load_sys = timed(lambda: analyse(load_model(path)))
            plan, plan_s, plan_sys = timed(lambda: even_plan(trunk, list(cluster.names)))
            summary, emit, emit_sys = timed(lambda: write_bundle(trunk, plan, cluster, tmp / f"b{devices}"))
            stages.append((load, plan_s, emit, load_sys + plan_sys + emit_sys))
        load, plan_s, emit, kernel = (statistics.median(s[i] for s in stages) for i in range(4))
        print(f"{devices:>7}  {load:>12.2f}  {plan_s:>6.3f}  {emit:>6.2f}  {load + plan_s + emit:>7.2f}  "
              f"{kernel:>6.2f}  {summary.bytes / 1e6:>9.0f}")
    shape_inference_side_by_side(trunk.model.proto, repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,vgg19")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bench(name, Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
