"""The cost model's compute predictions against ONNX Runtime timing of the same strips, here.

Run: python benchmarks/cost_vs_measured.py [--models vgg16,mobilenet_v1_100] [--devices 3]
For each model: calibrate this machine's GMAC/s by timing the unsplit trunk (1 thread), plan
`dpfp` and `halp` for N identical devices at that speed, compile, then time every strip model of
the bundle with the same session options `verify` uses (median of 5 runs after a warm-up) and
compare with the cost model's seconds (the strip's MACs / GMAC/s). Reports, per device, the
predicted and measured compute time and the error, and the error of the whole plan's compute.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "benchmarks")]

import models  # noqa: E402
from strategies import cluster  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.measure.profiler import median_run_seconds  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402
from halpc_stub.session import strip_session  # noqa: E402

REPEAT = 5


def time_run(session, feeds) -> float:
    return median_run_seconds(session, feeds, REPEAT)


def feeds_for(manifest, step) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for tensor, rows in step["inputs"].items():
        spec = manifest.tensors[tensor]
        feeds[tensor] = rng.standard_normal(spec.strip_shape(tuple(rows))).astype(spec.dtype)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,mobilenet_v1_100")
    parser.add_argument("--devices", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models.build(name, 224, 224), str(path))
            trunk = analyse(load_model(path))
            local = compile_bundle(path, cluster(1, 100.0), Path(tmp) / "local", "local")
            manifest = load_manifest(Path(tmp) / "local")
            step = next(s for s in manifest.program("host") if s["op"] == "run")
            seconds = time_run(strip_session(manifest, "host", step["model"]), feeds_for(manifest, step))
            gmacs = step["macs"] / seconds / 1e9
            print(f"\n{name}: unsplit trunk {trunk.macs / 1e9:.2f} GMAC in {seconds * 1e3:.1f} ms "
                  f"-> this machine: {gmacs:.2f} GMAC/s (1 thread)")
            del local
            for strategy in ("even", "dpfp", "halp"):
                out = Path(tmp) / strategy
                compile_bundle(path, cluster(args.devices, 100.0, gmacs), out, strategy)
                manifest = load_manifest(out)
                print(f"  {strategy}: {'device':<8} {'strips':>6} {'predicted ms':>13} {'measured ms':>12} {'error':>7}")
                total_p = total_m = 0.0
                errors = []
                for device in manifest.devices:
                    predicted = measured = 0.0
                    runs = [s for s in manifest.program(device.name) if s["op"] == "run"]
                    for step in runs:
                        session = strip_session(manifest, device.name, step["model"])  # as the stub opens it
                        m = time_run(session, feeds_for(manifest, step))
                        p = step["macs"] / (gmacs * 1e9)
                        errors.append(abs(p - m) / m)
                        predicted, measured = predicted + p, measured + m
                    total_p, total_m = total_p + predicted, total_m + measured
                    err = (predicted - measured) / measured if measured else 0.0
                    print(f"  {'':<6}{device.name:<8} {len(runs):>6} {predicted * 1e3:>13.1f} {measured * 1e3:>12.1f} {err:>+7.1%}")
                print(f"  {'':<6}{'all':<8} {'':>6} {total_p * 1e3:>13.1f} {total_m * 1e3:>12.1f} "
                      f"{(total_p - total_m) / total_m:>+7.1%}   median |error| per strip "
                      f"{statistics.median(errors):.1%}")


if __name__ == "__main__":
    main()
