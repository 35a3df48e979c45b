"""`halpc plan --report`: one self-contained HTML page comparing the strategies' predicted timelines.

The page has no external resources (no scripts, fonts, style sheets or images): inline CSS, and
one inline SVG Gantt chart per strategy. Every chart uses the same time scale (the longest
predicted timeline of all strategies), so charts can be compared by eye.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from halpc.errors import HalpcError
from halpc.files import write_atomic
from halpc.planner.predict import predict
from halpc.present.charts import (COMPUTE_H, COMPUTE_Y, LABEL_WIDTH, MAX_EVENTS, PLOT_WIDTH, ROW_HEIGHT, SEND_H,
                                  SEND_Y, TOP, Chart, make_chart, time_ticks)
from halpc.present.tables import first_block_shares, speedups
from halpc.templating import templates

TEMPLATE = "plan_report.html.j2"


def _chart(ctx, name: str, prediction, scale_s: float) -> Chart:
    details = {}
    for device in ctx.cluster.names:
        busy = prediction.busy(device) / prediction.latency_s if prediction.latency_s else 0.0
        details[device] = f"{ctx.speeds[device]:g} GMAC/s · busy {busy:.0%}"
    return make_chart(name, prediction, list(ctx.cluster.names), ctx.cluster.host.name, details, scale_s)


def links_lines(cluster) -> list[str]:
    lines = [f"every pair: {cluster.network_bandwidth_mbps:g} Mbit/s, "
             f"{cluster.network_latency_ms:g} ms one-way"]
    for link in cluster.links:
        lines.append(f"{link.a} ↔ {link.b}: {link.bandwidth_mbps:g} Mbit/s, {link.latency_ms:g} ms")
    return lines


def render_plan_report(ctx, plans: dict) -> str:
    """The page, as a string (see `write_plan_report`)."""
    if not plans:
        raise HalpcError("no plans to report")
    trunk, cluster = ctx.trunk, ctx.cluster
    predictions = {name: predict(ctx, plan) for name, plan in plans.items()}
    # One scale for every chart: the longest timeline (a device may finish after the host).
    scale_s = max(max(p.latency_s, p.makespan_s) for p in predictions.values()) or 1e-3
    ticks = time_ticks(scale_s)
    speedup = speedups(plans)
    best = min(plans, key=lambda n: plans[n].predicted["latency_ms"])
    summary = [
        {
            "name": name,
            "latency_ms": plan.predicted["latency_ms"],
            "objective_ms": plan.predicted.get("objective_ms"),
            "speedup": None if math.isnan(speedup[name]) else speedup[name],
            "blocks": len(plan.blocks),
            "exchange": "via host" if plan.exchange == "host" else "direct",
            "shares": first_block_shares(plan),
            "best": name == best,
        }
        for name, plan in plans.items()
    ]
    info = trunk.tensors[trunk.input]
    model = trunk.model
    context = {
        "model_name": Path(model.path).name,
        "sha256": model.sha256[:12],
        "input_name": trunk.input,
        "input_shape": "×".join(map(str, info.shape)),
        "input_dtype": info.dtype,
        "layers": len(trunk.layers),
        "gmacs": trunk.macs / 1e9,
        "cuts": len(trunk.cuts),
        "devices": [
            {"name": d.name, "host": d.host, "address": d.address, "gmacs": ctx.speeds[d.name]}
            for d in cluster.devices
        ],
        "links": links_lines(cluster),
        "summary": summary,
        "has_local": "local" in plans,
        "best": best,
        "scale_ms": scale_s * 1e3,
        "ticks": ticks,
        "charts": [_chart(ctx, name, predictions[name], scale_s) for name in plans],
        "geo": {
            "label": LABEL_WIDTH, "plot": PLOT_WIDTH, "top": TOP, "row": ROW_HEIGHT,
            "compute_y": COMPUTE_Y, "compute_h": COMPUTE_H, "send_y": SEND_Y, "send_h": SEND_H,
        },
        "max_events": MAX_EVENTS,
    }
    return templates().get_template(TEMPLATE).render(context)


def write_plan_report(path: str | os.PathLike, ctx, plans: dict) -> None:
    """Write the report to `path` atomically: a temporary file beside it, then os.replace."""
    write_atomic(path, render_plan_report(ctx, plans), "the report", option="report", make_folder=True)
