"""Planning strategies, all costed by one model (`cost`), and the predicted timeline of a plan.

- local: the host runs everything.
- even: a block at every cut point, equal rows per device (a reference point, no cost model).
- modnn: layer-wise (MoDNN): a block at every cut point, rows by device speed, and every
  block's output gathered by the host, which hands out what the next block needs.
- ftp: DeepThings' fused tile partitioning: one fused block of the first layers in equal
  strips (the depth that the cost model likes best), the host runs the rest.
- dpfp: dynamic programming over block boundaries, balanced contiguous strips, rows exchanged
  device to device between blocks.
- halp: the same DP with host-assisted strips (see `layouts.halp`) and, for the first block,
  streamed ones (`layouts.streamed`).
  dpfp and halp are planned on the subsets of helpers that pay (`subsets`), and the DP's blocks
  refined by the full timeline (`search.refine`).
- exhaustive: every set of cut points, with dpfp's and halp's strips: the oracle for both.
"""
from __future__ import annotations

import math
from dataclasses import replace

from halpc.analyse.strips import block_io
from halpc.analyse.trunk import Trunk
from halpc.errors import HalpcError
from halpc.planner import layouts
from halpc.planner.context import Context
from halpc.planner.memory import device_memory, over_memory
from halpc.planner.names import STRATEGIES
from halpc.planner.plan import BlockPlan, Plan, Strip, even_plan
from halpc.planner.predict import predict
from halpc.planner.search import Layout, best_blocks, exhaustive_blocks, plan_cost, refine
from halpc.planner.subsets import fastest_subset
from halpc.progress import Progress, silent

EXHAUSTIVE_CUTS = 8  # `halpc plan` adds the oracle for models with at most this many cut points


def make_plan(ctx: Context, strategy: str) -> Plan:
    trunk = ctx.trunk
    end = len(trunk.layers)
    host = ctx.cluster.host.name
    objective = None
    exchange = "direct"
    left_out: dict[str, str] = {}
    if strategy == "local":
        rows = trunk.tensors[block_io(trunk, 0, end).reference].rows
        blocks = [BlockPlan(0, end, (Strip(host, (0, rows)),))]
    elif strategy == "even":
        blocks = list(even_plan(trunk, list(ctx.cluster.names)).blocks)
    elif strategy == "modnn":
        positions = ctx.positions
        blocks = [BlockPlan(a, b, layouts.contiguous(ctx, a, b, balance=False))
                  for a, b in zip(positions, positions[1:])]
        exchange = "host"
    elif strategy == "ftp":
        blocks = _ftp(ctx)
    elif strategy in ("dpfp", "halp"):
        best, left_out = fastest_subset(ctx, lambda sub: _dp(sub, strategy))
        blocks, objective, ours = best.blocks, best.objective, best.latency_ms
        # The DP's objective adds blocks pairwise; on the full timeline a plan it prefers can
        # lose to one with fewer choices. Keep the promise: halp is never predicted slower
        # than dpfp, nor either slower than local (of the plans that fit the devices' memory).
        for simpler in ("local", "dpfp") if strategy == "halp" else ("local",):
            other = make_plan(ctx, simpler)
            if other.predicted["latency_ms"] < ours and "over_memory" not in other.predicted:
                blocks, objective, ours = list(other.blocks), None, other.predicted["latency_ms"]
                left_out = {d: why for d, why in {**left_out, **other.predicted.get("left_out", {})}.items()
                            if d not in other.devices()}  # still left out, for the reason found
    elif strategy == "exhaustive":
        blocks, objective = exhaustive_blocks(ctx, layout_choices(ctx, "halp"))
    else:
        raise HalpcError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    plan = _plan(ctx, strategy, blocks, exchange)
    prediction = predict(ctx, plan)
    predicted = {"latency_ms": round(prediction.latency_s * 1e3, 3)}
    if objective is not None:
        predicted["objective_ms"] = round(objective * 1e3, 3)
    if left_out:
        predicted["left_out"] = left_out
    memory = device_memory(ctx, plan)
    predicted["memory_mb"] = {d: round(m.total_mb, 1) for d, m in memory.items()}
    over = over_memory(ctx, plan, memory)
    if over:
        predicted["over_memory"] = over
    return Plan(plan.strategy, plan.model_sha256, plan.input_shapes, plan.blocks, predicted,
                exchange)


def _dp(ctx: Context, strategy: str) -> tuple[list[BlockPlan], float, float, dict[str, str]]:
    """The DP's blocks on `ctx`'s devices, refined by the full timeline (`search.refine`), its
    objective, the predicted latency (ms; infinite when the plan gives a device more memory
    than it has) and why each such device is over.

    The DP's objective adds blocks pairwise and misses overlap across blocks, so one layout
    more can lead it to a plan whose full timeline is slower: halp's DP runs again without its
    narrowed blocks (`layouts.one_helper`, the last choice; the pairs are costed already) and
    the faster timeline is kept."""
    choices = layout_choices(ctx, strategy)
    best = None
    for offered in (choices, choices[:-1]) if strategy == "halp" else (choices,):
        blocks, objective = best_blocks(ctx, offered)
        plan = _plan(ctx, strategy, blocks)
        over = over_memory(ctx, plan)
        latency_ms = _latency_ms(ctx, blocks, plan, over)
        refined, refined_ms = refine(blocks, latency_ms, offered, lambda b: _latency_ms(ctx, b))
        if refined_ms < latency_ms:
            blocks, objective, latency_ms = refined, plan_cost(ctx, refined), refined_ms
            over = over_memory(ctx, _plan(ctx, strategy, blocks))
        if best is None or latency_ms < best[2]:
            best = blocks, objective, latency_ms, over
    return best


def _latency_ms(ctx: Context, blocks, plan: Plan | None = None, over: dict | None = None) -> float:
    """The predicted latency of `blocks` (ms; infinite where they overfill a device's memory)."""
    plan = plan or _plan(ctx, "", blocks)
    over = over_memory(ctx, plan) if over is None else over
    return math.inf if over else round(predict(ctx, plan, record=False).latency_s * 1e3, 3)


def _plan(ctx: Context, strategy: str, blocks, exchange: str = "direct") -> Plan:
    """The plan of `blocks`, every strip exact on the target (see `legal`)."""
    trunk = ctx.trunk
    blocks = tuple(replace(b, strips=ctx.legal.strips(b.start, b.stop, b.strips)) for b in blocks)
    return Plan(strategy, trunk.model.sha256, dict(trunk.model.input_shapes), blocks, exchange=exchange)


def layout_choices(ctx: Context, strategy: str) -> list[Layout]:
    """Per block, dpfp chooses balanced contiguous strips or the host alone (so it is never
    worse than local); halp may also choose host-assisted strips, and for the first block the
    streamed ones (so it is never worse than dpfp). All under the cost model, each layout made
    exact on the target before it is costed. halp's later blocks may also be laid out over the
    host and one helper (`layouts.one_helper`)."""
    choosers = [layouts.host_only, layouts.contiguous]
    if strategy == "halp":
        choosers += [layouts.boundary_first, layouts.streamed, layouts.one_helper]  # one_helper last: see _dp

    def choice(chooser) -> Layout:
        stream = chooser is layouts.streamed

        def block(a: int, b: int) -> BlockPlan | None:
            key = (chooser, a, b)  # on the context: dpfp and halp, planned on it, share them
            if key not in ctx.laid_out:
                strips = chooser(ctx, a, b)
                ctx.laid_out[key] = None if strips is None else BlockPlan(a, b, ctx.legal.strips(a, b, strips), stream)
            return ctx.laid_out[key]
        return block

    return [choice(f) for f in choosers]


def _ftp(ctx: Context) -> list[BlockPlan]:
    """One fused block of the first layers in equal strips; the host runs the rest alone."""
    trunk = ctx.trunk
    end = len(trunk.layers)
    host = ctx.cluster.host.name
    best = None
    for cut in ctx.positions[1:]:
        fused = BlockPlan(0, cut, ctx.legal.strips(0, cut, layouts.contiguous(ctx, 0, cut, balance=False)))
        blocks = [fused]
        if cut < end:
            rows = trunk.tensors[block_io(trunk, cut, end).reference].rows
            blocks.append(BlockPlan(cut, end, (Strip(host, (0, rows)),)))
        cost = plan_cost(ctx, blocks)
        if best is None or cost < best[0]:
            best = (cost, blocks)
    assert best is not None
    return best[1]


def strategies_for(trunk: Trunk, strategy: str = "all") -> tuple[str, ...]:
    """The strategies `halpc plan` compares: `strategy` beside local, or all of them (exhaustive
    only where the model has few enough cut points to enumerate)."""
    if strategy != "all":
        return tuple(dict.fromkeys(("local", strategy)))
    return tuple(s for s in STRATEGIES if s != "exhaustive" or len(trunk.cuts) <= EXHAUSTIVE_CUTS)


def compare(ctx: Context, strategies: tuple[str, ...] | None = None, progress: Progress = silent) -> dict[str, Plan]:
    """Plans of several strategies (all but exhaustive unless named)."""
    names = strategies or tuple(s for s in STRATEGIES if s != "exhaustive")
    plans = {}
    for i, name in enumerate(names, 1):
        progress(f"planning {name} ({i}/{len(names)})")
        plans[name] = make_plan(ctx, name)
    return plans


def best_plan(ctx: Context, progress: Progress = silent) -> Plan:
    """The fastest plan of every strategy that fits the devices' memory."""
    plans = compare(ctx, progress=progress)
    fitting = [p for p in plans.values() if "over_memory" not in p.predicted]
    if not fitting:
        raise HalpcError(f"no plan fits the devices' memory: {memory_verdict(plans['local'])}; "
                         "raise memory_mb where the board has more, or give the host a smaller model")
    return min(fitting, key=lambda p: p.predicted["latency_ms"])


def memory_verdict(plan: Plan) -> str:
    """`plan`'s devices over their memory_mb, in one phrase ('' when it fits)."""
    return "; ".join(f"{device} {why}" for device, why in plan.predicted.get("over_memory", {}).items())
