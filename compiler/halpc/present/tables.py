"""Plain-text tables the CLI prints: the trunk, a compiled bundle, a verification."""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from halpc.compile import Compiled
from halpc.analyse.coverage import Coverage
from halpc.analyse.trunk import Trunk
from halpc.host.verify import OutputCheck
from halpc.inputs.profile_file import full_height_ms
from halpc import units


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: set[int] = frozenset()) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)




def trunk_table(trunk: Trunk, split: Coverage | None = None) -> str:
    cut_after = {c.position - 1: c.tensor for c in trunk.cuts}
    exits = set(trunk.exits)
    rows = []
    for layer in trunk.layers:
        out = layer.outputs[0]
        marks = []
        if layer.position in cut_after:
            marks.append("cut")
        if any(o in exits for o in layer.outputs):
            marks.append("exit")
        rows.append(
            (
                layer.position,
                layer.name,
                layer.op_type,
                units.shape(trunk.tensors[out].shape),
                units.macs(layer.macs),
                trunk.receptive_field[out],
                " ".join(marks),
            )
        )
    body = table(("#", "layer", "op", "output", "MACs", "RF", "cut/exit"), rows, right={0, 4, 5})
    info = trunk.tensors[trunk.input]
    tail_ops = sorted({n.op_type for n in trunk.tail})
    head = [
        f"model      {trunk.model.path}  (sha256 {trunk.model.sha256[:12]})",
        f"input      {trunk.input} {units.shape(info.shape)} {info.dtype}, rows on axis {info.row_axis}",
        f"trunk      {len(trunk.layers)} layers, {units.macs(trunk.macs)} MACs, "
        f"{len(trunk.cuts)} cut points, exits: {', '.join(trunk.exits)}",
        f"tail       {len(trunk.tail)} nodes on the host"
        + (f" ({', '.join(tail_ops)})" if tail_ops else ""),
        *([f"split      {split.share:.0%} of the model's {units.macs(split.model_macs)} MACs "
           f"(convolutions and matrix products): {units.macs(split.split_macs)}"] if split else []),
        *(f"ends at    {e.op} {e.node!r}: {e.reason}" for e in (split.ends if split else ())),
        "",
        "RF: input rows one output row depends on. cut: the trunk may be cut after this layer.",
        "exit: the tail or a graph output reads this tensor whole.",
        "",
    ]
    return "\n".join(head) + body


def bundle_summary(result: Compiled, seconds: float) -> str:
    trunk, plan, cluster, summary = result.trunk, result.plan, result.cluster, result.bundle
    wrote = f"wrote      {summary.path}/ ({summary.files} files, {summary.bytes / 1e6:.1f} MB) in {seconds:.2f} s"
    if cluster.sources:
        return "\n".join([sources_summary(result), wrote])
    per_device = {d: 0 for d in cluster.names}
    for job in summary.schedule.jobs:
        per_device[job.device] += 1
    sent = {d: 0 for d in cluster.names}
    for (sender, _), size in summary.schedule.traffic.items():
        sent[sender] += size
    rows = [
        (d, "host" if d == cluster.host.name else "", per_device[d], f"{sent[d] / 1e6:.2f}")
        for d in cluster.names
    ]
    lines = [
        f"strategy   {plan.strategy}: {len(plan.blocks)} blocks over {len(trunk.layers)} trunk layers",
        table(("device", "role", "strips", "MB sent/task"), rows, right={2, 3}),
    ]
    if len(result.entries) > 1:
        lines.append(f"plans      {len(result.entries)} (the first is the default)")
        lines.append(plan_entries_table(result.entries))
    lines.append(wrote)
    return "\n".join(lines)


def sources_summary(result: Compiled) -> str:
    """Each source's plan in a bundle of several sources: where its strips run, its predicted
    latency on idle devices (the planner's full timeline: messages one after another, per-run
    costs) and shared with the other sources' frames (the matching's cost model)."""
    cluster = result.cluster
    helpers = [d.name for d in cluster.devices if not d.source]
    rows = []
    for e in result.entries:
        shared = e.plan.predicted.get("shared_ms")
        rows.append((e.host, e.trunk.model.path.name, f"{cluster.device(e.host).rate_hz:g}", e.id, first_block_shares(e.plan),
                     f"{e.plan.predicted['latency_ms']:.1f}", "-" if shared is None else f"{shared:.1f}"))
    head = f"strategy   {result.plan.strategy}: {len(cluster.sources)} sources sharing {len(helpers)} helper(s)"
    return "\n".join([head, table(("source", "model", "Hz", "plan", "first block rows per device",
                                   "timeline ms", "shared ms"), rows, right={2, 5, 6})])


def plan_entries_table(entries) -> str:
    """The plans of a bundle: variant, accuracy, the rates each serves, its predicted latency."""
    rows = [
        (e.id, e.variant or "", "" if e.accuracy is None else f"{e.accuracy:g}",
         ",".join(f"{b:g}" for b in e.bandwidths) or "-", len(e.plan.blocks),
         f"{e.plan.predicted.get('latency_ms', float('nan')):.2f}")
        for e in entries
    ]
    return table(("plan", "variant", "top-1 %", "planned for Mbit/s", "blocks", "predicted ms"), rows,
                 right={2, 4, 5})


def verify_table(checks: Sequence[OutputCheck]) -> str:
    rows = [
        (c.case, c.name, units.shape(c.shape), "exact" if c.exact else f"max abs diff {c.max_abs_diff:.3g}")
        for c in checks
    ]
    exact = sum(c.exact for c in checks)
    verdict = "bit-exact" if exact == len(checks) else "NOT bit-exact"
    return table(("input", "output", "shape", "result"), rows) + f"\n{exact}/{len(checks)} outputs exact: {verdict}"


def speedups(plans: dict) -> dict[str, float]:
    local = plans["local"].predicted["latency_ms"] if "local" in plans else None
    return {
        name: (local / p.predicted["latency_ms"] if local else float("nan"))
        for name, p in plans.items()
    }


def first_block_shares(plan) -> str:
    """The first block's strips, as rows per device: enough to see how the work is split."""
    parts = [f"{s.device}:{s.rows[1] - s.rows[0]}" for s in plan.blocks[0].strips]
    more = f" (+{len(plan.blocks) - 1} blocks)" if len(plan.blocks) > 1 else ""
    return " ".join(parts) + more


def plans_table(trunk: Trunk, plans: dict) -> str:
    speedup = speedups(plans)
    rows = [
        (
            name,
            f"{p.predicted['latency_ms']:.1f}",
            f"{speedup[name]:.2f}x",
            len(p.blocks),
            "host" if p.exchange == "host" else "direct",
            " ".join(p.devices()),
            " ".join(f"{p.predicted['memory_mb'][d]:.0f}" for d in p.devices()) if "memory_mb" in p.predicted else "-",
            first_block_shares(p),
        )
        for name, p in plans.items()
    ]
    fitting = [n for n in plans if "over_memory" not in plans[n].predicted] or list(plans)
    best = min(fitting, key=lambda n: plans[n].predicted["latency_ms"])
    notes = [f"{name} leaves {device} out: {why}" for name, p in plans.items()
             for device, why in p.predicted.get("left_out", {}).items()]
    notes += [f"{name} does not fit {device}: {why}" for name, p in plans.items()
              for device, why in p.predicted.get("over_memory", {}).items()]
    return "\n".join([
        table(("strategy", "latency ms", "speedup", "blocks", "exchange", "devices used", "peak MB",
               "first block rows"), rows, right={1, 2, 3}),
        *notes,
        f"best: {best}",
    ])


def plans_json(trunk: Trunk, plans: dict) -> dict:
    speedup = speedups(plans)
    return {
        "strategies": {
            name: {
                "latency_ms": p.predicted["latency_ms"],
                "speedup": round(speedup[name], 4),
                "blocks": len(p.blocks),
                "devices": p.devices(),
                "memory_mb": p.predicted.get("memory_mb", {}),
                "over_memory": p.predicted.get("over_memory", {}),
                "plan": p.to_json(trunk),
            }
            for name, p in plans.items()
        }
    }


def run_table(manifest, summary, in_flight: int) -> str:
    """`halpc run`'s report: per-task latency, throughput, speedup and the median task's timeline."""
    n = len(summary.results)
    exact = {}
    for c in summary.checks:
        exact[c.case] = exact.get(c.case, True) and c.exact
    rows = [
        (i, f"{r.latency_s * 1e3:.1f}", "yes" if exact.get(f"task {i}") else
         ("NO" if summary.checks else "-"))
        for i, r in enumerate(summary.results)
    ]
    header: tuple[str, ...] = ("task", "latency ms", "exact")
    if summary.decisions:  # a policy chose each task's plan
        header += ("plan", "predicted ms", "link estimate Mbit/s")
        rows = [
            (*row, r.plan, f"{choice.predicted_s * 1e3:.1f}",
             ", ".join(f"{d} {v:.3g}" for d, v in estimate.items()))
            for row, r, (choice, estimate) in zip(rows, summary.results, summary.decisions)
        ]
    if any(r.fallback for r in summary.results):  # a device was down or failed
        header += ("ran",)
        rows = [(*row, ("unsplit on the host: " if r.unsplit else f"{r.plan}: ") + r.fallback if r.fallback
                 else "as planned") for row, r in zip(rows, summary.results)]
    lat = [x * 1e3 for x in summary.latencies_s]
    plans = len(manifest.plans)
    lines = [
        f"ran {manifest.root}: {manifest.data['strategy']} plan over {len(manifest.devices)} devices"
        + (f" (and {plans - 1} other plans)" if plans > 1 else "")
        + f", {n} task(s), {min(in_flight, n)} in flight",
        table(header, rows, right={0, 1, 4}),
        f"latency     median {summary.latency_s * 1e3:.1f} ms (min {min(lat):.1f}, max {max(lat):.1f}); "
        + (f"cost model {statistics.median(c.predicted_s for c, _ in summary.decisions) * 1e3:.1f} ms "
           "(median of the chosen plans)" if summary.decisions
           else f"cost model {summary.predicted.latency_s * 1e3:.1f} ms"),
        f"throughput  {summary.throughput:.2f} tasks/s",
    ]
    if summary.faults:
        def task(f) -> str:
            number = summary.timed_task(f)
            return "a warm-up task" if number is None else f"task {number}"

        lines.append(f"faults      {len(summary.faults)}: " + "; ".join(
            f"{task(f)} waited {f.waited_s * 1e3:.0f} ms for {f.device} (bound {f.bound_s * 1e3:.0f} ms)"
            for f in summary.faults) + f"; {sum(r.unsplit for r in summary.results)} task(s) recomputed on the host")
    if summary.deadline_s is not None:
        met = round(summary.reliability * n)
        lines.append(f"deadline    {summary.deadline_s * 1e3:g} ms: {met}/{n} tasks met it "
                     f"({summary.reliability:.0%} reliability)")
    if summary.local_latency_s is not None:
        variant = f"{manifest.data['variant']} " if len(manifest.plans) > 1 else ""
        lines.append(
            f"unsplit     {variant}{summary.local_latency_s * 1e3:.1f} ms on the host "
            f"({manifest.host.threads} thread(s)): latency {summary.speedup:.2f}x, "
            f"throughput {summary.throughput_speedup:.2f}x faster split"
        )
        good = sum(c.exact for c in summary.checks)
        verdict = "bit-exact to the unsplit model" if summary.exact else "NOT bit-exact"
        lines.append(f"outputs     {good}/{len(summary.checks)} {verdict}")
    lines.append("")
    k = summary.median_task()
    lines.append(timeline_chart(summary.measured(k), [d.name for d in manifest.devices], f"task {k}"))
    return "\n".join(lines)


def sources_run_table(manifest, summaries: dict[str, dict]) -> str:
    """`halpc run` of every source at once: per source its frames' latency beside the plan's
    prediction with the other sources' load (`shared_ms`), and the bit-exact check."""
    from halpc.planner.matching import nearest_rank

    sharing = manifest.data.get("sharing", {}).get("sources", {})
    rows = []
    for source, s in summaries.items():
        lat = s["latency_ms_per_task"]
        predicted = sharing.get(source, {}).get("predicted_ms")
        exact = {None: "-", True: "yes", False: "NO"}[s["exact"]]
        rows.append((source, f"{manifest.data['sources'][source]['rate_hz']:g}", len(lat),
                     f"{statistics.mean(lat):.1f}", f"{nearest_rank(lat, 50):.1f}", f"{nearest_rank(lat, 95):.1f}",
                     "-" if predicted is None else f"{predicted:.1f}", exact))
    start = max(s["started"] for s in summaries.values())
    end = min(s["ended"] for s in summaries.values())
    span = max(s["ended"] for s in summaries.values()) - min(s["started"] for s in summaries.values())
    return "\n".join([
        f"ran {manifest.root}: {len(summaries)} sources at once, {manifest.data['strategy']} plans",
        table(("source", "Hz", "frames", "mean ms", "p50 ms", "p95 ms", "predicted ms", "exact"), rows,
              right={1, 2, 3, 4, 5, 6}),
        f"overlap     the sources streamed together for {max(0.0, end - start):.1f} s of {span:.1f} s",
    ])


def timeline_chart(prediction, devices: Sequence[str], title: str, width: int = 72) -> str:
    """Text Gantt: per device a lane of compute (#) and waits (.), and a lane of sends (-)."""
    span = max(prediction.latency_s, prediction.makespan_s) or 1e-9
    name_w = max(len(d) for d in devices)
    lanes = {d: ([" "] * width, [" "] * width) for d in devices}
    marks = {"wait": ".", "compute": "#", "send": "-"}
    for event in sorted(prediction.events, key=lambda e: e.kind != "wait"):  # compute over waits
        if event.device not in lanes or event.kind not in marks:
            continue
        lane = lanes[event.device][event.kind == "send"]
        a = min(width - 1, max(0, int(event.start / span * width)))
        b = max(a + 1, min(width, round(event.end / span * width)))
        lane[a:b] = marks[event.kind] * (b - a)
    lines = [f"{title}: {span * 1e3:.1f} ms; # compute, . waiting for rows, - sending"]
    for d in devices:
        compute, send = lanes[d]
        lines.append(f"{d.ljust(name_w)} |{''.join(compute)}|")
        if "-" in send:
            lines.append(f"{''.ljust(name_w)} |{''.join(send)}|")
    return "\n".join(lines)


def profile_table(profile: dict) -> str:
    """The short table `halpc profile` prints: per layer at full height, then the summary."""
    rows = [(name, entry["op"], units.macs(entry["macs"]), f"{full_height_ms(entry):.3f}",
             f"{entry['per_row_ms']:.4f}", f"{entry['fixed_ms']:.3f}")
            for name, entry in profile["layers"].items()]
    body = table(("layer", "op", "MACs", "ms (full)", "ms/row", "fixed ms"), rows, right={2, 3, 4, 5})
    trunk = profile["trunk"]
    return (
        f"{body}\n"
        f"whole trunk: {units.macs(trunk['macs'])} MACs in {trunk['ms']:.2f} ms at full height "
        f"({profile['threads']} thread{'s' if profile['threads'] != 1 else ''}) -> "
        f"{profile['gmacs']:.2f} GMAC/s effective; per-run overhead "
        f"{profile['per_run_overhead_ms']:.3f} ms; profiled in {profile['elapsed_s']:.0f} s"
        + (f"\ninteger convolutions: {profile['int8_gmacs']:.2f} GMAC/s (int8_gmacs)"
           if profile.get("int8_gmacs") else "")
    )


def sources_latency_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """`matching.compare`'s rows: one line per source, the simulated mean / p95 ms per strategy."""
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    cell = {(r["strategy"], r["source"]): r for r in rows}

    def show(r: Mapping[str, Any] | None) -> str:
        if r is None:
            return "-"
        return " / ".join("inf" if r[k] is None else f"{r[k]:.1f}" for k in ("mean_ms", "p95_ms"))

    return table(["source"] + [f"{s} mean/p95 ms" for s in strategies],
                 [[src] + [show(cell.get((s, src))) for s in strategies] for src in sources])


def plans_used_text(result) -> str:
    """The plans a replayed policy ran, most used first: `halp@100 ×12, local ×3`."""
    return ", ".join(f"{plan} ×{n}" for plan, n in result.plans_used())


def replay_table(results: dict) -> str:
    """`halpc simulate`: one line per policy: tasks, reliability, on-time share, latency
    percentiles, accuracy, plans used."""
    rows = []
    for policy, r in results.items():
        p = r.percentiles
        acc = r.mean_accuracy
        rows.append((
            policy, len(r.tasks), f"{r.reliability * 100:.1f}", f"{r.on_time * 100:.1f}",
            *(units.ms(p[k]) for k in ("p50", "p95", "p99")),
            "-" if acc is None else f"{acc:.2f}", plans_used_text(r),
        ))
    header = ("policy", "tasks", "reliability %", "on time %", "p50 ms", "p95 ms", "p99 ms", "accuracy %",
              "plans used")
    return table(header, rows, right={1, 2, 3, 4, 5, 6, 7})
