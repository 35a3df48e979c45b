"""Random but valid plans, to exercise the strip construction far beyond the `even` plan."""
from __future__ import annotations

import numpy as np

from halpc.planner.plan import BlockPlan, Plan, Strip
from halpc.analyse.strips import block_io
from halpc.analyse.trunk import Trunk


def random_plan(trunk: Trunk, devices: list[str], seed: int) -> Plan:
    """Random block boundaries among the cut points; per block 1..2n strips of uneven height
    (1-row strips whenever rows allow), devices drawn at random so one may own several strips."""
    rng = np.random.default_rng(seed)
    cuts = [c.position for c in trunk.cuts]
    chosen = sorted(rng.choice(cuts, size=rng.integers(0, len(cuts) + 1), replace=False)) if cuts else []
    positions = [0, *[int(p) for p in chosen], len(trunk.layers)]
    blocks = []
    for start, stop in zip(positions, positions[1:]):
        rows = trunk.tensors[block_io(trunk, start, stop).reference].rows
        count = int(rng.integers(1, min(rows, 2 * len(devices)) + 1))
        inner = sorted(rng.choice(np.arange(1, rows), size=count - 1, replace=False)) if count > 1 else []
        bounds = [0, *[int(b) for b in inner], rows]
        if count > 1 and rows > count and all(b - a > 1 for a, b in zip(bounds, bounds[1:])):
            bounds[1] = 1  # make sure a 1-row strip is in the mix
        order = list(devices) + [str(d) for d in rng.choice(devices, size=max(0, count - len(devices)))]
        rng.shuffle(order)
        strips = tuple(Strip(order[i], (bounds[i], bounds[i + 1])) for i in range(count))
        blocks.append(BlockPlan(start, stop, strips))
    return Plan("random", trunk.model.sha256, dict(trunk.model.input_shapes), tuple(blocks))
