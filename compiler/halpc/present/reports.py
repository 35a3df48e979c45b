"""`halpc plan --report`: one self-contained HTML page comparing the strategies' predicted timelines.

The page has no external resources (no scripts, fonts, style sheets or images): inline CSS, and
one inline SVG Gantt chart per strategy. Every chart uses the same time scale (the longest
predicted timeline of all strategies), so charts can be compared by eye. The geometry (events to
rectangles in pixels) is done here, in `gantt_rects`; the template only prints it.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from halpc.errors import HalpcError
from halpc.planner.cost import Event

TEMPLATE = "plan_report.html.j2"

# Chart geometry, in px. A device row is a compute lane with a thin send lane under it.
PLOT_WIDTH = 1080.0
LABEL_WIDTH = 160.0  # device names left of the plot
RIGHT_MARGIN = 40.0  # room for the last tick's label
TOP = 8.0
AXIS_HEIGHT = 34.0  # ticks and their labels under the rows
ROW_HEIGHT = 36.0
COMPUTE_Y, COMPUTE_H = 4.0, 18.0  # within a row
SEND_Y, SEND_H = 25.0, 6.0
MIN_WIDTH = 0.6  # so that very short bars still show
GAP = 0.75  # bars wider than 3 gaps end this much early, so back-to-back bars stay apart
MAX_EVENTS = 4000  # above this, bars closer than MERGE_PX are merged
MERGE_PX = 1.0

# Draw order: waits behind everything, then compute, then sends.
_ORDER = {"wait": 0, "compute": 1, "send": 2}
_BLOCK = re.compile(r"block(\d+)")


@dataclass(frozen=True)
class Rect:
    """One bar of a chart: x and width in px from the plot's left edge, y from its top."""

    x: float
    y: float
    width: float
    height: float
    css: str  # compute | compute-alt | tail | send | wait
    title: str  # shown on hover (SVG <title>)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _css(event: Event) -> str:
    if event.kind != "compute":
        return event.kind
    if event.label == "tail.onnx":
        return "tail"
    match = _BLOCK.search(event.label)
    # Consecutive blocks in alternating shades, so block boundaries show.
    return "compute-alt" if match and int(match.group(1)) % 2 else "compute"


def _title(event: Event) -> str:
    span = f"{_ms(event.start)}–{_ms(event.end)} ms ({_ms(event.end - event.start)} ms)"
    if event.kind == "send":
        return f"{event.device} → {event.peer}: sends {event.label}, {span}"
    if event.kind == "wait":
        return f"{event.device} waits for {event.label} from {event.peer}, {span}"
    return f"{event.device} runs {event.label}, {span}"


def gantt_rects(
    events: Iterable[Event],
    devices: Sequence[str],
    scale_s: float,
    width_px: float = PLOT_WIDTH,
    max_events: int = MAX_EVENTS,
    merge_px: float = MERGE_PX,
) -> list[Rect]:
    """Rectangles for a Gantt chart of `events`, one row per device in `devices` order.

    Time 0..`scale_s` maps to x 0..`width_px`. Compute bars and waits share the device's compute
    lane (waits drawn first, lightly); sends go on the thin lane under it. Compute and send bars
    wider than 3 * GAP px are drawn GAP px shorter, so back-to-back bars show as two. When there are more
    than `max_events` events, bars of the same kind on one device that are less than `merge_px`
    apart are merged into one (its title says how many), to keep the page small.
    """
    if scale_s <= 0:
        raise ValueError(f"scale_s must be positive, got {scale_s}")
    events = list(events)
    row = {d: i for i, d in enumerate(devices)}
    px = width_px / scale_s
    merge = len(events) > max_events
    # Group by (device, css class) so merging only joins bars drawn alike, in time order.
    groups: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        if event.device not in row:
            raise ValueError(f"event on unknown device {event.device!r}")
        groups.setdefault((event.device, _css(event)), []).append(event)
    rects: list[Rect] = []
    for (device, css), group in groups.items():
        group.sort(key=lambda e: (e.start, e.end))
        kind = group[0].kind
        top = row[device] * ROW_HEIGHT + (SEND_Y if kind == "send" else COMPUTE_Y)
        height = SEND_H if kind == "send" else COMPUTE_H
        runs: list[list[Event]] = []
        for event in group:
            if merge and runs and (event.start - runs[-1][-1].end) * px < merge_px:
                runs[-1].append(event)
            else:
                runs.append([event])
        for run in runs:
            start = run[0].start
            end = max(e.end for e in run)
            if len(run) == 1:
                title = _title(run[0])
            else:
                peers = sorted({e.peer for e in run if e.peer})
                what = {"send": "sends", "wait": "waits", "compute": "compute steps"}[kind]
                title = (f"{device}: {len(run)} {what}"
                         + (f" ({', '.join(peers)})" if peers else "")
                         + f", {_ms(start)}–{_ms(end)} ms (merged: closer than {merge_px:g} px)")
            x = start * px
            width = max((end - start) * px, MIN_WIDTH)
            if kind != "wait" and width > 3 * GAP:
                width -= GAP
            rects.append(Rect(round(x, 2), top, round(width, 2), height, css, title))
    rects.sort(key=lambda r: (_ORDER.get(_kind_of(r.css), 1), r.y, r.x))
    return rects


def _kind_of(css: str) -> str:
    return "compute" if css in ("compute-alt", "tail") else css


def time_ticks(scale_s: float, width_px: float = PLOT_WIDTH, target: int = 10) -> list[tuple[float, str]]:
    """(x px, label ms) of round ticks from 0 to `scale_s`: steps of 1, 2 or 5 times a power of 10."""
    scale_ms = scale_s * 1e3
    raw = scale_ms / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    ticks = []
    n = 0
    while n * step <= scale_ms * (1 + 1e-9):
        value = n * step
        ticks.append((round(value / scale_ms * width_px, 2), f"{value:.{decimals}f}"))
        n += 1
    return ticks


@dataclass(frozen=True)
class Chart:
    name: str
    latency_ms: float
    makespan_ms: float
    events: int
    merged: bool
    width: float
    height: float
    plot_height: float
    rows: list[dict]
    rects: list[Rect]
    latency_x: float


def _chart(ctx, name: str, prediction, scale_s: float) -> Chart:
    details = {}
    for device in ctx.cluster.names:
        busy = prediction.busy(device) / prediction.latency_s if prediction.latency_s else 0.0
        details[device] = f"{ctx.speeds[device]:g} GMAC/s · busy {busy:.0%}"
    return _make_chart(name, prediction, list(ctx.cluster.names), ctx.cluster.host.name, details, scale_s)


def _make_chart(name: str, prediction, devices: list[str], host: str, details: dict[str, str],
                scale_s: float) -> Chart:
    """A chart of `prediction`, one row per device in `devices` order, `details` under each name."""
    rows = []
    for i, device in enumerate(devices):
        label = device if len(device) <= 16 else device[:15] + "…"
        if device == host and device != "host":
            label += " (host)"
        rows.append({
            "y": i * ROW_HEIGHT,
            "name": label,
            "full_name": device + (" (host)" if device == host else ""),
            "host": device == host,
            "detail": details.get(device, ""),
        })
    plot_height = len(devices) * ROW_HEIGHT
    return Chart(
        name=name,
        latency_ms=prediction.latency_s * 1e3,
        makespan_ms=prediction.makespan_s * 1e3,
        events=len(prediction.events),
        merged=len(prediction.events) > MAX_EVENTS,
        width=LABEL_WIDTH + PLOT_WIDTH + RIGHT_MARGIN,
        height=TOP + plot_height + AXIS_HEIGHT,
        plot_height=plot_height,
        rows=rows,
        rects=gantt_rects(prediction.events, devices, scale_s),
        latency_x=round(prediction.latency_s / scale_s * PLOT_WIDTH, 2),
    )


def _links(cluster) -> list[str]:
    lines = [f"every pair: {cluster.network_bandwidth_mbps:g} Mbit/s, "
             f"{cluster.network_latency_ms:g} ms one-way"]
    for link in cluster.links:
        lines.append(f"{link.a} ↔ {link.b}: {link.bandwidth_mbps:g} Mbit/s, {link.latency_ms:g} ms")
    return lines


def render_plan_report(ctx, plans: dict) -> str:
    """The page, as a string (see `write_plan_report`)."""
    from halpc.emit.bundle import templates
    from halpc.planner.predict import predict
    from halpc.present.tables import _shares, _speedups

    if not plans:
        raise HalpcError("no plans to report")
    trunk, cluster = ctx.trunk, ctx.cluster
    predictions = {name: predict(ctx, plan) for name, plan in plans.items()}
    # One scale for every chart: the longest timeline (a device may finish after the host).
    scale_s = max(max(p.latency_s, p.makespan_s) for p in predictions.values()) or 1e-3
    ticks = time_ticks(scale_s)
    speedup = _speedups(plans)
    best = min(plans, key=lambda n: plans[n].predicted["latency_ms"])
    summary = [
        {
            "name": name,
            "latency_ms": plan.predicted["latency_ms"],
            "objective_ms": plan.predicted.get("objective_ms"),
            "speedup": None if math.isnan(speedup[name]) else speedup[name],
            "blocks": len(plan.blocks),
            "exchange": "via host" if plan.exchange == "host" else "direct",
            "shares": _shares(plan),
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
        "links": _links(cluster),
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
    _write_atomic(path, render_plan_report(ctx, plans))


def _write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` by a temporary file beside it and os.replace; a one-line HalpcError
    (and no temporary file left) if that cannot be done."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 honours the umask, like any new file (a temp file would be 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # under a file, the temp path itself is unusable
            tmp.unlink(missing_ok=True)
        raise HalpcError(
            f"{path}: cannot write the report ({exc.strerror or exc}); choose a writable --report path"
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# -- `halpc run --report`: the measured timeline beside the predicted one --------------------------

RUN_TEMPLATE = "run_report.html.j2"
_KINDS = ("compute", "send", "wait")


def _measured_events(prediction, devices: list[str]):
    """The measured events drawable on the chart: known kinds, no negative times (clock offsets
    between devices are estimates), a "?" for a peer nobody named; unknown devices get a row."""
    from dataclasses import replace

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
    from halpc.planner.predict import bundle_cluster
    from halpc.emit.bundle import templates

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
         "chart": _make_chart("predicted", predicted, devices, host, predicted_details, scale_s)},
        {"id": "measured", "heading": f"measured, task {task}", "line": f"task {task}'s latency",
         "chart": _make_chart("measured", measured, devices, host, measured_details, scale_s)},
    ]
    lat = summary.latencies_s
    local = summary.local_latency_s
    checks = summary.checks
    try:
        links = _links(bundle_cluster(data))
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
    _write_atomic(path, render_run_report(manifest, summary))
