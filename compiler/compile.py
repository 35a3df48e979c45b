"""The compile pipeline as one library call: model + cluster -> plan -> bundle."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from halpc.cluster import Cluster, load_cluster
from halpc.emit.bundle import BundleSummary, check_destination, write_bundle
from halpc.model import Shape, load_model
from halpc.plan import Plan, load_plan
from halpc.planner import best_plan, context, make_plan
from halpc.trunk import Trunk, analyse


@dataclass(frozen=True)
class Compiled:
    trunk: Trunk
    plan: Plan
    cluster: Cluster
    bundle: BundleSummary


def compile_bundle(
    model: str | Path,
    cluster: str | Path | Cluster,
    out: str | Path,
    strategy: str = "best",
    plan: str | Path | Plan | None = None,
    input_shapes: dict[str, Shape] | None = None,
) -> Compiled:
    check_destination(Path(out))  # before any slow work: a wrong -o fails at once
    if not isinstance(cluster, Cluster):
        cluster = load_cluster(cluster)
    trunk = analyse(load_model(model, input_shapes))
    names = list(cluster.names)
    if isinstance(plan, Plan):
        chosen = plan
    elif plan is not None:
        chosen = load_plan(plan, trunk, names)
    elif strategy == "best":
        chosen = best_plan(context(trunk, cluster))
    else:
        chosen = make_plan(context(trunk, cluster), strategy)
    return Compiled(trunk, chosen, cluster, write_bundle(trunk, chosen, cluster, out))
