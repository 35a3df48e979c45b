"""Smoke test of the arm64 root: one 3x3 Conv (64 -> 64 channels, 1x64x16x16).

    python smoke.py build MODEL.onnx    # on the host: writes the model (onnx.helper, seeded)
    python smoke.py run MODEL.onnx      # anywhere: runs it, reports NCHWc rewrite and timings

'run' prints the machine, whether ORT's optimized graph holds com.microsoft.nchwc nodes (x86
builds rewrite Convs to NCHWc; standard ARM64 builds should not), whether InferenceSession
accepts disabled_optimizers=["NchwcTransformer"], and 10 runs' wall time.
"""
import sys
import time

t0 = time.perf_counter()
import numpy as np  # noqa: E402

if sys.argv[1] == "build":
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 16, 16])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[2])
    sys.exit(0)

import platform  # noqa: E402

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

t_import = time.perf_counter() - t0
path = sys.argv[2]
opt_path = f"{path}.{platform.machine()}.opt.onnx"
so = ort.SessionOptions()
so.optimized_model_filepath = opt_path
so.intra_op_num_threads = 1
sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
domains = sorted({n.domain or "ai.onnx" for n in onnx.load(opt_path).graph.node})
x = np.random.default_rng(1).standard_normal((1, 64, 16, 16)).astype(np.float32)
sess.run(None, {"x": x})  # warm-up
t1 = time.perf_counter()
for _ in range(10):
    (y,) = sess.run(None, {"x": x})
t_run = time.perf_counter() - t1
try:
    so2 = ort.SessionOptions()
    ort.InferenceSession(path, sess_options=so2, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    disabled = "accepted"
except Exception as e:  # noqa: BLE001
    disabled = f"rejected: {e}"
print(f"machine {platform.machine()}  onnxruntime {ort.__version__}  numpy {np.__version__}")
print(f"import numpy+onnx+onnxruntime: {t_import:.2f} s")
print(f"optimized graph domains: {domains}; nchwc nodes: {'com.microsoft.nchwc' in domains}")
print(f"disabled_optimizers=['NchwcTransformer']: {disabled}")
print(f"10 runs of the conv: {t_run * 1000:.1f} ms ({t_run * 100:.2f} ms each); sum(y) {y.sum():.6f}")
