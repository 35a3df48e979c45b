"""Planning strategies, all costed by one model (`cost`), and the predicted timeline of a plan.

- local: the host runs everything.
- even: a block at every cut point, equal rows per device (a reference point, no cost model).
- modnn: layer-wise (MoDNN): a block at every cut point, rows by device speed, and every
  block's output gathered by the host, which hands out what the next block needs.
- ftp: DeepThings' fused tile partitioning: one fused block of the first layers in equal
  strips (the depth that the cost model likes best), the host runs the rest.
- dpfp: dynamic programming over block boundaries, balanced contiguous strips, rows exchanged
  device to device between blocks.
- halp: the same DP with host-assisted strips (see `shares.halp`).
- exhaustive: every set of cut points, with dpfp's and halp's strips: the oracle for both.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from halpc.cluster import Cluster
from halpc.emit.schedule import build_schedule
from halpc.errors import HalpcError
from halpc.plan import BlockPlan, Plan, Strip, even_plan
from halpc.profile import load_profile
from halpc.planner import shares
from halpc.planner.cost import Prediction, cluster_transfer, simulate, step_seconds
from halpc.planner.search import Context, best_blocks, exhaustive_blocks, plan_cost
from halpc.trunk import Trunk

from halpc.strategies import STRATEGIES  # noqa: E402  (re-exported)


def device_speeds(cluster: Cluster) -> dict[str, float]:
    """GMAC/s per device: the cluster file's `gmacs`, else the device's measured profile's."""
    return {
        d.name: d.gmacs if d.gmacs is not None else float(load_profile(d.profile)["gmacs"])
        for d in cluster.devices
    }


def _profiled(cluster: Cluster, key: str, scale: float = 1.0) -> dict[str, float]:
    """A measured profile's figure per device that has a profile with it."""
    found = {}
    for d in cluster.devices:
        value = load_profile(d.profile).get(key) if d.profile else None
        if value is not None:
            found[d.name] = float(value) * scale
    return found


def run_overheads(cluster: Cluster) -> dict[str, float]:
    """Seconds of fixed cost per model run, from the devices' measured profiles (else none)."""
    return _profiled(cluster, "per_run_overhead_ms", 1e-3)


def weight_rates(cluster: Cluster) -> dict[str, float]:
    """GB/s at which each profiled device reads a strip's weights (else weights are free)."""
    return _profiled(cluster, "weight_gbps")


def message_overheads(cluster: Cluster) -> dict[str, float]:
    """Seconds each profiled device spends on one message it sends or receives."""
    return _profiled(cluster, "per_message_overhead_ms", 1e-3)


def context(trunk: Trunk, cluster: Cluster) -> Context:
    """A measured profile also gives the fixed costs of a model run, of reading its weights and
    of a message, which dominate when a plan has many thin strips."""
    return Context(trunk, cluster, device_speeds(cluster), run_overheads(cluster), weight_rates(cluster),
                   message_overheads(cluster))


def predict(ctx: Context, plan: Plan) -> Prediction:
    host = ctx.cluster.host.name
    schedule = build_schedule(ctx.trunk, plan, list(ctx.cluster.names), host)
    return simulate(schedule.programs, host, ctx.compute_seconds, ctx.transfer, ctx.tensor_specs,
                    ctx.message_seconds)


def bundle_cluster(manifest: dict) -> Cluster:
    """The cluster of a bundle's plan as its host sees it (in a bundle of several sources, the
    view of the plan's source)."""
    cluster = Cluster.from_dict(manifest["cluster"])
    return cluster.view(manifest["host"]) if "host" in manifest else cluster


def predict_bundle(manifest: dict, rates: Mapping[str, float] | None = None,
                   cluster: Cluster | None = None) -> Prediction:
    """The cost model's timeline of a compiled bundle's programs, from its manifest alone (one
    plan's view of it). `rates` (Mbit/s of each named device's link, e.g. measured) replace the
    cluster file's bandwidths where given."""
    cluster = cluster or bundle_cluster(manifest)
    cost = manifest["cost"]

    def compute_seconds(device: str, step: dict) -> float:
        c = cost[device]
        return step_seconds(step, c["gmacs"], c["run_overhead_ms"] / 1e3, c.get("weight_gbps"))

    return simulate(manifest["programs"], cluster.host.name, compute_seconds,
                    cluster_transfer(cluster, rates), manifest["tensors"],
                    lambda device: cost[device].get("message_overhead_ms", 0.0) / 1e3)


def make_plan(ctx: Context, strategy: str) -> Plan:
    trunk = ctx.trunk
    end = len(trunk.layers)
    host = ctx.cluster.host.name
    objective = None
    exchange = "direct"
    if strategy == "local":
        from halpc.strips import block_io

        rows = trunk.tensors[block_io(trunk, 0, end).reference].rows
        blocks = [BlockPlan(0, end, (Strip(host, (0, rows)),))]
    elif strategy == "even":
        blocks = list(even_plan(trunk, list(ctx.cluster.names)).blocks)
    elif strategy == "modnn":
        positions = ctx.positions
        blocks = [BlockPlan(a, b, shares.contiguous(ctx, a, b, balance=False))
                  for a, b in zip(positions, positions[1:])]
        exchange = "host"
    elif strategy == "ftp":
        blocks = _ftp(ctx)
    elif strategy in ("dpfp", "halp"):
        blocks, objective = best_blocks(ctx, _layouts(ctx, strategy))
        # The DP's objective adds blocks pairwise; on the full timeline a plan it prefers can
        # lose to one with fewer choices. Keep the promise: halp is never predicted slower
        # than dpfp, nor either slower than local.
        ours = round(predict(ctx, _plan(ctx, strategy, blocks)).latency_s * 1e3, 3)
        for simpler in ("local", "dpfp") if strategy == "halp" else ("local",):
            other = make_plan(ctx, simpler)
            if other.predicted["latency_ms"] < ours:
                blocks, objective, ours = list(other.blocks), None, other.predicted["latency_ms"]
    elif strategy == "exhaustive":
        blocks, objective = exhaustive_blocks(ctx, _layouts(ctx, "halp"))
    else:
        raise HalpcError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    plan = _plan(ctx, strategy, blocks, exchange)
    prediction = predict(ctx, plan)
    predicted = {"latency_ms": round(prediction.latency_s * 1e3, 3)}
    if objective is not None:
        predicted["objective_ms"] = round(objective * 1e3, 3)
    return Plan(plan.strategy, plan.model_sha256, plan.input_shapes, plan.blocks, predicted,
                exchange)


def _plan(ctx: Context, strategy: str, blocks, exchange: str = "direct") -> Plan:
    trunk = ctx.trunk
    return Plan(strategy, trunk.model.sha256, dict(trunk.model.input_shapes), tuple(blocks),
                exchange=exchange)


def _layouts(ctx: Context, strategy: str):
    """Per block, dpfp chooses balanced contiguous strips or the host alone (so it is never
    worse than local); halp may also choose host-assisted strips (so it is never worse than
    dpfp). All under the cost model."""
    choosers = [shares.host_only, shares.contiguous]
    if strategy == "halp":
        choosers += [shares.boundary_first]
    return [lru_cache(maxsize=None)(lambda a, b, f=f: f(ctx, a, b)) for f in choosers]


def _ftp(ctx: Context) -> list[BlockPlan]:
    """One fused block of the first layers in equal strips; the host runs the rest alone."""
    from halpc.strips import block_io

    trunk = ctx.trunk
    end = len(trunk.layers)
    host = ctx.cluster.host.name
    best = None
    for cut in ctx.positions[1:]:
        fused = BlockPlan(0, cut, shares.contiguous(ctx, 0, cut, balance=False))
        blocks = [fused]
        if cut < end:
            rows = trunk.tensors[block_io(trunk, cut, end).reference].rows
            blocks.append(BlockPlan(cut, end, (Strip(host, (0, rows)),)))
        cost = plan_cost(ctx, blocks)
        if best is None or cost < best[0]:
            best = (cost, blocks)
    assert best is not None
    return best[1]


def compare(ctx: Context, strategies: tuple[str, ...] | None = None) -> dict[str, Plan]:
    """Plans of several strategies; exhaustive only where the model is small enough."""
    names = strategies or tuple(s for s in STRATEGIES if s != "exhaustive")
    return {name: make_plan(ctx, name) for name in names}


def best_plan(ctx: Context) -> Plan:
    plans = compare(ctx)
    return min(plans.values(), key=lambda p: p.predicted["latency_ms"])
