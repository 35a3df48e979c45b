"""Per-block helper subsets and the DP's bound (issue 16).

On slow links a first block shared by every helper can pay while the later blocks' halo
exchanges between helpers cost more than their rows save: halp may lay a later block out over
the host and one helper (`layouts.one_helper`). The DP skips pairs of blocks whose lower bound
(`Context.cost_floor`) cannot beat the best found; checked here against the costs it stands for
and against the DP without it.
"""
from __future__ import annotations

import math

import pytest

import models  # examples/models.py
from bundles import assert_exact, free_ports, local_cluster, save, trunk_of
from halpc.compile import compile_bundle
from halpc.host.verify import verify
from halpc.planner import layouts
from halpc.planner.context import Context, context
from halpc.planner.plan import BlockPlan
from halpc.planner.search import best_blocks
from halpc.planner.strategies import layout_choices, make_plan
from planning import random_plan
from test_runtime import run_exact


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """VGG-16 64x64; on 3 devices of 1 GMAC/s at 2 Mbit/s halp shares the first block with
    both helpers and the rest with one (checked below)."""
    path = save(models.build("vgg16", 64, 64, seed=1), tmp_path_factory.mktemp("vgg"))
    return path, trunk_of(path)


def _slow(ports=None):
    return local_cluster(3, bandwidth_mbps=2, gmacs=1.0, ports=ports)


def _helpers(block) -> set[str]:
    return {s.device for s in block.strips} - {"host"}


def test_later_blocks_narrow_to_one_helper_where_that_pays(vgg, monkeypatch) -> None:
    _, trunk = vgg
    plan = make_plan(context(trunk, _slow()), "halp")
    assert len(_helpers(plan.blocks[0])) == 2
    narrowed = [b for b in plan.blocks[1:] if len(_helpers(b)) == 1]
    assert narrowed, [sorted(_helpers(b)) for b in plan.blocks]
    monkeypatch.setattr(layouts, "one_helper", lambda ctx, start, stop: None)
    before = make_plan(context(trunk, _slow()), "halp")
    assert plan.predicted["latency_ms"] < before.predicted["latency_ms"]


def test_a_narrowed_plan_verifies_and_runs_bit_exact_over_sockets(vgg, tmp_path) -> None:
    path, trunk = vgg
    cluster = _slow(ports=free_ports(3))
    plan = make_plan(context(trunk, cluster), "halp")
    assert any(len(_helpers(b)) == 1 for b in plan.blocks[1:])
    out = tmp_path / "bundle"
    compile_bundle(path, cluster, out, "halp", plan=plan)
    assert_exact(verify(out, seeds=2))
    run_exact(out, tasks=2)


def test_the_cost_floor_is_below_every_cost_it_stands_for(tmp_path) -> None:
    """Every pair of consecutive blocks of random plans (any devices, any strips): the bound
    never exceeds the played cost, and it is not vacuous (above zero for most pairs)."""
    pairs = positive = 0
    for seed in range(4):
        path = save(models.build("resnet18", 48, 48, seed=seed), tmp_path, f"r{seed}.onnx")
        trunk = trunk_of(path)
        ctx = context(trunk, local_cluster(3, bandwidth_mbps=(10, 100)[seed % 2], gmacs=0.5))
        plan = random_plan(trunk, list(ctx.cluster.names), seed)
        blocks = [BlockPlan(b.start, b.stop, ctx.legal.strips(b.start, b.stop, b.strips)) for b in plan.blocks]
        for prev, block in zip(blocks, blocks[1:]):
            floor, cost = ctx.cost_floor(prev, block), ctx.block_cost(prev, block)
            assert floor <= cost + 1e-9, (seed, prev, block)
            pairs += 1
            positive += floor > 0
    assert pairs >= 8 and positive >= pairs // 2, (pairs, positive)


def test_the_bound_changes_what_the_dp_plays_not_what_it_finds(vgg, monkeypatch) -> None:
    _, trunk = vgg
    results = []
    for floor in (Context.cost_floor, lambda self, prev, block, gather=False: -math.inf):
        monkeypatch.setattr(Context, "cost_floor", floor)
        ctx = context(trunk, local_cluster(4, bandwidth_mbps=10, gmacs=1.0))
        blocks, cost = best_blocks(ctx, layout_choices(ctx, "halp"))
        results.append((blocks, cost, len(ctx._costs)))
    (bounded, bounded_cost, played), (full, full_cost, all_pairs) = results
    assert bounded_cost == pytest.approx(full_cost, rel=1e-12)
    assert played < all_pairs / 2, (played, all_pairs)  # 1841 of 7242 when written
