"""ONNX Runtime sessions with the one set of options every halpc run uses, and what this
machine's ONNX Runtime is (its CPU architecture, whether it rewrites convolutions to NCHWc).

Bit-exactness between the unsplit model and its strips holds for one ORT build with one set of
options. On x86-64, ORT_ENABLE_ALL rewrites convolutions to NCHWc kernels whose accumulation
order does not depend on the strip height. A bundle compiled for a target without them (ARM64,
or x86-64 with `nchwc=False`) runs every session with the NchwcTransformer disabled, so that an
x86 machine computes what the target computes; on ARM64 builds it is not registered anyway.
The reference run in `halpc verify` and every device use this.

A bundle compiled for NCHWc on a machine with NCHWc kernels ships its strips as the graphs ORT
optimized them to (`optimized_strips`), reordered filters included, so that a device keeps each
filter once, in its weights file, instead of every session reordering its own copy; those
sessions run with ORT's optimizations off, and only where MLAS's NCHWc block is the one they
were reordered for.
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
    initializers: dict[str, ort.OrtValue] | None = None, optimized: bool = False, weights_apart: bool = False,
) -> ort.InferenceSession:
    """A session with halpc's options; `optimized_path` saves the graph ORT actually runs, its
    weights in a file beside it if `weights_apart`; `nchwc=False` keeps convolutions off ORT's
    NCHWc layout; `initializers` are weights the session uses in place of reading its own copy
    (`shared_weights`); `optimized`: the model is such a saved graph already, run as it is."""
    options = ort.SessionOptions()
    for name, value in (initializers or {}).items():
        options.add_initializer(name, value)
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
        if weights_apart:
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             os.path.basename(optimized_path) + ".weights")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    disabled = [] if nchwc or optimized else ["NchwcTransformer"]
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


# One com.microsoft.nchwc ReorderInput of a 4-channel input: it pads the channels to MLAS's
# NCHWc block (serialised, as _PROBE).
_BLOCK_PROBE = base64.b64decode(
    "CAg6WgopCgF4EgF5IgxSZW9yZGVySW5wdXQ6E2NvbS5taWNyb3NvZnQubmNod2MSBWJsb2NrWhsKAXgSFgoUCAESEAoCCAEKAggECgIIAQoCCAFiCQoB"
    "eRIECgIIAUIECgAQDUIXChNjb20ubWljcm9zb2Z0Lm5jaHdjEAE=")


@functools.lru_cache(maxsize=None)
def nchwc_block() -> int:
    """The channels of one NCHWc block on this machine (8 with AVX2, 16 with AVX-512), 0 where
    ORT has no NCHWc kernels: asked of ORT, whose ReorderInput pads channels to a block."""
    try:
        session = make_session(_BLOCK_PROBE, optimized=True)
        return int(session.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        return 0


def is_onnxruntime_error(exc: BaseException) -> bool:
    """ONNX Runtime raises its own Fail, InvalidArgument, InvalidGraph...: no common base class
    but their module."""
    return type(exc).__module__.startswith("onnxruntime")


def bundle_nchwc(manifest) -> bool:
    """Whether the bundle's target runs convolutions in ORT's NCHWc layout (older bundles: yes)."""
    return manifest.data.get("target", {}).get("nchwc", True) is not False


def optimized_strips(manifest) -> int:
    """The NCHWc block the bundle's strips were optimized for (ORT's saved graphs), or 0: its
    strips are plain ONNX that each session optimizes itself."""
    target = manifest.data.get("target", {})
    return target.get("nchwc_block", 0) if target.get("optimized") else 0


def this_target(manifest) -> dict:
    """What this machine runs a bundle's sessions as: its CPU, whether convolutions run in NCHWc
    (the bundle's setting and this ORT's kernels together), its NCHWc block and its ONNX Runtime."""
    return {"arch": machine_arch(), "nchwc": bundle_nchwc(manifest) and nchwc_available(),
            "nchwc_block": nchwc_block(), "onnxruntime": ort.__version__}


def target_mismatch(manifest, found: dict, who: str) -> str | None:
    """Why a machine that reported `found` (see `this_target`) cannot run the bundle bit-exactly,
    or None when it can."""
    wanted = manifest.data.get("target", {"arch": found.get("arch"), "nchwc": True})
    want = {"arch": wanted.get("arch"), "nchwc": wanted.get("nchwc", True) is not False,
            "onnxruntime": manifest.data["onnxruntime"]}
    if block := optimized_strips(manifest):
        want["nchwc_block"] = block
    if {k: found.get(k) for k in want} == want:
        return None

    def kind(t: dict) -> str:
        block = f" (blocks of {t.get('nchwc_block')})" if "nchwc_block" in want and t.get("nchwc") else ""
        return f"{t.get('arch')} {'with' if t.get('nchwc') else 'without'} NCHWc{block}, onnxruntime {t.get('onnxruntime')}"

    if block:  # not a matter of exactness: ORT's NCHWc graphs run only on the machine they were made for
        return (f"{who} is {kind(found)}; the bundle was compiled for {kind(want)}: its strips are ONNX Runtime "
                "graphs for that machine only (compile on a machine like this one, or with --arch x86_64-nonchwc "
                "for plain strips)")
    return (f"{who} is {kind(found)}; the bundle was compiled for {kind(want)}: its strips are bit-exact only "
            "there (compile for this machine with --arch, or accept ~1e-6 differences with --allow-inexact)")


def load_sessions(manifest, device: str) -> dict[str, ort.InferenceSession]:
    """One session per model file of the device's programs (every plan's), each opened once; a
    BundleError naming the file when ONNX Runtime cannot load one (its checksum was right, so it
    is this ONNX Runtime that cannot run it)."""
    files = sorted({s["model"] for plan in manifest.plans for s in plan.program(device) if "model" in s})
    block = optimized_strips(manifest)
    if block and block != nchwc_block():
        raise BundleError(f"{device}: the bundle's strips are ONNX Runtime graphs reordered for NCHWc blocks of "
                          f"{block} channels; this machine's ONNX Runtime {_blocks()}: compile the bundle on a "
                          "machine like this one, or with --arch x86_64-nonchwc for strips any x86-64 runs")
    weights = shared_weights(manifest.path(device, WEIGHTS_INDEX))
    sessions = {}
    for f in files:
        path = manifest.path(device, f)
        try:
            sessions[f] = strip_session(manifest, device, f, weights.get(f))
        except Exception as exc:
            if not is_onnxruntime_error(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{path}: onnxruntime {ort.__version__} cannot load it ({first[:300]}); the bundle "
                              f"was compiled for onnxruntime {manifest.data['onnxruntime']}: install that "
                              "one") from None
    return sessions


def _blocks() -> str:
    return f"uses blocks of {nchwc_block()}" if nchwc_block() else "has no NCHWc kernels"


def strip_session(manifest, device: str, file: str, initializers: dict[str, ort.OrtValue] | None = None):
    """A session of one of the device's model files, as the bundle was compiled to run it."""
    return make_session(str(manifest.path(device, file)), manifest.device(device).threads,
                        nchwc=bundle_nchwc(manifest), initializers=initializers,
                        optimized=bool(optimized_strips(manifest)))


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
