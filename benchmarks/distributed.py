"""Measured distributed inference on the emulated edge cluster, side by side with `local`.

Run (as root, for network namespaces): python benchmarks/distributed.py
    [--models vgg16,mobilenet_v1_100] [--bandwidths 50,100,1000] [--strategies halp,dpfp,modnn,ftp]
    (models: those of examples/models.py, segmentation.py and backbones.py, at 224x224)
    [--tasks 7] [--int8]   (--int8: each model quantized first, QOperator, examples/quantize.py)

Two devices: the host (this process, 1 ONNX Runtime thread) and dev-1 (a `halpc-stub` process
in its own network namespace, 1 thread), joined by a veth link shaped with tbf to each
bandwidth. The machine has 2 cores, so the ideal speedup is 2.0x.

For each model:
1. `halpc profile` this machine (1 thread): the fixed cost per model run and the rate at which
   a run reads weights that are not in cache. Both devices get this profile.
2. For each bandwidth: a fresh lab; the link's TCP goodput is measured and written into the
   cluster file as its bandwidth, and the stub's per-message overhead (half a ping round
   trip through the stub) as its latency. Then for each strategy: time `local` (the unsplit
   model on one thread) and give both devices the GMAC/s it shows (the shared machine's speed
   drifts by 10-20% over minutes), compile, start the stub, then run --tasks tasks one at a
   time, each right after one unsplit run of the same input (paired: the speedup is the median
   of the pairs' ratios), every output checked bit for bit against the unsplit one; then the
   same tasks with 2 in flight (throughput). The prediction is the cost model's latency of the
   compiled programs at the GMAC/s the interleaved unsplit runs showed.
Prints per cell: speedup over local, measured and predicted latency and their ratio, the
throughput speedup, and the plan's shares.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import backbones  # noqa: E402
import models  # noqa: E402
import segmentation  # noqa: E402
from quantize import quantize  # noqa: E402
from halpc.measure import netlab  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.inputs.profile_file import write_profile  # noqa: E402
from halpc.measure.profiler import profile_device  # noqa: E402
from halpc.planner.predict import predict_bundle  # noqa: E402
from halpc.host.run import spawn_stubs  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc_stub import clock, wire  # noqa: E402
from halpc_stub.host import HostSession  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402
from halpc_stub.session import make_session  # noqa: E402

PORTS = (5801, 5802)


def cluster(lab, mbps: float, latency_ms: float, profile: Path, gmacs: float):
    """Both devices at `gmacs`, integer convolutions too: in a quantized model nearly every MAC is
    one, so the rate the unsplit runs show is theirs."""
    text = f"[network]\nbandwidth_mbps = {mbps:.3f}\nlatency_ms = {latency_ms:.4f}\n"
    for i, (name, ip) in enumerate((("host", lab.host_ip), ("dev-1", lab.ip("dev-1")))):
        text += (f'[[device]]\nname = "{name}"\naddress = "{ip}:{PORTS[i]}"\nprofile = "{profile}"\n'
                 f"gmacs = {gmacs:.3f}\nint8_gmacs = {gmacs:.3f}\n")
        text += "host = true\n" if i == 0 else ""
    return parse_cluster(text, source="bench")


@dataclass
class Cell:
    local_s: float  # median of the unsplit runs interleaved with the distributed ones
    latency_s: float  # median of the distributed tasks, one at a time
    speedup: float  # median of the paired ratios local / distributed
    predicted_s: float  # the cost model at the GMAC/s the local runs showed during the cell
    throughput_speedup: float  # 2 in flight, against 1 / local_s
    exact: bool


def measure(bundle: Path, lab, reference, inputs: list[dict], trunk) -> Cell:
    """Unsplit and distributed runs alternate, so both see the shared machine at one speed."""
    manifest = load_manifest(bundle)
    names = manifest.outputs
    with spawn_stubs(bundle, manifest, lab.popen, subprocess.DEVNULL) as stubs, \
            HostSession(bundle, timeout_s=60) as host:
        host.connect(watch=stubs.check)
        host.run(inputs[0])  # warm-up, like the reference's first run in _timed
        reference.run(names, inputs[0])
        local, split, exact = [], [], True
        for feeds in inputs:
            at = time.perf_counter()
            expected = reference.run(names, feeds)
            local.append(time.perf_counter() - at)
            (result,) = host.stream([feeds], in_flight=1)
            split.append(result.latency_s)
            exact &= all(np.array_equal(e, result.outputs[n]) for n, e in zip(names, expected))
        streamed = list(host.stream(inputs, in_flight=2))
    throughput = len(streamed) / (streamed[-1].end - streamed[0].start)
    local_s = statistics.median(local)
    data = copy.deepcopy(manifest.data)
    for cost in data["cost"].values():
        cost["gmacs"] = cost["int8_gmacs"] = trunk.macs / local_s / 1e9
    return Cell(local_s, statistics.median(split), statistics.median(l / d for l, d in zip(local, split)),
                predict_bundle(data).latency_s, local_s * throughput, exact)


def ping_overhead_ms(bundle: Path, lab, rounds: int = 200) -> float:
    """Half the median ping round trip host -> stub -> host: JSON, ZeroMQ and both loops."""
    with spawn_stubs(bundle, load_manifest(bundle), lab.popen, subprocess.DEVNULL) as stubs, \
            HostSession(bundle) as host:
        host.connect(watch=stubs.check)
        node = host.node
        times = []
        for _ in range(rounds):
            node.pongs.clear()
            at = time.perf_counter()
            node.send("dev-1", wire.encode({"kind": "ping", "from": "host", "session": node.session_id,
                                            "t": clock.now()}))
            while "dev-1" not in node.pongs:
                if not node.receive(timeout_ms=5000):
                    raise RuntimeError("dev-1 stopped answering pings")
            times.append(time.perf_counter() - at)
    return statistics.median(times) / 2 * 1e3


def header_check_us(bundle: Path, rounds: int = 20000) -> float:
    """Microseconds a device spends parsing and checking one rows header against its manifest."""
    manifest = load_manifest(bundle)
    step = next(s for s in manifest.program("dev-1") if s["op"] == "recv")
    spec = manifest.tensors[step["tensor"]]
    array = np.zeros(spec.strip_shape(tuple(step["rows"])), np.dtype(spec.dtype))
    frames = [wire.rows_header("s", 0, manifest.data["plan_sha256"], "host", step, array), array.data]
    inbound = wire.Inbound(manifest.data["plan_sha256"], manifest.program("dev-1"), manifest.tensors)
    at = time.perf_counter()
    for _ in range(rounds):
        inbound.rows(wire.decode(frames), frames)
    return (time.perf_counter() - at) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,mobilenet_v1_100")
    parser.add_argument("--bandwidths", default="50,100,1000")
    parser.add_argument("--strategies", default="halp,dpfp,modnn,ftp")
    parser.add_argument("--tasks", type=int, default=7)
    parser.add_argument("--int8", action="store_true", help="quantize each model first (QOperator)")
    args = parser.parse_args()
    reason = netlab.available()
    if reason:
        sys.exit(f"distributed benchmark: no emulated cluster here: {reason}")
    strategies = args.strategies.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(build(name), str(path))
            if args.int8:
                path = quantize(path, Path(tmp) / f"{name}_int8.onnx")
            trunk = analyse(load_model(path))
            profile = Path(tmp) / f"{name}-profile.json"
            write_profile(profile_device(trunk, heights=(1, 4, 16, "all"), threads=1), profile)
            reference = make_session(str(path), 1)
            shape = trunk.tensors[trunk.input].shape
            inputs = [{trunk.input: np.random.default_rng(s).standard_normal(shape).astype(np.float32)}
                      for s in range(args.tasks)]
            print(f"\n{name}{' int8' * args.int8} 224x224, {trunk.macs / 1e9:.2f} GMAC; 2 devices x 1 thread, "
                  f"tbf links")
            print(f"{'Mbit/s':>7} {'goodput':>8} {'msg ms':>7} {'strategy':<9} {'local':>8} {'speedup':>8} "
                  f"{'measured':>9} {'predicted':>10} {'meas/pred':>10} {'thru x':>7} exact  shares")
            for mbps in (float(b) for b in args.bandwidths.split(",")):
                with netlab.NetLab({"dev-1": mbps}) as lab:
                    goodput = netlab.measure_goodput(lab, "dev-1", int(max(4e6, mbps * 1e6 / 8 * 0.3)))
                    overhead = None
                    for strategy in strategies:
                        out = Path(tmp) / f"{name}-{mbps:g}-{strategy}"
                        # The machine is shared and its speed drifts: plan with the GMAC/s
                        # `local` shows right now.
                        gmacs = trunk.macs / statistics.median(_timed(reference, inputs[:3])) / 1e9
                        if overhead is None:  # measured once per lab, on a bundle that uses dev-1
                            compile_bundle(path, cluster(lab, goodput, 0.1, profile, gmacs), out, "even")
                            overhead = ping_overhead_ms(out, lab)
                            print(f"{'':>7} per message: half a ping round trip {overhead:.3f} ms, "
                                  f"header parse and check {header_check_us(out):.1f} us", flush=True)
                        compile_bundle(path, cluster(lab, goodput, overhead, profile, gmacs), out, strategy)
                        cell = measure(out, lab, reference, inputs, trunk)
                        print(f"{mbps:>7g} {goodput:>8.1f} {overhead:>7.3f} {strategy:<9} "
                              f"{cell.local_s * 1e3:>6.1f}ms {cell.speedup:>7.2f}x {cell.latency_s * 1e3:>7.1f}ms "
                              f"{cell.predicted_s * 1e3:>8.1f}ms {cell.latency_s / cell.predicted_s:>10.3f} "
                              f"{cell.throughput_speedup:>6.2f}x {'yes' if cell.exact else 'NO':>5}  "
                              f"{_shares(load_manifest(out))}", flush=True)


def build(name: str) -> onnx.ModelProto:
    """A model of examples/ at 224x224: models.py, segmentation.py (U-Net, FPN) or backbones.py."""
    other = {**segmentation.SEGMENTERS, **backbones.BACKBONES}
    return other[name](224, 224) if name in other else models.build(name, 224, 224)


def _timed(session, inputs) -> list[float]:
    session.run(None, inputs[0])
    times = []
    for feeds in inputs:
        at = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - at)
    return times


def _shares(manifest) -> str:
    """MACs per device, as a share of the plan's total."""
    macs = {d.name: sum(s.get("macs", 0) for s in manifest.program(d.name)) for d in manifest.devices}
    total = sum(macs.values()) or 1
    return " ".join(f"{d}:{m / total:.0%}" for d, m in macs.items())


if __name__ == "__main__":
    main()
