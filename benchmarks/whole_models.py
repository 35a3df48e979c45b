"""Whole models split: the predicted speedup of `halp` on 3 devices (8 GMAC/s, 1 ms latency) with
the split ending, as before, at the first ConvTranspose, linear Resize or squeeze-and-excitation
block (the host runs the rest alone), beside the split running through them (`analyse.resampling`,
the sync points of `analyse.ops`). Both are analysed and planned in the same run.

Run: python benchmarks/whole_models.py [--mbps 100]
    [--models unet:256,unet:512,fpn:256,ppocr_det:640,ppocr_det:960,efficientnet_b0:224,mobilenet_v3_large:224]
(ppocr_det is the trained PP-OCRv4 text detector: `python examples/fetch_pretrained.py ppocr_det`
fetches it; the other models are built in code, examples/segmentation.py and backbones.py.)
Prints per model: the share of MACs split, the predicted latency and speedup over local, and
what ends the split, before and after.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import backbones  # noqa: E402
import fetch_pretrained  # noqa: E402
import segmentation  # noqa: E402
from halpc.analyse import ops  # noqa: E402
from halpc.analyse.coverage import coverage  # noqa: E402
from halpc.analyse.trunk import analyse  # noqa: E402
from halpc.inputs.model import load_model  # noqa: E402
from halpc.planner.context import context  # noqa: E402
from halpc.planner.strategies import make_plan  # noqa: E402
from strategies import cluster  # noqa: E402  (benchmarks/strategies.py)


@contextmanager
def as_before():
    """Analyse as before: ConvTranspose, linear/cubic Resize and reductions end the trunk."""
    saved = ops.transposed, ops.resampled, ops.REDUCE

    def nearest_only(op, attrs, *args):
        if attrs.get("mode", "nearest") != "nearest":
            return "not split before"
        return saved[1](op, attrs, *args)

    ops.transposed, ops.resampled, ops.REDUCE = (lambda *args: "not split before"), nearest_only, frozenset()
    try:
        yield
    finally:
        ops.transposed, ops.resampled, ops.REDUCE = saved


def model_path(spec: str, tmp: Path) -> tuple[Path, dict | None]:
    name, size = spec.split(":")
    side = int(size)
    builders = {**segmentation.SEGMENTERS, **backbones.BACKBONES}
    if name in builders:
        path = tmp / f"{name}-{side}.onnx"
        onnx.save(builders[name](side, side), str(path))
        return path, None
    entry = fetch_pretrained.PRETRAINED[name]
    input_name = entry.input_shape.split("=")[0]
    return fetch_pretrained.fetch(name), {input_name: (1, 3, side, side)}


def predict(path: Path, shapes: dict | None, mbps: float) -> tuple[float, float, float, list[str]]:
    """(split share, local ms, halp ms, where the split ends)."""
    trunk = analyse(load_model(path, shapes))
    found = coverage(trunk)
    local = make_plan(context(trunk, cluster(1, 100, latency_ms=1.0)), "local").predicted["latency_ms"]
    halp = make_plan(context(trunk, cluster(3, mbps, latency_ms=1.0)), "halp").predicted["latency_ms"]
    ends = sorted({f"{e.op}" for e in found.ends})
    return found.share, local, halp, ends


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="unet:256,unet:512,fpn:256,ppocr_det:640,ppocr_det:960,"
                                            "efficientnet_b0:224,mobilenet_v3_large:224")
    parser.add_argument("--mbps", type=float, default=100)
    args = parser.parse_args()
    print(f"halp on 3 devices at {args.mbps:g} Mbit/s, 8 GMAC/s each, 1 ms latency (predicted)")
    print(f"{'model':<22} {'':<7} {'split':>6} {'local':>9} {'halp':>9} {'speedup':>8}  the split ends at")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            path, shapes = model_path(spec, Path(tmp))
            with as_before():
                before = predict(path, shapes, args.mbps)
            after = predict(path, shapes, args.mbps)
            for label, (share, local, halp, ends) in (("before", before), ("after", after)):
                print(f"{spec:<22} {label:<7} {share:>6.0%} {local:>7.0f}ms {halp:>7.0f}ms {local / halp:>7.2f}x  "
                      f"{', '.join(ends) or 'the output'}", flush=True)


if __name__ == "__main__":
    main()
