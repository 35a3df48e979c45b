"""`halpc run`: drive a bundle from the host, check its outputs, measure it against the plan.

The host side is `halpc_stub.host.HostSession`; this module adds what a user runs it for:
starting local stubs (`spawn_stubs`, for a cluster on 127.0.0.1 or the netns lab), timing the
unsplit model on the host for the speedup, bit-exact checks of every task, and the measured
timeline beside the cost model's.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halpc.host.adapt import Choice
from halpc.host.control import Controller
from halpc.errors import HalpcError
from halpc.progress import Progress, silent
from halpc.planner.predict import predict_bundle
from halpc.planner.cost import Event, Prediction
from halpc.host.verify import OutputCheck, compare_output
from halpc_stub import clock
from halpc_stub.host import Fault, HostSession, TaskResult
from halpc_stub.manifest import Manifest, load_manifest
from halpc_stub.session import bundle_nchwc, make_session

Popen = Callable[..., subprocess.Popen]


def local_popen(device: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(argv, **kwargs)


class Stubs:
    """Stub processes started by `spawn_stubs`; their stderr goes to files, never a full pipe."""

    def __init__(self, manifest: Manifest, popen: Popen, stdout: Any = None, args: tuple[str, ...] = ()) -> None:
        self.manifest, self.popen, self.stdout, self.args = manifest, popen, stdout, args
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Any] = {}

    def start(self, device: str) -> None:
        """Start (or, once it has exited, restart) the device's stub with its launch.sh."""
        if device not in self.logs:
            self.logs[device] = tempfile.TemporaryFile()
        env = {**os.environ, "HALPC_PYTHON": sys.executable}
        argv = [str(self.manifest.path(device, "launch.sh")), *self.args]
        self.procs[device] = self.popen(device, argv, stdout=self.stdout, stderr=self.logs[device], env=env)

    def log(self, device: str) -> str:
        self.logs[device].seek(0)
        return self.logs[device].read().decode(errors="replace")

    def check(self) -> None:
        """Raise, with the stub's last words, if any stub has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                last = self.log(name).strip().splitlines()
                raise HalpcError(f"the stub of {name} exited with status {proc.returncode}"
                                 + (f": {last[-1]}" if last else ""))


@contextlib.contextmanager
def spawn_stubs(bundle: str | Path, manifest: Manifest, popen: Popen = local_popen,
                stdout: Any = None, args: tuple[str, ...] = (), devices: list[str] | None = None) -> Iterator[Stubs]:
    """Start every device's stub (or those of `devices`) with its own launch.sh, as on a board;
    stop them all on exit. (Of a source's view of a bundle of several sources: the helpers of its
    plans, not the other sources, which are hosts.)"""
    stubs = Stubs(manifest, popen, stdout, args)
    try:
        for device in manifest.workers if devices is None else devices:
            stubs.start(device)
        yield stubs
    finally:
        for proc in stubs.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in stubs.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in stubs.logs.values():
            log.close()


@dataclass
class RunSummary:
    results: list[TaskResult]
    predicted: Prediction
    started: float
    ended: float
    checks: list[OutputCheck] = field(default_factory=list)
    local_s: list[float] = field(default_factory=list)  # the unsplit model on the host, per input
    # With a policy: per task, what it chose and the link estimate it chose at (task order).
    decisions: list[tuple[Choice, dict[str, float]]] = field(default_factory=list)
    deadline_s: float | None = None
    faults: list[Fault] = field(default_factory=list)  # tasks the host gave up on a device, warm-up included

    @property
    def reliability(self) -> float | None:
        """The share of tasks that met the deadline (None without one)."""
        if self.deadline_s is None:
            return None
        return sum(x <= self.deadline_s for x in self.latencies_s) / len(self.results)

    @property
    def latencies_s(self) -> list[float]:
        return [r.latency_s for r in self.results]

    @property
    def latency_s(self) -> float:
        return statistics.median(self.latencies_s)

    @property
    def throughput(self) -> float:
        return len(self.results) / (self.ended - self.started)

    @property
    def local_latency_s(self) -> float | None:
        return statistics.median(self.local_s) if self.local_s else None

    @property
    def speedup(self) -> float | None:
        """Median unsplit latency over median split latency (None without --check)."""
        local = self.local_latency_s
        return None if local is None else local / self.latency_s

    @property
    def throughput_speedup(self) -> float | None:
        """Tasks per second split against the unsplit model's one task per its latency."""
        local = self.local_latency_s
        return None if local is None else local * self.throughput

    @property
    def exact(self) -> bool:
        """Every output checked is bit-exact, and there were checks: a run without `check` (or
        one that compared nothing) is not exact."""
        return bool(self.checks) and all(c.exact for c in self.checks)

    def median_task(self) -> int:
        """The task whose latency is the median one (the lower middle of an even count)."""
        order = sorted(range(len(self.results)), key=lambda i: (self.results[i].latency_s, i))
        return order[(len(order) - 1) // 2]

    def measured(self, task: int = 0) -> Prediction:
        """One task's measured timeline, in the cost model's terms (seconds from its start)."""
        result = self.results[task]
        events = tuple(
            Event(e["device"], e["kind"], e["start"] - result.start, e["end"] - result.start,
                  e["label"], e["peer"])
            for e in result.events
        )
        end = max([result.latency_s] + [e.end for e in events])
        return Prediction(result.latency_s, end, events)

    def timed_task(self, fault: Fault) -> int | None:
        """The number (from 0) of the timed task `fault` happened in; None in the warm-up."""
        number = fault.task - self.results[0].task
        return number if number >= 0 else None

    def to_json(self) -> dict[str, Any]:
        origin = self.started
        return {
            "started": self.started,  # epoch seconds: runs of several sources can be lined up
            "ended": self.ended,
            "latency_ms": self.latency_s * 1e3,
            "latency_ms_per_task": [round(x * 1e3, 3) for x in self.latencies_s],
            "throughput_per_s": self.throughput,
            "predicted_latency_ms": self.predicted.latency_s * 1e3,
            "local_latency_ms": None if self.local_latency_s is None else self.local_latency_s * 1e3,
            "speedup": self.speedup,
            "throughput_speedup": self.throughput_speedup,
            "exact": self.exact if self.checks else None,
            "deadline_ms": None if self.deadline_s is None else self.deadline_s * 1e3,
            "reliability": self.reliability,
            "tasks": [
                {"task": i, "plan": r.plan, "latency_ms": round(r.latency_s * 1e3, 3),
                 **({"fallback": r.fallback, "unsplit": r.unsplit} if r.fallback else {}),
                 **({"variant": d[0].variant, "accuracy": d[0].accuracy,
                     # None: every plan used a device out of use (see control.Controller)
                     "predicted_ms": round(d[0].predicted_s * 1e3, 3) if math.isfinite(d[0].predicted_s) else None,
                     "reason": d[0].reason,
                     "estimate_mbps": {k: round(v, 2) for k, v in d[1].items()}} if d else {})}
                for i, (r, d) in enumerate(zip(self.results, self.decisions or [None] * len(self.results)))
            ],
            # A fault in a warm-up task (before the first timed one) has no timed task's number.
            "faults": [{"task": self.timed_task(f), "during": "run" if self.timed_task(f) is not None else "warm-up",
                        "device": f.device, "noticed_ms": round(f.waited_s * 1e3, 3),
                        "bound_ms": round(f.bound_s * 1e3, 3)}
                       for f in self.faults],
            "timeline": [
                {"task": i, "device": e["device"], "kind": e["kind"],
                 "start_ms": round((e["start"] - origin) * 1e3, 3),
                 "end_ms": round((e["end"] - origin) * 1e3, 3), "label": e["label"], "peer": e["peer"]}
                for i, r in enumerate(self.results) for e in r.events
            ],
        }


def run(
    bundle: str | Path,
    inputs: list[dict[str, np.ndarray]],
    in_flight: int = 2,
    check: bool = False,
    spawn: Popen | None = None,
    timeout_s: float = 30.0,
    bind: str | None = None,
    stub_stdout: Any = None,
    warmup: int = 1,
    policy: str | None = None,
    deadline_s: float | None = None,
    period_s: float | None = None,
    on_start: Callable[[], None] | None = None,
    source: str | None = None,
    progress: Progress = silent,
    allow_inexact: bool = False,
    require_all: bool = False,
) -> RunSummary:
    """Run one task per input, after `warmup` untimed tasks of every plan; `check` also runs
    the unsplit model(s) on the host and compares. Tasks are numbered from 0 in `results`
    order. With a `policy` (`adapt.POLICIES`) a `Controller` picks each task's plan; with
    `period_s` task k starts no earlier than k periods after the first (frames from a
    camera). `on_start` is called just before the first timed task. In a bundle of several
    sources the host runs as `source`, with that source's plans. A device that has not answered
    after a short while is left out until it answers (HostSession.connect), unless
    `require_all`; stubs this run spawns itself get the whole `timeout_s` to start."""
    progress("loading the host's models")
    host = HostSession(bundle, bind=bind, timeout_s=timeout_s, source=source, allow_inexact=allow_inexact,
                       require_all=require_all)
    with host, (spawn_stubs(bundle, host.manifest, spawn, stub_stdout, ("--allow-inexact",) if allow_inexact else ())
                if spawn
                else contextlib.nullcontext()) as stubs:
        controller = Controller(host, policy, deadline_s) if policy else None  # checks the policy fits
        progress("waiting for the devices" + (" (starting their stubs)" if spawn else ""))
        host.connect(watch=stubs.check if stubs else None, start_s=timeout_s if spawn else None)
        # Timed only once every stub is up: loading its sessions would slow the unsplit runs.
        local = _reference_times(host.manifest, inputs) if check else []
        plans = [p.id for p in host.manifest.plans]
        for _ in range(warmup):  # every device opens its sessions' buffers on its first task
            for plan in plans:
                progress(f"warming up plan {plan}")
                list(host.stream([inputs[0]], in_flight=1, choose=lambda _, plan=plan: plan))
        first = host.next_task
        if on_start:
            on_start()
        started = clock.now()
        results = []
        for result in host.stream(inputs, in_flight=in_flight, choose=controller.choose if controller else None,
                                  period_s=period_s):
            if controller:
                controller.finished()
            results.append(result)
            progress(f"task {len(results)}/{len(inputs)}: {result.latency_s * 1e3:.1f} ms")
        ended = max(r.end for r in results)
    summary = RunSummary(results, predict_bundle(host.manifest.data), started, ended, local_s=local,
                         deadline_s=deadline_s, faults=list(host.faults))
    if controller:
        summary.decisions = [controller.decisions[first + i] for i in range(len(results))]
    if check:
        progress("checking the outputs against the unsplit model")
        summary.checks = _check(host.manifest, inputs, results)
    return summary


def run_sources(bundle: str | Path, tasks: int, popen: Popen = local_popen, *, check: bool = True,
                in_flight: int = 1, warmup: int = 1, timeout_s: float = 30.0,
                progress: Progress = silent) -> dict[str, dict[str, Any]]:
    """Every source of a bundle of several sources at once, on this machine (or the netns lab,
    by `popen`): the helpers' stubs, and per source a `halpc run --source NAME --json` process
    streaming `tasks` frames at its rate, the first timed frames of all starting together (after
    every source has connected and warmed up). Returns each source's `RunSummary.to_json()`."""
    manifest = load_manifest(bundle)
    if not manifest.sources:
        raise HalpcError(f"{bundle}: serves one host, not several sources; run it without --source")
    argv = [sys.executable, "-m", "halpc.cli", "run", str(bundle), "--json", "--tasks", str(tasks),
            "--in-flight", str(in_flight), "--warmup", str(warmup), "--timeout", str(timeout_s)]
    barrier = tempfile.mkdtemp(prefix="halpc-sources-")  # the sources' first timed frames start together
    with spawn_stubs(bundle, manifest, popen, subprocess.DEVNULL) as stubs:
        procs = {s: popen(s, [*argv, "--source", s, "--barrier", f"{barrier},{len(manifest.sources)}",
                              *(["--check"] if check else [])],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in manifest.sources}
        summaries = {}
        try:
            for source, proc in procs.items():
                progress(f"running {len(procs)} sources: waiting for {source}")
                stdout, stderr = proc.communicate()
                stubs.check()
                if proc.returncode not in (0, 1) or not stdout.strip():  # 1: ran, outputs not exact
                    last = (stderr.strip().splitlines() or ["no output"])[-1]
                    raise HalpcError(f"source {source}: halpc run failed ({last})")
                summaries[source] = json.loads(stdout)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(barrier, ignore_errors=True)
    return summaries


def meet(folder: str, expected: int, name: str, timeout_s: float = 120.0) -> None:
    """Say `name` is ready in the barrier folder, then wait until `expected` runs are (at most
    `timeout_s`)."""
    try:
        Path(folder, name).touch()
    except OSError as exc:
        raise HalpcError(f"{folder}: cannot join the barrier there ({exc.strerror or exc}); give an existing "
                         "folder", option="barrier") from None
    deadline = time.monotonic() + timeout_s
    while len(list(Path(folder).iterdir())) < expected and time.monotonic() < deadline:
        time.sleep(0.005)


def _reference_times(manifest: Manifest, inputs: list[dict[str, np.ndarray]]) -> list[float]:
    """The default plan's unsplit model's time per input on the host."""
    session = make_session(str(manifest.reference_model()), manifest.host.threads, nchwc=bundle_nchwc(manifest))
    names = manifest.outputs
    session.run(names, inputs[0])  # warm-up, as the stubs' sessions are warm after one task
    seconds = []
    for arrays in inputs:
        at = time.perf_counter()
        session.run(names, arrays)
        seconds.append(time.perf_counter() - at)
    return seconds


def _check(manifest: Manifest, inputs: list[dict[str, np.ndarray]], results: list[TaskResult]) -> list[OutputCheck]:
    """Every task's outputs against the unsplit model of the variant its plan ran (run once per
    variant and input: a stream often repeats its inputs)."""
    sessions: dict[Path, Any] = {}
    expected: dict[tuple[Path, int], dict[str, np.ndarray]] = {}
    checks = []
    for i, (arrays, result) in enumerate(zip(inputs, results)):
        plan = manifest.plan(result.plan)
        path = plan.reference_model()
        if path not in sessions:
            sessions[path] = make_session(str(path), manifest.host.threads, nchwc=bundle_nchwc(manifest))
        key = (path, id(arrays))
        if key not in expected:
            expected[key] = dict(zip(plan.outputs, sessions[path].run(plan.outputs, arrays)))
        for name, array in expected[key].items():
            checks.append(compare_output(f"task {i}", name, array, result.outputs[name]))
    return checks
