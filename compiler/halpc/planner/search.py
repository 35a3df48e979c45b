"""Choosing blocks: dynamic programming over cut points, and the exhaustive oracle that checks it.

The planning objective is additive over blocks: a block's cost is the time its own steps take
when every device starts it together, given who holds which rows after the block before it
(that decides what must be exchanged). Strip layouts are a function of the block alone, so the
state of the DP is the pair (previous block, this boundary) and the DP is exact for this
objective: `exhaustive` enumerates every set of cut points with the same costs and must agree.
Pairs whose lower bound (`Context.cost_floor`) cannot beat the best entry found are not played,
which keeps the DP exact and plays about a quarter of the pairs.
The full timeline of the chosen plan, with overlap across blocks, is predicted by `cost.play`.
Where the two disagree, `refine` swaps single blocks' layouts while the full timeline says the
plan gets faster (a few dozen predictions, after the DP).
"""
from __future__ import annotations

import itertools
from typing import Callable

from halpc.errors import HalpcError
from halpc.planner.plan import BlockPlan
from halpc.planner.context import Context

Layout = Callable[[int, int], BlockPlan | None]  # (start, stop) -> that block laid out; None: not offered
EXHAUSTIVE_LIMIT = 300_000  # plans: (layouts + 1) ** cut points
FLOOR_SLACK_S = 1e-9  # `Context.cost_floor` sums in another order than the timeline: rounding
MAX_BLOCK_CUTS = 6  # a block spans at most this many cut points: deeper ones redo too much halo (and cost planning time)


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
    table: dict[tuple[int, int, int], tuple[float, tuple[int, int, int] | None]] = {}
    for stop in positions[1 : MAX_BLOCK_CUTS + 2]:
        for o, block in _offered(layouts, 0, stop):
            table[(0, stop, o)] = (ctx.block_cost(None, block), None)
    for i, start in enumerate(positions[1:-1], start=1):
        entering = sorted((k for k in table if k[1] == start), key=lambda k: table[k][0])
        for stop in positions[i + 1 : i + MAX_BLOCK_CUTS + 2]:
            for o, block in _offered(layouts, start, stop):
                best = None
                for prev in entering:
                    before = _block(layouts, *prev)
                    if best is not None and table[prev][0] + ctx.cost_floor(before, block) > best[0] + FLOOR_SLACK_S:
                        continue  # cannot beat the best entry found: not played
                    cost = table[prev][0] + ctx.block_cost(before, block)
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
            f"exhaustive would try about {(len(layouts) + 1) ** len(cuts):.2g} plans "
            f"for {len(cuts)} cut points; it is for small models (use dpfp or halp, which it "
            "proves optimal)", option="strategy"
        )
    best: tuple[float, list[BlockPlan]] | None = None
    for count in range(len(cuts) + 1):
        for chosen in itertools.combinations(cuts, count):
            bounds = [0, *chosen, ctx.positions[-1]]
            spans = list(zip(bounds, bounds[1:]))
            if any(_cuts_spanned(ctx, a, b) > MAX_BLOCK_CUTS for a, b in spans):
                continue
            offered = [[block for _, block in _offered(layouts, a, b)] for a, b in spans]
            for chosen_blocks in itertools.product(*offered):
                cost = plan_cost(ctx, list(chosen_blocks))
                if best is None or cost < best[0]:
                    best = (cost, list(chosen_blocks))
    assert best is not None
    return best[1], best[0]


def _offered(layouts: list[Layout], start: int, stop: int) -> list[tuple[int, BlockPlan]]:
    """The layouts of a block that are offered and not the same as an earlier one's (a layout
    over one helper is halp's own on a cluster of two)."""
    offered: dict[BlockPlan, int] = {}
    for o, layout in enumerate(layouts):
        if (block := layout(start, stop)) is not None and block not in offered:
            offered[block] = o
    return [(o, block) for block, o in offered.items()]


def _cuts_spanned(ctx: Context, start: int, stop: int) -> int:
    return sum(1 for p in ctx.positions if start < p < stop)


def _block(layouts: list[Layout], start: int, stop: int, option: int) -> BlockPlan:
    block = layouts[option](start, stop)
    assert block is not None  # only offered layouts enter the table
    return block


def refine(blocks: list[BlockPlan], latency: float, layouts: list[Layout],
           judge: Callable[[list[BlockPlan]], float], passes: int = 2) -> tuple[list[BlockPlan], float]:
    """`blocks` (of predicted `latency`) with one block at a time laid out by another of
    `layouts`, kept where `judge` (the full timeline) finds the plan faster; until a pass finds
    nothing. The DP's objective costs each block as if every device started it together, so it
    can miss a layout whose transfers overlap the next block (see benchmarks/oracle.py)."""
    for _ in range(passes):
        improved = False
        for k, block in enumerate(list(blocks)):
            for layout in layouts:
                other = layout(block.start, block.stop)
                if other is None or other == blocks[k]:
                    continue
                trial = [*blocks[:k], other, *blocks[k + 1:]]
                found = judge(trial)
                if found < latency:
                    blocks, latency, improved = trial, found, True
        if not improved:
            break
    return blocks, latency
