"""The cost model on hand-computed schedules, and the planners against the exhaustive oracle."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundles import assert_exact, compile_and_verify, local_cluster, save, trunk_of
from halpc.inputs.cluster import parse_cluster
from halpc.planner.schedule import build_schedule
from halpc.planner.strategies import layout_choices, compare, make_plan
from halpc.planner.context import context
from halpc.planner.predict import predict, predict_bundle
from halpc.compile import compile_bundle
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
        layouts = layout_choices(ctx, strategy)
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


def test_a_profile_of_the_same_model_charges_each_layers_fixed_cost_per_run(tmp_path) -> None:
    """A profile timed layer by layer on this very model: every run pays the fixed ms of the
    layers of its block (less the run overhead each single-layer timing held); the bundle's
    manifest predicts the same; a profile of another model charges nothing per layer."""
    import models

    path = save(models.build("vgg16", 32, 32), tmp_path)
    trunk = trunk_of(path)
    fixed_ms = {f"layer{p}": {"position": p, "fixed_ms": 0.25 + 0.01 * p} for p in range(0, len(trunk.layers), 2)}

    def profiled(sha: str) -> Path:
        profile = tmp_path / f"{sha[:6]}.json"
        profile.write_text(json.dumps({"schema": "halpc-profile/1", "gmacs": 8.0, "per_run_overhead_ms": 0.05,
                                       "model": {"sha256": sha}, "layers": fixed_ms}))
        return profile

    plain = context(trunk, _two_devices(tmp_path, profiled("0" * 64)))
    costed = context(trunk, _two_devices(tmp_path, profiled(trunk.model.sha256)))
    assert not plain.layer_fixed and set(costed.layer_fixed) == {"host", "dev-1"}
    plan = make_plan(plain, "even")
    base, slow = predict(plain, plan), predict(costed, plan)
    per_layer = {v["position"]: v["fixed_ms"] / 1e3 - 0.05e-3 for v in fixed_ms.values()}
    for device, program in build_schedule(trunk, plan, ["host", "dev-1"], "host").programs.items():
        runs = [s for s in program if s["op"] == "run"]
        extra = sum(per_layer.get(p, 0.0) for s in runs for p in range(*s["layers"]))
        assert extra > 0 and slow.busy(device) - base.busy(device) == pytest.approx(extra, rel=1e-9)
    out = tmp_path / "bundle"
    compile_bundle(path, _two_devices(tmp_path, profiled(trunk.model.sha256)), out, "even")
    manifest = json.loads((out / "manifest.json").read_text())
    assert predict_bundle(manifest).latency_s == pytest.approx(slow.latency_s, rel=1e-9)


def _two_devices(folder, profile):
    text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 1\n"
    for i, name in enumerate(("host", "dev-1")):
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{7000 + i}"\n'
        text += (f'profile = "{profile}"\n' if profile else "gmacs = 8.0\n") + ("host = true\n" if i == 0 else "")
    return parse_cluster(text, source=str(folder / "c.toml"))


# ---------------------------------------------------------------- helpers that pay


def _uneven_cluster(seed: int):
    """2-5 devices of random speed, each helper behind a link of a random rate from 0.5 to 1000 Mbit/s."""
    rng = np.random.default_rng(2000 + seed)
    n = int(rng.integers(2, 6))
    names = ["host"] + [f"d{i}" for i in range(1, n)]
    text = "[network]\nbandwidth_mbps = 100\nlatency_ms = 1\n"
    for i, name in enumerate(names):
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{6000 + i}"\n'
        text += f"gmacs = {float(rng.uniform(2.0, 8.0)):.3f}\n" + ("host = true\n" if i == 0 else "")
    rate = {"host": 1000.0, **{name: float(rng.choice([0.5, 2.0, 10.0, 100.0, 1000.0])) for name in names[1:]}}
    for i, a in enumerate(names):
        for b in names[i + 1:]:  # a pair's link is as slow as the slower of the two
            text += f'[[link]]\nbetween = ["{a}", "{b}"]\nbandwidth_mbps = {min(rate[a], rate[b])}\n'
    return parse_cluster(text, source=f"uneven{seed}.toml")


@pytest.mark.slow  # about 2 minutes: each helper less is a planning of its own
@pytest.mark.parametrize("seed", range(10))
def test_one_more_device_never_makes_the_plan_slower(seed, tmp_path) -> None:
    """Property: for random clusters, dpfp's and halp's plan is never predicted slower than the
    plan for the same cluster less any one helper (0.5%), nor than local. (Models big enough
    that splitting pays on some links: on the tiny random models every plan is local.)"""
    import models

    name = ("vgg16", "resnet18", "mobilenet_v1_050")[seed % 3]
    trunk = trunk_of(save(models.build(name, 64, 64, seed=seed), tmp_path))
    cluster = _uneven_cluster(seed)
    assert len(cluster) >= 2
    ctx = context(trunk, cluster)
    local = make_plan(ctx, "local").predicted["latency_ms"]
    for strategy in ("dpfp", "halp"):
        ours = make_plan(ctx, strategy).predicted["latency_ms"]
        assert ours <= local
        for helper in cluster.secondaries:
            fewer = make_plan(context(trunk, cluster.without(helper.name)), strategy).predicted["latency_ms"]
            assert ours <= fewer * 1.005, (strategy, helper.name, ours, fewer)


SLOW_D2 = "[network]\nbandwidth_mbps = 100\nlatency_ms = 1\n" + "".join(
    f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{6000 + i}"\ngmacs = 8.0\n' + ("host = true\n" if i == 0 else "")
    for i, name in enumerate(("host", "d1", "d2"))
) + '[[link]]\nbetween = ["host", "d2"]\nbandwidth_mbps = 1\n[[link]]\nbetween = ["d1", "d2"]\nbandwidth_mbps = 1\n'


def test_a_helper_behind_a_slow_link_is_left_out_and_says_why(tmp_path) -> None:
    """VGG-16 (96x96): host + d1 at 100 Mbit/s gain; a third device whose links run at 1 Mbit/s
    would sink the plan, so halp leaves it out and matches the two-device plan."""
    import models

    trunk = trunk_of(save(models.build("vgg16", 96, 96), tmp_path))
    cluster = parse_cluster(SLOW_D2, source="slow-d2.toml")
    pair = make_plan(context(trunk, cluster.without("d2")), "halp")
    plan = make_plan(context(trunk, cluster), "halp")
    local = make_plan(context(trunk, cluster), "local").predicted["latency_ms"]
    assert pair.predicted["latency_ms"] < 0.7 * local  # the pair gains
    assert set(plan.devices()) == {"host", "d1"}
    assert plan.predicted["latency_ms"] == pytest.approx(pair.predicted["latency_ms"], rel=1e-6)
    assert re.fullmatch(r"with it [\d.]+ ms, without [\d.]+ ms|[\d.]+ ms without it; no plan with it can beat that",
                        plan.predicted["left_out"]["d2"])
    assert "left_out" not in pair.predicted


def test_halpc_plan_shows_the_devices_used_and_why_one_is_left_out(tmp_path) -> None:
    import models
    from test_cli_errors import run_cli

    model = save(models.build("vgg16", 96, 96), tmp_path)
    (tmp_path / "cluster.toml").write_text(SLOW_D2)
    proc = run_cli("plan", model, "--cluster", tmp_path / "cluster.toml", "--strategy", "halp")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("strategy"))
    assert "devices used" in header
    halp = next(line for line in proc.stdout.splitlines() if line.startswith("halp "))
    assert " host d1 " in halp and "d2" not in halp.split("host d1")[0]
    assert re.search(r"^halp leaves d2 out: (with it [\d.]+ ms, without [\d.]+ ms|.*no plan with it can beat that)$",
                     proc.stdout, re.M), proc.stdout
    data = json.loads(run_cli("plan", model, "--cluster", tmp_path / "cluster.toml", "--strategy", "halp",
                              "--json").stdout)
    assert data["strategies"]["halp"]["devices"] == ["host", "d1"]
    assert set(data["strategies"]["halp"]["plan"]["predicted"]["left_out"]) == {"d2"}
    assert data["strategies"]["local"]["devices"] == ["host"]


def test_look_alike_subsets_are_told_apart_by_every_cost(tmp_path) -> None:
    """Two helpers alike but for an int8 rate (one None) are not look-alikes, and comparing them
    does not fail on None."""
    from halpc.planner.subsets import _look

    text = SLOW_D2.replace('name = "d2"\naddress = "127.0.0.1:6002"\ngmacs = 8.0\n',
                           'name = "d2"\naddress = "127.0.0.1:6002"\ngmacs = 8.0\nint8_gmacs = 24.0\n')
    text = text.split("[[link]]")[0]  # every link alike
    ctx = context(trunk_of(save(_random_model(0, branching=False), tmp_path)), parse_cluster(text, source="c.toml"))
    assert _look(ctx) and _look(ctx.without("d1")) != _look(ctx.without("d2"))
    plain = context(ctx.trunk, parse_cluster(SLOW_D2.split("[[link]]")[0], source="p.toml"))
    assert _look(plain.without("d1")) == _look(plain.without("d2"))
