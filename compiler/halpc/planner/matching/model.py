"""The matching game's data: sources, partitions, nodes, links, and what an assignment gives."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from halpc.units import ms_or_none

EPS = 1e-12
"""Seconds: a change counts as an improvement only if it gains more than this."""

CONSENTS = ("total", "pareto", "none")
"""How nodes consent to an exchange (see the module's docstring)."""

Key = tuple[str, int]
"""A partition's identity: (source name, index)."""

LinkSpec = Union[
    Callable[[str, str], "tuple[float, float] | None"],
    Mapping[tuple[str, str], tuple[float, float]],
    None,
]
"""`link(source, node) -> (mbps, latency_ms)`, a dict {(source, node): (mbps, latency_ms)}, or
None. Where it gives nothing (None, or no key), the node's own `mbps` / `latency_ms` hold."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Partition:
    """One piece of one frame of `source`'s model: `gmac` GMAC of work, `in_bytes` to receive
    from the source, `out_bytes` to send back."""

    source: str
    index: int
    gmac: float
    in_bytes: float
    out_bytes: float

    @property
    def key(self) -> Key:
        return (self.source, self.index)


@dataclass(frozen=True)
class Source:
    """A device holding a stream of frames: `rate_hz` frames a second, each made of
    `partitions`; `gather_ms` is its time to put a frame's pieces back together."""

    name: str
    rate_hz: float
    partitions: tuple[Partition, ...]
    gather_ms: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", tuple(self.partitions))
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ValueError(f"source {self.name!r}: rate_hz must be a positive number, got {self.rate_hz!r}")
        if not self.partitions:
            raise ValueError(f"source {self.name!r}: needs at least one partition")
        if self.gather_ms < 0:
            raise ValueError(f"source {self.name!r}: gather_ms must be >= 0")
        seen = set()
        for p in self.partitions:
            if p.source != self.name:
                raise ValueError(f"source {self.name!r}: holds partition {p.key} of another source")
            if p.index in seen:
                raise ValueError(f"source {self.name!r}: two partitions with index {p.index}")
            if min(p.gmac, p.in_bytes, p.out_bytes) < 0:
                raise ValueError(f"partition {p.key}: gmac and bytes must be >= 0")
            seen.add(p.index)


@dataclass(frozen=True)
class Node:
    """A device that computes partitions, one at a time, at `gmacs` GMAC/s. `mbps` and
    `latency_ms` are its link to a source unless the `link` argument says otherwise."""

    name: str
    gmacs: float
    mbps: float = 100.0
    latency_ms: float = 2.0

    def __post_init__(self) -> None:
        if not (self.gmacs > 0 and math.isfinite(self.gmacs)):
            raise ValueError(f"node {self.name!r}: gmacs must be a positive number, got {self.gmacs!r}")


def partitions_by_capacity(source_name: str, total_gmac: float, in_bytes: float, out_bytes: float,
                           capacities: Mapping[str, float], pieces: int | None = None
                           ) -> tuple[Partition, ...]:
    """A frame's work cut into `pieces` partitions sized in proportion to node capacity.

    The capacities (GMAC/s per node; the caller may pass effective figures that include links)
    are taken fastest first (ties by name) and cycled when there are more pieces than nodes:
    piece k gets the share `c[k % n] / sum(c[k % n] for all k)` of the work, the input bytes
    and the output bytes. `pieces` defaults to the number of nodes. The index order is that
    order, so piece 0 is the one sized for the fastest node (a hint only: the matching decides
    where each piece goes).

    Simplification: this treats the frame as spatial strips whose work and bytes are
    proportional to their rows. Exact strips (`halpc.analyse.strips`) have halos (extra input rows,
    and rows computed twice at strip borders), whole rows and per-run fixed costs; the
    integration with trunks and strips replaces these figures by exact ones.
    """
    if pieces is None:
        pieces = len(capacities)
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    if not capacities:
        raise ValueError("capacities: give at least one node")
    if any(not (c > 0 and math.isfinite(c)) for c in capacities.values()):
        raise ValueError(f"capacities must be positive numbers, got {dict(capacities)}")
    if min(total_gmac, in_bytes, out_bytes) < 0:
        raise ValueError("total_gmac, in_bytes and out_bytes must be >= 0")
    ordered = sorted(capacities.items(), key=lambda item: (-item[1], item[0]))
    weights = [ordered[k % len(ordered)][1] for k in range(pieces)]
    total = sum(weights)
    return tuple(Partition(source_name, k, total_gmac * w / total, in_bytes * w / total,
                           out_bytes * w / total) for k, w in enumerate(weights))


def cluster_link(cluster: Any) -> Callable[[str, str], tuple[float, float]]:
    """A `link` function from a `halpc.inputs.cluster.Cluster` (anything with `.link(a, b)` giving
    `bandwidth_mbps` and `latency_ms`)."""
    def link(source: str, node: str) -> tuple[float, float]:
        l = cluster.link(source, node)
        return l.bandwidth_mbps, l.latency_ms

    return link


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Exchange:
    """A change of assignment: `moves` are (partition, from node, to node); `before` and
    `after` the completion times (s) of those partitions. kind: "swap" or "move"."""

    kind: str
    moves: tuple[tuple[Key, str, str], ...]
    before: tuple[float, ...]
    after: tuple[float, ...]

    @property
    def gain(self) -> float:
        """Seconds gained by the partitions that change node, together."""
        return sum(b - a for b, a in zip(self.before, self.after))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "moves": [{"source": k[0], "index": k[1], "from": a, "to": b} for k, a, b in self.moves],
                "before_ms": [ms_or_none(t) for t in self.before], "after_ms": [ms_or_none(t) for t in self.after]}


@dataclass(frozen=True)
class Evaluation:
    """An assignment under the cost model: completion (s) per partition, predicted frame latency
    (s) per source, utilisation per node (share of each second busy at the sources' rates)."""

    assignment: dict[Key, str]
    completion: dict[Key, float]
    latency: dict[str, float]
    utilization: dict[str, float]

    @property
    def sum_latency(self) -> float:
        return sum(self.latency.values())

    @property
    def makespan(self) -> float:
        """The latest completion of any partition."""
        return max(self.completion.values())


@dataclass(frozen=True)
class Matching(Evaluation):
    """The matching's result: its `Evaluation`, plus the proposals' assignment (`initial`), the
    exchange `rounds` applied in order, and whether it ended with no blocking change left."""

    initial: dict[Key, str] = field(default_factory=dict)
    rounds: tuple[Exchange, ...] = ()
    stable: bool = True
    moves: bool = True  # the rules it was matched under (blocking_pairs' defaults)
    consent: str = "total"
    problem: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (times in ms; an overloaded node's `inf` becomes null)."""
        return {
            "stable": self.stable,
            "rounds": [r.to_dict() for r in self.rounds],
            "assignment": [{"source": k[0], "index": k[1], "node": n, "initial": self.initial[k],
                            "completion_ms": ms_or_none(self.completion[k])} for k, n in self.assignment.items()],
            "latency_ms": {s: ms_or_none(t) for s, t in self.latency.items()},
            "utilization": {n: round(u, 6) for n, u in self.utilization.items()},
        }


def link_function(link: LinkSpec) -> Callable[[str, str], tuple[float, float] | None]:
    if link is None:
        return lambda source, node: None
    if isinstance(link, Mapping):
        return lambda source, node: link.get((source, node))
    if callable(link):
        return link
    raise TypeError(f"link must be a function, a dict or None, got {type(link).__name__}")
