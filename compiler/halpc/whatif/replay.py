"""Replay a bandwidth trace through the cost model: how often each policy meets its deadline.

Frames arrive every `period_s` (a camera); the host runs one task at a time, so a task starts
when its frame is released or when the one before it ends, whichever is later. Each task runs
at the trace's true rates at its start, and takes what the predictor says for those rates. The
policy chooses from the host's estimate, which learns the true rates only after each task (from
that task's own transfers): it is one task behind, as the real host is. Replays are
deterministic: the same trace, predictor and policy give the same tasks.

The HTML report (`write_simulation_report`) is one self-contained page like `halpc.present.reports`'s: the
summary table, reliability against deadline per policy, the trace, and per policy a strip of
which variant each task ran. The geometry is done here; the template only prints it.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from halpc.host.adapt import (LOCAL, POLICIES, Bandwidths, Choice, LinkEstimator, PlanOption, Predictor, choose,
                         cached, default_option)
from halpc.host.control import PROBE_INTERVAL_S
from halpc.errors import HalpcError
from halpc.whatif.trace import Trace, load_trace

TEMPLATE = "simulate_report.html.j2"


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


def _plans_text(result: PolicyResult) -> str:
    return ", ".join(f"{plan} ×{n}" for plan, n in result.plans_used())


def summary_table(results: dict[str, PolicyResult]) -> str:
    """One line per policy: tasks, reliability, on-time share, latency percentiles, accuracy, plans used."""
    from halpc.present.tables import table

    rows = []
    for policy, r in results.items():
        p = r.percentiles
        acc = r.mean_accuracy
        rows.append((
            policy, len(r.tasks), f"{r.reliability * 100:.1f}", f"{r.on_time * 100:.1f}",
            *(f"{p[k] * 1e3:.1f}" for k in ("p50", "p95", "p99")),
            "-" if acc is None else f"{acc:.2f}", _plans_text(r),
        ))
    header = ("policy", "tasks", "reliability %", "on time %", "p50 ms", "p95 ms", "p99 ms", "accuracy %",
              "plans used")
    return table(header, rows, right={1, 2, 3, 4, 5, 6, 7})


# -- the HTML report -------------------------------------------------------------------------------

# Geometry, px. Every chart has its plot LEFT px from the SVG's edge, so time charts line up.
LEFT = 84.0
PLOT_W = 900.0
RIGHT = 150.0  # legend / labels right of the plot
TOP = 12.0
BOTTOM = 34.0  # ticks and the axis title
CURVE_H = 260.0
TRACE_H = 180.0
STRIP_H = 16.0
MISS_H = 5.0
MIN_BAR = 0.6  # px, so that very short tasks still show
MAX_TASKS = 2000  # per policy; above this, close bars of one variant and outcome are merged
MERGE_PX = 1.0
ROW_H = STRIP_H + MISS_H + 9.0  # one policy's strip, its miss marks and a gap
POLICY_COLOURS = {"standalone": "#6b7580", "fixed": "#e07b24", "adaptive": "#2f6fbf", "select": "#2e7d32"}
PALETTE = ("#2f6fbf", "#e07b24", "#2e7d32", "#6a3d9a", "#c62828", "#00838f", "#8d6e63", "#ad1457")


def nice_ticks(hi: float, width_px: float, target: int = 8) -> list[tuple[float, str]]:
    """(x px, label) of round ticks from 0 to `hi`: steps of 1, 2 or 5 times a power of 10."""
    if not hi > 0:
        return [(0.0, "0")]
    raw = hi / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    ticks, n = [], 0
    while n * step <= hi * (1 + 1e-9):
        ticks.append((round(n * step / hi * width_px, 2), f"{n * step:.{decimals}f}"))
        n += 1
    return ticks


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    points: str  # SVG polyline points, "x,y x,y ..."
    dots: list[tuple[float, float, str]]  # x, y, title
    legend_y: float


def curve_chart(curves: dict[str, list[tuple[float, float]]], deadline_s: float) -> dict:
    """Reliability (0-100 %, y) against deadline (ms, x from 0), one line per policy."""
    top_ms = max([d for c in curves.values() for d, _ in c] + [deadline_s]) * 1e3 * 1.02

    def x(d_s: float) -> float:
        return round(d_s * 1e3 / top_ms * PLOT_W, 2)

    def y(rel: float) -> float:
        return round((1 - rel) * CURVE_H, 2)

    lines = []
    for i, (policy, curve) in enumerate(curves.items()):
        pts = [(x(d), y(r), f"{policy}: {r * 100:.1f}% within {d * 1e3:.1f} ms") for d, r in curve if not math.isnan(r)]
        lines.append(Line(policy, _policy_colour(policy, i), " ".join(f"{a},{b}" for a, b, _ in pts),
                          pts, 10.0 + 18.0 * i))
    return {
        "width": LEFT + PLOT_W + RIGHT, "height": TOP + CURVE_H + BOTTOM, "plot_h": CURVE_H,
        "lines": lines, "xticks": nice_ticks(top_ms, PLOT_W),
        "yticks": [(y(v / 100), f"{v}%") for v in (0, 25, 50, 75, 100)],
        "deadline_x": x(deadline_s), "deadline_ms": deadline_s * 1e3,
    }


def _policy_colour(policy: str, i: int) -> str:
    return POLICY_COLOURS.get(policy, PALETTE[i % len(PALETTE)])


def _time_scale(trace: Trace, results: dict[str, PolicyResult]) -> float:
    """Seconds the time charts span: the trace's (an overloaded policy's backlog may run on past
    its end, at its last rates; drawing that would squeeze the trace, so the strips say how many)."""
    if trace.duration > 0:
        return trace.duration
    return max([t.end_s for r in results.values() for t in r.tasks] + [1.0])


def trace_chart(trace: Trace, devices: Sequence[str], scale_s: float) -> dict:
    """Step lines of each link's rate over time; links sharing one column share one line."""
    columns: dict[str, list[str]] = {}
    for d in devices or list(trace.rates):  # no devices: draw the trace's own columns
        columns.setdefault(d if d in trace.rates else "*", []).append(d)
    top = max(max(trace.column(ds[0])) for ds in columns.values()) * 1.1

    def x(t: float) -> float:
        return round(min(t, scale_s) / scale_s * PLOT_W, 2)

    def y(v: float) -> float:
        return round((1 - v / top) * TRACE_H, 2)

    lines = []
    for i, (column, names) in enumerate(columns.items()):
        values = trace.column(names[0])
        ends = list(trace.times[1:]) + [scale_s]
        pts = []
        for t0, t1, v in zip(trace.times, ends, values):
            pts += [(x(t0), y(v)), (x(t1), y(v))]
        name = "every link" if column == "*" and (len(names) > 1 or names == ["*"]) else ", ".join(names)
        lines.append(Line(name, PALETTE[i % len(PALETTE)], " ".join(f"{a},{b}" for a, b in pts), [],
                          10.0 + 18.0 * i))
    return {
        "width": LEFT + PLOT_W + RIGHT, "height": TOP + TRACE_H + BOTTOM, "plot_h": TRACE_H,
        "lines": lines, "xticks": nice_ticks(scale_s, PLOT_W),
        "yticks": [(round(TRACE_H - px, 2), label) for px, label in nice_ticks(top, TRACE_H, 4)],
        "end_x": x(trace.duration),
    }


def _variants(results: dict[str, PolicyResult]) -> list[dict]:
    """Every variant any task ran, most accurate first, with its colour."""
    seen: dict[str, float | None] = {}
    for r in results.values():
        for t in r.tasks:
            seen.setdefault(t.choice.variant, t.choice.accuracy)
    order = sorted(seen, key=lambda v: (seen[v] is None, -(seen[v] or 0.0), v))
    return [{"name": v, "accuracy": seen[v], "colour": PALETTE[i % len(PALETTE)]} for i, v in enumerate(order)]


def strips(results: dict[str, PolicyResult], colours: dict[str, str], scale_s: float,
           max_tasks: int = MAX_TASKS, merge_px: float = MERGE_PX) -> list[dict]:
    """Per policy, one bar per task from its start for its latency, coloured by variant, and a red
    mark under each that missed; tasks that start after `scale_s` are counted, not drawn. Above `max_tasks` tasks a policy's consecutive tasks of one
    variant and one outcome closer than `merge_px` are drawn as one bar, to keep the page small."""
    px = PLOT_W / scale_s
    out = []
    for policy, r in results.items():
        runs: list[list[TaskRecord]] = []
        merge = len(r.tasks) > max_tasks
        shown = [t for t in r.tasks if t.start_s < scale_s]
        for t in shown:
            last = runs[-1][-1] if runs else None
            if (merge and last is not None and (last.choice.variant, last.met) == (t.choice.variant, t.met)
                    and (t.start_s - last.end_s) * px < merge_px):
                runs[-1].append(t)
            else:
                runs.append([t])
        bars = []
        for run in runs:
            first, last = run[0], run[-1]
            x0 = first.start_s * px
            x1 = min(last.end_s, scale_s) * px
            bars.append({
                "x": round(x0, 2), "width": round(max(x1 - x0, MIN_BAR), 2),
                "colour": colours[first.choice.variant], "met": first.met, "title": _bar_title(run),
            })
        out.append({"policy": policy, "y": len(out) * ROW_H, "bars": bars, "merged": merge,
                    "misses": sum(not t.met for t in r.tasks), "tasks": len(r.tasks),
                    "after_end": len(r.tasks) - len(shown)})
    return out


def _bar_title(run: list[TaskRecord]) -> str:
    t = run[0]
    status = "met" if t.met else "MISSED"
    if len(run) == 1:
        return (f"task {t.index} at {t.start_s:.2f} s: {t.choice.variant} plan {t.choice.plan}, "
                f"{t.latency_s * 1e3:.1f} ms ({status}); {t.choice.reason}")
    plans = ", ".join(f"{p} ×{n}" for p, n in Counter(x.choice.plan for x in run).most_common())
    return (f"tasks {t.index}–{run[-1].index}, {t.start_s:.2f}–{run[-1].end_s:.2f} s: {t.choice.variant} "
            f"({plans}), all {status} (merged: closer than {MERGE_PX:g} px)")


def _summary_rows(results: dict[str, PolicyResult]) -> list[dict]:
    rows = []
    for policy, r in results.items():
        p = r.percentiles
        rows.append({
            "policy": policy, "tasks": len(r.tasks), "reliability": r.reliability * 100, "on_time": r.on_time * 100,
            "p50": p["p50"] * 1e3, "p95": p["p95"] * 1e3, "p99": p["p99"] * 1e3,
            "accuracy": r.mean_accuracy, "plans": _plans_text(r),
            "colour": _policy_colour(policy, len(rows)),
        })
    return rows


def render_simulation_report(title: str, results: dict[str, PolicyResult],
                             curves: dict[str, list[tuple[float, float]]], trace: Trace,
                             devices: Sequence[str], deadline_s: float) -> str:
    """The page, as a string (see `write_simulation_report`)."""
    from halpc.emit.bundle import templates

    if not results:
        raise HalpcError("no policy was replayed: nothing to report")
    scale_s = _time_scale(trace, results)
    variants = _variants(results)
    colours = {v["name"]: v["colour"] for v in variants}
    periods = {r.period_s for r in results.values() if r.period_s is not None}
    context = {
        "title": title,
        "deadline_ms": deadline_s * 1e3,
        "period_ms": periods.pop() * 1e3 if len(periods) == 1 else None,
        "trace_source": trace.source,
        "duration_s": trace.duration,
        "devices": list(devices),
        "summary": _summary_rows(results),
        "curve": curve_chart(curves, deadline_s) if curves else None,
        "trace": trace_chart(trace, devices, scale_s),
        "variants": variants,
        "strips": strips(results, colours, scale_s),
        "strip_ticks": nice_ticks(scale_s, PLOT_W),
        "geo": {"left": LEFT, "plot": PLOT_W, "top": TOP, "strip_h": STRIP_H, "miss_h": MISS_H,
                "row": ROW_H, "width": LEFT + PLOT_W + RIGHT,
                "strips_h": len(results) * ROW_H, "strips_height": TOP + len(results) * ROW_H + BOTTOM},
    }
    return templates().get_template(TEMPLATE).render(context)


def write_simulation_report(path: str | os.PathLike, title: str, results: dict[str, PolicyResult],
                            curves: dict[str, list[tuple[float, float]]], trace: Trace,
                            devices: Sequence[str], deadline_s: float) -> None:
    """Write the report to `path` atomically (a temporary file beside it, then os.replace)."""
    from halpc.present.reports import _write_atomic

    _write_atomic(path, render_simulation_report(title, results, curves, trace, devices, deadline_s))


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
