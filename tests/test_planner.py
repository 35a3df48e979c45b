"""The cost model on hand-computed schedules, and the planners against the exhaustive oracle."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundles import assert_exact, compile_and_verify, local_cluster, save, trunk_of
from halpc.inputs.cluster import parse_cluster
from halpc.planner.schedule import build_schedule
from halpc.planner.strategies import _layouts, compare, make_plan
from halpc.planner.context import context
from halpc.planner.predict import predict
from halpc.planner.cost import play as simulate
from halpc.planner.search import EXHAUSTIVE_LIMIT, best_blocks, exhaustive_blocks

# ---------------------------------------------------------------- cost model, by hand

TENSORS = {"x": {"shape": [1, 1, 10, 25], "dtype": "float32", "row_axis": 2}}  # 100 bytes a row


def _seconds(device, step):
    return step["macs"] / 1e9  # 1 GMAC/s everywhere


def _link(sender, receiver, size):
    return size * 8 / 8e6, 0.002  # 8 Mbit/s: 1 ms per 1000 bytes; 2 ms latency


def test_send_compute_reply_overlaps_host_compute() -> None:
    programs = {
        "host": [
            {"op": "send", "tensor": "x", "rows": [0, 10], "to": "a"},  # 1000 B: link 0..1 ms
            {"op": "run", "model": "h", "macs": 2_000_000},  # 0..2 ms, overlapping the send
            {"op": "recv", "tensor": "x", "rows": [0, 10], "from": "a"},
        ],
        "a": [
            {"op": "recv", "tensor": "x", "rows": [0, 10], "from": "host"},  # arrives 3 ms
            {"op": "run", "model": "a", "macs": 1_000_000},  # 3..4 ms
            {"op": "send", "tensor": "x", "rows": [0, 10], "to": "host"},  # 4..5 ms, arrives 7
        ],
    }
    p = simulate(programs, "host", _seconds, _link, TENSORS)
    assert p.latency_s == pytest.approx(0.007)
    assert p.busy("host") == pytest.approx(0.002) and p.busy("a") == pytest.approx(0.001)
    waits = [e for e in p.events if e.kind == "wait"]
    assert [(e.device, round(e.start, 6), round(e.end, 6)) for e in waits] == [
        ("a", 0.0, 0.003), ("host", 0.002, 0.007)
    ]


def test_host_sends_go_out_one_after_the_other() -> None:
    programs = {
        "host": [
            {"op": "send", "tensor": "x", "rows": [0, 10], "to": "a"},  # link 0..1, arrives 3
            {"op": "send", "tensor": "x", "rows": [0, 5], "to": "b"},  # link 1..1.5, arrives 3.5
        ],
        "a": [{"op": "recv", "tensor": "x", "rows": [0, 10], "from": "host"},
              {"op": "run", "model": "a", "macs": 1_000_000}],
        "b": [{"op": "recv", "tensor": "x", "rows": [0, 5], "from": "host"},
              {"op": "run", "model": "b", "macs": 1_000_000}],
    }
    p = simulate(programs, "host", _seconds, _link, TENSORS)
    assert p.latency_s == pytest.approx(0.0)  # the host has nothing to wait for
    assert p.makespan_s == pytest.approx(0.0045)  # b: arrives 3.5 ms, computes 1 ms
    sends = [(round(e.start, 6), round(e.end, 6)) for e in p.events if e.kind == "send"]
    assert sends == [(0.0, 0.001), (0.001, 0.0015)]


# ---------------------------------------------------------------- planners vs the oracle


def _random_model(seed: int, branching: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    channels, height = 4, int(rng.integers(14, 34))
    nodes, inits, x = [], [], "x"

    def conv(src: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        name = f"c{len(nodes)}"
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        nodes.append(helper.make_node("Conv", [src, f"{name}_w"], [name], pads=[k // 2] * 4,
                                      strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [name], [f"{name}_r"]))
        return f"{name}_r"

    x = conv(x, 3, channels, 3)
    for _ in range(int(rng.integers(3, 7))):
        kind = rng.integers(0, 4 if branching else 2)
        if kind == 0:
            x = conv(x, channels, channels, int(rng.choice([1, 3, 5])), int(rng.choice([1, 1, 2])))
        elif kind == 1:
            name = f"p{len(nodes)}"
            nodes.append(helper.make_node("MaxPool", [x], [name], kernel_shape=[2, 2], strides=[2, 2]))
            x = name
        elif kind == 2:  # residual
            y = conv(conv(x, channels, channels, 3), channels, channels, 3)
            name = f"add{len(nodes)}"
            nodes.append(helper.make_node("Add", [x, y], [name]))
            x = name
        else:  # two branches joined by concat, back to `channels` with a 1x1
            a, b = conv(x, channels, channels, 1), conv(x, channels, channels, 5)
            name = f"cat{len(nodes)}"
            nodes.append(helper.make_node("Concat", [a, b], [name], axis=1))
            x = conv(name, 2 * channels, channels, 1)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(
        nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, height, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _random_cluster(seed: int):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(2, 5))
    text = f"[network]\nbandwidth_mbps = {float(rng.choice([10, 50, 100, 1000]))}\nlatency_ms = 1\n"
    names = ["host"] + [f"d{i}" for i in range(1, n)]
    for i, name in enumerate(names):
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{6000 + i}"\n'
        text += f"gmacs = {float(rng.uniform(0.02, 0.2)):.3f}\n" + ("host = true\n" if i == 0 else "")
    if n > 2:
        text += f'[[link]]\nbetween = ["host", "d1"]\nbandwidth_mbps = {float(rng.uniform(5, 200)):.1f}\n'
    return parse_cluster(text, source=f"random{seed}.toml")


@pytest.mark.parametrize("seed", range(12))
def test_dp_finds_the_exhaustive_optimum(seed, tmp_path) -> None:
    path = save(_random_model(seed, branching=seed % 2 == 1), tmp_path)
    ctx = context(trunk_of(path), _random_cluster(seed))
    for strategy in ("dpfp", "halp"):
        layouts = _layouts(ctx, strategy)
        while (len(layouts) + 1) ** (len(ctx.positions) - 2) > EXHAUSTIVE_LIMIT:
            layouts = layouts[:-1]  # a smaller oracle, still the same DP against it
        dp_blocks, dp_cost = best_blocks(ctx, layouts)
        oracle_blocks, oracle_cost = exhaustive_blocks(ctx, layouts)
        assert dp_cost == pytest.approx(oracle_cost, rel=1e-12), strategy
    halp, dpfp, local = (make_plan(ctx, s) for s in ("halp", "dpfp", "local"))
    assert halp.predicted["latency_ms"] <= dpfp.predicted["latency_ms"] <= local.predicted["latency_ms"]


@pytest.mark.parametrize("seed", [3, 7])
def test_every_strategy_compiles_bit_exact(seed, tmp_path) -> None:
    path = save(_random_model(seed, branching=True), tmp_path)
    for strategy in ("local", "modnn", "ftp", "dpfp", "halp", "exhaustive"):
        assert_exact(compile_and_verify(path, tmp_path / strategy, 3, strategy=strategy))


def test_vgg16_strategies_rank_as_expected(tmp_path) -> None:
    import models

    path = save(models.build("vgg16", 224, 224), tmp_path)
    plans = compare(context(trunk_of(path), local_cluster(3)))  # 8 GMAC/s, 100 Mbit/s
    latency = {name: p.predicted["latency_ms"] for name, p in plans.items()}
    assert latency["local"] / latency["halp"] >= 2.4
    assert latency["halp"] < min(latency["modnn"], latency["ftp"])
    assert latency["halp"] <= latency["dpfp"] * 1.01


def test_profiled_overheads_enter_the_prediction(tmp_path) -> None:
    """Per-run, per-message and weight-reading costs from a profile lengthen the timeline by
    what they say: here every step of a 2-device even plan pays them."""
    import json

    import models

    path = save(models.build("vgg16", 32, 32), tmp_path)
    trunk = trunk_of(path)
    profile = tmp_path / "p.json"
    plain = context(trunk, _two_devices(tmp_path, None))
    profile.write_text(json.dumps({"schema": "halpc-profile/1", "gmacs": 8.0, "per_run_overhead_ms": 1.0,
                                   "per_message_overhead_ms": 0.5, "weight_gbps": 1.0, "layers": {}}))
    costed = context(trunk, _two_devices(tmp_path, profile))
    plan = make_plan(plain, "even")
    base, slow = predict(plain, plan), predict(costed, plan)
    steps = [s for p in build_schedule(trunk, plan, ["host", "dev-1"], "host").programs.values() for s in p]
    runs = [s for s in steps if s["op"] == "run"]
    assert all("weights" in s for s in runs) and sum(s["weights"] for s in runs) > 0
    # Each device's busy time grows by exactly its runs' fixed and weight costs.
    for device in ("host", "dev-1"):
        mine = [s for s in build_schedule(trunk, plan, ["host", "dev-1"], "host").programs[device]
                if s["op"] in ("run", "tail")]
        extra = sum(1e-3 + s.get("weights", 0) / 1e9 for s in mine)
        assert slow.busy(device) - base.busy(device) == pytest.approx(extra, rel=1e-9)
    assert slow.latency_s > base.latency_s


def _two_devices(folder, profile):
    text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 1\n"
    for i, name in enumerate(("host", "dev-1")):
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{7000 + i}"\n'
        text += (f'profile = "{profile}"\n' if profile else "gmacs = 8.0\n") + ("host = true\n" if i == 0 else "")
    return parse_cluster(text, source=str(folder / "c.toml"))
