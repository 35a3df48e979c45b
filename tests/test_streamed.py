"""Streamed rows (issue 16): on slow links the host streams the first block's input.

The host's sends take turns over the helpers, each helper's share comes in pieces that grow
from the top and it runs them top down as their rows arrive. Checked here: the cost model plays
exactly that (by hand), the schedule keeps the order, the planner chooses it where it pays,
plan files carry it, and a streamed plan compiles and runs bit-exact over real sockets.
"""
from __future__ import annotations

import json

import pytest

import models  # examples/models.py
from bundles import assert_exact, free_ports, local_cluster, save, trunk_of
from halpc.compile import compile_bundle
from halpc.errors import HalpcError
from halpc.host.verify import verify
from halpc.planner import layouts
from halpc.planner.context import context
from halpc.planner.cost import play
from halpc.planner.plan import BlockPlan
from halpc.planner.plan_file import load_plan
from halpc.planner.schedule import build_schedule
from halpc.planner.strategies import make_plan
from test_runtime import run_exact

TENSORS = {"x": {"shape": [1, 1, 100, 25], "dtype": "float32", "row_axis": 2}}  # 100 B a row


def _seconds(device, step):
    return step["macs"] / 1e9  # 1 GMAC/s


def _link(sender, receiver, size):
    return size * 8 / 8e6, 0.0  # 8 Mbit/s: 1 ms per 1000 bytes


def test_a_helper_starts_on_its_first_piece_while_the_rest_is_on_the_wire() -> None:
    """By hand: two helpers, each 20 rows in pieces of 5 and 15. Taking turns, both first pieces
    are in by 1 ms; each helper computes its 5 rows (5 ms) while its 15 arrive (by 4 ms)."""
    def helper(name: str, rows: tuple[int, int]) -> list:
        a, b = rows
        return [{"op": "recv", "tensor": "x", "rows": [a, a + 5], "from": "host"},
                {"op": "run", "model": f"{name}0", "macs": 5_000_000},
                {"op": "recv", "tensor": "x", "rows": [a + 5, b], "from": "host"},
                {"op": "run", "model": f"{name}1", "macs": 15_000_000}]

    sends = [{"op": "send", "tensor": "x", "rows": rows, "to": to}
             for rows, to in (([0, 5], "a"), ([20, 25], "b"), ([5, 20], "a"), ([25, 40], "b"))]
    streamed = play({"host": sends, "a": helper("a", (0, 20)), "b": helper("b", (20, 40))},
                    "host", _seconds, _link, TENSORS)
    assert streamed.makespan_s == pytest.approx(0.0210)  # b: first piece at 1 ms, 1 + 5 + 15
    # In block order (a's share whole, then b's), b cannot start before 2.5 ms.
    in_order = [sends[0], sends[2], sends[1], sends[3]]
    one_by_one = play({"host": in_order, "a": helper("a", (0, 20)), "b": helper("b", (20, 40))},
                      "host", _seconds, _link, TENSORS)
    assert one_by_one.makespan_s == pytest.approx(0.0225)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """VGG-16 64x64 and a cluster of 3 devices of 1 GMAC/s on 10 Mbit/s links, where halp
    streams (checked in the test below)."""
    path = save(models.build("vgg16", 64, 64, seed=1), tmp_path_factory.mktemp("vgg"))
    return path, trunk_of(path)


def _slow_cluster(ports=None):
    return local_cluster(3, bandwidth_mbps=10, gmacs=1.0, ports=ports)


def test_halp_streams_the_first_block_where_it_pays(vgg, monkeypatch) -> None:
    _, trunk = vgg
    plan = make_plan(context(trunk, _slow_cluster()), "halp")
    first = plan.blocks[0]
    assert first.stream and not any(b.stream for b in plan.blocks[1:])
    helpers = {s.device for s in first.strips} - {"host"}
    assert helpers and all(sum(s.device == d for s in first.strips) >= 2 for d in helpers)
    # The same planner without the streamed layout: slower.
    monkeypatch.setattr(layouts, "streamed", lambda ctx, start, stop: None)
    before = make_plan(context(trunk, _slow_cluster()), "halp")
    assert not any(b.stream for b in before.blocks)
    assert plan.predicted["latency_ms"] < before.predicted["latency_ms"]


def test_the_schedule_takes_turns_and_helpers_run_top_down(vgg) -> None:
    _, trunk = vgg
    cluster = _slow_cluster()
    plan = make_plan(context(trunk, cluster), "halp")
    programs = build_schedule(trunk, plan, list(cluster.names), "host").programs
    first_sends = [s for s in programs["host"] if s["op"] == "send" and s["block"] == 0 and s["tensor"] == trunk.input]
    receivers = [s["to"] for s in first_sends]
    counts = {d: receivers.count(d) for d in set(receivers)}
    assert len(counts) >= 2 and max(counts.values()) >= 2
    # Turns: the i-th message to any helper goes before the (i+1)-th to any other.
    turn = [receivers[:k + 1].count(d) for k, d in enumerate(receivers)]
    assert turn == sorted(turn)
    for device in counts:
        runs = [s for s in programs[device] if s["op"] == "run" and s["block"] == 0]
        tops = [r["outputs"][next(iter(r["outputs"]))][0] for r in runs]
        assert len(runs) >= 2 and tops == sorted(tops), device
        # Each piece's rows are taken in just before the run that needs them, not all at once.
        steps = [s["op"] for s in programs[device] if s.get("block") == 0 and s["op"] in ("recv", "run")]
        assert steps[:4] == ["recv", "run", "recv", "run"], steps


def test_a_plan_file_keeps_stream_and_a_bad_value_is_one_line(vgg, tmp_path) -> None:
    _, trunk = vgg
    cluster = _slow_cluster()
    plan = make_plan(context(trunk, cluster), "halp")
    path = tmp_path / "plan.json"
    path.write_text(plan.dumps(trunk))
    doc = json.loads(path.read_text())
    assert doc["blocks"][0]["stream"] is True and "stream" not in doc["blocks"][1]
    again = load_plan(path, trunk, list(cluster.names))
    assert again.blocks == plan.blocks
    doc["blocks"][0]["stream"] = "yes"
    path.write_text(json.dumps(doc))
    with pytest.raises(HalpcError) as err:
        load_plan(path, trunk, list(cluster.names))
    message = str(err.value)
    assert "blocks[0].stream" in message and "true or false" in message and "\n" not in message


def test_a_streamed_plan_verifies_and_runs_bit_exact_over_sockets(vgg, tmp_path) -> None:
    path, trunk = vgg
    cluster = _slow_cluster(ports=free_ports(3))
    plan = make_plan(context(trunk, cluster), "halp")
    assert plan.blocks[0].stream
    out = tmp_path / "bundle"
    compile_bundle(path, cluster, out, "halp", plan=plan)
    assert_exact(verify(out, seeds=2))
    manifest, summary = run_exact(out, tasks=3)
    used = {s.device for s in plan.blocks[0].strips}
    assert used <= {e["device"] for r in summary.results for e in r.events if e["kind"] == "compute"}


def test_random_streamed_first_blocks_are_exact(tmp_path) -> None:
    """Any plan may stream its first block: the send order changes, the bytes must not."""
    from planning import random_plan
    for seed in range(3):
        path = save(models.build("resnet18", 48, 48, seed=seed), tmp_path, f"r{seed}.onnx")
        trunk = trunk_of(path)
        plan = random_plan(trunk, ["host", "dev-1", "dev-2"], seed)
        first = BlockPlan(plan.blocks[0].start, plan.blocks[0].stop, plan.blocks[0].strips, stream=True)
        plan = type(plan)(plan.strategy, plan.model_sha256, plan.input_shapes, (first, *plan.blocks[1:]))
        out = tmp_path / f"b{seed}"
        compile_bundle(path, local_cluster(3), out, "manual", plan=plan)
        assert_exact(verify(out, seeds=1))
