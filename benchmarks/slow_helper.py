"""A third device behind a slow link, measured on the emulated cluster (issue 16, item 5).

host + dev-1 on a --mbps link, dev-2 behind --slow Mbit/s (its own tbf both ways, so what dev-1
and dev-2 exchange crosses it too), every device one thread of this machine. In one lab, side
by side: `halp` planned on all three (it plans the subsets of helpers that pay, and says why it
leaves one out), `halp` compiled for host + dev-1 alone (what it should equal), and `even` over
all three (what using dev-2 costs). Each measured against `local` interleaved (paired runs, as
benchmarks/distributed.py), against the cost model's prediction, every output checked.

Run (as root): python benchmarks/slow_helper.py [--model vgg16] [--mbps 300] [--slow 2] [--tasks 5]
Three processes share the 2 cores here: `even`'s measured time includes that contention.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from distributed import _timed, build, measure  # noqa: E402  (benchmarks/distributed.py)
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.measure import netlab  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.planner.strategies import make_plan  # noqa: E402
from halpc_stub.session import make_session  # noqa: E402

PORTS = (5811, 5812, 5813)


def cluster(lab, rates: dict[str, float], gmacs: float, devices=("host", "dev-1", "dev-2")):
    """`devices` at `gmacs`, each helper's links at its measured rate, 0.2 ms latency."""
    text = f"[network]\nbandwidth_mbps = {rates['dev-1']:.3f}\nlatency_ms = 0.2\n"
    for i, name in enumerate(devices):
        ip = lab.host_ip if name == "host" else lab.ip(name)
        text += f'[[device]]\nname = "{name}"\naddress = "{ip}:{PORTS[i]}"\ngmacs = {gmacs:.3f}\n'
        text += "host = true\n" if name == "host" else ""
    if "dev-2" in devices:
        for other in devices:
            if other != "dev-2":
                text += f'[[link]]\nbetween = ["{other}", "dev-2"]\nbandwidth_mbps = {rates["dev-2"]:.3f}\n'
    return parse_cluster(text, source="bench")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--mbps", type=float, default=300)
    parser.add_argument("--slow", type=float, default=2)
    parser.add_argument("--tasks", type=int, default=5)
    args = parser.parse_args()
    reason = netlab.available()
    if reason:
        sys.exit(f"slow-helper benchmark: no emulated cluster here: {reason}")
    with tempfile.TemporaryDirectory() as tmp, netlab.NetLab({"dev-1": args.mbps, "dev-2": args.slow}) as lab:
        path = Path(tmp) / f"{args.model}.onnx"
        onnx.save(build(args.model), str(path))
        trunk = analyse(load_model(path))
        reference = make_session(str(path), 1)
        shape = trunk.tensors[trunk.input].shape
        inputs = [{trunk.input: np.random.default_rng(s).standard_normal(shape).astype(np.float32)}
                  for s in range(args.tasks)]
        rates = {d: netlab.measure_goodput(lab, d, int(max(5e5, mbps * 1e6 / 8 * 0.3)))
                 for d, mbps in (("dev-1", args.mbps), ("dev-2", args.slow))}
        print(f"{args.model} 224x224; host + dev-1 at {rates['dev-1']:.1f} Mbit/s, dev-2 at "
              f"{rates['dev-2']:.2f} Mbit/s (goodput); 1 thread each")
        print(f"{'plan':<26} {'devices':<20} {'local':>8} {'speedup':>8} {'measured':>9} {'predicted':>10} "
              f"{'meas/pred':>10} exact")
        for label, strategy, devices in (("halp, 3 devices", "halp", ("host", "dev-1", "dev-2")),
                                         ("halp, host + dev-1 only", "halp", ("host", "dev-1")),
                                         ("even, 3 devices", "even", ("host", "dev-1", "dev-2"))):
            # The machine is shared and its speed drifts: plan with the GMAC/s `local` shows now.
            gmacs = trunk.macs / statistics.median(_timed(reference, inputs[:3])) / 1e9
            cl = cluster(lab, rates, gmacs, devices)
            plan = make_plan(context(trunk, cl), strategy)
            out = Path(tmp) / f"{strategy}-{len(devices)}"
            compile_bundle(path, cl, out, strategy)
            cell = measure(out, lab, reference, inputs, trunk)
            why = "; ".join(f"leaves {d} out: {w}" for d, w in plan.predicted.get("left_out", {}).items())
            print(f"{label:<26} {','.join(plan.devices()):<20} {cell.local_s * 1e3:>6.1f}ms {cell.speedup:>7.2f}x "
                  f"{cell.latency_s * 1e3:>7.1f}ms {cell.predicted_s * 1e3:>8.1f}ms "
                  f"{cell.latency_s / cell.predicted_s:>10.3f} {'yes' if cell.exact else 'NO':>5}"
                  + (f"\n{'':<27}{why}" if why else ""), flush=True)


if __name__ == "__main__":
    main()
