"""Several sources sharing helper nodes: real models cut into capacity-sized partitions, matched.

`matching` is the game and its cost model over abstract partitions; this module makes the
partitions from each source's trunk, exactly as `halpc compile` will cut them, and turns an
assignment back into one `Plan` per source.

A source's frame is cut at a cut point `cut`: the layers before it form one fused block whose
rows are split into strips, one per node the source may use (its own device and every helper),
sized in proportion to those nodes' GMAC/s; these strips are the partitions. The source sends
each strip its input rows (halo included) and gets its output rows back; the layers after the
cut run on the source (the `gather` time of the matching's model). Each partition's GMAC counts
its halo (`strip_macs`), its bytes are its real input and output rows.

The cut is chosen per source, together: every source starts at the cut that is best for it
alone, then each in turn takes the cut that lowers the sources' mean predicted latency under the
matching, until no source changes (at most `CUT_ROUNDS` rounds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from halpc.inputs.cluster import Cluster
from halpc.errors import HalpcError
from halpc.units import ms_or_none
from halpc.planner.plan import BlockPlan, Plan, Strip
from halpc.planner.strategies import best_plan, make_plan
from halpc.planner.context import context, device_speeds
from halpc.planner.predict import predict
from halpc.planner import matching as game
from halpc.planner.layouts import proportional_sizes
from halpc.analyse.strips import block_io, strip_at, strip_macs
from halpc.analyse.trunk import Trunk

CUT_ROUNDS = 3
STRATEGIES = game.STRATEGIES  # matching, alone, selfish, greedy, random


@dataclass(frozen=True)
class Cutting:
    """A source's frame cut at layer position `cut` into `strips` (devices not yet chosen:
    strip k is partition k)."""

    source: str
    cut: int
    bounds: tuple[int, ...]  # row boundaries of the fused block's output
    partitions: tuple[game.Partition, ...]
    gather_s: float  # the layers after the cut, on the source


@dataclass(frozen=True)
class SourcesPlan:
    """An assignment of every source's partitions to nodes, and the plan it makes per source."""

    strategy: str
    cuttings: dict[str, Cutting]
    sources: tuple[game.Source, ...]
    nodes: tuple[game.Node, ...]
    assignment: dict[game.Key, str]
    evaluation: game.Evaluation
    plans: dict[str, Plan]
    matching: game.Matching | None = None  # with its rounds, for the matching

    def to_dict(self) -> dict[str, Any]:
        """What the manifest records: per source its cut, partitions and predicted latency;
        the nodes; and for the matching its rounds."""
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "sources": {
                s.name: {"rate_hz": s.rate_hz, "cut": self.cuttings[s.name].cut,
                         "gather_ms": s.gather_ms,
                         "predicted_ms": ms_or_none(self.evaluation.latency[s.name], 3),
                         "partitions": [{"gmac": p.gmac, "in_bytes": p.in_bytes, "out_bytes": p.out_bytes,
                                         "rows": list(self.cuttings[s.name].bounds[p.index:p.index + 2]),
                                         "node": self.assignment[p.key]} for p in s.partitions]}
                for s in self.sources},
            "nodes": [{"name": n.name, "gmacs": n.gmacs} for n in self.nodes],
        }
        if self.matching is not None:
            out["matching"] = {"stable": self.matching.stable, "rounds": [r.to_dict() for r in self.matching.rounds],
                               "initial": [{"source": k[0], "index": k[1], "node": n}
                                           for k, n in self.matching.initial.items()]}
        return out



def nodes_of(cluster: Cluster) -> tuple[game.Node, ...]:
    """Every device as a matching node at its speed (a source's own device is private to it)."""
    speeds = device_speeds(cluster)
    return tuple(game.Node(d.name, speeds[d.name]) for d in cluster.devices)


def cutting(trunk: Trunk, cluster: Cluster, source: str, cut: int) -> Cutting:
    """`source`'s frame cut at `cut`: strips sized by the GMAC/s of the nodes it may use."""
    view = cluster.view(source)
    speeds = device_speeds(view)
    io = block_io(trunk, 0, cut)
    rows = trunk.tensors[io.reference].rows
    capacities = sorted((speeds[d] for d in view.names), reverse=True)[:rows]
    sizes = proportional_sizes(capacities, rows)
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    parts = []
    for k in range(len(sizes)):
        strip = strip_at(trunk, io, bounds, k)
        in_bytes = sum((r[1] - r[0]) * trunk.tensors[t].row_bytes for t, r in strip.inputs.items())
        out_bytes = sum((r[1] - r[0]) * trunk.tensors[t].row_bytes for t, r in strip.outputs.items())
        parts.append(game.Partition(source, k, strip_macs(trunk, io, strip) / 1e9, in_bytes, out_bytes))
    end = len(trunk.layers)
    rest = sum(layer.macs for layer in trunk.layers[cut:end]) + trunk.tail_macs
    return Cutting(source, cut, tuple(bounds), tuple(parts), rest / (speeds[source] * 1e9))


def plan_sources(cluster: Cluster, trunks: Mapping[str, Trunk], strategy: str = "matching",
                 seed: int = 0) -> SourcesPlan:
    """Cuts, partitions and their assignment by `strategy` (`STRATEGIES`), and a plan per source."""
    if strategy not in STRATEGIES:
        raise HalpcError(f"unknown strategy {strategy!r} for several sources; choose from {', '.join(STRATEGIES)}")
    names = [s.name for s in cluster.sources]
    nodes = nodes_of(cluster)
    link = game.cluster_link(cluster)
    options = {s: _cut_options(trunks[s], cluster, s) for s in names}

    def solve(cuts: Mapping[str, Cutting]) -> tuple[tuple[game.Source, ...], game.Evaluation, game.Matching | None]:
        sources = tuple(_source(cluster, cuts[s]) for s in names if s in cuts)
        if strategy == "matching":
            m = game.match(sources, nodes, link, seed)
            return sources, m, m
        return sources, game.evaluate(game.assign(strategy, sources, nodes, link, seed), sources, nodes, link), None

    def mean_latency(cuts: Mapping[str, Cutting]) -> float:
        return sum(solve(cuts)[1].latency.values()) / len(cuts)

    # Each source's best cut alone, then in turn the cut best for all, until none changes.
    chosen = {s: min(options[s], key=lambda c, s=s: mean_latency({s: c})) for s in names}
    for _ in range(CUT_ROUNDS if len(names) > 1 else 0):
        changed = False
        for s in names:
            best = min(options[s], key=lambda c: (mean_latency({**chosen, s: c}), c.cut != chosen[s].cut))
            changed |= best.cut != chosen[s].cut
            chosen[s] = best
        if not changed:
            break
    sources, evaluation, matched = solve(chosen)
    assignment = evaluation.assignment
    plans = {s: _plan(trunks[s], cluster, chosen[s], assignment, strategy, evaluation.latency[s]) for s in names}
    return SourcesPlan(strategy, chosen, sources, nodes, assignment, evaluation, plans, matched)


def _cut_options(trunk: Trunk, cluster: Cluster, source: str) -> list[Cutting]:
    return [cutting(trunk, cluster, source, cut) for cut in [c.position for c in trunk.cuts] + [len(trunk.layers)]]


def _source(cluster: Cluster, c: Cutting) -> game.Source:
    rate = cluster.device(c.source).rate_hz
    assert rate is not None
    return game.Source(c.source, rate, c.partitions, c.gather_s * 1e3)


def _plan(trunk: Trunk, cluster: Cluster, c: Cutting, assignment: Mapping[game.Key, str], strategy: str,
          latency_s: float) -> Plan:
    """The source's plan: the fused block's strips on their assigned nodes, the rest on the source."""
    strips: list[Strip] = []
    for k, (a, b) in enumerate(zip(c.bounds, c.bounds[1:])):
        device = assignment[(c.source, k)]
        if strips and strips[-1].device == device:  # neighbours on one node: one strip, no halo between
            a = strips.pop().rows[0]
        strips.append(Strip(device, (a, b)))
    ctx = context(trunk, cluster.view(c.source))
    blocks = [BlockPlan(0, c.cut, ctx.legal.strips(0, c.cut, tuple(strips)))]  # exact on the target
    end = len(trunk.layers)
    if c.cut < end:
        rows = trunk.tensors[block_io(trunk, c.cut, end).reference].rows
        blocks.append(BlockPlan(c.cut, end, (Strip(c.source, (0, rows)),)))
    plan = Plan(strategy, trunk.model.sha256, dict(trunk.model.input_shapes), tuple(blocks))
    alone = predict(ctx, plan).latency_s
    # latency_ms: this frame on idle nodes (the timeline); shared_ms: the matching's model,
    # with the other sources' work queued on the same nodes.
    return Plan(strategy, plan.model_sha256, plan.input_shapes, plan.blocks,
                {"latency_ms": round(alone * 1e3, 3), "shared_ms": ms_or_none(latency_s, 3)})


def plan_each(cluster: Cluster, trunks: Mapping[str, Trunk], strategy: str) -> dict[str, Plan]:
    """Every source planned by a one-host strategy (e.g. halp) as if it were alone with the
    helpers: what each source would do ignoring the others."""
    plans = {}
    for s in cluster.sources:
        ctx = context(trunks[s.name], cluster.view(s.name))
        plans[s.name] = best_plan(ctx) if strategy == "best" else make_plan(ctx, strategy)
    return plans


def compare_sources(cluster: Cluster, trunks: Mapping[str, Trunk], horizon_s: float = 20.0, seed: int = 0,
                    arrivals: str = "periodic", strategies: Sequence[str] = STRATEGIES
                    ) -> tuple[list[dict[str, Any]], dict[str, SourcesPlan]]:
    """Per strategy and source: the cost model's latency and the simulated mean and p95 over
    `horizon_s` of frames at each source's rate (the same frames for every strategy)."""
    rows, planned = [], {}
    for strategy in strategies:
        sp = plan_sources(cluster, trunks, strategy, seed)
        planned[strategy] = sp
        sim = game.play_frames(sp.assignment, sp.sources, sp.nodes, game.cluster_link(cluster), horizon_s, seed,
                            arrivals)
        for s in sp.sources:
            st = sim[s.name]
            rows.append({"strategy": strategy, "source": s.name, "rate_hz": s.rate_hz,
                         "predicted_ms": ms_or_none(sp.evaluation.latency[s.name], 3), "mean_ms": ms_or_none(st.mean_s, 3),
                         "p95_ms": ms_or_none(st.p95_s, 3), "frames": st.frames})
    return rows, planned
