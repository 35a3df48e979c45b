"""Several sources sharing helpers, for people: per source each strategy's simulated latency, the
matching's partitions, rounds and nodes, as text (`sources_table`) and as one self-contained page
(`write_sources_report`: inline CSS and SVG, nothing fetched)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from halpc.errors import HalpcError
from halpc.files import write_atomic
from halpc.planner import matching as game
from halpc.planner.sources import SourcesPlan
from halpc import units
from halpc.present.charts import PALETTE, nice_ticks
from halpc.present.tables import sources_latency_table, table
from halpc.templating import templates

TEMPLATE = "sources_report.html.j2"
STRATEGIES = game.STRATEGIES  # matching, alone, selfish, greedy, random: the tables' order

# Bar chart geometry, px: per source a group, per strategy a mean bar over a p95 bar.
LEFT, PLOT_W, RIGHT, TOP, BOTTOM = 170.0, 860.0, 80.0, 10.0, 34.0
BAR_H, ROW_H, GROUP_GAP = 9.0, 24.0, 14.0


def _rank(strategy: str) -> int:
    return STRATEGIES.index(strategy) if strategy in STRATEGIES else len(STRATEGIES)


def _ordered(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by strategy in STRATEGIES order (matching first), sources in their order."""
    return sorted(rows, key=lambda r: _rank(r["strategy"]))


def _partitions(sp: SourcesPlan) -> list[dict[str, Any]]:
    out = []
    for s in sp.sources:
        c = sp.cuttings[s.name]
        for p in s.partitions:
            out.append({"source": s.name, "cut": c.cut, "index": p.index,
                        "rows": f"{c.bounds[p.index]}-{c.bounds[p.index + 1]}", "gmac": f"{p.gmac:.4f}",
                        "in_kb": f"{p.in_bytes / 1e3:.1f}", "out_kb": f"{p.out_bytes / 1e3:.1f}",
                        "node": sp.assignment[p.key], "completion_ms": units.ms(sp.evaluation.completion[p.key])})
    return out


def _rounds(m: game.Matching) -> list[dict[str, Any]]:
    return [{"round": i, "kind": r.kind,
             "moves": "; ".join(f"{k[0]}#{k[1]} {a} -> {b}" for k, a, b in r.moves),
             "before": " / ".join(map(units.ms, r.before)), "after": " / ".join(map(units.ms, r.after)),
             "gain": units.ms(r.gain)} for i, r in enumerate(m.rounds, start=1)]


def _nodes(sp: SourcesPlan) -> list[dict[str, Any]]:
    placed = list(sp.assignment.values())
    return [{"name": n.name, "gmacs": f"{n.gmacs:g}", "partitions": placed.count(n.name),
             "utilization": sp.evaluation.utilization[n.name]} for n in sp.nodes]


def _verdict(m: game.Matching) -> str:
    return (f"{len(m.rounds)} exchange round(s), "
            + ("stable: no blocking swap or move left" if m.stable else "NOT stable: stopped at the round limit"))


def sources_table(rows: Sequence[Mapping[str, Any]], planned: Mapping[str, SourcesPlan]) -> str:
    """Per source each strategy's simulated mean / p95 ms side by side; then the matching's cuts,
    partitions and their nodes, its exchange rounds, and the nodes' utilisation."""
    lines = [sources_latency_table(_ordered(rows))]
    sp = planned.get("matching")
    if sp is not None and sp.matching is not None:
        parts = _partitions(sp)
        lines += ["", "matching: " + ", ".join(f"{s.name} {units.ms(sp.evaluation.latency[s.name])} ms predicted"
                                               for s in sp.sources),
                  table(("source", "cut", "partition", "rows", "GMAC", "in kB", "out kB", "node", "done ms"),
                        [tuple(p.values()) for p in parts], right={1, 2, 4, 5, 6, 8}),
                  "", _verdict(sp.matching),
                  table(("node", "GMAC/s", "partitions", "utilisation"),
                        [(n["name"], n["gmacs"], n["partitions"], f"{n['utilization']:.0%}") for n in _nodes(sp)],
                        right={1, 2, 3})]
    return "\n".join(lines)


def _colour(strategy: str) -> str:
    return PALETTE[_rank(strategy) % len(PALETTE)]


def bar_chart(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Geometry of the mean / p95 chart: per source a group of rows, one per strategy, each a
    mean bar over a lighter p95 bar; x from 0 ms to the largest value of the strategies that do
    not overload a node (the cost model predicts a finite latency): bars of those that do are
    cut at the edge (their value is written beside), so that they do not squeeze the others."""
    rows = _ordered(rows)
    steady = [r for r in rows if r["predicted_ms"] is not None] or rows
    hi = max((r[k] for r in steady for k in ("mean_ms", "p95_ms") if r[k] is not None), default=0.0) * 1.05 or 1.0
    groups, y = [], 0.0
    for src in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == src]
        bars = [{"strategy": r["strategy"], "colour": _colour(r["strategy"]), "y": y + i * ROW_H,
                 "mean_ms": r["mean_ms"], "p95_ms": r["p95_ms"],
                 **{k[:-3] + "_w": None if r[k] is None else round(max(min(r[k] / hi, 1.0) * PLOT_W, 0.6), 2)
                    for k in ("mean_ms", "p95_ms")}}
                for i, r in enumerate(mine)]
        groups.append({"source": src, "y": y, "height": ROW_H * len(mine), "bars": bars})
        y += ROW_H * len(mine) + GROUP_GAP
    plot_h = max(y - GROUP_GAP, ROW_H)
    return {"width": LEFT + PLOT_W + RIGHT, "height": TOP + plot_h + BOTTOM, "plot_h": plot_h,
            "groups": groups, "ticks": nice_ticks(hi, PLOT_W)}


def render_sources_report(title: str, rows: Sequence[Mapping[str, Any]], planned: Mapping[str, SourcesPlan],
                          subtitle: str = "") -> str:
    """The page, as a string (see `write_sources_report`)."""
    if not rows:
        raise HalpcError("no strategy was simulated: nothing to report")
    rows = _ordered(rows)
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    cell = {(r["strategy"], r["source"]): r for r in rows}
    table = []
    for src in sources:
        cells = [cell.get((s, src)) for s in strategies]
        best = min((c["mean_ms"] for c in cells if c and c["mean_ms"] is not None), default=None)
        table.append({"source": src, "rate_hz": next(c["rate_hz"] for c in cells if c),
                      "cells": [c and {**c, "best": best is not None and c["mean_ms"] == best} for c in cells]})
    sp = planned.get("matching")
    matched = None
    if sp is not None and sp.matching is not None:
        matched = {"latency": [(s.name, units.ms(sp.evaluation.latency[s.name])) for s in sp.sources],
                   "partitions": _partitions(sp), "rounds": _rounds(sp.matching), "verdict": _verdict(sp.matching),
                   "nodes": _nodes(sp)}
    context = {"title": title, "subtitle": subtitle, "strategies": [(s, _colour(s)) for s in strategies],
               "table": table, "chart": bar_chart(rows),
               "geo": {"left": LEFT, "plot": PLOT_W, "top": TOP, "bar": BAR_H, "row": ROW_H}, "matched": matched}
    return templates().get_template(TEMPLATE).render(context)


def write_sources_report(path: str | os.PathLike, title: str, rows: Sequence[Mapping[str, Any]],
                         planned: Mapping[str, SourcesPlan], subtitle: str = "") -> None:
    """Write the page to `path` atomically (a temporary file beside it, then os.replace)."""
    write_atomic(path, render_sources_report(title, rows, planned, subtitle), "the report", option="report", make_folder=True)
