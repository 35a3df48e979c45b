"""A device's memory and its share of the bundle: peak resident set of each device's sessions
after one run of every strip, beside one unsplit session of the same model, and each device
folder's size, before and after the weights went once per device (halpc.emit.weights).

Every number comes from a fresh child process that imports only what a board's stub imports
(halpc_stub, onnxruntime, numpy, pyzmq), makes the device's sessions as the stub does, runs
each once on zeros and reports its peak RSS (VmHWM). `before` is the plain strips with
their weights inside each file (what bundles were), each session its own copy; `shared` is
plain strips with the folder's weights file mapped once and handed to every session, where ORT
still reorders each session's own copy of the filters for NCHWc; `after` is the bundle as
compiled: on x86_64 with NCHWc, the strips as ORT optimized them (halpc.emit.ort_graphs), the
reordered filters in the shared weights file.
`predicted` is halpc.planner.memory's figure for the device. Both targets: x86_64 (ORT
rewrites convolutions to its NCHWc layout, a reordered filter copy per session) and
x86_64-nonchwc (no rewrite: what ARM64 boards run).

Run: python benchmarks/memory.py [--cases vgg16:halp,vgg16:even,resnet18:halp,resnet18:even,yolov8n:halp,yolov8n:even]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from unittest import mock
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

import models  # noqa: E402
from fetch_pretrained import PRETRAINED, fetch, parse_input_shape  # noqa: E402
from halpc.compile import compile_bundle  # noqa: E402
from halpc.inputs.cluster import load_cluster  # noqa: E402

CLUSTER = ROOT / "examples" / "cluster_local3.toml"

# The child: a stub's imports and sessions, nothing of the compiler.
CHILD = r"""
import json, re, sys
import numpy as np
import onnxruntime as ort
import zmq  # noqa: F401  (a stub has it loaded)
from halpc_stub.session import make_session, shared_weights
from pathlib import Path

files, index, nchwc, optimized = json.loads(sys.argv[1])
weights = shared_weights(Path(index)) if index else {}
sessions = [make_session(f, 1, nchwc=nchwc, initializers=weights.get(Path(f).name), optimized=optimized)
            for f in files]
types = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
for s in sessions:
    s.run(None, {i.name: np.zeros(i.shape, types[i.type]) for i in s.get_inputs()})
# VmHWM, not getrusage: ru_maxrss keeps the parent's high-water mark across fork and exec
print(int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024)
"""


def peak_mb(files: list[Path], index: Path | None = None, nchwc: bool = True, optimized: bool = False) -> float:
    args = json.dumps([[str(f) for f in files], str(index) if index else None, nchwc, optimized])
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measuring {files[:1]}...: {out.stderr.strip().splitlines()[-1]}")
    return float(out.stdout)


def inlined(folder: Path, out: Path) -> list[Path]:
    """The folder's models with their weights back inside each file (as bundles were)."""
    out.mkdir()
    for model in sorted(folder.glob("*.onnx")):
        onnx.save(onnx.load(str(model)), str(out / model.name))
    return sorted(out.glob("*.onnx"))


def distinct_weight_bytes(index: Path) -> int:
    """The bytes of the distinct tensors the folder's models use: its layers' weights."""
    models_ = json.loads(index.read_text())["models"].values()
    return sum(size for size in {(o, s): s for entries in models_ for o, s, *_ in entries.values()}.values())


def folder_mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def model_path(name: str, tmp: Path) -> tuple[Path, dict | None]:
    if name in PRETRAINED:
        input_name, shape = parse_input_shape(PRETRAINED[name].input_shape)
        return fetch(name), {input_name: shape}
    path = tmp / f"{name}.onnx"
    onnx.save(models.build(name, 224, 224), str(path))
    return path, None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="vgg16:halp,vgg16:even,resnet18:halp,resnet18:even,yolov8n:halp,yolov8n:even")
    parser.add_argument("--archs", default="x86_64,x86_64-nonchwc")
    args = parser.parse_args()
    cluster = load_cluster(CLUSTER)
    bare = peak_mb([])
    print(f"peak RSS (MB) of each device's sessions after one run; bare stub process: {bare:.0f} MB")
    print(f"{'model':<9} {'plan':<5} {'arch':<15} {'device':<7} {'unsplit':>8} {'before':>7} {'shared':>7} {'after':>6} "
          f"{'after/unsplit':>13} {'predicted':>9} {'folder MB before':>16} {'after':>6} {'weights MB':>10} "
          f"{'folder/weights':>14}")
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for case in args.cases.split(","):
            name, strategy = case.split(":")
            path, shapes = model_path(name, tmp)
            for arch in args.archs.split(","):
                nchwc = arch == "x86_64"
                bundle = tmp / f"{name}-{strategy}-{arch}"
                compile_bundle(path, cluster, bundle, strategy, input_shapes=shapes, arch=arch, insecure=True)
                optimized = bool(json.loads((bundle / "manifest.json").read_text())["target"].get("optimized"))
                plain = bundle
                if optimized:  # the same plan as plain strips, side by side (the construction before)
                    plain = tmp / f"{bundle.name}-plain"
                    with mock.patch("halpc.emit.bundle.optimized_strips_block", return_value=0):
                        compile_bundle(path, cluster, plain, strategy, input_shapes=shapes, arch=arch, insecure=True)
                predicted = json.loads((bundle / "plan.json").read_text())["predicted"]["memory_mb"]
                unsplit = peak_mb([bundle / "reference" / "model.onnx"], nchwc=nchwc)
                for device in cluster.names:
                    folder = bundle / device
                    models_ = sorted(folder.glob("*.onnx"))
                    if not models_:
                        continue
                    index = folder / "weights.json"
                    inline = inlined(plain / device, tmp / f"{bundle.name}-{device}-inline")
                    before = peak_mb(inline, nchwc=nchwc)
                    shared = peak_mb(sorted((plain / device).glob("*.onnx")), plain / device / "weights.json", nchwc)
                    after = peak_mb(models_, index, nchwc, optimized)
                    old = folder_mb(inline)
                    new = folder_mb([f for f in folder.iterdir() if f.is_file()])
                    weights = distinct_weight_bytes(index) / 1e6
                    print(f"{name:<9} {strategy:<5} {arch:<15} {device:<7} {unsplit:>8.0f} {before:>7.0f} {shared:>7.0f} {after:>6.0f} "
                          f"{after / unsplit:>13.2f} {predicted[device]:>9.0f} {old:>16.1f} {new:>6.1f} "
                          f"{weights:>10.1f} {new / weights:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
