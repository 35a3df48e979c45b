"""Several sources sharing a few nodes: capacity-sized partitions, matched to nodes by a game.

After Mohammed et al., "Distributed Inference Acceleration with Adaptive DNN Partitioning and
Offloading" (INFOCOM 2020). Several sources (cameras) each hold a stream of frames of their own
model; a frame's work is cut into partitions sized by node capacity, and the partitions of all
sources are assigned to the shared nodes by a matching in which each partition wants to finish
as early as possible. This module is the algorithm and its cost model only: pure Python,
independent of ONNX (turning trunks and strips into partitions, cluster files with several
sources, the CLI and the runtime come later).

Vocabulary
----------
- A `Source` releases frames at `rate_hz`; a frame's work is its `partitions`.
- A `Partition` is one piece of one frame: `gmac` of work (GMAC), `in_bytes` it must receive
  from its source and `out_bytes` it sends back.
- A `Node` computes at `gmacs` GMAC/s, one partition at a time. Its `mbps` / `latency_ms` are
  its link to every source unless `link(source, node)` says otherwise.
- A node named like a source is that source's own device: its partitions run there with no
  transfer at all, and it is private to that source (no other source offloads onto a camera).
  Every other node is shared by all sources.

Cost model (one definition, used by the matching, every baseline and `evaluate`)
---------------------------------------------------------------------------------
Times of partition p on node n (no transfer at all when n is p's source's own device)::

    up(p, n)      = in_bytes * 8 / (mbps * 1e6) + latency_ms / 1e3
    service(p, n) = gmac / gmacs
    down(p, n)    = out_bytes * 8 / (mbps * 1e6) + latency_ms / 1e3
    alone(p, n)   = up + service + down        (p on an otherwise idle node)

Links are fixed delays: uploads of different partitions do not slow each other down (a source
sending several strips over one network interface would in reality send them one after the
other; that is left out, as in the paper's model).

**Predicted completion, with the queue already assigned to the node.** A source's partitions
are released together (one frame), and the other sources' frames come at their own rates, at
times unrelated to this frame. So, on node n under an assignment:

- n's utilisation is `rho(n) = sum(rate_hz(source of q) * service(q, n))` over the partitions q
  on n (the share of each second n is busy). At `rho(n) >= 1` the node cannot keep up: its
  queue grows without bound and every partition on it completes at `inf`.
- An input of source s arriving at n first waits for the work of the *other* sources that n
  has not finished yet, on average (the Pollaczek-Khinchine mean residual work, each other
  source sigma bringing one batch of `B(sigma, n) = sum(service(q, n) for q of sigma on n)` per
  frame)::

      wait(s, n) = sum(rate_hz(sigma) * B(sigma, n) ** 2 for sigma != s) / (2 * (1 - rho(n)))

  i.e. the other partitions' per-frame compute times weighted by their sources' request rates
  (a node that others use lightly costs little, one near saturation a lot).
- Then n serves s's partitions one at a time, first come first served by the arrival of their
  input (ties: the order the source lists them), never idle while an input waits::

      ready(p)  = up(p, n) + wait(s, n)
      finish(p) = max(finish of s's partition served before p on n (0 for the first), ready(p))
                  + service(p, n)
      completion(p, n, assignment) = finish(p) + down(p, n)

  the instant p's output is back at its source. With a single source the wait is 0 and this is
  exactly one frame played out on the nodes (`simulate(..., arrivals="single")`).

Adding a partition to a node never makes another one there finish earlier, and removing one
never makes another finish later.

**Frame latency** (predicted, per source) = the latest completion among its partitions, plus
its `gather_ms` (stitching the pieces together; the transfers back are already in the
completions).

The matching game (`match`)
---------------------------
1. *Proposals.* Partitions take turns (sources round-robin, each source's biggest piece first;
   the order of the sources is shuffled by `seed`). Each proposes to the eligible node where it
   would complete earliest given the partitions assigned so far; nodes accept every proposal
   (their side of the game is their consent to exchanges, below). If every node would be
   overloaded, it goes where the utilisation stays lowest.
2. *Exchanges.* A **blocking swap** is two partitions p (on node a) and q (on node b != a), each
   allowed on the other's node, that would *both* complete strictly earlier (by more than
   `EPS` seconds, so float noise cannot cycle) after p moves to b and q to a, **with the two
   nodes consenting**. A **blocking move** is one partition that would complete strictly
   earlier on another node, the two nodes consenting. Each round applies the blocking change
   with the largest total gain for the partitions that move (ties: the first in partition
   order), records it (`Exchange`: who, from where to where, times before and after), and
   looks again, until none is left (`stable=True`); never more than `max_rounds` rounds (then
   `stable=False`).

   The nodes' consent (`consent=`), as in swap matching, where a swap needs the resources'
   approval too:

   - "total" (the default): the completion times of all the partitions on the two nodes,
     the movers included, fall in total: the movers gain more than they cost the partitions
     they now queue with (compared as (how many at inf, sum of the finite ones), by more than
     EPS). Only those two nodes' times change, so every round lowers that pair over all
     partitions, which cannot go on forever: the rounds always end.
   - "pareto": no partition staying on the two nodes completes later. It also always ends,
     but with other sources' interference on every shared node almost nothing is ever
     approved, so the exchanges rarely improve on the proposals.
   - "none": the two partitions alone decide. Their swaps may delay third partitions, and
     can cycle: 15 of the tests' 300 random instances never settle (the cap stops them).

   A matching with no blocking change left under its rule is two-sided exchange stable: no
   pair of partitions both gains by exchanging nodes with the nodes agreeing.

Baselines (same cost model): `alone` (each source runs everything itself), `selfish` (each source
runs this very matching as if it were the only source, the plans are then put together),
`greedy` (every partition to the eligible node with the most GMAC/s, whatever its queue and its
link) and `random` (uniform over the eligible nodes, seeded).

`simulate` plays an assignment out over time (frames released at the sources' rates) and
`compare` tabulates mean and p95 frame latency of the matching and every baseline.
"""
from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "BASELINES",
    "CONSENTS",
    "EPS",
    "STRATEGIES",
    "Evaluation",
    "Exchange",
    "Matching",
    "Node",
    "Partition",
    "Source",
    "SourceStats",
    "alone",
    "assign",
    "blocking_pairs",
    "cluster_link",
    "compare",
    "evaluate",
    "format_table",
    "greedy",
    "match",
    "partitions_by_capacity",
    "proposal_order",
    "random_assignment",
    "selfish",
    "simulate",
]

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
                "before_ms": [_ms(t) for t in self.before], "after_ms": [_ms(t) for t in self.after]}


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
                            "completion_ms": _ms(self.completion[k])} for k, n in self.assignment.items()],
            "latency_ms": {s: _ms(t) for s, t in self.latency.items()},
            "utilization": {n: round(u, 6) for n, u in self.utilization.items()},
        }


def _ms(seconds: float) -> float | None:
    return round(seconds * 1e3, 6) if math.isfinite(seconds) else None


# --------------------------------------------------------------------------- the problem


class _Problem:
    """Sources, nodes and links turned into per-(partition, node) times, partitions and nodes
    numbered (partitions in source order, then as each source lists them)."""

    def __init__(self, sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec,
                 private: Collection[str] | None = None) -> None:
        self.sources = tuple(sources)
        self.nodes = tuple(nodes)
        if not self.sources:
            raise ValueError("give at least one source")
        if not self.nodes:
            raise ValueError("give at least one node")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate source names: {names}")
        node_names = [n.name for n in self.nodes]
        if len(set(node_names)) != len(node_names):
            raise ValueError(f"duplicate node names: {node_names}")
        self.node_index = {name: j for j, name in enumerate(node_names)}
        own_devices = set(names) if private is None else set(private) | set(names)
        lookup = _link_function(link)

        self.parts: list[Partition] = [p for s in self.sources for p in s.partitions]
        self.keys: list[Key] = [p.key for p in self.parts]
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        self.source_of = [si for si, s in enumerate(self.sources) for _ in s.partitions]
        self.source_rate = [s.rate_hz for s in self.sources]
        self.rate = [self.sources[si].rate_hz for si in self.source_of]
        n_nodes = len(self.nodes)
        # per node j: lists indexed by partition i (the inner loops run over one node)
        self.up = [[0.0] * len(self.parts) for _ in range(n_nodes)]
        self.serve = [[0.0] * len(self.parts) for _ in range(n_nodes)]
        self.down = [[0.0] * len(self.parts) for _ in range(n_nodes)]
        self.load = [[0.0] * len(self.parts) for _ in range(n_nodes)]  # rate * service
        self.ok = [[False] * n_nodes for _ in self.parts]
        for j, node in enumerate(self.nodes):
            is_private = node.name in own_devices
            for i, p in enumerate(self.parts):
                own = node.name == p.source
                self.ok[i][j] = own or not is_private
                if own:
                    up = down = 0.0
                else:
                    given = lookup(p.source, node.name)
                    mbps, latency_ms = given if given is not None else (node.mbps, node.latency_ms)
                    if not (mbps > 0) or latency_ms < 0:
                        raise ValueError(f"link {p.source!r} -> {node.name!r}: mbps must be > 0 and "
                                         f"latency_ms >= 0, got {(mbps, latency_ms)}")
                    up = p.in_bytes * 8 / (mbps * 1e6) + latency_ms / 1e3
                    down = p.out_bytes * 8 / (mbps * 1e6) + latency_ms / 1e3
                self.up[j][i] = up
                self.down[j][i] = down
                self.serve[j][i] = p.gmac / node.gmacs
                self.load[j][i] = self.rate[i] * self.serve[j][i]
        for i, p in enumerate(self.parts):
            if not any(self.ok[i]):
                raise ValueError(f"partition {p.key} has no node it may run on (its source's own "
                                 "device is absent and every node is another source's)")
        self.eligible = [tuple(j for j in range(n_nodes) if self.ok[i][j]) for i in range(len(self.parts))]
        self.alone = [[self.up[j][i] + self.serve[j][i] + self.down[j][i] for j in range(n_nodes)]
                      for i in range(len(self.parts))]
        # first come first served by input arrival; ties by partition number
        self.rank = []
        for j in range(n_nodes):
            order = sorted(range(len(self.parts)), key=lambda i: (self.up[j][i], i))
            rank = [0] * len(self.parts)
            for r, i in enumerate(order):
                rank[i] = r
            self.rank.append(rank)

    # -- assignments by number

    def indices(self, assignment: Mapping[Key, str]) -> list[int]:
        """An assignment {key: node name} as node numbers by partition number, checked."""
        extra = set(assignment) - set(self.key_index)
        if extra:
            raise ValueError(f"assignment names unknown partitions: {sorted(extra)}")
        out = []
        for i, k in enumerate(self.keys):
            if k not in assignment:
                raise ValueError(f"assignment leaves partition {k} out")
            name = assignment[k]
            if name not in self.node_index:
                raise ValueError(f"partition {k} assigned to unknown node {name!r}")
            j = self.node_index[name]
            if not self.ok[i][j]:
                raise ValueError(f"partition {k} may not run on {name!r} (another source's own device)")
            out.append(j)
        return out

    def names(self, assign: Sequence[int]) -> dict[Key, str]:
        return {k: self.nodes[assign[i]].name for i, k in enumerate(self.keys)}

    def members(self, assign: Sequence[int]) -> list[list[int]]:
        """Per node, its partitions in serving order."""
        queues: list[list[int]] = [[] for _ in self.nodes]
        for i, j in enumerate(assign):
            queues[j].append(i)
        for j, q in enumerate(queues):
            q.sort(key=self.rank[j].__getitem__)
        return queues

    # -- the cost model

    def node_completions(self, j: int, queue: Sequence[int], only: int = -1) -> dict[int, float]:
        """Completion of every partition in `queue` (serving order) on node j, or of `only`.

        The one implementation of the cost model's queue (see the module's docstring)."""
        load, serve, source_of = self.load[j], self.serve[j], self.source_of
        busy = 0.0
        batch: dict[int, float] = {}  # source number -> its frame's service on j
        for i in queue:
            busy += load[i]
            si = source_of[i]
            batch[si] = batch.get(si, 0.0) + serve[i]
        if busy >= 1.0:
            return {i: math.inf for i in queue}
        # expected wait for the other sources' work (mean residual work, Pollaczek-Khinchine)
        wait = {}
        for si in batch:
            residual = 0.0
            for other, work in batch.items():
                if other != si:
                    residual += self.source_rate[other] * work * work
            wait[si] = residual / (2.0 * (1.0 - busy))
        up, down = self.up[j], self.down[j]
        clock = dict.fromkeys(batch, 0.0)
        out = {}
        for i in queue:  # each source's partitions first come first served, each input late by the wait
            si = source_of[i]
            u = up[i] + wait[si]
            t = clock[si]
            t = (t if t > u else u) + serve[i]
            clock[si] = t
            if only < 0:
                out[i] = t + down[i]
            elif i == only:
                return {i: t + down[i]}
        return out

    def place(self, p: int, j: int, queue: Sequence[int], without: int = -1) -> float:
        """Completion of p if it joined node j's queue (in serving order), with partition
        `without` leaving it: exactly what `node_completions` gives once it has."""
        rank = self.rank[j]
        mine = rank[p]
        joined: list[int] = []
        added = False
        for i in queue:
            if i == without:
                continue
            if not added and rank[i] > mine:
                joined.append(p)
                added = True
            joined.append(i)
        if not added:
            joined.append(p)
        return self.node_completions(j, joined, only=p)[p]

    def completions(self, assign: Sequence[int]) -> list[float]:
        comp = [0.0] * len(self.parts)
        for j, queue in enumerate(self.members(assign)):
            for i, t in self.node_completions(j, queue).items():
                comp[i] = t
        return comp

    def evaluation(self, assign: Sequence[int]) -> Evaluation:
        comp = self.completions(assign)
        latest = [0.0] * len(self.sources)
        for i, t in enumerate(comp):
            latest[self.source_of[i]] = max(latest[self.source_of[i]], t)
        util = [0.0] * len(self.nodes)
        for i, j in enumerate(assign):
            util[j] += self.load[j][i]
        return Evaluation(
            self.names(assign),
            {k: comp[i] for i, k in enumerate(self.keys)},
            {s.name: latest[si] + s.gather_ms / 1e3 for si, s in enumerate(self.sources)},
            {n.name: util[j] for j, n in enumerate(self.nodes)},
        )

    # -- the game

    def propose(self, order: Sequence[int]) -> list[int]:
        assign = [-1] * len(self.parts)
        queues: list[list[int]] = [[] for _ in self.nodes]
        loads = [0.0] * len(self.nodes)
        for p in order:
            best = None
            for j in self.eligible[p]:
                t = self.place(p, j, queues[j])
                key = (t, loads[j] + self.load[j][p], self.alone[p][j], j)
                if best is None or key < best[0]:
                    best = (key, j)
            assert best is not None
            j = best[1]
            assign[p] = j
            queues[j].append(p)
            queues[j].sort(key=self.rank[j].__getitem__)
            loads[j] += self.load[j][p]
        return assign

    def blocking(self, assign: Sequence[int], moves: bool = True, consent: str = "total") -> list[Exchange]:
        """Every blocking swap (and, with `moves`, every blocking move), in partition order."""
        if consent not in CONSENTS:
            raise ValueError(f"consent must be one of {', '.join(CONSENTS)}, got {consent!r}")
        queues = self.members(assign)
        comp = [0.0] * len(self.parts)
        for j, queue in enumerate(queues):
            for i, t in self.node_completions(j, queue).items():
                comp[i] = t
        found: list[Exchange] = []
        for p in range(len(self.parts)):
            a, cp = assign[p], comp[p]
            for b in self.eligible[p]:
                if b == a or self.alone[p][b] >= cp - EPS:
                    continue  # p cannot gain on b whatever leaves it
                if moves:
                    new_p = self.place(p, b, queues[b])
                    if new_p < cp - EPS and self._consent(consent, comp, (a, queues[a], -1, p),
                                                          (b, queues[b], p, -1)):
                        found.append(self._exchange("move", ((p, a, b),), (cp,), (new_p,)))
                for q in queues[b]:
                    if q <= p or not self.ok[q][a] or self.alone[q][a] >= comp[q] - EPS:
                        continue
                    new_p = self.place(p, b, queues[b], without=q)
                    if not new_p < cp - EPS:
                        continue
                    new_q = self.place(q, a, queues[a], without=p)
                    if new_q < comp[q] - EPS and self._consent(consent, comp, (a, queues[a], q, p),
                                                               (b, queues[b], p, q)):
                        found.append(self._exchange("swap", ((p, a, b), (q, b, a)), (cp, comp[q]),
                                                    (new_p, new_q)))
        return found

    def _consent(self, rule: str, comp: list[float], *changes: tuple[int, list[int], int, int]) -> bool:
        """Do the nodes agree to a change, each given as (node, its queue, partition joining or
        -1, partition leaving or -1)? "pareto": no partition staying on them completes later;
        "total": the completion times of every partition on them before and after, movers
        included, fall in total ((number at inf, sum of the finite ones), by more than EPS);
        "none": always."""
        if rule == "none":
            return True
        before: list[float] = []
        after: list[float] = []
        for j, queue, joining, leaving in changes:
            rank = self.rank[j]
            new = [i for i in queue if i != leaving]
            if joining >= 0:
                new = sorted(new + [joining], key=rank.__getitem__)
            times = self.node_completions(j, new)
            if rule == "pareto":
                if any(times[i] > comp[i] + EPS for i in queue if i != leaving):
                    return False
            else:
                before += [comp[i] for i in queue]
                after += times.values()
        if rule == "pareto":
            return True
        old, now = _potential(before), _potential(after)
        return now[0] < old[0] or (now[0] == old[0] and now[1] < old[1] - EPS)

    def _exchange(self, kind: str, moves, before, after) -> Exchange:
        return Exchange(kind, tuple((self.keys[i], self.nodes[a].name, self.nodes[b].name) for i, a, b in moves),
                        tuple(before), tuple(after))


def _potential(times: Sequence[float]) -> tuple[int, float]:
    """(How many are at inf, the sum of the others): what every approved change lowers."""
    return (sum(1 for t in times if t == math.inf), sum(t for t in times if t != math.inf))


def _link_function(link: LinkSpec) -> Callable[[str, str], tuple[float, float] | None]:
    if link is None:
        return lambda source, node: None
    if isinstance(link, Mapping):
        return lambda source, node: link.get((source, node))
    if callable(link):
        return link
    raise TypeError(f"link must be a function, a dict or None, got {type(link).__name__}")


def _problem(sources, nodes, link, private=None) -> _Problem:
    return _Problem(sources, nodes, link, private)


# --------------------------------------------------------------------------- the matching


def proposal_order(sources: Sequence[Source], seed: int = 0) -> list[Key]:
    """The proposals' turn order: the sources shuffled by `seed`, then round-robin, each
    source's biggest piece (GMAC) first (ties by index)."""
    order = list(range(len(sources)))
    _random.Random(seed).shuffle(order)
    lists = [sorted(sources[si].partitions, key=lambda p: (-p.gmac, p.index)) for si in order]
    turns = []
    for r in range(max(len(l) for l in lists)):
        turns += [l[r].key for l in lists if r < len(l)]
    return turns


def match(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None, seed: int = 0,
          max_rounds: int | None = None, moves: bool = True, consent: str = "total",
          private: Collection[str] | None = None) -> Matching:
    """The matching game (see the module's docstring): proposals, then blocking swaps (and
    blocking moves, unless `moves=False`) applied one per round, biggest gain first, until none
    is left or `max_rounds` (default 10 x partitions x nodes, at least 100) have been applied.
    Deterministic for a given `seed`, which only shuffles the sources' turns. `private`
    names more nodes that are some source's own device (beyond the sources given), so that
    none of these sources offloads onto them (`selfish` plans one source at a time)."""
    problem = _problem(sources, nodes, link, private)
    order = [problem.key_index[k] for k in proposal_order(problem.sources, seed)]
    assign = problem.propose(order)
    initial = problem.names(assign)
    if max_rounds is None:
        max_rounds = max(100, 10 * len(problem.parts) * len(problem.nodes))
    rounds: list[Exchange] = []
    stable = False
    while True:
        candidates = problem.blocking(assign, moves, consent)
        if not candidates:
            stable = True
            break
        if len(rounds) >= max_rounds:
            break
        best = candidates[0]
        for c in candidates[1:]:
            if c.gain > best.gain:
                best = c
        for key, _, to in best.moves:
            assign[problem.key_index[key]] = problem.node_index[to]
        rounds.append(best)
    ev = problem.evaluation(assign)
    return Matching(ev.assignment, ev.completion, ev.latency, ev.utilization,
                    initial=initial, rounds=tuple(rounds), stable=stable, moves=moves,
                    consent=consent, problem=problem)


def blocking_pairs(matching: Matching | Mapping[Key, str], sources: Sequence[Source] | None = None,
                   nodes: Sequence[Node] | None = None, link: LinkSpec = None,
                   moves: bool | None = None, consent: str | None = None) -> list[Exchange]:
    """Every blocking swap (and, with `moves`, blocking move) left in a matching, or in a plain
    assignment {key: node} given with its sources, nodes and link. Empty when stable. `moves`
    and `consent` default to the matching's own rules (else moves=True, consent="total")."""
    if isinstance(matching, Matching):
        moves = matching.moves if moves is None else moves
        consent = matching.consent if consent is None else consent
    moves = True if moves is None else moves
    consent = "total" if consent is None else consent
    if isinstance(matching, Matching) and sources is None:
        problem = matching.problem
    else:
        if sources is None or nodes is None:
            raise ValueError("give sources and nodes with a plain assignment")
        problem = _problem(sources, nodes, link)
    return problem.blocking(problem.indices(matching.assignment if isinstance(matching, Evaluation)
                                            else matching), moves, consent)


def evaluate(assignment: Mapping[Key, str], sources: Sequence[Source], nodes: Sequence[Node],
             link: LinkSpec = None) -> Evaluation:
    """An assignment {(source, index): node name} under the cost model."""
    problem = _problem(sources, nodes, link)
    return problem.evaluation(problem.indices(assignment))


# --------------------------------------------------------------------------- baselines


def alone(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
          seed: int = 0) -> dict[Key, str]:
    """Every source runs all its partitions itself (needs a node named like each source)."""
    names = {n.name for n in nodes}
    missing = [s.name for s in sources if s.name not in names]
    if missing:
        raise ValueError(f"alone needs each source's own device among the nodes; missing: {missing}")
    return {p.key: s.name for s in sources for p in s.partitions}


def selfish(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
            seed: int = 0) -> dict[Key, str]:
    """Each source plans as if it were alone with every node (this matching, on its own
    partitions only); the plans are then put together and meet on the shared nodes."""
    out: dict[Key, str] = {}
    private = [s.name for s in sources]  # the others' own devices stay theirs
    for s in sources:
        out.update(match([s], nodes, link, seed, private=private).assignment)
    return out


def greedy(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
           seed: int = 0) -> dict[Key, str]:
    """Partitions in order, each to the eligible node with the most GMAC/s (ties: the first
    listed), whatever is queued there and whatever its link."""
    problem = _problem(sources, nodes, link)
    out = {}
    for i, k in enumerate(problem.keys):
        j = min(problem.eligible[i], key=lambda j: (-problem.nodes[j].gmacs, j))
        out[k] = problem.nodes[j].name
    return out


def random_assignment(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
                      seed: int = 0) -> dict[Key, str]:
    """Each partition to an eligible node drawn uniformly (seeded)."""
    problem = _problem(sources, nodes, link)
    rng = _random.Random(seed)
    return {k: problem.nodes[rng.choice(problem.eligible[i])].name for i, k in enumerate(problem.keys)}


BASELINES: dict[str, Callable[..., dict[Key, str]]] = {
    "alone": alone,
    "selfish": selfish,
    "greedy": greedy,
    "random": random_assignment,
}
STRATEGIES = ("matching",) + tuple(BASELINES)


def assign(strategy: str, sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
           seed: int = 0) -> dict[Key, str]:
    """The assignment of one of STRATEGIES."""
    if strategy == "matching":
        return match(sources, nodes, link, seed).assignment
    if strategy not in BASELINES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return BASELINES[strategy](sources, nodes, link, seed)


# --------------------------------------------------------------------------- simulation


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


def simulate(assignment: Mapping[Key, str], sources: Sequence[Source], nodes: Sequence[Node],
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
    problem = _problem(sources, nodes, link)
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
        sim = simulate(assignment, sources, nodes, link, horizon_s, seed, arrivals)
        for s in sources:
            st = sim[s.name]
            rows.append({"strategy": strategy, "source": s.name, "rate_hz": s.rate_hz,
                         "predicted_ms": _ms(static.latency[s.name]),
                         "mean_ms": _ms(st.mean_s), "p95_ms": _ms(st.p95_s), "frames": st.frames})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """`compare`'s rows as text: one line per source, mean / p95 ms per strategy."""
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    cell = {(r["strategy"], r["source"]): r for r in rows}

    def show(v: Any) -> str:
        return "inf" if v is None else f"{v:.1f}"

    header = ["source"] + [f"{s} mean/p95 ms" for s in strategies]
    lines = [header]
    for src in sources:
        line = [src]
        for s in strategies:
            r = cell.get((s, src))
            line.append("-" if r is None else f"{show(r['mean_ms'])} / {show(r['p95_ms'])}")
        lines.append(line)
    widths = [max(len(l[c]) for l in lines) for c in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(l, widths)).rstrip() for l in lines)
