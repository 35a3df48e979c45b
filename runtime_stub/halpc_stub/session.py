"""ONNX Runtime sessions with the one set of options every halpc run uses, and what this
machine's ONNX Runtime is (its CPU architecture, whether it rewrites convolutions to NCHWc).

Bit-exactness between the unsplit model and its strips holds for one ORT build with one set of
options. On x86-64, ORT_ENABLE_ALL rewrites convolutions to NCHWc kernels whose accumulation
order does not depend on the strip height. A bundle compiled for a target without them (ARM64,
or x86-64 with `nchwc=False`) runs every session with the NchwcTransformer disabled, so that an
x86 machine computes what the target computes; on ARM64 builds it is not registered anyway.
The reference run in `halpc verify` and every device use this.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from halpc_stub.errors import BundleError


def make_session(
    model: str | bytes, threads: int = 1, optimized_path: str | None = None, nchwc: bool = True,
    initializers: dict[str, ort.OrtValue] | None = None,
) -> ort.InferenceSession:
    """A session with halpc's options; `optimized_path` saves the graph ORT actually runs;
    `nchwc=False` keeps convolutions off ORT's NCHWc layout; `initializers` are weights the
    session uses in place of reading its own copy (`shared_weights`)."""
    options = ort.SessionOptions()
    for name, value in (initializers or {}).items():
        options.add_initializer(name, value)
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    disabled = [] if nchwc else ["NchwcTransformer"]
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    session.shared_initializers = initializers  # ORT holds bare pointers to them: keep them alive as long
    return session


# One 1x1 Conv, 8 channels, 4x4 (a serialised ONNX model: the stub has no onnx package).
_PROBE = base64.b64decode("CAg65QIKDwoBeAoBdxIBeSIEQ29udhIFcHJvYmUqkAIICAgICAEIARABQgF3SoAC" + "A" * 341 + "FobCgF4EhYKFAgBEhAKAggBCgIICAoCCAQKAggEYhsKAXkSFgoUCAESEAoCCAEKAggICgIIBAoCCARCBAoAEA0=")


def machine_arch() -> str:
    """The CPU architecture in halpc's words: x86_64 or aarch64."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@functools.lru_cache(maxsize=None)
def nchwc_available() -> bool:
    """Whether this machine's ONNX Runtime rewrites convolutions to its NCHWc layout (MLAS has
    NCHWc kernels for this CPU): asked of ORT itself, by optimizing a one-Conv model."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "probe.onnx")
        make_session(_PROBE, optimized_path=optimized)
        with open(optimized, "rb") as f:
            # The op, not the domain: ORT lists com.microsoft.nchwc among every saved model's
            # opsets, on ARM64 builds too; only a rewritten Conv gains a ReorderOutput node.
            return b"ReorderOutput" in f.read()


def is_onnxruntime_error(exc: BaseException) -> bool:
    """ONNX Runtime raises its own Fail, InvalidArgument, InvalidGraph...: no common base class
    but their module."""
    return type(exc).__module__.startswith("onnxruntime")


def bundle_nchwc(manifest) -> bool:
    """Whether the bundle's target runs convolutions in ORT's NCHWc layout (older bundles: yes)."""
    return manifest.data.get("target", {}).get("nchwc", True) is not False


def this_target(manifest) -> dict:
    """What this machine runs a bundle's sessions as: its CPU, whether convolutions run in NCHWc
    (the bundle's setting and this ORT's kernels together) and its ONNX Runtime."""
    return {"arch": machine_arch(), "nchwc": bundle_nchwc(manifest) and nchwc_available(),
            "onnxruntime": ort.__version__}


def target_mismatch(manifest, found: dict, who: str) -> str | None:
    """Why a machine that reported `found` (see `this_target`) cannot run the bundle bit-exactly,
    or None when it can."""
    wanted = manifest.data.get("target", {"arch": found.get("arch"), "nchwc": True})
    want = {"arch": wanted.get("arch"), "nchwc": wanted.get("nchwc", True) is not False,
            "onnxruntime": manifest.data["onnxruntime"]}
    if {k: found.get(k) for k in want} == want:
        return None

    def kind(t: dict) -> str:
        return f"{t.get('arch')} {'with' if t.get('nchwc') else 'without'} NCHWc, onnxruntime {t.get('onnxruntime')}"

    return (f"{who} is {kind(found)}; the bundle was compiled for {kind(want)}: its strips are bit-exact only "
            "there (compile for this machine with --arch, or accept ~1e-6 differences with --allow-inexact)")


def load_sessions(manifest, device: str) -> dict[str, ort.InferenceSession]:
    """One session per model file of the device's programs (every plan's), each opened once; a
    BundleError naming the file when ONNX Runtime cannot load one (its checksum was right, so it
    is this ONNX Runtime that cannot run it)."""
    threads = manifest.device(device).threads
    files = sorted({s["model"] for plan in manifest.plans for s in plan.program(device) if "model" in s})
    weights = shared_weights(manifest.path(device, WEIGHTS_INDEX))
    sessions = {}
    for f in files:
        path = manifest.path(device, f)
        try:
            sessions[f] = make_session(str(path), threads, nchwc=bundle_nchwc(manifest), initializers=weights.get(f))
        except Exception as exc:
            if not is_onnxruntime_error(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{path}: onnxruntime {ort.__version__} cannot load it ({first[:300]}); the bundle "
                              f"was compiled for onnxruntime {manifest.data['onnxruntime']}: install that "
                              "one") from None
    return sessions


WEIGHTS_INDEX = "weights.json"


def shared_weights(index: Path) -> dict[str, dict[str, ort.OrtValue]]:
    """Each model file's weights in the folder's weights file (halpc.emit.weights), the file
    mapped once, read-only, and every tensor one value however many sessions use it: a device
    holds its weights once (the pages are the file's, which the kernel may drop and read again
    under memory pressure). Empty for a folder without one (older bundles)."""
    if not index.is_file():
        return {}
    try:
        doc = json.loads(index.read_text())
        blob = np.memmap(index.with_name(doc["file"]), mode="r")
        values: dict[tuple, ort.OrtValue] = {}
        found = {}
        for model, entries in doc["models"].items():
            found[model] = {}
            for name, (offset, size, dtype, shape) in entries.items():
                key = (offset, size, dtype, tuple(shape))
                if key not in values:
                    array = blob[offset:offset + size].view(np.dtype(dtype)).reshape(shape)
                    values[key] = ort.OrtValue.ortvalue_from_numpy(array)
                found[model][name] = values[key]
        return found
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{index}: cannot map the device's weights ({exc}); copy the device folder again "
                          "or recompile") from None
