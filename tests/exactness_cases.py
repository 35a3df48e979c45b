"""The exactness rules against ONNX Runtime itself: single-Conv models, strips built by halpc's
own emitter, run by ORT with the target's kernels (NCHWc off), compared bit for bit with the
unsplit rows, beside what `analyse.exactness` predicts.

Imported by tests/test_targets.py on x86 (target x86_64-nonchwc), and run as a script inside the
emulated ARM64 environment (target aarch64), where it prints its counts as JSON:

    python tests/exactness_cases.py --cases 200
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from halpc.analyse.exactness import ExactnessRules, Threads
from halpc.analyse.strips import block_io, strip_at
from halpc.analyse.trunk import analyse
from halpc.emit.layout import ReferenceLayout
from halpc.emit.subgraph import strip_model
from halpc.inputs.model import load_model
from halpc.inputs.target import TARGETS, this_machine
from halpc_stub.session import make_session

WIDTHS = (3, 7, 14, 28, 56)
CHANNELS = (1, 8, 16, 64, 128)  # K = Cin * kh * kw from 9 to 1152: every K-block band
THREADS = ((1, 1), (1, 2), (2, 1), (4, 4), (4, 2))


def conv_model(rng: random.Random, seed: int) -> tuple[onnx.ModelProto, str]:
    """One Conv (+ an epilogue ORT fuses into it): a random shape from the interesting bands."""
    cin, k = rng.choice(CHANNELS), rng.choice((1, 3, 3, 5))
    group = cin if (k == 3 and cin > 1 and rng.random() < 0.2) else 1
    cout = cin if group > 1 else rng.choice((4, 16, 64, 160))
    w, h = rng.choice(WIDTHS), rng.randint(4, 40)
    stride = rng.choice((1, 1, 2))
    pad = rng.choice((0, k // 2)) if min(h, w) >= k else k // 2  # a valid conv whatever the size
    weights = np.random.default_rng(seed).standard_normal((cout, cin // group, k, k)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[k, k], strides=[stride, stride],
                              pads=[pad] * 4, group=group, name="conv")]
    epilogue = rng.choice(("Relu", "Sigmoid", None))
    nodes.append(helper.make_node(epilogue or "Identity", ["c"], ["y"], name="epilogue"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, f"{cin}->{cout} k{k} s{stride} p{pad} g{group} {h}x{w} {epilogue}"


def conv_transpose_model(rng: random.Random, seed: int) -> tuple[onnx.ModelProto, str]:
    """One ConvTranspose (behind a 1x1 MaxPool, an exact identity that makes it a CNN trunk):
    K = Cin/group on both sides of MLAS's 128-wide K-block."""
    cin, cout = rng.choice((8, 64, 160, 300)), rng.choice((4, 16, 64))
    k, stride = rng.choice((2, 3, 4)), rng.choice((1, 2, 2))
    pad, w, h = rng.randrange(k), rng.choice(WIDTHS), rng.randint(3, 24)
    weights = np.random.default_rng(seed).standard_normal((cin, cout, k, k)).astype(np.float32)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1, 1], name="identity"),
             helper.make_node("ConvTranspose", ["p", "w"], ["y"], strides=[stride, stride], pads=[pad] * 4,
                              name="up")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, f"ConvTranspose {cin}->{cout} k{k} s{stride} p{pad} {h}x{w}"


def run_cases(cases: int, seed: int = 0, target_name: str | None = None, kind: str = "conv") -> dict:
    """Counts of (predicted, measured) over `cases` random strips of `kind` layers ("conv" or
    "conv_transpose"); the examples that disagree."""
    target = TARGETS[target_name] if target_name else TARGETS["aarch64" if this_machine().arch == "aarch64"
                                                                else "x86_64-nonchwc"]
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    wrong: list[str] = []
    folder = Path("/tmp") / f"halpc-exactness-{seed}"
    folder.mkdir(exist_ok=True)
    while sum(counts.values()) < cases:
        model, name = (conv_model if kind == "conv" else conv_transpose_model)(rng, sum(counts.values()))
        path = folder / "conv.onnx"
        onnx.save(model, str(path))
        trunk = analyse(load_model(path))
        rules = ExactnessRules(trunk, target)
        x = np.random.default_rng(1).standard_normal(trunk.tensors["x"].shape).astype(np.float32)
        io_ = block_io(trunk, 0, len(trunk.layers))
        total = trunk.tensors["y"].rows
        for _ in range(6):
            a = rng.randrange(total)
            b = rng.randint(a + 1, min(total, a + rng.choice((1, 2, 3, 5, 9, 40))))
            threads = Threads(*rng.choice(THREADS))
            unsplit = make_session(model.SerializeToString(), threads.reference,
                                   nchwc=target.nchwc).run(None, {"x": x})[0]
            bounds = sorted({0, a, b, total})
            rows = strip_at(trunk, io_, bounds, bounds.index(a))
            strip = strip_model(trunk, io_, rows, "strip", ReferenceLayout(frozenset(), active=False))
            lo, hi = rows.inputs["x"]
            got = make_session(strip.SerializeToString(), threads.strip,
                               nchwc=target.nchwc).run(None, {"x": x[:, :, lo:hi]})[0]
            measured = np.array_equal(got, unsplit[:, :, a:b])
            predicted = rules.why_inexact(io_, rows, threads) is None
            counts[f"predicted {'exact' if predicted else 'inexact'}, measured {'exact' if measured else 'inexact'}"] += 1
            if predicted and not measured:
                wrong.append(f"{name} rows {a}..{b} threads {threads}")
    return {"target": target.name, "counts": dict(counts), "predicted_exact_but_inexact": wrong}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("conv", "conv_transpose"), default="conv")
    args = parser.parse_args()
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8")
    print(json.dumps(run_cases(args.cases, args.seed, kind=args.kind)))
