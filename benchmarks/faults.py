"""Faults on the emulated cluster: how fast the host notices them, and that no output is wrong.

Run (as root, for network namespaces): python benchmarks/faults.py
    [--cycles 2] [--model vgg16] [--size 64] [--fallback-plans] [--mbps 200]

The model (examples/models.py, seeded weights) is split in even strips over the host (this
process) and dev-1, dev-2 (`halpc-stub` processes from their launch.sh, each in its network
namespace behind a tbf link). One stream of tasks (two in flight, inputs from a pool of four)
runs while, in turn on dev-1 and dev-2, a stub is killed (kill -9, then restarted), hung
(SIGSTOP, then SIGCONT) and cut off (its link down, then up). Each fault is injected after ten
tasks ran as planned and repaired one second after the host noticed it; the next waits until
the device is back in use.

Per fault: the default plan's predicted latency, the expected task time the host used (the
prediction, or the recent measured median when longer), its bound, how long after the
injection the host noticed (target: under 2x predicted + 100 ms), the tasks recomputed on the
host, and how long after the repair the device was back. Every output is compared bit for bit
with the unsplit model's; task numbers must be consecutive (none lost, none twice). Exits 1 if
anything is wrong, 2 without root or namespaces.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import models  # noqa: E402
from halpc.measure import netlab  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.host.run import spawn_stubs  # noqa: E402
from halpc.host.verify import random_inputs  # noqa: E402
from halpc_stub import clock
from halpc_stub.host import HostSession  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402
from halpc_stub.session import make_session  # noqa: E402

KINDS = ("kill -9", "hang", "link cut")
HEALTHY_BEFORE = 10  # tasks as planned before each fault
REPAIR_AFTER_S = 1.0


def compile_for(lab: netlab.NetLab, out: Path, model: str, size: int, spares: bool) -> Path:
    path = out / f"{model}.onnx"
    onnx.save(models.build(model, size, size, seed=1), str(path))
    text = "[network]\nbandwidth_mbps = 1000\nlatency_ms = 1\n"
    for name, ip in (("host", lab.host_ip), ("dev-1", lab.ip("dev-1")), ("dev-2", lab.ip("dev-2"))):
        text += f'[[device]]\nname = "{name}"\naddress = "{ip}:5900"\ngmacs = 8\n'
        text += "host = true\n" if name == "host" else ""
    compile_bundle(path, parse_cluster(text, source="faults.toml"), out / "bundle", "even", spares=spares)
    return out / "bundle"


class Injector:
    """The fault schedule, advanced after every result (see the module)."""

    def __init__(self, lab: netlab.NetLab, stubs, host: HostSession, cycles: int) -> None:
        self.lab, self.stubs, self.host = lab, stubs, host
        faults = [kind for _ in range(cycles) for kind in KINDS]
        self.todo = [(kind, f"dev-{1 + i % 2}") for i, kind in enumerate(faults)]  # devices in turn
        self.rows: list[dict] = []
        self.state, self.since, self.healthy = "healthy", 0.0, 0

    @property
    def done(self) -> bool:
        return not self.todo and self.state == "healthy" and self.healthy >= HEALTHY_BEFORE

    def after(self, result) -> None:
        now = clock.now()
        as_planned = not result.fallback
        self.healthy = self.healthy + 1 if as_planned else 0
        if self.state == "healthy" and self.todo and self.healthy >= HEALTHY_BEFORE:
            kind, device = self.todo.pop(0)
            self.row = {"fault": kind, "device": device, "faults_before": len(self.host.faults),
                        "recomputed": 0}
            self._inject(kind, device)
            self.row["injected"] = clock.now()
            self.state = "faulty"
        elif self.state == "faulty":
            self.row["recomputed"] += result.unsplit
            if len(self.host.faults) > self.row["faults_before"] and "noticed" not in self.row:
                fault = self.host.faults[self.row["faults_before"]]
                self.row.update(noticed=fault.at, expected_s=fault.expected_s, bound_s=fault.bound_s,
                                waited_for=fault.device)
            if "noticed" in self.row and now - self.row["noticed"] > REPAIR_AFTER_S:
                self._repair(self.row["fault"], self.row["device"])
                self.row["repaired"] = clock.now()
                self.state = "repairing"
        elif self.state == "repairing":
            self.row["recomputed"] += result.unsplit
            if as_planned and result.start > self.row["repaired"]:
                self.row["back"] = result.start
                self.rows.append(self.row)
                self.state, self.healthy = "healthy", 1

    def _inject(self, kind: str, device: str) -> None:
        if kind == "kill -9":
            self.stubs.procs[device].kill()
        elif kind == "hang":
            os.kill(self.stubs.procs[device].pid, signal.SIGSTOP)
        else:
            self.lab.cut(device)

    def _repair(self, kind: str, device: str) -> None:
        if kind == "kill -9":
            self.stubs.procs[device].wait()
            self.stubs.start(device)
        elif kind == "hang":
            os.kill(self.stubs.procs[device].pid, signal.SIGCONT)
        else:
            self.lab.restore(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2, help="rounds of the three faults")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fallback-plans", action="store_true", help="compile with --fallback-plans")
    parser.add_argument("--limit", type=int, default=20000, help="stop after this many tasks regardless")
    args = parser.parse_args()
    unavailable = netlab.available()
    if unavailable:
        print(f"faults: needs the emulated cluster: {unavailable}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, netlab.NetLab({"dev-1": 200, "dev-2": 200}) as lab:
        bundle = compile_for(lab, Path(tmp), args.model, args.size, args.fallback_plans)
        manifest = load_manifest(bundle)
        pool = [random_inputs(manifest, seed) for seed in range(4)]
        reference = make_session(str(manifest.reference_model()))
        expected = [reference.run(manifest.outputs, x) for x in pool]
        predicted_s = manifest.data["predicted_ms"] / 1000
        with spawn_stubs(bundle, manifest, lab.popen) as stubs, HostSession(bundle) as host:
            inject = Injector(lab, stubs, host, args.cycles)

            def frames():
                for i in range(args.limit):
                    if inject.done:
                        return
                    yield pool[i % len(pool)]

            numbers, exact, started = [], 0, clock.now()
            for result in host.stream(frames(), in_flight=2):
                numbers.append(result.task)
                want = expected[(result.task - numbers[0]) % len(pool)]
                exact += all(np.array_equal(result.outputs[n], w) for n, w in zip(manifest.outputs, want))
                inject.after(result)
            seconds = clock.now() - started
    print(f"{args.model} {args.size}x{args.size}, even strips on host + 2 stubs (200 Mbit/s links), "
          f"2 tasks in flight; default plan predicted {predicted_s * 1e3:.0f} ms"
          + (", fallback plans" if args.fallback_plans else ""))
    print(f"{'fault':9} {'device':6} {'waited':6} {'expected ms':>11} {'bound ms':>8} {'noticed ms':>10} "
          f"{'target ms':>9} {'recomputed':>10} {'back s':>6}")
    target = 2 * predicted_s + 0.1
    late = 0
    for row in inject.rows:
        noticed = row["noticed"] - row["injected"]
        late += noticed >= target
        print(f"{row['fault']:9} {row['device']:6} {row['waited_for']:10} {row['expected_s'] * 1e3:11.0f} "
              f"{row['bound_s'] * 1e3:8.0f} {noticed * 1e3:10.0f} {target * 1e3:9.0f} {row['recomputed']:10d} "
              f"{row['back'] - row['repaired']:6.1f}")
    in_order = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    for fault in host.faults:
        print(f"  fault: task {fault.task} waited {fault.waited_s * 1e3:.0f} ms for {fault.device}")
    print(f"tasks {len(numbers)} in {seconds:.0f} s, faults injected {len(inject.rows)}, faults noticed "
          f"{len(host.faults)}, outputs bit-exact {exact}/{len(numbers)}, in order and each once: {in_order}, "
          f"noticed within the target: {len(inject.rows) - late}/{len(inject.rows)}")
    ok = in_order and exact == len(numbers) and len(inject.rows) == args.cycles * len(KINDS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
