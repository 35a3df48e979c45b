"""The true oracle for small models: what the DP's plans are held against.

`exhaustive` (planner.search) enumerates cut sets under the DP's own additive objective, so it
proves the DP solves that objective, not that the objective finds the fastest plan. This one
enumerates every set of cut points, for each block every layout halp may choose (its choosers on
every subset of the helpers, host always in, so a block may leave any helper out), and `local`,
and judges each plan by its full predicted timeline (`predict`, overlap across blocks included).
It is slow by design: for a few cut points and 2-4 devices (`tests/test_oracle.py`,
`benchmarks/oracle.py`).
"""
from __future__ import annotations

import itertools
import math

from halpc.errors import HalpcError
from halpc.planner.context import Context
from halpc.planner.memory import over_memory
from halpc.planner.plan import BlockPlan, Plan
from halpc.planner.predict import predict
from halpc.planner.strategies import layout_choices, make_plan

ORACLE_LIMIT = 50_000  # plans judged by the full timeline


def helper_subsets(ctx: Context) -> list[Context]:
    """`ctx` on every subset of its helpers (the host always in), the whole cluster first."""
    helpers = [d.name for d in ctx.cluster.secondaries]
    subsets = []
    for count in range(len(helpers) + 1):
        for dropped in itertools.combinations(helpers, count):
            sub = ctx
            for device in dropped:
                sub = sub.without(device)
            subsets.append(sub)
    return subsets


def true_oracle(ctx: Context) -> tuple[Plan, float, int]:
    """The fastest plan of the space above by the full timeline, its latency (ms) and how many
    plans were judged. Plans that overfill a device's memory do not count."""
    subsets = helper_subsets(ctx)
    options: dict[tuple[int, int], list[BlockPlan]] = {}

    def block_options(start: int, stop: int) -> list[BlockPlan]:
        if (start, stop) not in options:
            found: list[BlockPlan] = []
            for sub in subsets:
                for choose in layout_choices(sub, "halp"):
                    block = choose(start, stop)
                    if block is not None and block not in found:
                        found.append(block)
            options[(start, stop)] = found
        return options[(start, stop)]

    cuts = ctx.positions[1:-1]
    spans_of = [list(zip(b, b[1:])) for count in range(len(cuts) + 1)
                for b in ([0, *chosen, ctx.positions[-1]] for chosen in itertools.combinations(cuts, count))]
    total = sum(math.prod(len(block_options(a, b)) for a, b in spans) for spans in spans_of)
    if total > ORACLE_LIMIT:
        raise HalpcError(f"the true oracle would judge {total} plans for {len(cuts)} cut points and "
                         f"{len(ctx.cluster)} devices (at most {ORACLE_LIMIT}); it is for small models")
    local = make_plan(ctx, "local")
    best = (local.predicted["latency_ms"], local)
    for spans in spans_of:
        for blocks in itertools.product(*(block_options(a, b) for a, b in spans)):
            plan = Plan("oracle", ctx.trunk.model.sha256, dict(ctx.trunk.model.input_shapes), blocks)
            if over_memory(ctx, plan):
                continue
            latency = predict(ctx, plan).latency_s * 1e3
            if latency < best[0]:
                best = (latency, plan)
    return best[1], round(best[0], 3), total + 1
