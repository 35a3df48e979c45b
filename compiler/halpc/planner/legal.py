"""Strips that keep the promise: every strip computes exactly the unsplit model's rows on the target.

A layout proposes strips for a block by speed and links; `Legal.strips` then merges each strip
whose rows would round differently on the target (`analyse.exactness`) into a neighbour, until
every strip is exact. Merging always ends: the block whole on the host is the unsplit
computation itself. So a layer that no split can keep exact stays on one device, and where the
rules allow it the DP still gets the split it wanted.
"""
from __future__ import annotations

from dataclasses import replace

from halpc.analyse.exactness import ExactnessRules, Threads
from halpc.analyse.strips import block_io, strip_at
from halpc.analyse.trunk import Trunk
from halpc.inputs.cluster import Cluster
from halpc.inputs.target import Target
from halpc.planner.plan import Plan, Strip, join_neighbours


class Legal:
    def __init__(self, trunk: Trunk, cluster: Cluster, target: Target) -> None:
        self.trunk, self.cluster, self.target = trunk, cluster, target
        self.rules = ExactnessRules(trunk, target)
        self.host = cluster.host.name
        self._memo: dict = {}

    def threads(self, device: str) -> Threads:
        return Threads(self.cluster.host.threads, self.cluster.device(device).threads)

    def why_inexact(self, start: int, stop: int, strips: tuple[Strip, ...]) -> str | None:
        """None if every strip of the block is exact, else which strip is not and why."""
        found = self._first_inexact(start, stop, strips)
        if found is None:
            return None
        j, why = found
        strip = strips[j]
        return (f"strip {j} ({strip.device}, rows {strip.rows[0]}..{strip.rows[1]} of "
                f"{block_io(self.trunk, start, stop).reference}): {why}")

    def _first_inexact(self, start: int, stop: int, strips: tuple[Strip, ...]) -> tuple[int, str] | None:
        """The first strip that is not exact and why (answers memoized: the DP asks often)."""
        io = block_io(self.trunk, start, stop)
        bounds = [strips[0].rows[0]] + [s.rows[1] for s in strips]
        for j, strip in enumerate(strips):
            key = (start, stop, tuple(bounds), j, strip.device)
            if key not in self._memo:
                rows = strip_at(self.trunk, io, bounds, j)
                self._memo[key] = self.rules.why_inexact(io, rows, self.threads(strip.device))
            if self._memo[key]:
                return j, self._memo[key]
        return None

    def strips(self, start: int, stop: int, strips: tuple[Strip, ...]) -> tuple[Strip, ...]:
        """`strips`, with each inexact strip merged into a neighbour until every one is exact."""
        strips = tuple(strips)
        while (found := self._first_inexact(start, stop, strips)) is not None:
            strips = self._merge(strips, found[0])
        return strips

    def plan(self, plan: Plan) -> Plan:
        """The plan with every block's strips made exact (blocks, strategy and exchange kept)."""
        blocks = tuple(replace(b, strips=self.strips(b.start, b.stop, b.strips)) for b in plan.blocks)
        return Plan(plan.strategy, plan.model_sha256, plan.input_shapes, blocks, plan.predicted, plan.exchange)

    def plan_why_inexact(self, plan: Plan) -> str | None:
        for k, block in enumerate(plan.blocks):
            why = self.why_inexact(block.start, block.stop, block.strips)
            if why:
                return f"block {k}: {why}"
        return None

    def _merge(self, strips: tuple[Strip, ...], j: int) -> tuple[Strip, ...]:
        """Strip `j` merged into its smaller neighbour, whose device takes the rows (the loads stay
        most even); alone, a device whose threads differ from the reference's: the host's then."""
        if len(strips) == 1:
            return (Strip(self.host, strips[0].rows),)
        neighbours = [n for n in (j - 1, j + 1) if 0 <= n < len(strips)]
        n = min(neighbours, key=lambda n: strips[n].rows[1] - strips[n].rows[0])
        a, b = sorted((j, n))
        merged = Strip(strips[n].device, (strips[a].rows[0], strips[b].rows[1]))
        return join_neighbours((*strips[:a], merged, *strips[b + 1:]))
