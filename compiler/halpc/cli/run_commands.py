"""Commands that read a bundle: verify, run, simulate."""
from __future__ import annotations

import json
import sys

import click

from halpc.cli.app import allow_inexact, cli, progress, quiet
from halpc.host.adapt import POLICIES


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--input", "input_file", type=click.Path(dir_okay=False),
              help="Input as .npy (one input) or .npz (one array per input name).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1),
              help="Number of seeded random inputs, when no --input is given.")
@click.option("--emulate", is_flag=True,
              help="Run in the emulated ARM64 environment (`make arm64-env`; the default for a bundle compiled "
                   "for aarch64 on a machine of another kind).")
@quiet
def verify(bundles: tuple[str, ...], input_file: str | None, seeds: int, emulate: bool, quiet: bool) -> None:
    """Run every device's part in this process; exit 0 only if every bundle's outputs are bit-exact."""
    from pathlib import Path

    from halpc.host.emulation import needs_emulation, run_halpc
    from halpc.host.verify import verify as run_verify
    from halpc.present.tables import verify_table

    emulated = [b for b in bundles if emulate or needs_emulation(b)]
    exact = True
    if emulated:
        inner = ["verify", *emulated, "--seeds", str(seeds), "--quiet", *(["--input", input_file] if input_file else [])]
        proc = run_halpc(inner, [Path(b) for b in emulated] + ([Path(input_file).parent] if input_file else []))
        click.echo(proc.stdout, nl=False)
        click.echo(proc.stderr, nl=False, err=True)
        if proc.returncode not in (0, 1):
            sys.exit(proc.returncode)
        exact = proc.returncode == 0
    for bundle in (b for b in bundles if b not in emulated):
        with progress(quiet) as say:
            checks = run_verify(bundle, input_file, seeds, progress=say)
        if len(bundles) > 1:
            click.echo(f"{bundle}:")
        click.echo(verify_table(checks))
        exact &= bool(checks) and all(c.exact for c in checks)
    if not exact:
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
              help="Seconds to wait for the stubs --spawn starts, or with --require-all for every device "
                   "(without it, a device silent after ~2 s is left out until it answers; a task waits "
                   "for rows from a dead device under 2x its predicted time before the host recomputes it).")
@click.option("--require-all", is_flag=True,
              help="Refuse to start unless every device answers within --timeout (default: start "
                   "without the silent ones and take them in when they answer).")
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
@allow_inexact
@quiet
def run(bundle: str, input_file: str | None, output_file: str | None, tasks: int, in_flight: int,
        check: bool, spawn: bool, as_json: bool, report: str | None, warmup: int, timeout: float,
        bind: str | None, policy: str | None, deadline_ms: float | None, period_ms: float | None,
        source: str | None, barrier: str | None, require_all: bool, allow_inexact: bool, quiet: bool) -> None:
    """Run BUNDLE from the host, its devices' stubs serving; print latency and throughput."""
    from halpc.cli.options import parse_barrier
    from halpc.host.run import local_popen, meet, run as run_bundle, run_sources
    from halpc.host.tasks import check_output_path, default_policy, frame_period_ms, save_outputs, task_inputs
    from halpc.present.tables import run_table, sources_run_table
    from halpc_stub import keys
    from halpc_stub.manifest import load_manifest

    whole = load_manifest(bundle)
    if whole.sources and source is None and spawn:  # every source at once, on this machine
        with progress(quiet, as_json) as say:
            summaries = run_sources(bundle, tasks, check=check, in_flight=in_flight, warmup=warmup,
                                    timeout_s=timeout, progress=say)
        click.echo(json.dumps(summaries) if as_json else sources_run_table(whole, summaries))
        if any(s["exact"] is False for s in summaries.values()):
            sys.exit(1)
        return
    manifest = whole.for_source(source)  # what this host runs: one source's plans
    if keys.insecure(manifest):
        click.echo(f"halpc: {keys.INSECURE_WARNING}", err=True)
    inputs = task_inputs(manifest, input_file, tasks)
    if output_file is not None:
        check_output_path(output_file, len(manifest.outputs))
    barrier_at = parse_barrier(barrier) if barrier else None
    deadline_ms = deadline_ms or manifest.data.get("deadline_ms")
    period_ms = period_ms or frame_period_ms(whole, manifest)
    with progress(quiet, as_json) as say:
        summary = run_bundle(bundle, inputs, in_flight, check, local_popen if spawn else None, timeout, bind,
                             stub_stdout=sys.stderr if as_json else None, warmup=warmup,
                             policy=policy or default_policy(manifest, deadline_ms),
                             deadline_s=deadline_ms / 1e3 if deadline_ms else None,
                             period_s=period_ms / 1e3 if period_ms else None, source=source,
                             on_start=(lambda: meet(*barrier_at, manifest.host.name)) if barrier_at else None,
                             progress=say, allow_inexact=allow_inexact, require_all=require_all)
    if output_file is not None:
        save_outputs(output_file, summary.results[-1].outputs)
    if report is not None:
        from halpc.present.run_report import write_run_report

        write_run_report(report, manifest, summary)
    click.echo(json.dumps(summary.to_json()) if as_json else run_table(manifest, summary, in_flight))
    if summary.checks and not summary.exact:
        sys.exit(1)


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
    from halpc.present.replay_report import write_simulation_report
    from halpc.present.tables import replay_table
    from halpc.whatif.bandwidth_trace import write_csv
    from halpc.whatif.replay import replay_json, simulate_bundle
    from halpc_stub.manifest import load_manifest

    manifest = load_manifest(bundle)
    if manifest.sources:
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
        click.echo(json.dumps(replay_json(results, curves)))
        return
    click.echo(replay_table(results))
    for note in notes:
        click.echo(f"note: {note}")
