"""`halpc simulate --report`: one self-contained page of a trace replayed through the policies.

The summary table, reliability against deadline per policy, the trace, and per policy a strip of
which variant each task ran. The geometry is done here; the template only prints it.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from halpc.errors import HalpcError
from halpc.files import write_atomic
from halpc.present.charts import PALETTE, nice_ticks
from halpc.present.tables import plans_used_text
from halpc.templating import templates
from halpc.whatif.replay import PolicyResult, TaskRecord
from halpc.whatif.bandwidth_trace import Trace

TEMPLATE = "simulate_report.html.j2"


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
            "accuracy": r.mean_accuracy, "plans": plans_used_text(r),
            "colour": _policy_colour(policy, len(rows)),
        })
    return rows


def render_simulation_report(title: str, results: dict[str, PolicyResult],
                             curves: dict[str, list[tuple[float, float]]], trace: Trace,
                             devices: Sequence[str], deadline_s: float) -> str:
    """The page, as a string (see `write_simulation_report`)."""
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
    write_atomic(path, render_simulation_report(title, results, curves, trace, devices, deadline_s), "the report",
                 option="report", make_folder=True)


