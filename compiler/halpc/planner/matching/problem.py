"""The matching's cost model: sources, nodes and links turned into per-(partition, node) times.

See the package's docstring for the model; `Problem.node_completions` is its one implementation.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from halpc.planner.matching.model import Evaluation, Key, LinkSpec, Node, Partition, Source, link_function


class Problem:
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
        lookup = link_function(link)

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
