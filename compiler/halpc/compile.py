"""The compile pipeline as one library call: model + cluster -> plan(s) -> bundle.

One model and one cluster give a one-plan bundle. With `bandwidths` the model is also planned
for each of those link rates, and with `variants` every variant of the model likewise (plus
each variant run by the host alone), so that the host can choose per task, from the channel
it measures and the deadline, which plan and which variant to run. Plans that come out the
same are kept once, with every rate they serve; strips shared by plans are written once.

A cluster of several sources names each source's model in the cluster file: every source gets a
plan of its own (`planner.sources`: the matching game, or one of its baselines, or a one-host
strategy such as halp planned by each source as if it were alone), all in one bundle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from halpc.inputs.cluster import Cluster, load_cluster
from halpc.emit.bundle import BundleSummary, PlanEntry, check_destination, write_plans
from halpc.errors import HalpcError, UsageError
from halpc.inputs.target import parse_target, this_machine
from halpc.progress import Progress, silent
from halpc.inputs.model import Shape, load_model
from halpc.planner.plan import Plan
from halpc.planner.plan_file import load_plan
from halpc.planner.memory import over_memory
from halpc.planner.strategies import best_plan, make_plan, memory_verdict
from halpc.planner.context import context
from halpc.planner.predict import predict
from halpc.analyse.trunk import Trunk, analyse


@dataclass(frozen=True)
class Compiled:
    trunk: Trunk  # the default plan's
    plan: Plan
    cluster: Cluster
    bundle: BundleSummary
    entries: tuple[PlanEntry, ...] = ()
    notes: tuple[str, ...] = ()  # what the user should know: devices left out, and why


@dataclass(frozen=True)
class Variant:
    """One model of a family (e.g. MobileNet-V1 at one width) with its top-1 accuracy."""

    path: Path
    accuracy: float | None = None

    @property
    def name(self) -> str:
        return self.path.stem



def at_bandwidth(cluster: Cluster, mbps: float) -> Cluster:
    """The cluster with every link at `mbps` (latencies kept)."""
    return dataclasses.replace(
        cluster, network_bandwidth_mbps=mbps,
        links=tuple(dataclasses.replace(link, bandwidth_mbps=mbps) for link in cluster.links),
    )


def compile_bundle(
    model: str | Path | None,
    cluster: str | Path | Cluster,
    out: str | Path,
    strategy: str = "best",
    plan: str | Path | Plan | None = None,
    input_shapes: dict[str, Shape] | None = None,
    *,
    accuracy: float | None = None,
    variants: Sequence[Variant] = (),
    bandwidths: Sequence[float] = (),
    deadline_ms: float | None = None,
    insecure: bool = False,
    spares: bool = False,
    arch: str | None = None,
    allow_inexact: bool = False,
    progress: Progress = silent,
) -> Compiled:
    """`arch` names every device's target (inputs.target.TARGETS; default: each device's own in
    the cluster file, else the host's, else this machine's); a device of another target than the
    host's is left out, unless `allow_inexact` (its strips would not be bit-exact)."""
    check_destination(Path(out))  # before any slow work: a wrong -o fails at once
    if not isinstance(cluster, Cluster):
        cluster = load_cluster(cluster)
    cluster, notes = targeted(cluster, arch, allow_inexact)
    compiled = _compile(model, cluster, out, strategy, plan, input_shapes, accuracy, variants, bandwidths,
                        deadline_ms, insecure, spares, allow_inexact, progress)
    return dataclasses.replace(compiled, notes=tuple(notes))


def targeted(cluster: Cluster, arch: str | None, allow_inexact: bool) -> tuple[Cluster, list[str]]:
    """The cluster with every device's target named, less the devices of another target than the
    host's (unless `allow_inexact`); and a note per device left out."""
    reference = parse_target(arch).name if arch else (cluster.host.arch or this_machine().name)
    devices, notes = [], []
    for d in cluster.devices:
        name = arch or d.arch or reference
        if name != reference and (d.host or d.source):
            raise HalpcError(f"{cluster.source}: {d.name} is {name}, the host {cluster.host.name} is {reference}; "
                             "every host of a bundle runs one target", option="arch")
        if name != reference and not allow_inexact:
            notes.append(f"{d.name} left out: it is {name}, the host {reference}, so its strips would not be "
                         "bit-exact (allow inexact outputs to use it)")
            continue
        devices.append(dataclasses.replace(d, arch=name))
    kept = {d.name for d in devices}
    return dataclasses.replace(cluster, devices=tuple(devices),
                               links=tuple(link for link in cluster.links if {link.a, link.b} <= kept)), notes


def _compile(model, cluster: Cluster, out, strategy: str, plan, input_shapes, accuracy, variants, bandwidths,
             deadline_ms, insecure: bool, spares: bool, allow_inexact: bool, progress: Progress) -> Compiled:
    if cluster.sources:
        if model is not None or plan is not None or variants or bandwidths or spares or accuracy is not None:
            raise UsageError(f"{cluster.source} names each source's model; give no model, plan, variants, "
                             "accuracy, bandwidths or fallback plans with a cluster of sources")
        return _compile_sources(cluster, out, strategy, input_shapes, deadline_ms, insecure, progress)
    if strategy == "matching":
        raise UsageError(f"matching shares helpers among several sources; {cluster.source} has one "
                         "host (mark the cameras source = true, each with model and rate_hz)", option="strategy")
    if not variants and not bandwidths and not spares:
        if model is None:
            raise UsageError("give a model, or its variants (FILE.onnx:ACCURACY)")
        progress(f"loading {Path(model).name}")
        trunk = analyse(load_model(model, input_shapes))
        chosen = _one_plan(trunk, cluster, strategy, plan, progress, allow_inexact)
        entry = PlanEntry("default", trunk, chosen, accuracy=accuracy)
        summary = write_plans([entry], cluster, out, deadline_ms, insecure, progress=progress)
        return Compiled(trunk, chosen, cluster, summary, (entry,))
    if plan is not None:
        raise UsageError("compiles one plan; give no bandwidths, variants or fallback plans with it", option="plan")
    family = ([Variant(Path(model), accuracy)] if model is not None else []) + list(variants)
    if model is None:  # the most accurate variant is the default
        family.sort(key=lambda v: -(v.accuracy if v.accuracy is not None else -1.0))
    trunks = _load_family(family, input_shapes)
    entries = _plan_family(family, trunks, cluster, strategy, tuple(bandwidths), spares, progress)
    summary = write_plans(entries, cluster, out, deadline_ms, insecure, progress=progress)
    return Compiled(entries[0].trunk, entries[0].plan, cluster, summary, tuple(entries))


def load_sources(cluster: Cluster, input_shapes: dict[str, Shape] | None = None) -> dict[str, Trunk]:
    """Each source's model, analysed; two different models may not share a file name (the
    bundle keeps each as reference/NAME.onnx)."""
    trunks: dict[str, Trunk] = {}
    by_name: dict[str, Trunk] = {}
    for s in cluster.sources:
        assert s.model is not None
        trunk = trunks[s.name] = analyse(load_model(s.model, input_shapes))
        other = by_name.setdefault(trunk.model.path.stem, trunk)
        if other.model.sha256 != trunk.model.sha256:
            raise HalpcError(f"{cluster.source}: two different models are named {trunk.model.path.name} "
                             f"({other.model.path} and {trunk.model.path}); rename one of the files")
    return trunks


def _compile_sources(cluster: Cluster, out: str | Path, strategy: str, input_shapes: dict[str, Shape] | None,
                     deadline_ms: float | None, insecure: bool, progress: Progress) -> Compiled:
    from halpc.planner.sources import STRATEGIES, plan_each, plan_sources

    trunks = load_sources(cluster, input_shapes)
    sharing = None
    if strategy in ("best", *STRATEGIES):
        planned = plan_sources(cluster, trunks, "matching" if strategy == "best" else strategy)
        plans, sharing = planned.plans, planned.to_dict()
    else:
        plans = plan_each(cluster, trunks, strategy)
    plans = _with_waits(cluster, trunks, plans)
    entries = [PlanEntry(f"{s.name}/{plans[s.name].strategy}", trunks[s.name], plans[s.name],
                         trunks[s.name].model.path.stem, host=s.name) for s in cluster.sources]
    progress("planned every source")
    summary = write_plans(entries, cluster, out, deadline_ms, insecure, sharing, progress)
    return Compiled(entries[0].trunk, entries[0].plan, cluster, summary, tuple(entries))


def _with_waits(cluster: Cluster, trunks: dict[str, Trunk], plans: dict[str, Plan]) -> dict[str, Plan]:
    """Each source's plan with `wait_ms`: the longest its frame may queue on a helper behind one
    frame of every other source (their compute there, summed; the worst over its helpers). The
    host's fault bound adds it, so that a helper busy with another source is not a dead one."""
    busy: dict[str, dict[str, float]] = {}
    for name, plan in plans.items():
        timeline = predict(context(trunks[name], cluster.view(name)), plan)
        busy[name] = {}
        for e in timeline.events:
            if e.kind == "compute" and e.device != name:
                busy[name][e.device] = busy[name].get(e.device, 0.0) + e.end - e.start
    out = {}
    for name, plan in plans.items():
        wait = max((sum(b.get(h, 0.0) for o, b in busy.items() if o != name) for h in busy[name]), default=0.0)
        out[name] = dataclasses.replace(plan, predicted={**plan.predicted, "wait_ms": round(wait * 1e3, 3)})
    return out


def _one_plan(trunk: Trunk, cluster: Cluster, strategy: str, plan: str | Path | Plan | None,
              progress: Progress, allow_inexact: bool = False) -> Plan:
    ctx = context(trunk, cluster)
    if plan is not None:
        given = plan if isinstance(plan, Plan) else load_plan(plan, trunk, list(cluster.names))
        name = plan if isinstance(plan, (str, Path)) else "the plan"
        why = ctx.legal.plan_why_inexact(given)
        if why and not allow_inexact:
            raise HalpcError(f"{name}: not bit-exact on {ctx.target.name}: {why}; "
                             "give those rows to fewer devices, or allow inexact outputs", option="plan")
        over = over_memory(ctx, given)
        if over:
            raise HalpcError(f"{name}: gives " + "; ".join(f"{d} more memory than it has: {w}" for d, w in over.items())
                             + "; give it fewer blocks, or raise its memory_mb", option="plan")
        return given
    progress(f"planning {strategy}")
    chosen = best_plan(ctx, progress) if strategy == "best" else make_plan(ctx, strategy)
    if "over_memory" in chosen.predicted:
        raise HalpcError(f"{strategy}: its plan gives a device more memory than it has: {memory_verdict(chosen)}; "
                         "use halp or best, which leave such a device out, or raise its memory_mb", option="strategy")
    return chosen


def _load_family(family: list[Variant], input_shapes: dict[str, Shape] | None) -> list[Trunk]:
    names = [v.name for v in family]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(f"two variants are named {name!r} (the file name); rename one of the files")
    trunks = [analyse(load_model(v.path, input_shapes)) for v in family]
    first = trunks[0].model.input_shapes
    for variant, trunk in zip(family[1:], trunks[1:]):
        if trunk.model.input_shapes != first:
            raise HalpcError(
                f"{variant.path}: inputs {trunk.model.input_shapes} differ from {family[0].path}'s {first}; "
                "every variant must take the same inputs"
            )
    return trunks


def _plan_family(family: list[Variant], trunks: list[Trunk], cluster: Cluster, strategy: str,
                 bandwidths: tuple[float, ...], spares: bool = False, progress: Progress = silent
                 ) -> list[PlanEntry]:
    """Per variant: the host alone, and a plan per link rate (the cluster's own rate first, so
    the default plan is the first variant's at the rate the cluster file gives); with `spares`,
    also a plan without each helper device (with two or more), which the host runs while that
    device is down."""
    several = len(family) > 1
    levels = list(dict.fromkeys((cluster.network_bandwidth_mbps, *bandwidths)))
    entries: list[PlanEntry] = []
    for variant, trunk in zip(family, trunks):
        prefix = f"{variant.name}/" if several else ""
        found: dict[tuple, PlanEntry] = {}
        for level in levels:
            progress(f"planning {variant.name} at {level:g} Mbit/s")
            ctx = context(trunk, at_bandwidth(cluster, level))
            plan = best_plan(ctx) if strategy == "best" else make_plan(ctx, strategy)
            key = (plan.blocks, plan.exchange)
            if key in found:
                old = found[key]
                found[key] = dataclasses.replace(old, bandwidths=tuple(sorted((*old.bandwidths, level))))
            else:
                found[key] = PlanEntry(f"{prefix}{plan.strategy}@{level:g}", trunk, plan, variant.name,
                                       variant.accuracy, (level,))
        local = make_plan(context(trunk, cluster), "local")
        if (local.blocks, local.exchange) in found:  # the host alone is already one of them
            old = found[(local.blocks, local.exchange)]
            found[(local.blocks, local.exchange)] = dataclasses.replace(old, id=f"{prefix}local", plan=local)
        else:
            found[(local.blocks, local.exchange)] = PlanEntry(f"{prefix}local", trunk, local, variant.name,
                                                              variant.accuracy, ())
        for spare in cluster.secondaries if spares and len(cluster.secondaries) > 1 else ():
            ctx = context(trunk, cluster.without(spare.name))
            plan = best_plan(ctx) if strategy == "best" else make_plan(ctx, strategy)
            found.setdefault((plan.blocks, plan.exchange), PlanEntry(
                f"{prefix}{plan.strategy}-without-{spare.name}", trunk, plan, variant.name, variant.accuracy, ()))
        entries.extend(found.values())
    return entries
