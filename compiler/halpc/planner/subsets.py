"""Which helpers pay: a strategy's plan on the subsets of the cluster worth trying.

A helper behind a slow link can cost more than its rows save, and the DP lays each block out
over all the devices of its context or the host alone. So a strategy is also planned on
subsets of the helpers (the host always in) and the fastest predicted plan is kept. The search
goes from the whole cluster down, one helper less at a time, breadth first, and plans a subset
only when its bound could still beat the best plan found: every MAC of the trunk at the
subset's combined speed, nothing sent. With fast links the whole cluster's plan is near that
bound and nothing else is planned; on slow links the search goes deeper.

Subsets that look alike are planned once: same devices' costs and links, device by device
(identical boards on one network: with four helpers, 5 plans instead of 16).

Because every subset that could win is planned (the bound only skips subsets that cannot, a
subset's plan depends on the subset alone, and look-alikes plan alike), the plan for a cluster
is never predicted slower than the plan for the same cluster less any one helper. MAX_SUBSETS
bounds the work for large clusters (2^7 subsets of 7 helpers would all be planned on
hopeless links); the whole cluster and the largest subsets come first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from halpc.planner.context import Context

MAX_SUBSETS = 64


@dataclass(frozen=True)
class Planned:
    """A strategy's result on one subset: its blocks, what the DP minimised, the predicted
    latency on that subset, and the helpers it was planned on."""

    blocks: list
    objective: float | None
    latency_ms: float
    helpers: tuple[str, ...]


PlanOn = Callable[[Context], tuple[list, float | None, float, dict[str, str]]]


def fastest_subset(ctx: Context, plan_on: PlanOn) -> tuple[Planned, dict[str, str]]:
    """The fastest of `plan_on(sub)` over the subsets worth trying, and why each helper the
    whole cluster has and the winner lacks was left out (one phrase per helper). `plan_on`
    gives a subset's blocks, objective, predicted latency (infinite where the plan does not fit
    the devices' memory) and why each device it overfills is over."""
    best: Planned | None = None
    planned: dict[tuple, tuple[float, dict[str, str]]] = {}  # look: latency, devices over memory
    queue = [ctx]
    seen = {frozenset(ctx.cluster.names)}
    while queue and len(planned) < MAX_SUBSETS:
        sub = queue.pop(0)
        look = _look(sub)
        if look in planned or best is not None and bound_ms(sub) >= best.latency_ms:
            continue
        blocks, objective, latency_ms, over = plan_on(sub)
        planned[look] = latency_ms, over
        helpers = tuple(d.name for d in sub.cluster.secondaries)
        if best is None or latency_ms < best.latency_ms:
            best = Planned(blocks, objective, latency_ms, helpers)
        for helper in helpers:
            names = frozenset(sub.cluster.names) - {helper}
            if names not in seen:
                seen.add(names)
                queue.append(sub.without(helper))
    assert best is not None
    return best, _why_left_out(ctx, best, planned)


def bound_ms(ctx: Context) -> float:
    """No plan on `ctx`'s devices is faster than its trunk's MACs at their combined speed."""
    speed = sum(max(ctx.speeds[d], ctx.int8_speeds.get(d, 0.0)) for d in ctx.cluster.names)
    return ctx.trunk.macs / (speed * 1e9) * 1e3


def _look(ctx: Context) -> tuple:
    """What a subset's plan depends on, without the devices' names: each device's costs, its
    link to the host and its links to the others (sorted); the host's marked."""
    cluster, host = ctx.cluster, ctx.cluster.host.name

    def link(a: str, b: str) -> tuple[float, float]:
        found = cluster.link(a, b)
        return found.bandwidth_mbps, found.latency_ms

    def device(d) -> tuple:
        costs = tuple(values.get(d.name) for values in (ctx.speeds, ctx.int8_speeds, ctx.overheads,
                                                            ctx.weight_rates, ctx.message_overheads, ctx.memory_mb,
                                                            ctx.layer_fixed))
        others = sorted(link(d.name, o.name) for o in cluster.secondaries if o.name != d.name)
        return (d.host, costs, d.threads, d.arch, None if d.host else link(host, d.name), tuple(others))

    return tuple(sorted((device(d) for d in cluster.devices), key=repr))  # repr: None beside numbers


def _why_left_out(ctx: Context, best: Planned, planned: dict[tuple, tuple[float, dict[str, str]]]) -> dict[str, str]:
    everyone = [d.name for d in ctx.cluster.secondaries]
    why = {}
    for helper in (h for h in everyone if h not in best.helpers):
        rest = [h for h in everyone if h not in best.helpers and h != helper]
        sub = ctx
        for other in rest:
            sub = sub.without(other)
        with_it, over = planned.get(_look(sub), (None, {}))
        if helper in over:
            why[helper] = f"its share of the plan {over[helper]}"
        elif over:
            why[helper] = "the plan with it overfills " + "; ".join(f"{d}: {w}" for d, w in over.items())
        elif with_it is not None:
            why[helper] = f"with it {with_it:.1f} ms, without {best.latency_ms:.1f} ms"
        else:
            why[helper] = f"{best.latency_ms:.1f} ms without it; no plan with it can beat that"
    return why
