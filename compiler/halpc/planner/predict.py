"""The predicted timeline of a plan: from the planner's context, or from a compiled bundle's manifest."""
from __future__ import annotations

from collections.abc import Mapping

from halpc.inputs.cluster import Cluster
from halpc.planner.context import Context
from halpc.planner.cost import Prediction, cluster_transfer, fixed_prefix, play, step_seconds
from halpc.planner.plan import Plan
from halpc.planner.schedule import build_schedule


def predict(ctx: Context, plan: Plan, record: bool = True) -> Prediction:
    """The plan's timeline (without `record`, only its times: what the planner compares)."""
    host = ctx.cluster.host.name
    schedule = build_schedule(ctx.trunk, plan, list(ctx.cluster.names), host)
    return play(schedule.programs, host, ctx.compute_seconds, ctx.transfer, ctx.tensor_specs,
                ctx.message_seconds, record=record)


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
    fixed = {d: fixed_prefix(dict(enumerate(c["layer_fixed_ms"])), len(c["layer_fixed_ms"]))
             for d, c in cost.items() if c.get("layer_fixed_ms")}

    def compute_seconds(device: str, step: dict) -> float:
        c = cost[device]
        return step_seconds(step, c["gmacs"], c["run_overhead_ms"] / 1e3, c.get("weight_gbps"), c.get("int8_gmacs"),
                            fixed.get(device))

    return play(manifest["programs"], cluster.host.name, compute_seconds,
                    cluster_transfer(cluster, rates), manifest["tensors"],
                    lambda device: cost[device].get("message_overhead_ms", 0.0) / 1e3)
