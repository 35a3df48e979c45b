"""Adaptive plan choice, bandwidth traces and the trace-replay simulator, with no model at all.

The predictor here is a formula, as the cost model is in spirit: a plan's latency is its compute
time plus the bytes it sends over the link, `compute + bytes * 8 / (Mbit/s * 1e6)`, so every
expected choice below can be worked out by hand (the numbers are in the comments).
"""
from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from halpc.host.adapt import POLICIES, Choice, LinkEstimator, PlanOption, cached, choose
from halpc.errors import HalpcError
from halpc.present.replay_report import render_simulation_report, strips, write_simulation_report
from halpc.present.tables import replay_table as summary_table
from halpc.whatif.replay import PolicyResult, TaskRecord, reliability_curve, replay, replay_all
from halpc.whatif.bandwidth_trace import Trace, load_trace, write_csv

DEV = ["dev-1"]

# plan id -> (compute s, bytes sent per task). Latency in ms at 100 / 10 Mbit/s:
#   v100 local 100 / 100,  halp@100 40 / 220,  halp@10 52 / 70
#   v075 local  60 /  60,  halp@100 24 / 132,  halp@10 31.2 / 42
#   v050 local  30 /  30,  halp@10 15.8 / 23
#   v025 local  10 /  10
PLANS = {
    "v100/local": (0.100, 0), "v100/halp@100": (0.020, 250_000), "v100/halp@10": (0.050, 25_000),
    "v075/local": (0.060, 0), "v075/halp@100": (0.012, 150_000), "v075/halp@10": (0.030, 15_000),
    "v050/local": (0.030, 0), "v050/halp@10": (0.015, 10_000),
    "v025/local": (0.010, 0),
}
ACCURACY = {"v100": 70.6, "v075": 68.4, "v050": 63.7, "v025": 50.6}


def predict(plan: str, rates) -> float:
    """Compute plus the plan's bytes over each link (the slowest link counts: sends are parallel)."""
    compute, size = PLANS[plan]
    if not size:
        return compute
    return compute + max(size * 8 / (mbps * 1e6) for mbps in rates.values())


def option(plan: str, default: bool = False, accuracy: float | None | str = "table") -> PlanOption:
    variant, strategy = plan.split("/")
    name, _, level = strategy.partition("@")
    acc = ACCURACY[variant] if accuracy == "table" else accuracy
    return PlanOption(plan, variant, acc, name, float(level) if level else None, default)


def options(variants=("v100", "v075", "v050", "v025")) -> list[PlanOption]:
    return [option(p, default=p == "v100/halp@100") for p in PLANS if p.split("/")[0] in variants]


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 6)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and message.strip() == message
    return message


# -- traces ----------------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("# measured in the lab\n\ntime_s,mbps,dev-2\n0,100,50\n2.5,10,50\n# a gap\n4,10,5.5\n")
    trace = load_trace(str(src), ["dev-1", "dev-2"])
    assert trace.times == (0.0, 2.5, 4.0) and trace.duration == 4.0
    assert trace.rates == {"*": (100.0, 10.0, 10.0), "dev-2": (50.0, 50.0, 5.5)}
    # A step function: the last row at or before t; the first before 0, the last after the end.
    assert trace.at(-1, ["dev-1", "dev-2"]) == {"dev-1": 100.0, "dev-2": 50.0}
    assert trace.at(2.4999, ["dev-1", "dev-2"]) == {"dev-1": 100.0, "dev-2": 50.0}
    assert trace.at(2.5, ["dev-1", "dev-2"]) == {"dev-1": 10.0, "dev-2": 50.0}
    assert trace.at(99, ["dev-1", "dev-2"]) == {"dev-1": 10.0, "dev-2": 5.5}
    out = tmp_path / "out.csv"
    write_csv(trace, out)
    again = load_trace(str(out), ["dev-1", "dev-2"])
    assert again == trace and again.duration == trace.duration and again.source == str(out)


def test_generated_trace_round_trips_with_its_end(tmp_path):
    devices = ["dev-1", "dev-2"]
    for spec in ("ge:good=80,bad=7.5,p=0.3,r=0.3,step=0.5,duration=20,seed=4",
                 "ge:p=0.2,duration=30,seed=1,per_device=1"):
        trace = load_trace(spec, devices)
        assert trace.duration == float(spec.split("duration=")[1].split(",")[0])
        assert trace.times[-1] < trace.duration  # the last step lasts until the end
        write_csv(trace, tmp_path / "ge.csv")
        again = load_trace(str(tmp_path / "ge.csv"), devices)
        assert again == trace and again.end == trace.end
    # A repeated last row only marks the end.
    (tmp_path / "end.csv").write_text("time_s,mbps\n0,100\n3,10\n10,10\n")
    trace = load_trace(str(tmp_path / "end.csv"), devices)
    assert trace.times == (0.0, 3.0) and trace.duration == 10.0


@pytest.mark.parametrize("text, where, what", [
    ("", "", "empty trace"),
    ("# just a comment\n\n", "", "empty trace"),
    ("0,100\n", ":1", "no header"),
    ("\n# c\ntime_s,dev-9\n0,1\n", ":3", "unknown device column 'dev-9' (known: dev-1, dev-2)"),
    ("time_s,dev-1\n0,1\n", ":1", "no column for dev-2"),
    ("time_s,mbps,mbps\n0,1,1\n", ":1", "appears twice"),
    ("time_s\n0\n", ":1", "no rate column"),
    ("time_s,mbps\n", "", "no rows after the header"),
    ("time_s,mbps\n0,fast\n", ":2", "mbps 'fast' is not a number"),
    ("time_s,mbps\nzero,5\n", ":2", "time_s 'zero' is not a number"),
    ("time_s,mbps\n0,nan\n", ":2", "is not a number"),
    ("time_s,mbps\n0,10\n1,0\n", ":3", "rate 0 for mbps is not positive"),
    ("time_s,mbps,dev-2\n0,10,-3\n", ":2", "rate -3 for dev-2 is not positive"),
    ("time_s,mbps\n0,10\n5,20\n# c\n5,30\n", ":5", "time 5 does not come after 5"),
    ("time_s,mbps\n0,10\n5,20\n4,30\n", ":4", "time 4 does not come after 5"),
    ("time_s,mbps\n1,10\n", ":2", "the first time is 1, not 0"),
    ("time_s,mbps\n0,10,3\n", ":2", "3 fields, the header has 2"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, where, what):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(HalpcError) as e:
        load_trace(str(path), ["dev-1", "dev-2"])
    message = one_line(e)
    assert message.startswith(f"{path}{where}: "), message
    assert what in message and ";" in message  # what is wrong; what to do


def test_csv_missing_file_and_folder(tmp_path):
    with pytest.raises(HalpcError) as e:
        load_trace(str(tmp_path / "nope.csv"), DEV)
    assert one_line(e).startswith(f"{tmp_path / 'nope.csv'}: trace file not found; ")
    with pytest.raises(HalpcError) as e:
        load_trace(str(tmp_path), DEV)
    assert "is a folder" in one_line(e)


@pytest.mark.parametrize("spec, what", [
    ("ge:q=0.1", "unknown key 'q'; use good, bad, p, r, step, duration, seed, per_device"),
    ("ge:p", "p has no value"),
    ("ge:p=often", "p=often is not a number"),
    ("ge:p=1.5", "p=1.5 is a probability; give a value in [0, 1]"),
    ("ge:r=-0.1", "r=-0.1 is a probability"),
    ("ge:good=0", "good=0 must be positive"),
    ("ge:step=-1", "step=-1 must be positive"),
    ("ge:seed=1.5", "seed=1.5 must be a whole number"),
    ("ge:per_device=2", "per_device=2 must be 0"),
    ("ge:step=1e-6,duration=1e6", "make duration/step at most"),
])
def test_ge_errors(spec, what):
    with pytest.raises(HalpcError) as e:
        load_trace(spec, DEV)
    message = one_line(e)
    assert message.startswith(f"{spec}: ") and what in message, message


def test_gilbert_elliott_is_deterministic_for_a_seed():
    spec = "ge:good=100,bad=10,p=0.2,r=0.3,step=1,duration=200,seed=7"
    a, b = load_trace(spec, DEV), load_trace(spec, DEV)
    assert a == b
    assert a.times == tuple(float(k) for k in range(200)) and a.duration == 200.0
    assert set(a.rates) == {"*"} and set(a.rates["*"]) == {100.0, 10.0}
    assert a.rates["*"][0] == 100.0  # starts good
    assert load_trace(spec.replace("seed=7", "seed=8"), DEV) != a
    # Defaults: 60 one-second steps, 100 / 10 Mbit/s.
    default = load_trace("ge:", DEV)
    assert default.duration == 60.0 and len(default.times) == 60 and set(default.rates["*"]) <= {100.0, 10.0}
    # Per device: independent chains, one column each.
    per = load_trace(spec + ",per_device=1", ["dev-1", "dev-2"])
    assert set(per.rates) == {"dev-1", "dev-2"} and per.rates["dev-1"] != per.rates["dev-2"]
    # p=0: never leaves the good state; p=1, r=0: bad from the first step on.
    assert set(load_trace("ge:p=0", DEV).rates["*"]) == {100.0}
    assert load_trace("ge:p=1,r=0,duration=5", DEV).rates["*"] == (100.0, 10.0, 10.0, 10.0, 10.0)


def test_gilbert_elliott_stationary_share_of_bad():
    for p, r in ((0.1, 0.3), (0.05, 0.05)):
        trace = load_trace(f"ge:p={p},r={r},duration=50000,seed=3", DEV)
        bad = np.mean(np.array(trace.rates["*"]) == 10.0)
        # Stationary share p / (p + r); ~5 standard deviations of the correlated chain's mean.
        assert bad == pytest.approx(p / (p + r), abs=0.03 if p == r else 0.02)


# -- choose ----------------------------------------------------------------------------------------


def test_standalone_fixed_and_adaptive():
    opts = options()
    at100, at10 = {"dev-1": 100.0}, {"dev-1": 10.0}
    for est in (at100, at10):
        c = choose("standalone", opts, predict, est, None)
        assert (c.plan, c.variant, ms(c.predicted_s)) == ("v100/local", "v100", 100.0)
        c = choose("fixed", opts, predict, est, 0.001)
        assert c.plan == "v100/halp@100" and c.accuracy == 70.6
    assert ms(choose("fixed", opts, predict, at10, None).predicted_s) == 220.0
    c = choose("adaptive", opts, predict, at100, None)  # 40 < 52 < 100
    assert (c.plan, ms(c.predicted_s)) == ("v100/halp@100", 40.0)
    c = choose("adaptive", opts, predict, at10, None)  # 70 < 100 < 220; never another variant
    assert (c.plan, ms(c.predicted_s)) == ("v100/halp@10", 70.0)
    assert c.reason == "v100 halp@10: 70.0 ms predicted at dev-1 10 Mbit/s, fastest of 3 (default halp 220.0 ms)"
    c = choose("adaptive", opts, predict, {"dev-1": 1.0}, None)  # halp@10 250 ms; local 100 ms
    assert c.plan == "v100/local"


def test_adaptive_ties_go_to_the_default_then_the_first():
    opts = options()
    assert choose("adaptive", opts, lambda plan, rates: 0.05, {"dev-1": 50.0}, None).plan == "v100/halp@100"
    no_default = [PlanOption(o.id, o.variant, o.accuracy, o.strategy, o.bandwidth_mbps, False) for o in opts]
    # No plan marked default: the first one listed is.
    assert choose("fixed", no_default, predict, {"dev-1": 10.0}, None).plan == "v100/local"
    assert choose("adaptive", no_default, lambda plan, rates: 0.05, {"dev-1": 50.0}, None).plan == "v100/local"


@pytest.mark.parametrize("deadline_ms, plan", [
    (80, "v100/halp@10"),   # v100's fastest at 10 Mbit/s is 70 ms: the most accurate meets it
    (70, "v100/halp@10"),   # exactly at the deadline counts as met
    (50, "v075/halp@10"),   # v100 needs 70; v075 needs 42
    (25, "v050/halp@10"),   # v075 needs 42; v050 needs 23 (its local plan 30)
    (15, "v025/local"),     # only v025 (10 ms)
    (5, "v025/local"),      # none meets it: the fastest of all, v025 local at 10 ms
])
def test_select_at_several_deadlines(deadline_ms, plan):
    c = choose("select", options(), predict, {"dev-1": 10.0}, deadline_ms / 1e3)
    assert c.plan == plan
    assert c.variant == plan.split("/")[0] and c.accuracy == ACCURACY[c.variant]


def test_select_reasons_and_without_deadline():
    at10 = {"dev-1": 10.0}
    assert choose("select", options(), predict, at10, 0.05).reason == (
        "v075 halp@10: 42.0 ms predicted at dev-1 10 Mbit/s meets 50.0 ms (v100 needs 70.0 ms)")
    assert choose("select", options(), predict, at10, 0.08).reason.endswith("(the most accurate variant)")
    assert choose("select", options(), predict, at10, 0.005).reason == (
        "none meets 5.0 ms at dev-1 10 Mbit/s: fastest is v025 local, 10.0 ms")
    # Without a deadline select is adaptive: the default variant's fastest plan.
    assert choose("select", options(), predict, at10, None) == choose("adaptive", options(), predict, at10, None)
    # At 100 Mbit/s v100 halp@100 (40 ms) meets 45 ms.
    assert choose("select", options(), predict, {"dev-1": 100.0}, 0.045).plan == "v100/halp@100"


def test_select_ranks_unknown_accuracy_last():
    opts = [option("v100/halp@100", default=True), option("v100/halp@10"),
            option("v075/halp@10", accuracy=None), option("v050/halp@10")]
    # v075 (42 ms) would win at 50 ms, but its accuracy is unknown: v050 (23 ms, known) ranks above it.
    assert choose("select", opts, predict, {"dev-1": 10.0}, 0.05).plan == "v050/halp@10"
    # When only the unknown one meets the deadline it is still taken.
    assert choose("select", opts[:3], predict, {"dev-1": 10.0}, 0.05).plan == "v075/halp@10"


def test_choose_errors():
    with pytest.raises(HalpcError) as e:
        choose("standalone", options()[1:3], predict, {"dev-1": 10.0}, None)
    assert "no local plan for v100" in one_line(e)
    with pytest.raises(HalpcError) as e:
        choose("greedy", options(), predict, {"dev-1": 10.0}, None)
    assert "unknown policy 'greedy'; use one of standalone, fixed, adaptive, select" == one_line(e)
    with pytest.raises(HalpcError):
        choose("fixed", [], predict, {"dev-1": 10.0}, None)


# -- estimator and cache ---------------------------------------------------------------------------


def test_link_estimator_ewma():
    est = LinkEstimator({"dev-1": 100.0}, alpha=0.25)
    est.observe("dev-1", 20.0)
    assert est.estimate == {"dev-1": 80.0}  # 0.25 * 20 + 0.75 * 100
    est.observe("dev-1", 40.0)
    assert est.estimate == {"dev-1": 70.0}  # 0.25 * 40 + 0.75 * 80
    for bad in (0.0, -5.0, math.nan, math.inf):
        est.observe("dev-1", bad)
    assert est.estimate == {"dev-1": 70.0}
    est.observe("dev-2", 30.0)  # first sample of a device: taken as is
    est.observe("dev-2", 10.0)
    assert est.estimate == {"dev-1": 70.0, "dev-2": 25.0}
    copy = est.estimate
    copy["dev-1"] = 1.0
    assert est.estimate["dev-1"] == 70.0
    est.forget("dev-1")  # a device that was down: its next sample is taken as is
    est.observe("dev-1", 12.0)
    assert est.estimate == {"dev-1": 12.0, "dev-2": 25.0}
    assert LinkEstimator({"dev-1": 0.0, "dev-2": 5.0}).estimate == {"dev-2": 5.0}
    one = LinkEstimator({"dev-1": 100.0}, alpha=1.0)
    one.observe("dev-1", 10.0)
    assert one.estimate == {"dev-1": 10.0}
    with pytest.raises(HalpcError):
        LinkEstimator({}, alpha=0.0)


def test_cached_predictor_calls_once_per_bucket():
    calls = []

    def counting(plan, rates):
        calls.append((plan, dict(rates)))
        return predict(plan, rates)

    fast = cached(counting, resolution=0.02)
    centre = 1.02 ** 233  # a bucket's own rate (~101 Mbit/s)
    a = fast("v100/halp@100", {"dev-1": centre * 1.001})
    b = fast("v100/halp@100", {"dev-1": centre * 0.999})
    assert a == b and len(calls) == 1
    assert calls[0][1]["dev-1"] == pytest.approx(centre, rel=1e-9)  # predicted at the bucket's rate
    assert a == pytest.approx(predict("v100/halp@100", {"dev-1": centre * 1.001}), rel=0.01)
    fast("v100/halp@10", {"dev-1": centre})  # another plan: another entry
    fast("v100/halp@100", {"dev-1": centre * 1.05})  # another bucket
    assert len(calls) == 3 and len(fast.cache) == 3
    # Each device is rounded on its own.
    fast("v100/halp@100", {"dev-1": centre, "dev-2": 10.0})
    fast("v100/halp@100", {"dev-2": 10.001, "dev-1": centre * 1.001})
    assert len(calls) == 4
    # resolution 0: exact memo, no rounding.
    exact = cached(counting, resolution=0)
    assert exact("v100/halp@100", {"dev-1": 12.3}) == predict("v100/halp@100", {"dev-1": 12.3})
    exact("v100/halp@100", {"dev-1": 12.3})
    assert len(calls) == 5


# -- replay ----------------------------------------------------------------------------------------


def swing_csv(tmp_path) -> Trace:
    """100 Mbit/s for 1 s, 10 for 1 s, 100 again; the last row marks the end at 3 s."""
    path = tmp_path / "swing.csv"
    path.write_text("time_s,mbps\n0,100\n1,10\n2,100\n3,100\n")
    return load_trace(str(path), DEV)


def test_replay_by_hand(tmp_path):
    trace = swing_csv(tmp_path)
    assert trace.duration == 3.0
    # Frames every 0.5 s: 6 tasks, none queued (the slowest takes 220 ms). alpha=1: the estimate
    # is the rate the previous task met. Deadline 60 ms.
    results = replay_all(options(), predict, trace, DEV, 0.060, period_s=0.5, alpha=1.0)
    assert list(results) == list(POLICIES)
    lat = {p: [ms(t.latency_s) for t in r.tasks] for p, r in results.items()}
    plans = {p: [t.choice.plan for t in r.tasks] for p, r in results.items()}
    assert lat["standalone"] == [100.0] * 6
    assert lat["fixed"] == [40.0, 40.0, 220.0, 220.0, 40.0, 40.0]
    # The rate drops at 1 s: task 2 still believes 100 (220 ms, missed); task 3 knows 10 and runs
    # halp@10 (70 ms, missed: over 60); task 4 still believes 10 though the rate is back to 100
    # (halp@10: 52 ms); task 5 runs halp@100 again.
    assert plans["adaptive"] == ["v100/halp@100"] * 3 + ["v100/halp@10"] * 2 + ["v100/halp@100"]
    assert lat["adaptive"] == [40.0, 40.0, 220.0, 70.0, 52.0, 40.0]
    # Select: at 10 Mbit/s v100 needs 70 ms > 60, so v075 halp@10 (42 ms; 31.2 at 100 Mbit/s).
    assert plans["select"] == ["v100/halp@100"] * 3 + ["v075/halp@10"] * 2 + ["v100/halp@100"]
    assert lat["select"] == [40.0, 40.0, 220.0, 42.0, 31.2, 40.0]
    reliability = {p: r.reliability for p, r in results.items()}
    assert reliability == {"standalone": 0.0, "fixed": 4 / 6, "adaptive": 4 / 6, "select": 5 / 6}
    assert [t.met for t in results["select"].tasks] == [True, True, False, True, True, True]
    assert results["select"].mean_accuracy == pytest.approx((4 * 70.6 + 2 * 68.4) / 6)
    assert results["fixed"].percentiles == pytest.approx(
        {"p50": 0.040, "p95": float(np.percentile([40, 40, 220, 220, 40, 40], 95)) / 1e3,
         "p99": float(np.percentile([40, 40, 220, 220, 40, 40], 99)) / 1e3})
    r = results["adaptive"]
    assert [t.release_s for t in r.tasks] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] == [t.start_s for t in r.tasks]
    assert [t.rates for t in r.tasks] == [{"dev-1": v} for v in (100.0, 100.0, 10.0, 10.0, 100.0, 100.0)]
    assert [t.estimate for t in r.tasks] == [{"dev-1": v} for v in (100.0, 100.0, 100.0, 10.0, 10.0, 100.0)]


def test_replay_default_period_is_the_deadline_and_tasks_override(tmp_path):
    trace = swing_csv(tmp_path)
    r = replay(options(), predict, trace, DEV, 0.25, "fixed")
    assert len(r.tasks) == 12 and r.period_s == 0.25  # 3 s / 0.25 s
    assert len(replay(options(), predict, trace, DEV, 0.25, "fixed", tasks=30).tasks) == 30
    assert len(replay(options(), predict, trace, DEV, 0.07, "fixed").tasks) == 43  # ceil(3 / 0.07)
    with pytest.raises(HalpcError):
        replay(options(), predict, trace, DEV, 0.0, "fixed")
    # initial: what the host believes before the first task.
    r = replay(options(), predict, trace, DEV, 0.06, "adaptive", period_s=0.5, initial={"dev-1": 10.0})
    assert r.tasks[0].choice.plan == "v100/halp@10" and r.tasks[0].estimate == {"dev-1": 10.0}


def test_a_slow_task_queues_the_next(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("time_s,mbps\n0,10\n0.3,100\n1,100\n")
    trace = load_trace(str(path), DEV)
    # fixed at 10 Mbit/s: 220 ms per task, frames every 100 ms.
    r = replay(options(), predict, trace, DEV, 0.3, "fixed", period_s=0.1, tasks=4)
    assert [t.release_s for t in r.tasks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # Task 1 waits for task 0 (ends 0.22) and still meets 10 Mbit/s; task 2 starts at 0.44, after
    # the rate went up, so it takes 40 ms; task 3 starts when task 2 ends.
    assert [t.start_s for t in r.tasks] == pytest.approx([0.0, 0.22, 0.44, 0.48])
    assert [t.rates["dev-1"] for t in r.tasks] == [10.0, 10.0, 100.0, 100.0]
    assert [ms(t.latency_s) for t in r.tasks] == [220.0, 220.0, 40.0, 40.0]
    assert [t.wait_s for t in r.tasks] == pytest.approx([0.0, 0.12, 0.24, 0.18])
    assert r.reliability == 1.0  # every task's own latency is within 300 ms...
    # ...but counted from its frame's release, task 1 ends 340 ms late (others 220, 280, 220 ms).
    assert [t.response_s for t in r.tasks] == pytest.approx([0.22, 0.34, 0.28, 0.22])
    assert r.on_time == 0.75


def test_adaptive_lags_one_task_after_each_change():
    # 100 and 10 Mbit/s in turn, 5 s each, for 60 s; a frame every 250 ms, deadline 75 ms.
    times = tuple(float(t) for t in range(0, 60, 5))
    trace = Trace(times, {"*": tuple(100.0 if i % 2 == 0 else 10.0 for i in range(len(times)))}, "swing", 60.0)
    results = replay_all(options(), predict, trace, DEV, 0.075, period_s=0.25)
    assert all(len(r.tasks) == 240 for r in results.values())
    low = [t.index for t in results["fixed"].tasks if t.rates["dev-1"] == 10.0]
    assert len(low) == 120
    # fixed misses every task at 10 Mbit/s (220 ms); standalone every task (100 ms).
    assert [t.index for t in results["fixed"].tasks if not t.met] == low
    assert results["standalone"].reliability == 0.0
    # adaptive (alpha 0.5) and select miss only the first task after each drop: it still believes
    # 100 Mbit/s. After the drop the estimate is 55: halp@10 (53.6 ms) beats halp@100 (56.4 ms).
    first_low = [int(t / 0.25) for t in times[1::2]]
    for policy in ("adaptive", "select"):
        r = results[policy]
        assert [t.index for t in r.tasks if not t.met] == first_low, policy
        assert r.reliability == pytest.approx(234 / 240)
        for k in first_low:
            assert r.tasks[k].choice.plan == "v100/halp@100" and r.tasks[k + 1].choice.plan == "v100/halp@10"


def test_replay_all_skips_standalone_without_a_local_plan(tmp_path):
    opts = [o for o in options() if o.strategy != "local"]
    notes: list[str] = []
    results = replay_all(opts, predict, swing_csv(tmp_path), DEV, 0.06, period_s=0.5, notes=notes)
    assert list(results) == ["fixed", "adaptive", "select"]
    assert len(notes) == 1 and "standalone" in notes[0] and "no local plan" in notes[0]


def test_reliability_curve_fixed_is_monotone():
    trace = load_trace("ge:p=0.2,r=0.3,duration=60,seed=2", ["dev-1", "dev-2"])
    deadlines = [d / 1e3 for d in (10, 30, 40, 41, 60, 100, 150, 221, 300)]
    curve = reliability_curve(options(), predict, trace, ["dev-1", "dev-2"], deadlines, "fixed", period_s=0.1)
    assert [d for d, _ in curve] == deadlines
    values = [r for _, r in curve]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0 and 0 < values[3] < 1
    # Select's choice depends on the deadline: a replay per deadline, frames every deadline by default.
    sel = reliability_curve(options(), predict, trace, ["dev-1", "dev-2"], [0.012, 0.05], "select")
    assert sel[0][1] == 1.0 and sel[1][1] > 0.9


def test_summary_table(tmp_path):
    results = replay_all(options(), predict, swing_csv(tmp_path), DEV, 0.060, period_s=0.5, alpha=1.0)
    text = summary_table(results)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["policy", "tasks", "reliability", "%"]
    assert len(lines) == 2 + len(POLICIES)
    fixed = next(line for line in lines if line.startswith("fixed"))
    assert "66.7" in fixed and "70.60" in fixed and fixed.endswith("v100/halp@100 ×6")
    select = next(line for line in lines if line.startswith("select"))
    assert select.endswith("v100/halp@100 ×4, v075/halp@10 ×2")


# -- the HTML report -------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _report(tmp_path):
    devices = ["dev-1", "dev-2"]
    trace = load_trace("ge:p=0.1,r=0.3,duration=20,seed=5,per_device=1", devices)
    results = replay_all(options(), predict, trace, devices, 0.06, period_s=0.2)
    deadlines = [0.02, 0.04, 0.06, 0.1, 0.25]
    curves = {p: reliability_curve(options(), predict, trace, devices, deadlines, p, period_s=0.2) for p in results}
    return results, curves, trace, devices


def test_report_renders_self_contained(tmp_path):
    results, curves, trace, devices = _report(tmp_path)
    html = render_simulation_report("MobileNet <&> over WiFi", results, curves, trace, devices, 0.06)
    assert "MobileNet &lt;&amp;&gt; over WiFi" in html and "<&>" not in html
    parser = _Tags()
    parser.feed(html)
    tags = parser.tags
    assert sum(tag == "svg" for tag, _ in tags) == 3  # reliability curve, trace, strips
    for policy in POLICIES:
        assert f"> {policy}</td>" in html  # summary row
        assert re.search(rf'<polyline class="line" stroke="#[0-9a-f]+" points="[^"]+"><title>{policy}</title>', html)
    # No external resources: the only URL is the SVG namespace; no scripts, sources or links out.
    assert set(re.findall(r"https?://[^\s\"'<>)]*", html)) == {"http://www.w3.org/2000/svg"}
    assert not any(tag in ("script", "link", "img", "iframe") for tag, _ in tags)
    assert not any("src" in attrs or "href" in attrs for _, attrs in tags)
    # One bar per task per policy, coloured by variant, and a miss mark per missed task.
    bars = [a for tag, a in tags if tag == "rect" and "fill" in a]
    assert len(bars) == sum(len(r.tasks) for r in results.values())
    misses = [a for tag, a in tags if tag == "rect" and a.get("class") == "miss"]
    assert len(misses) == sum(not t.met for r in results.values() for t in r.tasks)
    # The deadline is marked on the reliability chart.
    assert re.search(r'<line class="deadline" x1="[\d.]+"', html)
    # Each device's link has its own line in the trace chart (per_device=1).
    for device in devices:
        assert f"<title>{device}</title>" in html


def test_report_written_atomically(tmp_path, monkeypatch):
    import halpc.files

    results, curves, trace, devices = _report(tmp_path)
    replaced = []
    real_replace = halpc.files.os.replace

    def spy(src, dst):
        replaced.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(halpc.files.os, "replace", spy)
    out = tmp_path / "reports" / "sim.html"
    write_simulation_report(out, "sim", results, curves, trace, devices, 0.06)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert len(replaced) == 1 and replaced[0][1] == str(out) and replaced[0][0].endswith(".tmp")
    assert sorted(p.name for p in out.parent.iterdir()) == ["sim.html"]  # no temporary file left
    folder = tmp_path / "reports" / "a-folder"  # cannot be replaced by a file
    folder.mkdir()
    with pytest.raises(HalpcError) as e:
        write_simulation_report(folder, "sim", results, curves, trace, devices, 0.06)
    assert one_line(e).startswith(f"{folder}: cannot write the report")
    assert sorted(p.name for p in out.parent.iterdir()) == ["a-folder", "sim.html"]


def test_report_without_curves_and_records_are_plain_data(tmp_path):
    results, _, trace, devices = _report(tmp_path)
    html = render_simulation_report("no curves", results, {}, trace, devices, 0.06)
    assert html.count("<svg") == 2
    task = results["select"].tasks[0]
    assert isinstance(task, TaskRecord) and isinstance(task.choice, Choice)
    assert isinstance(results["select"], PolicyResult) and task.end_s == task.start_s + task.latency_s
    with pytest.raises(HalpcError):
        render_simulation_report("empty", {}, {}, trace, devices, 0.06)


def test_crowded_strips_merge_neighbouring_tasks_of_one_variant_and_outcome(tmp_path):
    results = replay_all(options(), predict, swing_csv(tmp_path), DEV, 0.060, period_s=0.05, alpha=1.0)
    colours = {"v100": "#111111", "v075": "#222222", "v050": "#333333", "v025": "#444444"}
    plain = strips(results, colours, 3.0)
    assert [len(s["bars"]) + s["after_end"] for s in plain] == [len(r.tasks) for r in results.values()]
    merged = strips(results, colours, 3.0, max_tasks=10, merge_px=400.0)
    fixed = next(s for s in merged if s["policy"] == "fixed")
    # fixed: 20 met tasks at 100 Mbit/s, then missed ones at 10, then met ones again: three bars.
    assert [b["met"] for b in fixed["bars"]] == [True, False, True]
    assert fixed["bars"][0]["title"].startswith("tasks 0–19, 0.00–") and "v100/halp@100 ×20" in fixed["bars"][0]["title"]
    assert fixed["merged"] and fixed["misses"] == sum(not t.met for t in results["fixed"].tasks)
    # Standalone (100 ms a frame every 50 ms) falls behind: tasks after the trace's end are counted, not drawn.
    alone = next(s for s in plain if s["policy"] == "standalone")
    assert alone["after_end"] == 30 and len(alone["bars"]) == 30 and alone["tasks"] == 60
