"""ONNX Runtime sessions with the one set of options every halpc run uses.

Bit-exactness between the unsplit model and its strips holds for one ORT build with one set of
options (ORT_ENABLE_ALL rewrites convolutions to NCHWc kernels whose accumulation order does not
depend on the strip height). The reference run in `halpc verify` and every device use this.
"""
from __future__ import annotations

import onnxruntime as ort

from halpc_stub.errors import BundleError


def make_session(
    model: str | bytes, threads: int = 1, optimized_path: str | None = None
) -> ort.InferenceSession:
    """A session with halpc's options; `optimized_path` saves the graph ORT actually runs."""
    options = ort.SessionOptions()
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def is_onnxruntime_error(exc: BaseException) -> bool:
    """ONNX Runtime raises its own Fail, InvalidArgument, InvalidGraph...: no common base class
    but their module."""
    return type(exc).__module__.startswith("onnxruntime")


def load_sessions(manifest, device: str) -> dict[str, ort.InferenceSession]:
    """One session per model file of the device's programs (every plan's), each opened once; a
    BundleError naming the file when ONNX Runtime cannot load one (its checksum was right, so it
    is this ONNX Runtime that cannot run it)."""
    threads = manifest.device(device).threads
    files = sorted({s["model"] for plan in manifest.plans for s in plan.program(device) if "model" in s})
    sessions = {}
    for f in files:
        path = manifest.path(device, f)
        try:
            sessions[f] = make_session(str(path), threads)
        except Exception as exc:
            if not is_onnxruntime_error(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{path}: onnxruntime {ort.__version__} cannot load it ({first[:300]}); the bundle "
                              f"was compiled for onnxruntime {manifest.data['onnxruntime']}: install that "
                              "one") from None
    return sessions
