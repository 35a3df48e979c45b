"""Load test on the emulated cluster: thousands of tasks through one HostSession, every output
checked, the processes' memory watched.

Run (as root, for network namespaces): python benchmarks/load.py
    [--tasks 2000] [--in-flight 3] [--devices 2] [--model mobilenet_v1_025] [--size 128]
    [--strategy even] [--mbps 100] [--gmacs 8] [--pool 8] [--warmup 50] [--every 250]

The host is this process; each of --devices devices is a `halpc-stub` process started from its
own launch.sh inside its network namespace (`halpc.measure.netlab`, tbf links of --mbps Mbit/s). The
model (examples/models.py, seeded weights) is compiled for host + devices with --strategy
(`even` by default: every device computes a share of every block, so every task crosses every
link). The default, MobileNet-V1 0.25 at 128x128 (0.8 ms unsplit on one thread here), split
`even` over 3 devices is 27 blocks: per task every process runs 27 strip models, sends 12-23
messages and receives as many (dev-1, in the middle, the most). A task costs each process
7-11 ms of CPU, nearly all of it the runtime's per-step work, which is what a load test should
exercise (and 2,000 tasks fit in about a minute). Inputs are drawn (seeded) from a pool of
--pool distinct random inputs; the unsplit model's output for each is computed once, and every
task's output must equal the one of its own input bit for bit. After --warmup tasks (checked
too) the timed stream of --tasks tasks runs with --in-flight tasks at once; VmRSS of the host
and of every stub is read from /proc/PID/status before it, every --every tasks and at the end,
with each process's CPU time (/proc/PID/stat). The host's figure includes this script's own
bookkeeping: a latency and a task-number count per task, about 60 bytes a task.

Checks: results come in order (task numbers consecutive), each task exactly once (none lost,
none twice), every output bit-exact, every worker used by the plan. Exits 1 if any fails, 2
without root or namespaces.

`run_load(...)` is the whole test as a function returning a `LoadResult`; `--json FILE` writes
it out (tests/test_load.py runs this script and reads that, so that the host's memory is a
fresh process's, not a test runner's after hundreds of tests).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

import models  # noqa: E402
from halpc.measure import netlab  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.host.run import spawn_stubs  # noqa: E402
from halpc.host.verify import random_inputs  # noqa: E402
from halpc_stub.host import HostSession  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402
from halpc_stub.session import make_session  # noqa: E402

DEVICE_PORT = 5900  # every device has its own namespace: no clash with anything on the machine


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in kB (the kernel's unit in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    done: int  # timed tasks finished when sampled
    seconds: float  # since the timed stream started
    rss_kb: dict[str, int]  # process name ("host", "dev-1", ...) -> VmRSS
    cpu_s: dict[str, float]  # process name -> CPU seconds used so far


@dataclass
class LoadResult:
    model: str
    size: int
    strategy: str
    devices: int
    in_flight: int
    tasks: int  # asked for (timed)
    warmup: int
    received: int = 0  # timed results yielded
    outputs_checked: int = 0  # outputs compared, warm-up included
    outputs_exact: int = 0
    out_of_order: int = 0  # results whose task number was not the one after the previous one
    lost: int = 0  # timed tasks never yielded
    duplicated: int = 0  # timed tasks yielded more than once
    workers_used: int = 0
    seconds: float = 0.0  # the timed stream, first task started to last result
    latencies_s: list[float] = field(default_factory=list)
    max_gap_s: float = 0.0  # longest wait between two consecutive results (a stall shows here)
    samples: list[Sample] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # tasks the host gave up (none expected)
    problems: list[str] = field(default_factory=list)  # the first few mismatches and the like
    stub_log_tail: dict[str, str] = field(default_factory=dict)  # warnings the stubs logged

    @property
    def throughput(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    @property
    def processes(self) -> list[str]:
        return list(self.samples[0].rss_kb) if self.samples else []

    def rss_start_kb(self, name: str) -> int:
        return self.samples[0].rss_kb[name]

    def rss_end_kb(self, name: str) -> int:
        return self.samples[-1].rss_kb[name]

    def growth_kb(self, name: str) -> int:
        return self.rss_end_kb(name) - self.rss_start_kb(name)

    def cpu_ms_per_task(self, name: str) -> float:
        done = self.samples[-1].done - self.samples[0].done
        return (self.samples[-1].cpu_s[name] - self.samples[0].cpu_s[name]) * 1e3 / done if done else 0.0

    @property
    def exact(self) -> bool:
        return self.outputs_checked > 0 and self.outputs_exact == self.outputs_checked

    @property
    def ok(self) -> bool:
        """Every functional check passed (memory is judged by the caller)."""
        return (self.exact and self.received == self.tasks and not self.lost and not self.duplicated
                and not self.out_of_order and self.workers_used == self.devices and not self.problems)

    def table(self) -> str:
        names = self.processes
        lines = ["  tasks   seconds  " + "".join(f"{n + ' MB':>11}" for n in names)]
        for s in self.samples:
            rss = "".join(f"{s.rss_kb[n] / 1024:11.1f}" for n in names)
            lines.append(f"{s.done:7d} {s.seconds:9.1f}  {rss}")
        return "\n".join(lines)

    def summary(self) -> str:
        lat = sorted(self.latencies_s)
        p50 = statistics.median(lat) * 1e3 if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else float("nan")
        rss = ", ".join(
            f"{n} {self.rss_start_kb(n) / 1024:.1f} -> {self.rss_end_kb(n) / 1024:.1f} MB "
            f"({self.growth_kb(n) / 1024:+.1f})" for n in self.processes
        )
        return (
            f"{self.received}/{self.tasks} tasks run ({self.warmup} warm-up before), "
            f"{self.outputs_exact}/{self.outputs_checked} outputs exact, lost {self.lost}, "
            f"duplicated {self.duplicated}, out of order {self.out_of_order}; "
            f"{self.throughput:.1f} tasks/s over {self.seconds:.1f} s, latency p50 {p50:.1f} ms "
            f"p99 {p99:.1f} ms, longest gap between results {self.max_gap_s * 1e3:.0f} ms; "
            f"faults {len(self.faults)}; RSS {rss}; CPU per task "
            + ", ".join(f"{n} {self.cpu_ms_per_task(n):.1f} ms" for n in self.processes)
        )


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _cluster(lab: netlab.NetLab, names: list[str], mbps: float, gmacs: float):
    text = f"[network]\nbandwidth_mbps = {mbps}\nlatency_ms = 0.2\n"
    host = f"{lab.host_ip}:{_free_port(lab.host_ip)}"
    text += f'[[device]]\nname = "host"\naddress = "{host}"\ngmacs = {gmacs}\nhost = true\n'
    for name in names:
        text += f'[[device]]\nname = "{name}"\naddress = "{lab.ip(name)}:{DEVICE_PORT}"\ngmacs = {gmacs}\n'
    return parse_cluster(text, source="load.toml")


def run_load(
    tasks: int = 2000,
    in_flight: int = 3,
    devices: int = 2,
    model: str = "mobilenet_v1_025",
    size: int = 128,
    strategy: str = "even",
    mbps: float = 100.0,
    gmacs: float = 8.0,
    pool: int = 8,
    warmup: int = 50,
    every: int = 250,
    seed: int = 0,
    workdir: str | Path | None = None,
    timeout_s: float = 30.0,
    progress: Callable[[str], None] | None = None,
    insecure: bool = False,
) -> LoadResult:
    """Compile `model` for host + `devices`, stream `warmup` then `tasks` tasks on a fresh NetLab
    and return what was checked and measured. Needs root (see `netlab.available`)."""
    why = netlab.available()
    if why:
        raise RuntimeError(f"no emulated cluster here: {why}")
    say = progress or (lambda _: None)
    result = LoadResult(model, size, strategy, devices, in_flight, tasks, warmup)
    names = [f"dev-{i}" for i in range(1, devices + 1)]
    with contextlib.ExitStack() as stack:
        tmp = Path(workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="halpc-load-")))
        lab = stack.enter_context(netlab.NetLab({n: mbps for n in names}))
        path = tmp / f"{model}-{size}.onnx"
        onnx.save(models.build(model, size, size, seed=1), str(path))
        bundle = tmp / "bundle"
        at = time.perf_counter()
        compile_bundle(path, _cluster(lab, names, mbps, gmacs), bundle, strategy, insecure=insecure)
        manifest = load_manifest(bundle)
        result.workers_used = sum(1 for d in manifest.workers if manifest.program(d))
        say(f"compiled {model} {size}x{size} ({strategy}) for host + {devices} "
            f"in {time.perf_counter() - at:.1f} s; "
            f"{result.workers_used} workers used")
        if result.workers_used != devices:
            result.problems.append(f"the {strategy} plan uses {result.workers_used} of {devices} devices: "
                                   "no load on the cluster (try --strategy even)")
            return result

        # The pool and its reference outputs, from the unsplit model, before any task runs.
        inputs = [random_inputs(manifest, 1000 + i) for i in range(pool)]
        reference = make_session(str(manifest.reference_model()), manifest.host.threads)
        names_out = manifest.outputs
        expected = [dict(zip(names_out, reference.run(names_out, x))) for x in inputs]
        del reference
        for i in range(pool):
            for j in range(i):
                if all(np.array_equal(expected[i][n], expected[j][n]) for n in names_out):
                    result.problems.append(f"inputs {i} and {j} of the pool give the same outputs")
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, pool, warmup + tasks)

        host = stack.enter_context(HostSession(bundle, timeout_s=timeout_s))
        stubs = stack.enter_context(spawn_stubs(bundle, manifest, lab.popen, stdout=subprocess.DEVNULL))
        host.connect(watch=stubs.check)
        pids = {"host": os.getpid(), **{n: stubs.procs[n].pid for n in names}}
        for n in names:  # `ip netns exec` and launch.sh exec the stub: its pid is the Popen's
            cmdline = Path(f"/proc/{pids[n]}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"halpc_stub.cli" not in cmdline:
                result.problems.append(f"pid {pids[n]} of {n} runs {cmdline[:80]!r}, not the stub")

        def check(k: int, outputs: dict[str, np.ndarray]) -> None:
            want = expected[picks[k]]
            for n in names_out:
                result.outputs_checked += 1
                got = outputs.get(n)
                if got is not None and got.shape == want[n].shape and np.array_equal(got, want[n]):
                    result.outputs_exact += 1
                elif len(result.problems) < 10:
                    result.problems.append(f"task {k} (input {picks[k]}): output {n} differs")

        def feed(start: int, count: int):
            for k in range(start, start + count):
                yield inputs[picks[k]]

        # Warm-up: every device opens its buffers on its first tasks; the memory baseline follows.
        first = host.next_task
        for r in host.stream(feed(0, warmup), in_flight=in_flight):
            check(r.task - first, r.outputs)
        base = host.next_task
        say(f"warm-up: {warmup} tasks")

        def sample(done: int, t0: float) -> None:
            stubs.check()
            rss = {n: rss_kb(p) for n, p in pids.items()}
            cpu = {n: cpu_s(p) for n, p in pids.items()}
            result.samples.append(Sample(done, time.perf_counter() - t0, rss, cpu))

        seen: collections.Counter[int] = collections.Counter()
        t0 = time.perf_counter()
        sample(0, t0)
        started = time.monotonic()
        last = time.perf_counter()
        expect = base
        try:
            for r in host.stream(feed(warmup, tasks), in_flight=in_flight):
                now = time.perf_counter()
                result.max_gap_s = max(result.max_gap_s, now - last)
                last = now
                result.received += 1
                seen[r.task] += 1
                if r.task != expect and len(result.problems) < 10:
                    result.problems.append(f"result {result.received}: task {r.task}, expected {expect}")
                result.out_of_order += r.task != expect
                expect = r.task + 1
                result.latencies_s.append(r.latency_s)
                k = warmup + r.task - base
                if 0 <= k < warmup + tasks:
                    check(k, r.outputs)
                elif len(result.problems) < 10:
                    result.problems.append(f"task {r.task} is none of this stream's")
                del r  # keep no outputs: the host's memory is the runtime's
                if result.received % every == 0:
                    sample(result.received, t0)
                    say(f"{result.received} tasks, {result.received / (time.perf_counter() - t0):.1f}/s, "
                        + ", ".join(f"{n} {kb / 1024:.1f} MB" for n, kb in result.samples[-1].rss_kb.items()))
        except Exception as exc:  # a stall (RunError) or a dead stub: report what came before
            result.problems.append(f"the stream stopped after {result.received} results: {exc}")
        result.seconds = time.monotonic() - started
        # A healthy cluster: a task given up here waited past its bound for no fault (a stall
        # of the machine); its output is still exact (recomputed on the host).
        result.faults = [f"task {f.task - base} waited {f.waited_s * 1e3:.0f} ms for {f.device} "
                         f"(bound {f.bound_s * 1e3:.0f} ms)" for f in host.faults if f.task >= base]
        if result.samples[-1].done != result.received:
            with contextlib.suppress(Exception):  # a stub that died has no memory to read
                sample(result.received, t0)
        wanted = set(range(base, base + tasks))
        result.lost = len(wanted - set(seen))
        result.duplicated = sum(c - 1 for t, c in seen.items() if c > 1)
        for n in names:
            warn = [line for line in stubs.log(n).splitlines() if "WARNING" in line or "rejected" in line]
            if warn:
                result.stub_log_tail[n] = "\n".join(warn[-5:])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="timed tasks (default 2000)")
    parser.add_argument("--in-flight", type=int, default=3, help="tasks at once (default 3)")
    parser.add_argument("--devices", type=int, default=2, help="devices besides the host (default 2)")
    parser.add_argument("--model", default="mobilenet_v1_025",
                        help=f"one of {', '.join(models.BUILDERS)} (default mobilenet_v1_025)")
    parser.add_argument("--size", type=int, default=128, help="input height and width (default 128)")
    parser.add_argument("--strategy", default="even", help="compile strategy (default even)")
    parser.add_argument("--mbps", type=float, default=100.0, help="link rate, Mbit/s (default 100)")
    parser.add_argument("--gmacs", type=float, default=8.0,
                        help="GMAC/s the cluster file gives every device, for the planner (default 8)")
    parser.add_argument("--pool", type=int, default=8, help="distinct inputs (default 8)")
    parser.add_argument("--warmup", type=int, default=50, help="tasks before the timed ones (default 50)")
    parser.add_argument("--every", type=int, default=250, help="RSS sample every N tasks (default 250)")
    parser.add_argument("--insecure", action="store_true", help="compile without CURVE keys (plaintext)")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON (tests/test_load.py reads it)")
    args = parser.parse_args(argv)
    why = netlab.available()
    if why:
        print(f"load.py needs the emulated cluster (run as root): {why}", file=sys.stderr)
        return 2
    at = time.perf_counter()
    load_before = os.getloadavg()
    result = run_load(args.tasks, args.in_flight, args.devices, args.model, args.size, args.strategy,
                      args.mbps, args.gmacs, args.pool, args.warmup, args.every,
                      progress=lambda line: print(line, flush=True), insecure=args.insecure)
    print(f"\n{args.model} {args.size}x{args.size}, {args.strategy}, host + {args.devices} devices at "
          f"{args.mbps:g} Mbit/s, {args.in_flight} in flight; VmRSS:")
    print(result.table())
    print(result.summary())
    for problem in result.problems:
        print(f"problem: {problem}")
    for device, lines in result.stub_log_tail.items():
        print(f"{device} logged:\n{lines}")
    load_after = os.getloadavg()
    print(f"machine load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(on {os.cpu_count()} cores; the second counts this run's processes)")
    print(f"total {time.perf_counter() - at:.1f} s; {'OK' if result.ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
