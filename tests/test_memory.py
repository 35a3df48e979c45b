"""Memory in the plan: a device's predicted peak, `memory_mb` (or its profile's memory) as a
limit no plan exceeds, and what `halpc plan` and `halpc compile` say about it."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import models
from bundles import save, trunk_of
from halpc.inputs.cluster import parse_cluster
from halpc.measure.profiler import board_memory_mb
from halpc.planner.context import context
from halpc.planner.memory import RUNTIME_MB, device_memory, session_mode
from halpc.planner.strategies import best_plan, make_plan
from test_cli_errors import error_line, run_cli

PROFILES = Path(__file__).resolve().parent.parent / "examples" / "profiles"


def cluster_text(memory: dict[str, float], mbps: float = 1000) -> str:
    text = f"[network]\nbandwidth_mbps = {mbps}\nlatency_ms = 1\n"
    for i, name in enumerate(("host", "d1", "d2")):
        text += f'[[device]]\nname = "{name}"\naddress = "127.0.0.1:{6000 + i}"\ngmacs = 8.0\n'
        text += "host = true\n" if i == 0 else ""
        text += f"memory_mb = {memory[name]}\n" if name in memory else ""
    return text


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory) -> Path:
    return save(models.build("vgg16", 96, 96, seed=1), tmp_path_factory.mktemp("vgg16"))


def test_the_peak_counts_each_strip_s_weights_and_the_host_s_tail(vgg16) -> None:
    """A device without strips needs the bare runtime; the local plan's host holds every weight
    of the model (trunk and tail) once, and, where its session reorders plain strips to NCHWc
    itself, a reordered copy; a device that runs strips of the same block holds its weights once."""
    ctx = context(trunk_of(vgg16), parse_cluster(cluster_text({}), source="c.toml"))
    local = device_memory(ctx, make_plan(ctx, "local"))
    assert local["d1"].total_mb == local["d2"].total_mb == RUNTIME_MB
    model_mb = vgg16.stat().st_size / 1e6
    copies = {"nchwc": (2, 3), "optimized": (1, 1.1), "plain": (1, 1.5)}[session_mode(ctx)]
    assert model_mb * copies[0] < local["host"].weights_mb < model_mb * copies[1]
    halp = make_plan(ctx, "halp")
    strips = {d: sum(s.device == d for b in halp.blocks for s in b.strips) for d in ctx.cluster.names}
    assert max(strips.values()) > len(halp.blocks)  # some device runs two strips of a block
    assert sum(m.weights_mb for m in device_memory(ctx, halp).values()) > local["host"].weights_mb


@pytest.mark.parametrize("seed", range(6))
def test_no_plan_gives_a_device_more_than_its_memory(vgg16, seed) -> None:
    """Property: with random limits, every plan `best` may choose fits, and the limits can only
    make the best plan slower, never faster."""
    trunk = trunk_of(vgg16)
    free = context(trunk, parse_cluster(cluster_text({}), source="free.toml"))
    need = device_memory(free, make_plan(free, "halp"))
    rng = np.random.default_rng(seed)
    limits = {d: round(float(rng.uniform(RUNTIME_MB + 1, need[d].total_mb * 1.2)), 1) for d in ("d1", "d2")}
    limits["host"] = round(device_memory(free, make_plan(free, "local"))["host"].total_mb + 1, 1)  # local fits
    ctx = context(trunk, parse_cluster(cluster_text(limits), source=f"limits{seed}.toml"))
    for strategy in ("dpfp", "halp", "local"):
        plan = make_plan(ctx, strategy)
        assert "over_memory" not in plan.predicted, (strategy, plan.predicted)
        peaks = device_memory(ctx, plan)
        assert all(peaks[d].total_mb <= limit for d, limit in limits.items()), (strategy, limits, plan.predicted)
        for device, why in plan.predicted.get("left_out", {}).items():
            assert device not in plan.devices() and why
    best = best_plan(ctx)
    assert "over_memory" not in best.predicted
    assert best.predicted["latency_ms"] >= best_plan(free).predicted["latency_ms"] * 0.9999


def test_a_device_too_small_is_left_out_and_plan_says_why(vgg16, tmp_path) -> None:
    (tmp_path / "cluster.toml").write_text(cluster_text({"d2": 60}))
    proc = run_cli("plan", vgg16, "--cluster", tmp_path / "cluster.toml")
    assert proc.returncode == 0, proc.stderr
    assert "peak MB" in next(line for line in proc.stdout.splitlines() if line.startswith("strategy"))
    assert re.search(r"^halp leaves d2 out: its share of the plan needs \d+ MB, has 60 MB$", proc.stdout, re.M), \
        proc.stdout
    assert re.search(r"^even does not fit d2: needs \d+ MB, has 60 MB$", proc.stdout, re.M), proc.stdout
    best = proc.stdout.strip().splitlines()[-1].removeprefix("best: ")
    data = json.loads(run_cli("plan", vgg16, "--cluster", tmp_path / "cluster.toml", "--json").stdout)
    assert "d2" not in data["strategies"][best]["devices"]
    assert data["strategies"]["even"]["over_memory"]["d2"].endswith("has 60 MB")
    assert set(data["strategies"]["halp"]["memory_mb"]) == {"host", "d1", "d2"}


def test_compiling_a_plan_that_overfills_a_device_is_one_line_and_writes_nothing(vgg16, tmp_path) -> None:
    (tmp_path / "cluster.toml").write_text(cluster_text({"d1": 60}))
    out = tmp_path / "bundle"
    line = error_line(run_cli("compile", vgg16, "--cluster", tmp_path / "cluster.toml", "-o", out,
                              "--strategy", "even"), "--strategy even", "d1 needs", "has 60 MB", "memory_mb")
    assert "halp" in line
    assert not out.exists()
    proc = run_cli("compile", vgg16, "--cluster", tmp_path / "cluster.toml", "-o", out, "--strategy", "halp")
    assert proc.returncode == 0, proc.stderr
    assert not list((out / "d1").rglob("*.onnx")), "d1 got strips it has no memory for"
    assert list((out / "d2").rglob("*.onnx"))


def test_a_bad_memory_mb_is_one_line(tmp_path) -> None:
    (tmp_path / "cluster.toml").write_text(cluster_text({"d1": -5}))
    model = save(models.build("vgg16", 32, 32), tmp_path)
    error_line(run_cli("plan", model, "--cluster", tmp_path / "cluster.toml"), "device[2].memory_mb", "positive", "-5", code=(1, 2))


def test_the_profile_s_memory_is_the_limit_unless_the_cluster_file_gives_one(vgg16, tmp_path) -> None:
    profile = json.loads((PROFILES / "raspberry_pi_4.json").read_text())
    (tmp_path / "small.json").write_text(json.dumps({**profile, "memory_total_mb": 100.0}))
    text = cluster_text({}).replace('gmacs = 8.0\n', 'profile = "small.json"\n')
    (tmp_path / "c.toml").write_text(text)
    from halpc.inputs.cluster import load_cluster

    ctx = context(trunk_of(vgg16), load_cluster(tmp_path / "c.toml"))
    assert ctx.memory_mb == {"host": 100.0, "d1": 100.0, "d2": 100.0}
    (tmp_path / "c.toml").write_text(text.replace('name = "d1"\n', 'name = "d1"\nmemory_mb = 900\n'))
    assert context(ctx.trunk, load_cluster(tmp_path / "c.toml")).memory_mb["d1"] == 900


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads /proc/meminfo (Linux)")
def test_profile_records_the_board_s_memory() -> None:
    """Against the kernel's page count (sysconf), an independent reading of the same RAM."""
    found = board_memory_mb()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert found["memory_total_mb"] == pytest.approx(total, rel=0.01)
    assert 0 < found["memory_available_mb"] <= found["memory_total_mb"]
