"""Deadlines on a changing channel: how often each policy meets the deadline, simulated and measured.

Run (as root, for network namespaces and cgroups): python benchmarks/adaptive.py
    [--share 0.25] [--deadlines-ms auto|30,50] [--duration 40] [--seed 3] [--report adaptive.html]

MobileNet-V1 at widths 0.25/0.5/0.75/1.0 (seeded weights; the trained models' ImageNet top-1 is
50.6/63.7/68.4/70.6), 224x224, on two boards: the host (this process) and dev-1 (a stub in its
network namespace). Each board has a core of this machine, or with `--share` a share of one (cgroup CPU bandwidth
control: a board about 1/share times slower), and the link between them is shaped with tbf by a
Gilbert-Elliott trace that swings between 100 and 10 Mbit/s in 2 s steps.

1. `halpc profile` on a board (inside dev-1's cgroup): GMAC/s and the fixed costs of a run and of
   a message, which the cluster file gives both boards.
2. `halpc compile` of the four variants, planned at 10, 25, 50 and 100 Mbit/s, plus each variant
   on the host alone.
3. Per deadline D (auto: between the measured latencies of 1.0 and 0.75 alone, and of 0.75 and
   0.5), a frame every
   D: `halpc simulate` replays the trace through the cost model, and on the lab the same trace
   is replayed live with tbf while the host runs every frame under each policy (standalone,
   fixed, adaptive, select), every output checked bit for bit against its variant's unsplit
   model.
Prints per deadline and policy the simulated and measured reliability (tasks within D), their
difference in percentage points, the mean top-1 delivered and the measured p95 latency.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "benchmarks")]

import models  # noqa: E402
from distributed import ping_overhead_ms  # noqa: E402
from halpc.measure import netlab  # noqa: E402
from halpc.host.adapt import POLICIES  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.compile import Variant, compile_bundle  # noqa: E402
from halpc.host.control import bundle_predictor, plan_options  # noqa: E402
from halpc.measure.profiler import median_run_seconds  # noqa: E402
from halpc.host.run import run, spawn_stubs  # noqa: E402
from halpc.present.replay_report import write_simulation_report  # noqa: E402
from halpc.whatif.replay import simulate_bundle  # noqa: E402
from halpc.whatif.bandwidth_trace import load_trace, write_csv  # noqa: E402
from halpc.host.verify import random_inputs  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402
from halpc_stub.session import make_session  # noqa: E402

VARIANTS = {"mobilenet_v1_025": 50.6, "mobilenet_v1_050": 63.7, "mobilenet_v1_075": 68.4, "mobilenet_v1_100": 70.6}
PORTS = (5811, 5812)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--share", type=float, default=0.0,
                        help="limit each board to this share of one core (default: a whole core each)")
    parser.add_argument("--deadlines-ms", default="auto")
    parser.add_argument("--duration", type=float, default=20.0, help="trace seconds")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--report", default="adaptive.html", help="HTML report of the first deadline's simulation")
    args = parser.parse_args()
    # Each run is a new host session; a probe answered after the last task of the run before
    # reaches the next one, which rightly drops it: not worth a warning here.
    logging.getLogger("halpc_stub").setLevel(logging.ERROR)
    reason = netlab.available() or (args.share and netlab.cpu_limits_available())
    if reason:
        sys.exit(f"adaptive benchmark: no emulated cluster here: {reason}")
    cpu = {"host": args.share, "dev-1": args.share} if args.share else None
    with tempfile.TemporaryDirectory() as tmp_name, netlab.NetLab({"dev-1": 100}, cpu=cpu) as lab:
        tmp = Path(tmp_name)
        family = []
        for name, accuracy in VARIANTS.items():
            path = tmp / f"{name}.onnx"
            onnx.save(models.build(name, 224, 224), str(path))
            family.append(Variant(path, accuracy))
        profile = tmp / "board.json"
        proc = lab.popen("dev-1", [sys.executable, "-m", "halpc.cli", "profile", str(family[-1].path),
                                   "--heights", "all", "--repeat", "7", "-o", str(profile)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(proc.communicate()[0].strip().splitlines()[-2])
        # A message costs slow boards more than the profile's in-process figure: their loops and
        # ZeroMQ threads wait for CPU. Half a ping round trip through the stub is the link latency.
        probe_bundle = tmp / "ping"
        compile_bundle(family[0].path, _cluster(lab, profile, 0.1), probe_bundle, "even")
        with lab.limit_host():
            latency_ms = ping_overhead_ms(probe_bundle, lab)
        print(f"per message: half a ping round trip through the stub, {latency_ms:.2f} ms")
        cluster = _cluster(lab, profile, latency_ms)
        bundle = tmp / "bundle"
        compiled = compile_bundle(None, cluster, bundle, "halp", variants=family, bandwidths=(10, 25, 50, 100))
        manifest = load_manifest(bundle)
        trace_file = tmp / "trace.csv"
        write_csv(load_trace(f"ge:good=100,bad=10,p=0.3,r=0.3,step=2,duration={args.duration:g},seed={args.seed}",
                             ["dev-1"]), trace_file)
        predict = bundle_predictor(manifest)
        print(f"{len(compiled.entries)} plans; predicted ms at 100 / 10 Mbit/s:")
        for option in plan_options(manifest):
            print(f"  {option.id:<28} {predict(option.id, {'dev-1': 100}) * 1e3:7.1f} "
                  f"{predict(option.id, {'dev-1': 10}) * 1e3:7.1f}")
        with lab.limit_host():
            auto = _deadlines(manifest, family) if args.deadlines_ms == "auto" else None
        deadlines = auto or \
            [float(d) / 1e3 for d in args.deadlines_ms.split(",")]
        inputs = [random_inputs(manifest, seed) for seed in range(4)]
        print(f"\ntrace: {trace_file.read_text().count(chr(10)) - 2} steps of 2 s, 100 <-> 10 Mbit/s; "
              f"boards at {args.share or 1:g} of a core")
        print(f"{'deadline':>8} {'policy':<10} {'tasks':>5} {'simulated':>9} {'measured':>8} {'diff pp':>7} "
              f"{'top-1 sim':>9} {'top-1 meas':>10} {'p95 ms':>7} exact  plans measured")
        with spawn_stubs(bundle, manifest, lab.popen, subprocess.DEVNULL) as stubs:
            for i, deadline in enumerate(deadlines):
                trace, simulated, curves, _ = simulate_bundle(manifest, str(trace_file), deadline)
                if i == 0 and args.report:
                    write_simulation_report(args.report, "MobileNet-V1 variants, 2 boards, 100 <-> 10 Mbit/s",
                                            simulated, curves, trace, ["dev-1"], deadline)
                for policy in POLICIES:
                    sim = simulated[policy]
                    frames = [inputs[k % len(inputs)] for k in range(len(sim.tasks))]
                    replay = netlab.TraceReplay(lab, trace, ["dev-1"])
                    with replay, lab.limit_host():
                        stubs.check()
                        summary = run(bundle, frames, in_flight=1, check=True, timeout_s=60, policy=policy,
                                      deadline_s=deadline, period_s=deadline, on_start=replay.start)
                    accuracy = statistics.mean(VARIANTS[c.variant] for c, _ in summary.decisions)
                    used = {}
                    for r in summary.results:
                        used[r.plan] = used.get(r.plan, 0) + 1
                    print(f"{deadline * 1e3:>6.1f}ms {policy:<10} {len(frames):>5} {sim.reliability:>8.1%} "
                          f"{summary.reliability:>8.1%} {(summary.reliability - sim.reliability) * 100:>+7.1f} "
                          f"{sim.mean_accuracy:>9.2f} {accuracy:>10.2f} "
                          f"{np.percentile(summary.latencies_s, 95) * 1e3:>7.1f} {'yes' if summary.exact else 'NO':>5}  "
                          + ", ".join(f"{p} x{n}" for p, n in sorted(used.items(), key=lambda kv: -kv[1])),
                          flush=True)


def _cluster(lab, profile: Path, latency_ms: float):
    return parse_cluster(
        f"[network]\nbandwidth_mbps = 100\nlatency_ms = {latency_ms:.3f}\n"
        f'[[device]]\nname = "host"\nhost = true\naddress = "{lab.host_ip}:{PORTS[0]}"\nprofile = "{profile}"\n'
        f'[[device]]\nname = "dev-1"\naddress = "{lab.ip("dev-1")}:{PORTS[1]}"\nprofile = "{profile}"\n',
        source="bench")


def _deadlines(manifest, family) -> list[float]:
    """Deadlines between the measured latencies of the variants on the host alone (1.0 and
    0.75, 0.75 and 0.5): where the choice of variant decides the deadline."""
    latency = {}
    for variant in family:
        session = make_session(str(variant.path))
        feeds = random_inputs(manifest, 0)
        latency[variant.name] = median_run_seconds(session, feeds, repeat=20)
    print("measured on the host alone: " + ", ".join(f"{n} {s * 1e3:.1f} ms" for n, s in latency.items()))
    order = [latency[v] for v in VARIANTS]  # fastest first
    return [(order[2] + order[3]) / 2, (order[1] + order[2]) / 2]


if __name__ == "__main__":
    main()
