"""Replay a bandwidth trace through the cost model: how often each policy meets its deadline.

Frames arrive every `period_s` (a camera); the host runs one task at a time, so a task starts
when its frame is released or when the one before it ends, whichever is later. Each task runs
at the trace's true rates at its start, and takes what the predictor says for those rates. The
policy chooses from the host's estimate, which learns the true rates only after each task (from
that task's own transfers): it is one task behind, as the real host is. Replays are
deterministic: the same trace, predictor and policy give the same tasks.

The HTML report (`write_simulation_report`) is one self-contained page like `halpc.html`'s: the
summary table, reliability against deadline per policy, the trace, and per policy a strip of
which variant each task ran. The geometry is done here; the template only prints it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from halpc.host.adapt import (LOCAL, POLICIES, Bandwidths, Choice, LinkEstimator, PlanOption, Predictor, choose,
                         cached, default_option)
from halpc.host.control import PROBE_INTERVAL_S
from halpc.errors import HalpcError
from halpc.whatif.bandwidth_trace import Trace, load_trace

@dataclass
class TaskRecord:
    """One task of a replay: when it ran, at which rates, what was chosen and how long it took."""

    index: int
    release_s: float  # its frame arrived
    start_s: float  # the host was free (>= release_s)
    rates: dict[str, float]  # true link rates at start_s
    estimate: dict[str, float]  # the host's belief when it chose
    choice: Choice
    latency_s: float  # predicted at the true rates
    met: bool  # latency_s <= the deadline

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s

    @property
    def wait_s(self) -> float:
        """Time the frame queued behind earlier tasks (not counted in `latency_s`)."""
        return self.start_s - self.release_s

    @property
    def response_s(self) -> float:
        """From the frame's release to the task's end: what a viewer of the stream waits."""
        return self.end_s - self.release_s


@dataclass
class PolicyResult:
    """A replay of one policy: every task, and the numbers the report shows."""

    policy: str
    deadline_s: float
    tasks: list[TaskRecord]
    period_s: float | None = None

    @property
    def latencies_s(self) -> np.ndarray:
        return np.array([t.latency_s for t in self.tasks], dtype=float)

    @property
    def reliability(self) -> float:
        """Share of tasks whose latency is within the deadline (0..1; nan without tasks)."""
        if not self.tasks:
            return math.nan
        return sum(t.latency_s <= self.deadline_s for t in self.tasks) / len(self.tasks)

    @property
    def on_time(self) -> float:
        """Share of tasks done within the deadline of their frame's release, queueing included.

        `reliability` counts a task by its own latency only; a policy that runs slow plans also
        delays the tasks behind it, which this share shows and `reliability` does not.
        """
        if not self.tasks:
            return math.nan
        return sum(t.response_s <= self.deadline_s for t in self.tasks) / len(self.tasks)

    @property
    def percentiles(self) -> dict[str, float]:
        """p50, p95 and p99 of the latency, seconds."""
        lat = self.latencies_s
        if not len(lat):
            return {k: math.nan for k in ("p50", "p95", "p99")}
        return {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)}

    @property
    def mean_accuracy(self) -> float | None:
        """Mean top-1 % of the variants run, over tasks whose variant's accuracy is known."""
        known = [t.choice.accuracy for t in self.tasks if t.choice.accuracy is not None]
        return sum(known) / len(known) if known else None

    def plans_used(self) -> list[tuple[str, int]]:
        """(plan id, tasks) most used first; equal counts in order of first use."""
        return Counter(t.choice.plan for t in self.tasks).most_common()


def frames(trace: Trace, period_s: float) -> int:
    """How many frames are released (every `period_s` from 0) before the trace ends."""
    return max(math.ceil(trace.duration / period_s - 1e-9), 0)


def replay(options: Sequence[PlanOption], predict: Predictor, trace: Trace, devices: Sequence[str],
           deadline_s: float, policy: str, period_s: float | None = None, tasks: int | None = None,
           initial: Bandwidths | None = None, alpha: float = 0.5) -> PolicyResult:
    """Run `policy` over `trace` (see module): task k released at k * period, one at a time."""
    if not deadline_s > 0:
        raise HalpcError(f"deadline {deadline_s} s must be positive")
    period = deadline_s if period_s is None else period_s
    if not period > 0:
        raise HalpcError(f"frame period {period} s must be positive")
    n = frames(trace, period) if tasks is None else tasks
    if n <= 0:
        raise HalpcError(
            f"{trace.source}: no frame is released in {trace.duration:g} s; "
            "give a longer trace or a number of tasks"
        )
    estimator = LinkEstimator(trace.at(0.0, devices) if initial is None else initial, alpha)
    records: list[TaskRecord] = []
    free = 0.0
    probed = -math.inf
    for k in range(n):
        release = k * period
        start = max(release, free)
        estimate = estimator.estimate
        choice = choose(policy, options, predict, estimate, deadline_s)
        rates = trace.at(start, devices)
        latency = float(predict(choice.plan, rates))
        records.append(TaskRecord(k, release, start, rates, estimate, choice, latency, latency <= deadline_s))
        free = start + latency
        if start - probed >= PROBE_INTERVAL_S:  # the host probes after a task, this often at most:
            probed = start                      # what it learns is used from the next task on
            for device, mbps in rates.items():
                estimator.observe(device, mbps)
    return PolicyResult(policy, deadline_s, records, period)


def has_local(options: Sequence[PlanOption]) -> bool:
    """Whether standalone can run: a local plan of the default variant."""
    variant = default_option(options).variant
    return any(o.strategy == LOCAL and o.variant == variant for o in options)


def replay_all(options: Sequence[PlanOption], predict: Predictor, trace: Trace, devices: Sequence[str],
               deadline_s: float, period_s: float | None = None, tasks: int | None = None,
               initial: Bandwidths | None = None, alpha: float = 0.5,
               policies: Sequence[str] = POLICIES, notes: list[str] | None = None) -> dict[str, PolicyResult]:
    """`replay` for each policy, in `policies` order. Standalone is left out when the bundle has
    no local plan, with a line in `notes` (when given) saying so."""
    results = {}
    for policy in policies:
        if policy == "standalone" and not has_local(options):
            if notes is not None:
                notes.append("standalone skipped: the bundle has no local plan of the default variant")
            continue
        results[policy] = replay(options, predict, trace, devices, deadline_s, policy, period_s, tasks,
                                 initial, alpha)
    return results


def reliability_curve(options: Sequence[PlanOption], predict: Predictor, trace: Trace,
                      devices: Sequence[str], deadlines: Sequence[float], policy: str,
                      period_s: float | None = None, tasks: int | None = None,
                      initial: Bandwidths | None = None, alpha: float = 0.5) -> list[tuple[float, float]]:
    """(deadline, reliability) for each deadline. Select chooses by the deadline, so each point is
    a replay of its own; frames come every deadline unless `period_s` is given."""
    return [
        (d, replay(options, predict, trace, devices, d, policy, period_s, tasks, initial, alpha).reliability)
        for d in deadlines
    ]


def deadline_sweep(deadline_s: float, points: int = 15) -> list[float]:
    """Deadlines for the reliability curve: a quarter of `deadline_s` to twice it, and itself."""
    return sorted({*(float(x) for x in np.linspace(0.25 * deadline_s, 2.0 * deadline_s, points)), deadline_s})


def simulate_bundle(manifest, trace_spec: str, deadline_s: float, period_s: float | None = None,
                    tasks: int | None = None) -> tuple[Trace, dict[str, PolicyResult],
                                                         dict[str, list[tuple[float, float]]], list[str]]:
    """`halpc simulate`: every policy over the trace, with the bundle's own cost model; and
    each policy's reliability over a sweep of deadlines. Returns the trace, the results, the
    curves and notes."""
    from halpc.host.control import bundle_predictor, plan_options

    devices = [d.name for d in manifest.devices if not d.host]
    trace = load_trace(trace_spec, devices)
    options = plan_options(manifest)
    predict = cached(bundle_predictor(manifest))
    notes: list[str] = []
    results = replay_all(options, predict, trace, devices, deadline_s, period_s, tasks, notes=notes)
    curves = {
        policy: reliability_curve(options, predict, trace, devices, deadline_sweep(deadline_s), policy,
                                  period_s, tasks)
        for policy in results
    }
    return trace, results, curves, notes


def replay_json(results: dict[str, PolicyResult], curves: dict[str, list[tuple[float, float]]]) -> dict:
    """`halpc simulate --json`: per policy its reliability, latency percentiles (ms), accuracy,
    plans used and reliability curve ([deadline ms, reliability])."""
    return {
        policy: {"reliability": r.reliability, "on_time": r.on_time, "tasks": len(r.tasks),
                 "percentiles_ms": {k: v * 1e3 for k, v in r.percentiles.items()},
                 "mean_accuracy": r.mean_accuracy, "plans": dict(r.plans_used()),
                 "curve": [[d * 1e3, rel] for d, rel in curves[policy]]}
        for policy, r in results.items()
    }
