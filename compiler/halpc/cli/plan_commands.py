"""Commands that read a model: inspect, plan, compile, profile."""
from __future__ import annotations

import json
import time

import click

from halpc.cli.app import allow_inexact, arch_option, cli, input_shape, load_trunk, progress, quiet
from halpc.planner.names import SOURCE_BASELINES, SOURCE_STRATEGIES, STRATEGIES


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape
@click.option("--json", "as_json", is_flag=True,
              help="Print what halpc splits as JSON: model_macs, split_macs and where the split ends, and why.")
def inspect(model: str, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """Print the spatial trunk: layers, shapes, MACs, receptive fields, cut points, and how
    much of the model's MACs it holds."""
    from halpc.analyse.coverage import coverage
    from halpc.present.tables import trunk_table

    trunk = load_trunk(model, input_shapes)
    if as_json:
        click.echo(json.dumps(coverage(trunk).to_json(), indent=2))
    else:
        click.echo(trunk_table(trunk, coverage(trunk)))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--cluster", "cluster_file", required=True, type=click.Path(dir_okay=False),
              help="TOML file describing the devices and links.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Bundle folder to write (replaced if it is an old bundle).")
@click.option("--strategy", default="best", show_default=True,
              type=click.Choice(("best", *STRATEGIES, *SOURCE_STRATEGIES)),
              help="How to plan the split; best = the lowest predicted latency (for a cluster of "
                   "several sources: matching, the sources sharing the helpers by a matching game).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False),
              help="Compile this plan JSON (e.g. a hand-edited plan.json) instead of planning.")
@click.option("--bandwidths", metavar="MBPS,...",
              help="Also plan for these link rates, e.g. 10,25,50,100; the host switches between "
                   "the plans as the channel changes.")
@click.option("--variant", "variants", multiple=True, metavar="FILE.onnx:ACCURACY",
              help="Another variant of the model with its top-1 accuracy (repeat); the host runs the "
                   "most accurate one that meets --deadline-ms.")
@click.option("--accuracy", type=click.FloatRange(0, 100, min_open=True),
              help="MODEL's own top-1 accuracy, when it is one of several variants.")
@click.option("--deadline-ms", type=click.FloatRange(0, min_open=True),
              help="The per-task deadline `halpc run` and `halpc simulate` use by default.")
@click.option("--insecure", is_flag=True,
              help="No CURVE keys: the devices' traffic is unauthenticated and unencrypted.")
@click.option("--fallback-plans", "spares", is_flag=True,
              help="Also plan without each helper device: while one is down the host splits over "
                   "the others (otherwise it runs the unsplit model alone).")
@arch_option
@allow_inexact
@input_shape
@quiet
def compile(model: str | None, cluster_file: str, output: str, strategy: str, plan_file: str | None,
            bandwidths: str | None, variants: tuple[str, ...], accuracy: float | None,
            deadline_ms: float | None, insecure: bool, spares: bool, arch: str | None, allow_inexact: bool,
            input_shapes: tuple[str, ...], quiet: bool) -> None:
    """Plan the split of MODEL over the cluster and write one folder per device (each with its
    own CURVE key pair, unless --insecure)."""
    from halpc.cli.options import parse_bandwidths, parse_input_shapes, parse_variant
    from halpc.compile import compile_bundle
    from halpc.present.tables import bundle_summary

    started = time.perf_counter()
    with progress(quiet) as say:
        result = compile_bundle(
            model, cluster_file, output, strategy, plan_file, parse_input_shapes(input_shapes),
            accuracy=accuracy, variants=[parse_variant(v) for v in variants],
            bandwidths=parse_bandwidths(bandwidths) if bandwidths else (), deadline_ms=deadline_ms,
            insecure=insecure, spares=spares, arch=arch, allow_inexact=allow_inexact, progress=say,
        )
    for note in result.notes:
        click.echo(f"halpc: note: {note}", err=True)
    if allow_inexact:
        click.echo("halpc: WARNING: --allow-inexact: outputs may differ from the unsplit model's (by about "
                   "1e-6 for float models): this bundle is not bit-exact", err=True)
    if insecure:
        click.echo("halpc: WARNING: --insecure: no keys; anyone who reaches the devices' ports can send "
                   "them work and read every tensor in transit", err=True)
    click.echo(bundle_summary(result, time.perf_counter() - started))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--cluster", "cluster_file", required=True, type=click.Path(dir_okay=False),
              help="TOML file describing the devices and links.")
@click.option("--strategy", default="all", show_default=True,
              type=click.Choice(("all", *STRATEGIES, *SOURCE_STRATEGIES, *SOURCE_BASELINES)),
              help="Strategy to plan, or all of them (for a cluster of several sources: matching, alone, "
                   "selfish, greedy or random).")
@click.option("--json", "as_json", is_flag=True, help="Print the plans as JSON.")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Write an HTML page with each plan's predicted timeline (for a cluster of sources: "
                   "each strategy's latency per source and the matching's assignment).")
@click.option("--horizon-s", default=20.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Only for a cluster of several sources: seconds of frames to simulate.")
@click.option("--arrivals", default="periodic", show_default=True, type=click.Choice(("periodic", "poisson")),
              help="Only for a cluster of several sources: frames every 1/rate_hz (with jitter) or at random.")
@arch_option
@input_shape
@quiet
def plan(model: str | None, cluster_file: str, strategy: str, as_json: bool, report: str | None,
         horizon_s: float, arrivals: str, arch: str | None, input_shapes: tuple[str, ...], quiet: bool) -> None:
    """Compare planning strategies: predicted latency, speedup over local, blocks and shares; for a
    cluster of several sources (MODEL left out), how they share the helpers: latency per source."""
    from halpc.cli.options import parse_input_shapes
    from halpc.inputs.cluster import load_cluster

    from halpc.compile import targeted

    cluster, notes = targeted(load_cluster(cluster_file), arch, allow_inexact=False)
    for note in notes:
        click.echo(f"halpc: note: {note}", err=True)
    if cluster.sources:
        from halpc.present.sources_report import sources_table, write_sources_report
        from halpc.whatif.sources import plan_sharing, sharing_json

        if model is not None:
            raise click.UsageError(f"{cluster_file} names each source's model; leave out MODEL")
        with progress(quiet, as_json):
            rows, planned = plan_sharing(cluster, parse_input_shapes(input_shapes), strategy, horizon_s, arrivals)
        if report:
            write_sources_report(report, f"halpc plan: {len(cluster.sources)} sources sharing helpers", rows, planned,
                                 f"{cluster_file} · {horizon_s:g} s of {arrivals} frames")
        click.echo(json.dumps(sharing_json(rows, planned), indent=1) if as_json else sources_table(rows, planned))
        return
    if model is None:
        raise click.UsageError("give a MODEL (or mark the cluster's cameras source = true, each with model and rate_hz)")
    if strategy not in ("all", *STRATEGIES):
        raise click.UsageError(f"--strategy {strategy} shares helpers among several sources; {cluster_file} has "
                               "one host (mark the cameras source = true, each with model and rate_hz)")
    from halpc.planner.context import context
    from halpc.planner.strategies import compare, strategies_for
    from halpc.present.tables import plans_json, plans_table

    trunk = load_trunk(model, input_shapes)
    ctx = context(trunk, cluster)
    with progress(quiet, as_json) as say:
        plans = compare(ctx, strategies_for(trunk, strategy), progress=say)
    if report:
        from halpc.present.plan_report import write_plan_report

        write_plan_report(report, ctx, plans)
    click.echo(json.dumps(plans_json(trunk, plans), indent=1) if as_json else plans_table(trunk, plans))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Profile JSON to write; a cluster file references it with profile = \"...\".")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1),
              help="ONNX Runtime intra-op threads: the count the device will run with.")
@click.option("--heights", default="1,2,4,8,16,32,all", show_default=True,
              help="Strip heights (output rows) to time each layer at; all = full height.")
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1),
              help="Timed runs per measurement (the median counts), after one warm-up.")
@input_shape
@quiet
def profile(model: str, output: str, threads: int, heights: str, repeat: int,
            input_shapes: tuple[str, ...], quiet: bool) -> None:
    """Measure this device: time MODEL's trunk with ONNX Runtime, write its GMAC/s profile."""
    from halpc.cli.options import parse_heights
    from halpc.inputs.profile_file import write_profile
    from halpc.measure.profiler import check_writable, profile_device
    from halpc.present.tables import profile_table

    wanted = parse_heights(heights)  # before any slow work: bad options fail at once
    check_writable(output)
    trunk = load_trunk(model, input_shapes)
    with progress(quiet) as say:
        result = profile_device(trunk, wanted, threads, repeat, progress=say)
    write_profile(result, output)
    click.echo(profile_table(result))
    click.echo(f"wrote {output}")
