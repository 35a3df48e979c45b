"""Several sources sharing helper nodes: the matching against its baselines, simulated and measured.

Run: python benchmarks/sources.py [--simulated-only] [--tasks 30]
(the measured part needs root, for network namespaces and CPU limits).

1. Simulated (cost model and event simulation, no devices): 2, 3 and 4 sources (MobileNet-V1
   1.0, ResNet-18, VGG-16, MobileNet-V1 0.5 at 128x128; cameras of 2 GMAC/s at 4, 3, 2 and 5
   frames a second) sharing 2, 4 and 6 helpers of 16, 8, 4, 12, 6 and 3 GMAC/s over 100 Mbit/s.
   Per configuration: the mean over sources of each strategy's simulated mean and p95 frame
   latency (20 s of periodic frames, the same frames for every strategy), and the ratio to the
   matching's.

2. Measured on the emulated cluster: two cameras (network namespaces, a fifth of a core each;
   MobileNet-V1 1.0 at 4 frames/s and ResNet-18 at 2, then ResNet-18 on both at 3) share
   edge-1 (2 ONNX Runtime threads, 1.2 cores) and edge-2 (1 thread, 0.4 core) over 100 Mbit/s
   tbf links. Each device's GMAC/s is measured under its own CPU limit first, and the
   cluster file says so. The bundle compiled with `--strategy matching` runs: both sources'
   `halpc run --source NAME --check` at their frame rates at once, `halpc-stub` on each helper.
   Then the same with `--strategy halp` (each source planning alone, ignoring the other). Per
   source: measured mean and p95 beside the prediction (the matching's cost model, and its
   simulation), and whether every output was bit-exact.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import models  # noqa: E402
from halpc.measure import netlab  # noqa: E402
from halpc.inputs.cluster import parse_cluster  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.planner import matching  # noqa: E402
from halpc.planner.sources import STRATEGIES, compare_sources  # noqa: E402
from halpc.host.run import run_sources  # noqa: E402
from halpc.whatif.sources import sharing_from_manifest  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402

MODELS = ["mobilenet_v1_100", "resnet18", "vgg16", "mobilenet_v1_050"]
RATES = [4, 3, 2, 5]
HELPERS = [16, 8, 4, 12, 6, 3]


def cluster_text(sources: list[tuple[str, str, float, float, str]], helpers: list[tuple[str, float, int, str]],
                 mbps: float = 100) -> str:
    """sources: (name, model file, rate Hz, GMAC/s, address); helpers: (name, GMAC/s, threads, address)."""
    text = f"[network]\nbandwidth_mbps = {mbps}\nlatency_ms = 2\n"
    for name, model, rate, gmacs, address in sources:
        text += (f'[[device]]\nname = "{name}"\nsource = true\nmodel = "{model}"\nrate_hz = {rate}\n'
                 f'address = "{address}"\ngmacs = {gmacs:.4f}\n')
    for name, gmacs, threads, address in helpers:
        text += f'[[device]]\nname = "{name}"\naddress = "{address}"\ngmacs = {gmacs:.4f}\nthreads = {threads}\n'
    return text


def simulated(folder: Path) -> None:
    trunks = {}
    for name in MODELS:
        onnx.save(models.build(name, 128, 128, seed=1), str(folder / f"{name}.onnx"))
        trunks[name] = analyse(load_model(folder / f"{name}.onnx"))
    print("Simulated: mean over sources of each strategy's mean / p95 frame latency (ms), and / matching's")
    print(f"{'sources':>7} {'helpers':>7}  " + "  ".join(f"{s:>20}" for s in STRATEGIES) + "  plan s")
    for k in (2, 3, 4):
        for h in (2, 4, 6):
            text = cluster_text([(f"cam-{i + 1}", f"{MODELS[i]}.onnx", RATES[i], 2.0, f"10.0.0.{i + 1}:5700")
                                 for i in range(k)],
                                [(f"edge-{j + 1}", HELPERS[j], 1, f"10.0.1.{j + 1}:5700") for j in range(h)])
            cluster = parse_cluster(text, base_dir=folder)
            at = time.perf_counter()
            rows, _ = compare_sources(cluster, {f"cam-{i + 1}": trunks[MODELS[i]] for i in range(k)})
            seconds = time.perf_counter() - at
            means = {s: statistics.mean(r["mean_ms"] for r in rows if r["strategy"] == s) for s in STRATEGIES}
            p95s = {s: statistics.mean(r["p95_ms"] for r in rows if r["strategy"] == s) for s in STRATEGIES}
            cells = [f"{means[s]:6.0f}/{p95s[s]:5.0f} {means[s] / means['matching']:5.2f}x" for s in STRATEGIES]
            print(f"{k:>7} {h:>7}  " + "  ".join(f"{c:>20}" for c in cells) + f"  {seconds:6.1f}", flush=True)


# The cameras of the measured runs: (name, model, frames/s) per camera, per run.
PAIRS = [
    [("cam-1", "mobilenet_v1_100", 4.0), ("cam-2", "resnet18", 2.0)],  # one light, one heavy
    [("cam-1", "resnet18", 3.0), ("cam-2", "resnet18", 3.0)],  # both want the fast helper
]


def measured(folder: Path, tasks: int) -> bool:
    why = netlab.available() or netlab.cpu_limits_available()
    if why:
        print(f"measured part skipped: {why}")
        return True
    names = sorted({m for pair in PAIRS for _, m, _ in pair})
    for name in names:
        onnx.save(models.build(name, 128, 128, seed=1), str(folder / f"{name}.onnx"))
    helpers = [("edge-1", 2, 1.2), ("edge-2", 1, 0.4)]  # name, threads, cores
    cpu = {"cam-1": 0.2, "cam-2": 0.2, **{name: cores for name, _, cores in helpers}}
    ok = True
    with netlab.NetLab({d: 100 for d in cpu}, cpu=cpu) as lab:
        threads = {d: t for d, t, _ in helpers}
        speed = {d: statistics.mean(lab.gmacs(d, folder / f"{m}.onnx", threads.get(d, 1)) for m in names)
                 for d in cpu}
        print("\nMeasured GMAC/s under each device's CPU limit: "
              + ", ".join(f"{d} {g:.2f}" for d, g in speed.items()))
        print(f"{'strategy':<9} {'source':<6} {'model':<16} {'Hz':>3} {'predicted':>9} {'sim mean':>8} {'sim p95':>7} "
              f"{'measured mean':>13} {'p95':>6} {'meas/pred':>9} exact  where")
        for picks in PAIRS:
            text = cluster_text([(s, f"{m}.onnx", r, speed[s], f"{lab.ip(s)}:5700") for s, m, r in picks],
                                [(d, speed[d], t, f"{lab.ip(d)}:5700") for d, t, _ in helpers])
            (folder / "cluster.toml").write_text(text)
            for strategy in ("matching", "halp"):
                ok &= _measure(folder, lab, strategy, tasks)
    return ok


def _measure(folder: Path, lab, strategy: str, tasks: int) -> bool:
    """Compile folder/cluster.toml with `strategy`, run every camera at once, print a row each."""
    bundle = folder / f"bundle-{strategy}"
    compile_bundle(None, folder / "cluster.toml", bundle, strategy)
    manifest = load_manifest(bundle)
    summaries = run_sources(bundle, tasks, lab.popen)
    predicted = _predicted(manifest)
    ok = True
    for source, summary in summaries.items():
        latencies = summary["latency_ms_per_task"]
        mean, p95 = statistics.mean(latencies), matching.nearest_rank(latencies, 95)
        view = manifest.for_source(source)
        # halp: the plan's own timeline (it knows nothing of the other camera)
        pred, sim_mean, sim_p95 = predicted.get(source, (view.data["predicted_ms"], None, None))
        plan = json.loads((bundle / "plans" / f"{view.id}.json").read_text())
        where = " ".join(f"{s['device']}:{s['rows'][1] - s['rows'][0]}" for s in plan["blocks"][0]["strips"])
        show = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{strategy:<9} {source:<6} {view.data['variant']:<16} {manifest.data['sources'][source]['rate_hz']:>3g} "
              f"{show(pred):>9} {show(sim_mean):>8} {show(sim_p95):>7} {mean:>13.1f} {p95:>6.1f} "
              f"{mean / pred:>9.2f} {'yes' if summary['exact'] else 'NO':>5}  {where}", flush=True)
        ok &= summary["exact"] is True
    return ok


def _predicted(manifest) -> dict[str, tuple[float, float, float]]:
    """Per source: the matching's cost-model latency and its simulated mean and p95 (ms)."""
    sharing = manifest.data.get("sharing")
    if not sharing:
        return {}
    sources, nodes, link = sharing_from_manifest(manifest.data)
    assignment = {(name, k): p["node"] for name, s in sharing["sources"].items() for k, p in enumerate(s["partitions"])}
    sim = matching.play_frames(assignment, sources, nodes, link, 20.0)
    return {name: (s["predicted_ms"], sim[name].mean_s * 1e3, sim[name].p95_s * 1e3)
            for name, s in sharing["sources"].items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--simulated-only", action="store_true")
    parser.add_argument("--tasks", type=int, default=30, help="frames per source in the measured run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        simulated(Path(tmp))
        ok = True if args.simulated_only else measured(Path(tmp), args.tasks)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
