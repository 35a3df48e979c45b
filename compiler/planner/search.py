"""Choosing blocks: dynamic programming over cut points, and the exhaustive oracle that checks it.

The planning objective is additive over blocks: a block's cost is the time its own steps take
when every device starts it together, given who holds which rows after the block before it
(that decides what must be exchanged). Strip layouts are a function of the block alone, so the
state of the DP is the pair (previous block, this boundary) and the DP is exact for this
objective: `exhaustive` enumerates every set of cut points with the same costs and must agree.
The full timeline of the chosen plan, with overlap across blocks, is predicted by `cost.simulate`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from halpc.cluster import Cluster
from halpc.emit.schedule import Scheduler, StripJob, block_jobs
from halpc.errors import HalpcError
from halpc.plan import BlockPlan, Strip
from halpc.planner.cost import cluster_transfer, simulate, step_seconds
from halpc.strips import BlockIO, block_io
from halpc.trunk import Trunk

Layout = Callable[[int, int], tuple[Strip, ...]]  # (start, stop) -> strips of that block
EXHAUSTIVE_LIMIT = 300_000  # plans: (layouts + 1) ** cut points
MAX_BLOCK_CUTS = 6  # a block spans at most this many cut points: deeper ones redo too much halo (and cost planning time)


@dataclass
class Context:
    """A model, a cluster and caches shared by every strategy planned for them."""

    trunk: Trunk
    cluster: Cluster
    speeds: dict[str, float]  # GMAC/s
    overheads: dict[str, float] = field(default_factory=dict)  # seconds per model run
    weight_rates: dict[str, float] = field(default_factory=dict)  # GB/s reading weights
    message_overheads: dict[str, float] = field(default_factory=dict)  # seconds per message
    _jobs: dict = field(default_factory=dict)
    _costs: dict = field(default_factory=dict)
    _alone: dict = field(default_factory=dict)  # makespan of a block on its own
    memo: dict = field(default_factory=dict)  # for layout choosers

    def __post_init__(self) -> None:
        self.tensor_specs = tensor_specs(self.trunk)
        self.transfer = cluster_transfer(self.cluster)

    @property
    def positions(self) -> list[int]:
        return [0] + [c.position for c in self.trunk.cuts] + [len(self.trunk.layers)]

    def io(self, start: int, stop: int) -> BlockIO:
        key = ("io", start, stop)
        if key not in self.memo:
            self.memo[key] = block_io(self.trunk, start, stop)
        return self.memo[key]

    def jobs(self, start: int, stop: int, strips: tuple[Strip, ...]) -> list[StripJob]:
        """The block's strip jobs (numbered as block 0: costing does not need the position)."""
        key = (start, stop, strips)
        if key not in self._jobs:
            self._jobs[key] = block_jobs(self.trunk, 0, self.io(start, stop), strips)
        return self._jobs[key]

    def compute_seconds(self, device: str, step: dict) -> float:
        return step_seconds(step, self.speeds[device], self.overheads.get(device, 0.0),
                            self.weight_rates.get(device))

    def block_cost(self, prev: BlockPlan | None, block: BlockPlan, gather: bool = False) -> float:
        """Seconds `block` adds to the timeline after `prev`, all devices starting `prev` together.

        Rows `block` needs from other devices leave as soon as `prev`'s strip that computed
        them is done, so a block's transfers can hide behind the end of the block before it:
        the cost is the makespan of the two blocks played together less that of `prev` alone.
        """
        key = (prev, block, gather)
        if key not in self._costs:
            names = list(self.cluster.names)
            host = self.cluster.host.name
            scheduler = Scheduler(self.trunk, names, host, gather)
            before = 0.0
            if prev is not None:
                scheduler.add_block(0, self.jobs(prev.start, prev.stop, prev.strips), True)
                if (prev, gather) not in self._alone:
                    self._alone[(prev, gather)] = self._makespan(scheduler.programs())
                before = self._alone[(prev, gather)]
            exit_recvs = scheduler.add_block(1, self.jobs(block.start, block.stop, block.strips))
            programs = scheduler.programs()
            programs[host] = programs[host] + exit_recvs
            if block.stop == len(self.trunk.layers):
                programs[host] += scheduler.finish()
            self._costs[key] = self._makespan(programs) - before
        return self._costs[key]

    def message_seconds(self, device: str) -> float:
        return self.message_overheads.get(device, 0.0)

    def _makespan(self, programs: dict) -> float:
        return simulate(programs, self.cluster.host.name, self.compute_seconds, self.transfer,
                        self.tensor_specs, self.message_seconds, record=False).makespan_s


def tensor_specs(trunk: Trunk) -> dict[str, dict]:
    return {
        t: {"shape": list(i.shape), "dtype": i.dtype, "row_axis": i.row_axis}
        for t, i in trunk.tensors.items()
    }


def plan_cost(ctx: Context, blocks: list[BlockPlan], gather: bool = False) -> float:
    total, prev = 0.0, None
    for block in blocks:
        total += ctx.block_cost(prev, block, gather)
        prev = block
    return total


def best_blocks(ctx: Context, layouts: list[Layout]) -> tuple[list[BlockPlan], float]:
    """Dynamic programming over block boundaries and each block's layout: table, then backtrack.

    A table entry is keyed by the last block (start, stop, layout index) and holds the best
    cost of blocks covering [0, stop) that end with it, and the entry before it.
    """
    positions = ctx.positions
    end = positions[-1]
    options = range(len(layouts))
    table: dict[tuple[int, int, int], tuple[float, tuple[int, int, int] | None]] = {}
    for stop in positions[1 : MAX_BLOCK_CUTS + 2]:
        for o in options:
            table[(0, stop, o)] = (ctx.block_cost(None, _block(layouts, 0, stop, o)), None)
    for i, start in enumerate(positions[1:-1], start=1):
        entering = [k for k in table if k[1] == start]
        for stop in positions[i + 1 : i + MAX_BLOCK_CUTS + 2]:
            for o in options:
                block = _block(layouts, start, stop, o)
                best = None
                for prev in entering:
                    cost = table[prev][0] + ctx.block_cost(_block(layouts, *prev), block)
                    if best is None or cost < best[0]:
                        best = (cost, prev)
                if best is not None:
                    table[(start, stop, o)] = best
    cost, key = min((table[k][0], k) for k in table if k[1] == end)
    blocks = []
    while key is not None:
        blocks.append(_block(layouts, *key))
        key = table[key][1]
    return blocks[::-1], cost


def exhaustive_blocks(ctx: Context, layouts: list[Layout]) -> tuple[list[BlockPlan], float]:
    """Every set of cut points and every layout of each block, costed as the DP costs them."""
    cuts = ctx.positions[1:-1]
    if (len(layouts) + 1) ** len(cuts) > EXHAUSTIVE_LIMIT:
        raise HalpcError(
            f"--strategy exhaustive would try about {(len(layouts) + 1) ** len(cuts):.2g} plans "
            f"for {len(cuts)} cut points; it is for small models (use dpfp or halp, which it "
            "proves optimal)"
        )
    best: tuple[float, list[BlockPlan]] | None = None
    for count in range(len(cuts) + 1):
        for chosen in itertools.combinations(cuts, count):
            bounds = [0, *chosen, ctx.positions[-1]]
            spans = list(zip(bounds, bounds[1:]))
            if any(_cuts_spanned(ctx, a, b) > MAX_BLOCK_CUTS for a, b in spans):
                continue
            for choice in itertools.product(range(len(layouts)), repeat=len(spans)):
                blocks = [_block(layouts, a, b, o) for (a, b), o in zip(spans, choice)]
                cost = plan_cost(ctx, blocks)
                if best is None or cost < best[0]:
                    best = (cost, blocks)
    assert best is not None
    return best[1], best[0]


def _cuts_spanned(ctx: Context, start: int, stop: int) -> int:
    return sum(1 for p in ctx.positions if start < p < stop)


def _block(layouts: list[Layout], start: int, stop: int, option: int) -> BlockPlan:
    return BlockPlan(start, stop, layouts[option](start, stop))
