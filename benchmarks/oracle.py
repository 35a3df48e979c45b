"""halp's plan against the true oracle (halpc.planner.oracle) on small random models, chains and
branching ones, over uneven clusters (2-3 slow devices, each helper behind a link of 1-100
Mbit/s): both judged by the full predicted timeline. The gap is halp's latency over the oracle's.

Run: python benchmarks/oracle.py [--seeds 24]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from bundles import save, trunk_of  # noqa: E402  (tests/bundles.py)
from halpc.errors import HalpcError  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.planner.oracle import true_oracle  # noqa: E402
from halpc.planner.strategies import make_plan  # noqa: E402
from test_oracle import uneven_cluster  # noqa: E402
from test_planner import _random_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=24)
    args = parser.parse_args()
    print(f"{'seed':>4} {'model':<9} {'cuts':>4} {'dev':>3} {'plans':>6} {'s':>5} {'halp ms':>8} {'blocks':>6} "
          f"{'oracle ms':>9} {'blocks':>6} {'gap':>7}  devices halp / oracle")
    gaps = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            branching = seed % 2 == 1
            trunk = trunk_of(save(_random_model(seed, branching), Path(tmp), f"m{seed}.onnx"))
            devices = 3 if len(trunk.cuts) <= 4 else 2
            ctx = context(trunk, uneven_cluster(seed, devices))
            started = time.perf_counter()
            try:
                oracle, oracle_ms, judged = true_oracle(ctx)
            except HalpcError:
                continue  # too many cut points for the oracle
            seconds = time.perf_counter() - started
            halp = make_plan(ctx, "halp")
            gap = halp.predicted["latency_ms"] / oracle_ms - 1
            gaps.append(gap)
            print(f"{seed:>4} {'branching' if branching else 'chain':<9} {len(trunk.cuts):>4} {devices:>3} {judged:>6} "
                  f"{seconds:>5.1f} {halp.predicted['latency_ms']:>8.3f} {len(halp.blocks):>6} {oracle_ms:>9.3f} "
                  f"{len(oracle.blocks):>6} {gap:>7.2%}  {' '.join(halp.devices())} / {' '.join(oracle.devices())}")
    if not gaps:
        raise SystemExit("no model small enough for the oracle: raise --seeds")
    print(f"{len(gaps)} models: halp equals the oracle on {sum(g < 1e-9 for g in gaps)}, "
          f"mean gap {sum(gaps) / len(gaps):.2%}, worst {max(gaps):.2%}")


if __name__ == "__main__":
    main()
