"""Measure how fast a device runs a model's trunk with ONNX Runtime: `halpc profile`.

Run on the device itself (a Raspberry Pi, a Jetson, the host). Every windowed layer (Conv,
pooling: where the MACs are) is compiled as a one-layer strip, exactly as a bundle would build it
(`strips.block_io` / `strip_rows` / `emit.subgraph.strip_model` on the block [p, p+1)), at several
strip heights taken from the middle of the image, and timed with the session options every halpc
run uses (`halpc_stub.session.make_session`). Per layer, `ms = fixed + per_row * rows` is fitted
by non-negative least squares. Cheap per-pixel layers (ReLU, BatchNormalization, Add, ...) are not
timed one by one: ORT fuses most of them into the Conv before them, so timed alone they would
cost what they never cost in a strip. They are accounted for by timing the whole trunk as one
block at full height: the device's effective GMAC/s, the number the planner uses, is the trunk's
MACs (every layer's, as `Trunk.macs` counts them) over that time.

Profiling a quantized model also gives `int8_gmacs`, what the planner prices integer convolutions
at: their MACs (QLinearConv, ConvInteger, QDQ convs ORT fuses into them; `Trunk.integer`) over
the whole trunk's time at full height. Timed one by one, a QDQ conv is a float conv on
dequantized inputs (ORT fuses DQ -> Conv -> Q only with its neighbours in the strip), and the
whole trunk's time, which the integer convolutions dominate, is the conservative figure. A float
model's profile has none (null).

The result is plain JSON (schema `halpc-profile/1`); a cluster file references it with
`profile = "device.json"` instead of `gmacs = ...`.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from halpc.errors import HalpcError, UsageError
from halpc.inputs.profile_file import SCHEMA as PROFILE_SCHEMA, full_height_ms
from halpc.analyse.rows import Rows
from halpc.analyse.strips import BlockIO, block_io, strip_at
from halpc.analyse.ops import Layer
from halpc.analyse.trunk import Trunk

ALL = "all"
DEFAULT_HEIGHTS: tuple[int | str, ...] = (1, 2, 4, 8, 16, 32, ALL)
OVERHEAD_RUNS = 30  # runs of the near-empty strip (each some tens of microseconds)
FLUSH_BYTES = 256 << 20  # touched between cold runs to evict the weights from every cache




def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail at once, before minutes of profiling, when the profile cannot be written there."""
    out = Path(path)
    if out.is_dir():
        raise HalpcError(f"{out}: is a folder; give the path of the profile JSON to write")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise HalpcError(f"{out}: folder {parent} does not exist; create it or choose another -o")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise HalpcError(f"{out}: cannot write there (permission denied); choose another -o")
    return out


# -- measuring ----------------------------------------------------------------------------------


def profile_device(
    trunk: Trunk,
    heights: Sequence[int | str] = DEFAULT_HEIGHTS,
    threads: int = 1,
    repeat: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time the trunk's windowed layers at several strip heights and the whole trunk at full
    height on this machine; return a JSON-able profile (see the module docstring)."""
    from halpc.emit.layout import reference_layout

    if not heights:
        raise UsageError("give at least one strip height, e.g. 1,4,16,all", option="heights")
    if repeat < 1 or threads < 1:
        raise UsageError(f"repeat {repeat} and threads {threads} must be at least 1")
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    layout = reference_layout(trunk)
    windowed = [layer for layer in trunk.layers if layer.window is not None]

    layers: dict[str, dict] = {}
    for n, layer in enumerate(windowed, 1):
        io = _single_layer_io(trunk, layer)
        total = trunk.tensors[io.reference].rows
        samples: list[list[float]] = []
        for rows in _heights_for(heights, total):
            model, feeds = _strip(trunk, io, _middle(rows, total), layout, rng)
            seconds = _median_run(model, feeds, threads, repeat)
            samples.append([rows, round(seconds * 1e3, 4)])
        fixed, per_row = fit_line([s[0] for s in samples], [s[1] for s in samples])
        key = layer.name if layer.name not in layers else f"{layer.name}#{layer.position}"
        layers[key] = {
            "op": layer.op_type,
            "position": layer.position,
            "macs": layer.macs,
            "rows": total,
            "fixed_ms": round(fixed, 4),
            "per_row_ms": round(per_row, 5),
            "samples": samples,
        }
        say(f"[{n}/{len(windowed)}] {layer.name} ({layer.op_type}): "
            + ", ".join(f"{int(r)} rows {ms:.3f} ms" for r, ms in samples))

    # The whole trunk as one block at full height: what the device runs when it runs it alone.
    io = block_io(trunk, 0, len(trunk.layers))
    model, feeds = _strip(trunk, io, None, layout, rng)
    trunk_s = _median_run(model, feeds, threads, repeat)
    del model, feeds
    say(f"whole trunk at full height: {trunk_s * 1e3:.2f} ms")
    overhead_s = _overhead(trunk, windowed, layout, threads, rng)
    weight_gbps = _weight_rate(trunk, windowed, layout, threads, rng)
    message_s = _message_overhead()

    windowed_macs = sum(layer.macs for layer in windowed)
    integer_macs = sum(layer.macs for layer in windowed if layer.position in trunk.integer)
    windowed_ms = sum(full_height_ms(entry) for entry in layers.values())
    model_info = trunk.model
    return {
        "schema": PROFILE_SCHEMA,
        "measured": True,
        "device": platform.node(),
        "machine": platform.machine(),
        "processor": processor_name(),
        "system": f"{platform.system()} {platform.release()}".strip(),
        "onnxruntime": _ort_version(),
        "threads": threads,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "file": Path(model_info.path).name,
            "sha256": model_info.sha256,
            "input_shapes": {k: list(v) for k, v in model_info.input_shapes.items()},
        },
        "gmacs": round(trunk.macs / trunk_s / 1e9, 3),
        "per_run_overhead_ms": round(overhead_s * 1e3, 4),
        "weight_gbps": weight_gbps,
        "per_message_overhead_ms": round(message_s * 1e3, 4),
        "int8_gmacs": round(integer_macs / trunk_s / 1e9, 3) if integer_macs else None,
        **board_memory_mb(),
        "trunk": {
            "macs": trunk.macs,
            "ms": round(trunk_s * 1e3, 3),
            "layers": len(trunk.layers),
            "windowed_layers": len(windowed),
            "windowed_macs": windowed_macs,
            "windowed_ms": round(windowed_ms, 3),  # sum over layers timed alone at full height
            "windowed_gmacs": round(windowed_macs / windowed_ms / 1e6, 3) if windowed_ms else None,
        },
        "settings": {"heights": list(heights), "repeat": repeat},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "layers": layers,
    }


def _single_layer_io(trunk: Trunk, layer: Layer) -> BlockIO:
    io = block_io(trunk, layer.position, layer.position + 1)
    if io.outputs:
        return io
    # An output nothing reads (not even the graph): keep it, to have something to time.
    return BlockIO(io.start, io.stop, io.inputs, layer.outputs, layer.outputs[0])


def _heights_for(heights: Sequence[int | str], total: int) -> list[int]:
    """Distinct row counts (clipped to the layer's rows), ascending."""
    return sorted({total if h == ALL else min(int(h), total) for h in heights})


def _middle(rows: int, total: int) -> Rows:
    """A strip of `rows` output rows from the middle of the image: the halo of a typical strip."""
    lo = (total - rows) // 2
    return (lo, lo + rows)


def _strip(trunk: Trunk, io: BlockIO, ref_rows: Rows | None, layout, rng: np.random.Generator):
    """The strip model owning `ref_rows` of the block's reference output (None: all of every
    output), and random inputs of the shapes it reads."""
    from halpc.emit.subgraph import strip_model

    total = trunk.tensors[io.reference].rows
    if ref_rows is None:
        rows = strip_at(trunk, io, [0, total], 0)
    else:
        rows = strip_at(trunk, io, [0, *ref_rows, total], 1)
    model = strip_model(trunk, io, rows, f"profile_{io.start}_{io.stop}", layout)
    feeds = {}
    for tensor, have in rows.inputs.items():
        info = trunk.tensors[tensor]
        shape = list(info.shape)
        shape[info.row_axis] = have[1] - have[0]
        feeds[tensor] = _random(rng, shape, info.dtype)
    return model, feeds


def _random(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    if kind in "iu":
        return rng.integers(0, 8, size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _median_run(model: onnx.ModelProto, feeds: dict, threads: int, repeat: int) -> float:
    from halpc_stub.session import make_session

    return median_run_seconds(make_session(model.SerializeToString(), threads), feeds, repeat)


def median_run_seconds(session, feeds: dict, repeat: int) -> float:
    """Median seconds of `session.run` over `repeat` runs after one warm-up."""
    session.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _overhead(trunk: Trunk, layers: Sequence[Layer], layout, threads: int,
              rng: np.random.Generator) -> float:
    """Median seconds of a near-empty strip run: one output row of the cheapest windowed layer
    (per row), built like any strip and run through the stub's executor (row store, feeds,
    session, trace). It is what a device pays per strip beyond MACs."""
    from halpc_stub.executor import run_program
    from halpc_stub.session import make_session
    from halpc_stub.store import RowStore, TensorSpec

    def per_row(layer: Layer) -> float:
        return layer.macs / trunk.tensors[layer.outputs[0]].rows

    layer = min(layers, key=per_row)
    io = _single_layer_io(trunk, layer)
    total = trunk.tensors[io.reference].rows
    model, feeds = _strip(trunk, io, _middle(1, total), layout, rng)
    session = make_session(model.SerializeToString(), threads)
    specs = {}
    for name, array in feeds.items():
        info = trunk.tensors[name]
        specs[name] = TensorSpec(tuple(array.shape), str(array.dtype), info.row_axis)
    outputs = [o.name for o in model.graph.output]
    step = {"op": "run", "model": "m", "inputs": {n: [0, specs[n].rows] for n in feeds},
            "outputs": {n: [0, 1] for n in outputs}}
    times = []
    for _ in range(OVERHEAD_RUNS + 1):
        store = RowStore(specs)
        for name, array in feeds.items():
            store.put(name, (0, specs[name].rows), array)
        start = time.perf_counter()
        for _ in run_program([step], store, lambda _file: session, None, {}, lambda *e: None):
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _message_overhead(rounds: int = 200) -> float:
    """Seconds a device's processor spends on one message it sends or receives: the header,
    ZeroMQ, and the receiver's checks against the manifest (a small rows message, in process)."""
    import zmq

    from halpc_stub import wire
    from halpc_stub.store import TensorSpec

    spec = TensorSpec((1, 64, 8, 56), "float32", 2)
    step = {"op": "recv", "from": "a", "to": "b", "tensor": "t", "rows": [0, 1], "block": 0}
    inbound = wire.Inbound("plan", [step], {"t": spec})
    array = np.zeros(spec.strip_shape((0, 1)), np.float32)
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        pull.bind("inproc://profile")
        push.connect("inproc://profile")
        start = time.perf_counter()
        for _ in range(rounds):
            push.send_multipart([wire.rows_header("s", 0, "plan", "a", step, array), array], copy=False)
            frames = pull.recv_multipart(copy=False)
            inbound.rows(wire.decode(frames), frames)
        return (time.perf_counter() - start) / rounds / 2  # half on each side
    finally:
        context.destroy(linger=0)


def _weight_rate(trunk: Trunk, layers: Sequence[Layer], layout, threads: int,
                 rng: np.random.Generator) -> float | None:
    """GB/s at which a run reads weights that are not in cache, as in a bundle where every
    strip's weights were evicted by the strips run since: a one-row strip of the layer with the
    most weight bytes, timed cold (caches flushed before each run) less timed warm."""
    from halpc_stub.session import make_session

    layer = max(layers, key=lambda l: trunk.weight_bytes[l.position])
    size = trunk.weight_bytes[layer.position]
    io = _single_layer_io(trunk, layer)
    model, feeds = _strip(trunk, io, _middle(1, trunk.tensors[io.reference].rows), layout, rng)
    session = make_session(model.SerializeToString(), threads)
    warm = median_run_seconds(session, feeds, OVERHEAD_RUNS)
    flush = np.ones(FLUSH_BYTES // 4, dtype=np.float32)
    cold = []
    for _ in range(OVERHEAD_RUNS):
        flush.max()  # read more memory than any cache holds
        start = time.perf_counter()
        session.run(None, feeds)
        cold.append(time.perf_counter() - start)
    extra = statistics.median(cold) - warm
    if size < 1 << 20 or extra <= 0:
        return None  # weights too small to measure, or no cost: leave them free
    return round(size / extra / 1e9, 3)


def fit_line(rows: Sequence[float], ms: Sequence[float]) -> tuple[float, float]:
    """Least-squares `ms = fixed + per_row * rows` with fixed, per_row >= 0.

    With one distinct row count the split is unknowable: all of it goes to per_row.
    """
    x = np.asarray(rows, dtype=float)
    y = np.asarray(ms, dtype=float)
    if len(set(x.tolist())) < 2:
        return 0.0, max(float(np.mean(y / x)), 0.0)
    candidates = []
    fixed, per_row = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), y, rcond=None)[0]
    if fixed >= 0 and per_row >= 0:
        candidates.append((float(fixed), float(per_row)))
    # The constrained optimum lies on a boundary: through the origin, or flat.
    candidates.append((0.0, max(float(x @ y / (x @ x)), 0.0)))
    candidates.append((max(float(y.mean()), 0.0), 0.0))
    return min(candidates, key=lambda c: float(np.sum((c[0] + c[1] * x - y) ** 2)))



def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def processor_name() -> str:
    """A human name for the CPU: /proc/cpuinfo's model name (x86) or board model (Pi)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and value.strip() and key not in found:
            found[key] = value.strip()
    for key in ("model name", "model", "hardware", "cpu model"):
        if key in found:
            return found[key]
    return platform.processor() or platform.machine() or "unknown"


def board_memory_mb() -> dict[str, float]:
    """This machine's memory from /proc/meminfo (Linux): `memory_total_mb`, which the planner takes
    as the device's limit where the cluster file gives no `memory_mb`, and what was available
    while profiling. Empty elsewhere."""
    kib = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:  # "MemTotal:       24576000 kB"
                key, _, value = line.partition(":")
                if value.split():
                    kib[key] = int(value.split()[0])
    except (OSError, ValueError):
        return {}
    found = {"memory_total_mb": kib.get("MemTotal"), "memory_available_mb": kib.get("MemAvailable")}
    return {key: round(value / 1024, 1) for key, value in found.items() if value}
