"""Frames played out over time on an assignment (a single FIFO server per node), and the table
of every strategy's predicted and simulated frame latency."""
from __future__ import annotations

import math
import random as _random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halpc.planner.matching.baselines import STRATEGIES, assign
from halpc.planner.matching.game import evaluate
from halpc.planner.matching.model import Key, LinkSpec, Node, Source
from halpc.units import ms_or_none
from halpc.planner.matching.problem import Problem



@dataclass(frozen=True)
class SourceStats:
    """Simulated frame latencies of one source, in seconds (p95: nearest rank)."""

    frames: int
    mean_s: float
    p95_s: float
    max_s: float


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) by nearest rank: the smallest value that at least q%
    of `values` do not exceed (one of the values, unlike an interpolated percentile)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def release_times(source: Source, horizon_s: float, rng: _random.Random, arrivals: str = "periodic",
                  jitter: float = 0.1) -> list[float]:
    """When `source` releases its frames in [0, horizon_s).

    - "periodic": every 1/rate_hz seconds from a random phase in [0, period), each frame late
      by a uniform random delay in [0, jitter x period) (so frames keep their order);
    - "poisson": exponential gaps of mean 1/rate_hz;
    - "single": one frame at time 0 (every source together: the worst case of synchronised
      sources; for a single source, the cost model's frame exactly).
    """
    if arrivals == "single":
        return [0.0]
    period = 1.0 / source.rate_hz
    times = []
    if arrivals == "periodic":
        t = rng.uniform(0.0, period)
        while t < horizon_s:
            times.append(t + rng.uniform(0.0, jitter * period))
            t += period
    elif arrivals == "poisson":
        t = rng.expovariate(source.rate_hz)
        while t < horizon_s:
            times.append(t)
            t += rng.expovariate(source.rate_hz)
    else:
        raise ValueError(f"arrivals must be 'periodic', 'poisson' or 'single', got {arrivals!r}")
    return times


def play_frames(assignment: Mapping[Key, str], sources: Sequence[Source], nodes: Sequence[Node],
             link: LinkSpec = None, horizon_s: float = 10.0, seed: int = 0,
             arrivals: str = "periodic", jitter: float = 0.1) -> dict[str, SourceStats]:
    """Play an assignment out: each source releases frames in [0, horizon_s) (see
    `release_times`; random draws seeded by `seed`, sources in order); every partition of a
    frame is uploaded to its node (a fixed delay), waits there first come first served by
    arrival (ties: earlier release, then partition order, as in the cost model), is computed alone
    (its service time), and its output comes back after another fixed delay. A frame is done
    when its last output is back, plus the source's gather time. Every frame released is
    followed to its end (an overloaded node shows as growing latencies).

    Links being fixed delays and nodes independent, each node is a single FIFO server whose
    arrivals are known in advance, so the events are played node by node in arrival order
    (the Lindley recursion: start = max(previous finish, arrival)); that is the same
    discrete-event simulation without an event heap.

    Returns per source the number of frames, mean, p95 and max frame latency (s). With one
    source and arrivals="single" it reproduces the cost model's frame latency (except that an
    overloaded node's `inf` does not apply: one frame is always served). With several sources
    the cost model predicts the other sources' interference on average (see the module's
    docstring); the simulation shows what it is with these particular arrivals."""
    problem = Problem(sources, nodes, link)
    assign = problem.indices(assignment)
    rng = _random.Random(seed)
    releases = [release_times(s, horizon_s, rng, arrivals, jitter) for s in problem.sources]
    first = [0] * len(problem.sources)  # a source's first partition number
    for si in range(1, len(problem.sources)):
        first[si] = first[si - 1] + len(problem.sources[si - 1].partitions)
    jobs: list[list[tuple[float, float, int, int]]] = [[] for _ in problem.nodes]
    for i, j in enumerate(assign):
        si = problem.source_of[i]
        for f, t in enumerate(releases[si]):
            jobs[j].append((t + problem.up[j][i], t, i, f))
    done = [[0.0] * len(r) for r in releases]
    for j, queue in enumerate(jobs):
        queue.sort()
        serve, down = problem.serve[j], problem.down[j]
        t = 0.0
        for arrival, _, i, f in queue:
            t = (t if t > arrival else arrival) + serve[i]
            si = problem.source_of[i]
            back = t + down[i]
            if back > done[si][f]:
                done[si][f] = back
    stats = {}
    for si, s in enumerate(problem.sources):
        lat = sorted(d + s.gather_ms / 1e3 - r for d, r in zip(done[si], releases[si]))
        if not lat:
            stats[s.name] = SourceStats(0, math.nan, math.nan, math.nan)
            continue
        stats[s.name] = SourceStats(len(lat), sum(lat) / len(lat), nearest_rank(lat, 95), lat[-1])
    return stats


def compare(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
            horizon_s: float = 10.0, seed: int = 0, arrivals: str = "periodic",
            strategies: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Table rows, one per (strategy, source): the cost model's frame latency
    (`predicted_ms`) and the simulated mean and p95 (`mean_ms`, `p95_ms`, over `frames`).
    Strategies default to the matching and every baseline (`alone` only where every source's
    own device is among the nodes). The same `seed` drives the matching, `random` and the
    simulated arrivals, so every strategy sees the same frames."""
    if strategies is None:
        names = {n.name for n in nodes}
        strategies = [s for s in STRATEGIES
                      if s != "alone" or all(src.name in names for src in sources)]
    rows = []
    for strategy in strategies:
        assignment = assign(strategy, sources, nodes, link, seed)
        static = evaluate(assignment, sources, nodes, link)
        sim = play_frames(assignment, sources, nodes, link, horizon_s, seed, arrivals)
        for s in sources:
            st = sim[s.name]
            rows.append({"strategy": strategy, "source": s.name, "rate_hz": s.rate_hz,
                         "predicted_ms": ms_or_none(static.latency[s.name]),
                         "mean_ms": ms_or_none(st.mean_s), "p95_ms": ms_or_none(st.p95_s), "frames": st.frames})
    return rows
