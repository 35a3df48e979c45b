"""Strips shipped as ORT's optimized NCHWc graphs against plain strips: the same plan's strips
of one device, each kind in its sessions as the stub opens them (plain: ORT_ENABLE_ALL, each
session reorders its filters; optimized: ORT_DISABLE_ALL on the saved graph, halpc.emit.ort_graphs),
all of a device's strips run once per round, the two kinds alternating round by round on the
same inputs; the median of each and their ratio, and whether every output is the same bytes.

Run: python benchmarks/ort_graphs.py [--model vgg16] [--size 224] [--device dev-1] [--rounds 9]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import models  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.inputs.cluster import load_cluster  # noqa: E402
from halpc_stub.manifest import load_manifest  # noqa: E402
from halpc_stub.session import load_sessions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="dev-1")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    cluster = load_cluster(ROOT / "examples" / "cluster_local3.toml")
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        path = tmp / "model.onnx"
        onnx.save(models.build(args.model, args.size, args.size), str(path))
        compile_bundle(path, cluster, tmp / "optimized", "halp", insecure=True)
        if not load_manifest(tmp / "optimized").data["target"].get("optimized"):
            raise SystemExit("this machine's ONNX Runtime has no NCHWc kernels: its bundles keep plain strips")
        with mock.patch("halpc.emit.bundle.optimized_strips_block", return_value=0):  # the same plan, plain
            compile_bundle(path, cluster, tmp / "plain", "halp", insecure=True)
        sessions = {kind: load_sessions(load_manifest(tmp / kind), args.device) for kind in ("plain", "optimized")}
        rng = np.random.default_rng(0)
        feeds = {f: {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in s.get_inputs()}
                 for f, s in sessions["plain"].items()}
        outputs = {kind: {f: s.run(None, feeds[f]) for f, s in by_file.items()} for kind, by_file in sessions.items()}
        same = sum(all(np.array_equal(a, b) for a, b in zip(outputs["plain"][f], outputs["optimized"][f]))
                   for f in feeds)
        seconds: dict[str, list[float]] = {"plain": [], "optimized": []}
        for r in range(args.rounds):
            for kind in ("plain", "optimized") if r % 2 else ("optimized", "plain"):
                start = time.perf_counter()
                for f, s in sessions[kind].items():
                    s.run(None, feeds[f])
                seconds[kind].append(time.perf_counter() - start)
    plain, optimized = (statistics.median(seconds[k]) * 1e3 for k in ("plain", "optimized"))
    print(f"{args.model} {args.size} halp, {args.device}: {len(feeds)} strips, {same} with the same output bytes")
    print(f"all strips once: plain {plain:.1f} ms, optimized {optimized:.1f} ms (median of {args.rounds}); "
          f"optimized / plain {optimized / plain:.3f}")


if __name__ == "__main__":
    main()
