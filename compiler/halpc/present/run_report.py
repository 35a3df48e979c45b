"""`halpc run --report`: the measured timeline of the median task beside the cost model's."""
from __future__ import annotations

import os
from dataclasses import replace

from halpc.errors import HalpcError
from halpc.files import write_atomic
from halpc.planner.predict import bundle_cluster
from halpc.present.charts import LABEL_WIDTH, MAX_EVENTS, PLOT_WIDTH, ROW_HEIGHT, TOP, make_chart, time_ticks
from halpc.present.plan_report import links_lines
from halpc.templating import templates

RUN_TEMPLATE = "run_report.html.j2"
_KINDS = ("compute", "send", "wait")


def _measured_events(prediction, devices: list[str]):
    """The measured events drawable on the chart: known kinds, no negative times (clock offsets
    between devices are estimates), a "?" for a peer nobody named; unknown devices get a row."""
    events = []
    for e in prediction.events:
        if e.kind not in _KINDS:
            continue
        start = max(e.start, 0.0)
        peer = e.peer if e.peer is not None or e.kind == "compute" else "?"
        events.append(replace(e, start=start, end=max(e.end, start), peer=peer))
        if e.device not in devices:
            devices.append(e.device)
    return type(prediction)(prediction.latency_s, prediction.makespan_s, tuple(events))


def render_run_report(manifest, summary) -> str:
    """The `halpc run --report` page, as a string (see `write_run_report`)."""
    if not summary.results:
        raise HalpcError("no tasks ran: nothing to report")
    data = manifest.data
    devices = [d.name for d in manifest.devices]
    host = manifest.host.name
    task = summary.median_task()
    predicted = summary.predicted
    measured = _measured_events(summary.measured(task), devices)
    # One scale for both charts: the longer timeline (a device may finish after the host).
    scale_s = max(predicted.latency_s, predicted.makespan_s, measured.latency_s, measured.makespan_s) or 1e-3
    cost = data.get("cost", {})

    def busy(p, device: str) -> float:
        return p.busy(device) / p.latency_s if p.latency_s else 0.0

    predicted_details = {
        d: (f"{cost[d]['gmacs']:g} GMAC/s · " if d in cost else "") + f"busy {busy(predicted, d):.0%}"
        for d in devices
    }
    measured_details = {d: f"busy {busy(measured, d):.0%} (predicted {busy(predicted, d):.0%})" for d in devices}
    charts = [
        {"id": "predicted", "heading": "predicted (cost model)", "line": "predicted latency",
         "chart": make_chart("predicted", predicted, devices, host, predicted_details, scale_s)},
        {"id": "measured", "heading": f"measured, task {task}", "line": f"task {task}'s latency",
         "chart": make_chart("measured", measured, devices, host, measured_details, scale_s)},
    ]
    lat = summary.latencies_s
    local = summary.local_latency_s
    checks = summary.checks
    try:
        links = links_lines(bundle_cluster(data))
    except Exception:  # an older or hand-made manifest: the page does without
        links = []
    context = {
        "model_name": data.get("model", {}).get("name", "model"),
        "strategy": data.get("strategy", "?"),
        "bundle": str(manifest.root),
        "devices": [
            {"name": d.name, "host": d.host, "address": d.address, "threads": d.threads,
             "gmacs": cost.get(d.name, {}).get("gmacs")}
            for d in manifest.devices
        ],
        "links": links,
        "tasks": len(lat),
        "median_ms": summary.latency_s * 1e3,
        "min_ms": min(lat) * 1e3,
        "max_ms": max(lat) * 1e3,
        "predicted_ms": predicted.latency_s * 1e3,
        "ratio": summary.latency_s / predicted.latency_s if predicted.latency_s else None,
        "throughput": summary.throughput if summary.ended > summary.started else None,
        "local_ms": None if local is None else local * 1e3,
        "speedup": summary.speedup,
        "throughput_speedup": summary.throughput_speedup if summary.ended > summary.started else None,
        "checks": len(checks),
        "exact_checks": sum(c.exact for c in checks),
        "exact": summary.exact if checks else None,
        "task": task,
        "scale_ms": scale_s * 1e3,
        "ticks": time_ticks(scale_s),
        "charts": charts,
        "geo": {"label": LABEL_WIDTH, "plot": PLOT_WIDTH, "top": TOP, "row": ROW_HEIGHT},
        "max_events": MAX_EVENTS,
    }
    return templates().get_template(RUN_TEMPLATE).render(context)


def write_run_report(path: str | os.PathLike, manifest, summary) -> None:
    """Write the run report to `path` atomically, like `write_plan_report`."""
    write_atomic(path, render_run_report(manifest, summary), "the report", option="report", make_folder=True)
