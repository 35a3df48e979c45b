"""Chart geometry for the HTML reports: round axis ticks, a palette, and the Gantt chart of a
timeline (events to rectangles in pixels). The templates only print what is computed here."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from halpc import units
from halpc.planner.cost import Event

PALETTE = ("#2f6fbf", "#e07b24", "#2e7d32", "#6a3d9a", "#c62828", "#00838f", "#8d6e63", "#ad1457")

# Gantt geometry, in px. A device row is a compute lane with a thin send lane under it.
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


def time_ticks(scale_s: float, width_px: float = PLOT_WIDTH) -> list[tuple[float, str]]:
    """Ticks of a Gantt chart's time axis, labelled in ms."""
    return nice_ticks(scale_s * 1e3, width_px, target=10)


def _css(event: Event) -> str:
    if event.kind != "compute":
        return event.kind
    if event.label == "tail.onnx":
        return "tail"
    match = _BLOCK.search(event.label)
    # Consecutive blocks in alternating shades, so block boundaries show.
    return "compute-alt" if match and int(match.group(1)) % 2 else "compute"


def _title(event: Event) -> str:
    span = f"{units.ms(event.start, 2)}–{units.ms(event.end, 2)} ms ({units.ms(event.end - event.start, 2)} ms)"
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
                         + f", {units.ms(start, 2)}–{units.ms(end, 2)} ms (merged: closer than {merge_px:g} px)")
            x = start * px
            width = max((end - start) * px, MIN_WIDTH)
            if kind != "wait" and width > 3 * GAP:
                width -= GAP
            rects.append(Rect(round(x, 2), top, round(width, 2), height, css, title))
    rects.sort(key=lambda r: (_ORDER.get(_kind_of(r.css), 1), r.y, r.x))
    return rects


def _kind_of(css: str) -> str:
    return "compute" if css in ("compute-alt", "tail") else css


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


def make_chart(name: str, prediction, devices: list[str], host: str, details: dict[str, str],
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


