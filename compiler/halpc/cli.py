"""The `halpc` command: a thin layer over the library; user errors become one line, exit 1."""
from __future__ import annotations

import sys
import time

import click

from halpc.host.adapt import POLICIES
from halpc.planner.names import SOURCE_BASELINES, SOURCE_STRATEGIES, STRATEGIES
from halpc.errors import HalpcError
from halpc_stub.errors import BundleError


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every user error, click's usage errors included, becomes one stderr line."""
    try:
        cli.main(args=argv, prog_name="halpc", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (HalpcError, BundleError) as exc:
        _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    click.echo("halpc: error: " + " ".join(message.split()), err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="halpc")
def cli() -> None:
    """Split one CNN's spatial layers across several edge devices, bit-exactly."""


_input_shape = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Fix an input's shape, e.g. images=1x3x320x320 (needed for dynamic dims).",
)


def _load(model: str, input_shapes: tuple[str, ...]):
    from halpc.inputs.model import load_model, parse_input_shapes
    from halpc.analyse.trunk import analyse

    return analyse(load_model(model, parse_input_shapes(input_shapes)))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@_input_shape
def inspect(model: str, input_shapes: tuple[str, ...]) -> None:
    """Print the spatial trunk: layers, shapes, MACs, receptive fields, cut points."""
    from halpc.present.tables import trunk_table

    click.echo(trunk_table(_load(model, input_shapes)))


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
@_input_shape
def compile(model: str | None, cluster_file: str, output: str, strategy: str, plan_file: str | None,
            bandwidths: str | None, variants: tuple[str, ...], accuracy: float | None,
            deadline_ms: float | None, insecure: bool, spares: bool, input_shapes: tuple[str, ...]) -> None:
    """Plan the split of MODEL over the cluster and write one folder per device (each with its
    own CURVE key pair, unless --insecure)."""
    from halpc.compile import compile_bundle, parse_bandwidths, parse_variant
    from halpc.inputs.model import parse_input_shapes
    from halpc.present.tables import bundle_summary

    started = time.perf_counter()
    result = compile_bundle(
        model, cluster_file, output, strategy, plan_file, parse_input_shapes(input_shapes),
        accuracy=accuracy, variants=[parse_variant(v) for v in variants],
        bandwidths=parse_bandwidths(bandwidths) if bandwidths else (), deadline_ms=deadline_ms,
        insecure=insecure, spares=spares,
    )
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
@_input_shape
def plan(model: str | None, cluster_file: str, strategy: str, as_json: bool, report: str | None,
         horizon_s: float, arrivals: str, input_shapes: tuple[str, ...]) -> None:
    """Compare planning strategies: predicted latency, speedup over local, blocks and shares; for a
    cluster of several sources (MODEL left out), how they share the helpers: latency per source."""
    import json

    from halpc.inputs.cluster import load_cluster
    from halpc.inputs.model import parse_input_shapes

    cluster = load_cluster(cluster_file)
    if cluster.sources:
        from halpc.present.sources_report import sources_table, write_sources_report
        from halpc.whatif.sources import plan_sharing, sharing_json

        if model is not None:
            raise click.UsageError(f"{cluster_file} names each source's model; leave out MODEL")
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
    from halpc.planner.strategies import compare
    from halpc.planner.context import context
    from halpc.present.tables import plans_json, plans_table

    trunk = _load(model, input_shapes)
    ctx = context(trunk, cluster)
    names = None if strategy == "all" else tuple(dict.fromkeys(("local", strategy)))
    if strategy == "all" and len(trunk.cuts) <= 8:
        names = ("local", "even", "modnn", "ftp", "dpfp", "halp", "exhaustive")
    plans = compare(ctx, names)
    if report:
        from halpc.present.plan_report import write_plan_report

        write_plan_report(report, ctx, plans)
    if as_json:
        click.echo(json.dumps(plans_json(trunk, plans), indent=1))
    else:
        click.echo(plans_table(trunk, plans))


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--input", "input_file", type=click.Path(dir_okay=False),
              help="Input as .npy (one input) or .npz (one array per input name).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1),
              help="Number of seeded random inputs, when no --input is given.")
def verify(bundle: str, input_file: str | None, seeds: int) -> None:
    """Run every device's part in this process; exit 0 only if outputs are bit-exact."""
    from halpc.present.tables import verify_table
    from halpc.host.verify import verify as run_verify

    checks = run_verify(bundle, input_file, seeds)
    click.echo(verify_table(checks))
    if not all(c.exact for c in checks):
        sys.exit(1)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--input", "input_file", type=click.Path(dir_okay=False),
              help="Input as .npy or .npz, used for every task; default: seeded random inputs, one per task.")
@click.option("--output", "output_file", type=click.Path(dir_okay=False),
              help="Save the last task's outputs: .npy for one output, else .npz.")
@click.option("--tasks", default=1, show_default=True, type=click.IntRange(1), help="Tasks to stream.")
@click.option("--in-flight", default=2, show_default=True, type=click.IntRange(1),
              help="Tasks running at once, so one task's transfers overlap another's compute.")
@click.option("--check", is_flag=True,
              help="Also run the unsplit model here: compare every output bit for bit, report the speedup.")
@click.option("--spawn", is_flag=True,
              help="Start the other devices' stubs on this machine (a cluster on 127.0.0.1), stop them after.")
@click.option("--json", "as_json", is_flag=True, help="Print latency, throughput and the timeline as JSON.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write an HTML page: measured vs predicted Gantt.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0),
              help="Untimed tasks first (sessions allocate their buffers on their first run).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for every device to answer at the start (a task waits for rows "
                   "only about 1.5x its predicted time before the host recomputes it).")
@click.option("--bind", help="Listen here instead of the host's manifest address, e.g. tcp://*:5701.")
@click.option("--policy", type=click.Choice(POLICIES),
              help="How the host picks each task's plan: standalone (host alone), fixed (the default "
                   "plan), adaptive (fastest plan on the measured links), select (the most accurate "
                   "variant that meets the deadline). Default: select for a bundle of variants with a "
                   "deadline, adaptive for one of several plans.")
@click.option("--deadline-ms", type=click.FloatRange(0, min_open=True),
              help="Per-task deadline (default: the one compiled into the bundle).")
@click.option("--period-ms", type=click.FloatRange(0, min_open=True),
              help="Start task k no earlier than k periods after the first (a camera's frame rate; "
                   "default for a source of a bundle of several: its rate).")
@click.option("--source", metavar="NAME",
              help="In a bundle of several sources (cameras): run as this one, with its plans (with "
                   "--spawn and no --source: every source at once on this machine).")
@click.option("--barrier", hidden=True, metavar="DIR,N",
              help="Start the first timed task once N runs have written their name into DIR (runs of "
                   "several sources started together by `halpc run --spawn`).")
def run(bundle: str, input_file: str | None, output_file: str | None, tasks: int, in_flight: int,
        check: bool, spawn: bool, as_json: bool, report: str | None, warmup: int, timeout: float,
        bind: str | None, policy: str | None, deadline_ms: float | None, period_ms: float | None,
        source: str | None, barrier: str | None) -> None:
    """Run BUNDLE from the host, its devices' stubs serving; print latency and throughput."""
    import json

    from halpc.present.tables import run_table
    from halpc.host.run import local_popen, meet, run as run_bundle
    from halpc.host.verify import load_inputs, random_inputs
    from halpc_stub import keys
    from halpc_stub.manifest import load_manifest

    whole = load_manifest(bundle)
    if whole.sources and source is None and spawn:  # every source at once, on this machine
        from halpc.present.tables import sources_run_table
        from halpc.host.run import run_sources

        summaries = run_sources(bundle, tasks, check=check, in_flight=in_flight, warmup=warmup, timeout_s=timeout)
        click.echo(json.dumps(summaries) if as_json else sources_run_table(whole, summaries))
        if any(s["exact"] is False for s in summaries.values()):
            sys.exit(1)
        return
    manifest = whole.for_source(source)  # what this host runs: one source's plans
    if keys.insecure(manifest):
        click.echo(f"halpc: {keys.INSECURE_WARNING}", err=True)
    if period_ms is None and whole.sources:  # frames come at the source's rate
        period_ms = 1000 / whole.data["sources"][manifest.host.name]["rate_hz"]
    if input_file is not None:
        inputs = [load_inputs(manifest, input_file)] * tasks
    else:
        inputs = [random_inputs(manifest, seed) for seed in range(tasks)]
    if output_file is not None:
        check_output_path(output_file, len(manifest.outputs))
    deadline_ms = deadline_ms or manifest.data.get("deadline_ms")
    policy = policy or default_policy(manifest, deadline_ms)
    summary = run_bundle(bundle, inputs, in_flight, check, local_popen if spawn else None, timeout, bind,
                         stub_stdout=sys.stderr if as_json else None, warmup=warmup, policy=policy,
                         deadline_s=deadline_ms / 1e3 if deadline_ms else None,
                         period_s=period_ms / 1e3 if period_ms else None, source=source,
                         on_start=(lambda: meet(barrier, manifest.host.name)) if barrier else None)
    if output_file is not None:
        save_outputs(output_file, summary.results[-1].outputs)
    if report is not None:
        from halpc.present.run_report import write_run_report

        write_run_report(report, manifest, summary)
    if as_json:
        click.echo(json.dumps(summary.to_json()))
    else:
        click.echo(run_table(manifest, summary, in_flight))
    if summary.checks and not summary.exact:
        sys.exit(1)


def default_policy(manifest, deadline_ms: float | None) -> str | None:
    """select for variants with a deadline, adaptive for several plans, none for one plan."""
    plans = manifest.plans
    if len(plans) == 1:
        return None
    variants = {p.data.get("variant") for p in plans}
    return "select" if deadline_ms and len(variants) > 1 else "adaptive"


def check_output_path(path: str, outputs: int) -> None:
    suffix = ".npy" if outputs == 1 else ".npz"
    if not path.endswith(suffix):
        raise HalpcError(f"{path}: the model has {outputs} output(s); give a {suffix} path for --output")


def save_outputs(path: str, outputs: dict) -> None:
    import numpy as np

    try:
        if len(outputs) == 1:
            np.save(path, next(iter(outputs.values())))
        else:
            np.savez(path, **outputs)
    except OSError as exc:
        raise HalpcError(f"{path}: cannot write the outputs ({exc.strerror or exc})") from None


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--trace", "trace_spec", required=False, metavar="CSV|ge:...",
              help="Bandwidth trace: a CSV of time_s and Mbit/s (one mbps column, or one per device), "
                   "or a Gilbert-Elliott channel, e.g. ge:good=100,bad=10,p=0.1,r=0.3,step=1,duration=60,seed=0. "
                   "Required, except for a bundle of several sources.")
@click.option("--deadline-ms", type=click.FloatRange(0, min_open=True),
              help="Per-task deadline (default: the one compiled into the bundle).")
@click.option("--period-ms", type=click.FloatRange(0, min_open=True),
              help="A frame every this many ms (default: the deadline).")
@click.option("--tasks", type=click.IntRange(1), help="Tasks to replay (default: every frame in the trace).")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Write an HTML page: reliability against deadline, the trace, each task's choice.")
@click.option("--save-trace", type=click.Path(dir_okay=False),
              help="Also write the trace as CSV (e.g. a generated one, to replay it on real links).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--horizon-s", default=20.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Only for a bundle of several sources: seconds of frames to simulate.")
@click.option("--arrivals", default="periodic", show_default=True, type=click.Choice(("periodic", "poisson")),
              help="Only for a bundle of several sources: frames every 1/rate_hz (with jitter) or at random.")
def simulate(bundle: str, trace_spec: str | None, deadline_ms: float | None, period_ms: float | None,
             tasks: int | None, report: str | None, save_trace: str | None, as_json: bool, horizon_s: float,
             arrivals: str) -> None:
    """Replay a bandwidth trace through BUNDLE's cost model: reliability, latency, accuracy per policy.
    For a bundle of several sources: their frames over its own partitions, per sharing strategy."""
    import json

    from halpc.present.replay_report import write_simulation_report
    from halpc.present.tables import replay_table
    from halpc.whatif.replay import simulate_bundle
    from halpc.whatif.trace import write_csv
    from halpc_stub.manifest import load_manifest

    manifest = load_manifest(bundle)
    if "sources" in manifest.data:
        from halpc.present.sources_report import sources_table, write_sources_report
        from halpc.whatif.sources import sharing_json, simulate_sharing

        if trace_spec or deadline_ms or period_ms or tasks or save_trace:
            raise click.UsageError("a bundle of several sources simulates their frames over --horizon-s; leave "
                                   "out --trace, --deadline-ms, --period-ms, --tasks and --save-trace")
        rows, planned = simulate_sharing(manifest.data, horizon_s, arrivals, f"{bundle}/manifest.json")
        if report:
            write_sources_report(report, f"halpc simulate: {manifest.root.name}", rows, planned,
                                 f"the bundle's own partitions · {horizon_s:g} s of {arrivals} frames")
        if as_json:
            click.echo(json.dumps(sharing_json(rows, planned), indent=1))
            return
        click.echo(sources_table(rows, planned))
        click.echo(f"note: every strategy assigns the bundle's own partitions (cut for its "
                   f"{manifest.data['sharing'].get('strategy')} plan); `halpc plan` cuts anew for each strategy")
        return
    if trace_spec is None:
        raise click.UsageError("give --trace (a CSV or ge:...): the bundle has one host")
    deadline_ms = deadline_ms or manifest.data.get("deadline_ms")
    if not deadline_ms:
        raise click.UsageError("give --deadline-ms (the bundle was compiled without one)")
    trace, results, curves, notes = simulate_bundle(manifest, trace_spec, deadline_ms / 1e3,
                                                    period_ms / 1e3 if period_ms else None, tasks)
    if save_trace:
        write_csv(trace, save_trace)
    if report:
        devices = [d.name for d in manifest.devices if not d.host]
        write_simulation_report(report, f"{manifest.root.name}: {trace.source}", results, curves, trace,
                                devices, deadline_ms / 1e3)
    if as_json:
        click.echo(json.dumps({
            policy: {"reliability": r.reliability, "on_time": r.on_time, "tasks": len(r.tasks),
                     "percentiles_ms": {k: v * 1e3 for k, v in r.percentiles.items()},
                     "mean_accuracy": r.mean_accuracy, "plans": dict(r.plans_used()),
                     "curve": [[d * 1e3, rel] for d, rel in curves[policy]]}
            for policy, r in results.items()
        }))
    else:
        click.echo(replay_table(results))
        for note in notes:
            click.echo(f"note: {note}")


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
@_input_shape
def profile(model: str, output: str, threads: int, heights: str, repeat: int,
            input_shapes: tuple[str, ...]) -> None:
    """Measure this device: time MODEL's trunk with ONNX Runtime, write its GMAC/s profile."""
    from halpc.inputs.profile_file import write_profile
    from halpc.measure.profiler import check_writable, parse_heights, profile_device
    from halpc.present.tables import profile_table

    wanted = parse_heights(heights)  # before any slow work: bad options fail at once
    check_writable(output)
    trunk = _load(model, input_shapes)
    result = profile_device(trunk, wanted, threads, repeat,
                            progress=lambda line: click.echo(line, err=True))
    write_profile(result, output)
    click.echo(profile_table(result))
    click.echo(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    main()
