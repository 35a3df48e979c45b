"""The host's choice of plan per task at run time: it measures its links, predicts, decides.

`Controller.choose` is what `HostSession.stream` asks before each task; `Controller.finished`
is told when one is done. After a task the host probes each device's link (at most every
PROBE_INTERVAL_S, or at once after a probe that said nothing) with its own transfers (`HostSession.probe`: two messages back to back; the device times the gap
between their arrivals, over which the second crossed the link at the link's rate). Probes go
out when the task is done, so with one task in flight they measure the link and not the task's
own traffic. Timing the task's rows instead was tried: a device busy computing, or starved of
CPU, notices rows late, which read as a link 30-70% slower than it was.

The samples are smoothed (`adapt.LinkEstimator`), the cost model predicts every plan at the
estimate, and the policy (`adapt.choose`) picks. A probe's answer is used from the next task
that starts after it came, so decisions lag the channel by up to PROBE_INTERVAL_S and a task,
as `simulate.replay` assumes.

A device the host marked down (a task waited too long for it: its link may have collapsed) is
out of use until it is back and a probe has measured its link afresh: the plans using it are
predicted never to finish, so the policy picks among the others (another variant, or the host
alone) instead of the host recomputing the chosen one unsplit; and the estimate it had before
is dropped, not averaged with the new rate.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from halpc.host.adapt import Bandwidths, Choice, LinkEstimator, PlanOption, Predictor, cached, choose
from halpc.planner.predict import bundle_cluster, predict_bundle
from halpc_stub import clock
from halpc_stub.host import HostSession
from halpc_stub.manifest import Manifest

PROBE_TIMEOUT_S = 2.0  # a probe not answered by then is forgotten and sent again
# At most this often per link: a probe is 112 kB, 18% of a 10 Mbit/s link's time at this rate.
# Probing after every task of a fast stream would fill the link and both processors.
PROBE_INTERVAL_S = 0.5
# A probe reads at most this times the cluster file's rate. A board starved of CPU reads a
# probe's first part late and the gap short: 300-1000 Mbit/s were read on a 100 Mbit/s link,
# and such a sample would keep the estimate high for several probes after the link dropped.
MAX_PROBE_FACTOR = 1.5


def plan_options(manifest: Manifest) -> list[PlanOption]:
    """The bundle's plans as the policies see them; the first is the default."""
    options = []
    for i, plan in enumerate(manifest.plans):
        levels = plan.data.get("bandwidths") or []
        options.append(PlanOption(plan.id, plan.data.get("variant", plan.id), plan.data.get("accuracy"),
                                  plan.data["strategy"], min(levels) if levels else None, i == 0))
    return options


def bundle_predictor(manifest: Manifest) -> Predictor:
    """Predicted latency (s) of a plan of the bundle when the links run at the given rates."""
    plans = {p.id: p.data for p in manifest.plans}
    cluster = bundle_cluster(manifest.data)

    def predict(plan: str, rates: Bandwidths) -> float:
        return predict_bundle(plans[plan], rates, cluster).latency_s

    return predict


def nominal_rates(manifest: Manifest, devices: Sequence[str]) -> dict[str, float]:
    """Each device's link to the host as the cluster file gives it."""
    cluster = bundle_cluster(manifest.data)
    return {d: cluster.link(cluster.host.name, d).bandwidth_mbps for d in devices}


class Controller:
    """Per task: the plan `policy` picks at the current link estimate (see module)."""

    def __init__(self, host: HostSession, policy: str, deadline_s: float | None, alpha: float = 0.5) -> None:
        manifest = host.manifest
        self.host = host
        self.policy = policy
        self.deadline_s = deadline_s
        self.options = plan_options(manifest)
        self.predict = cached(bundle_predictor(manifest))
        self.devices = list(host.workers)
        self.nominal = nominal_rates(manifest, self.devices)
        self.estimator = LinkEstimator(self.nominal, alpha)
        # task -> (choice, the link estimate it was made at; 0 for a device out of use)
        self.decisions: dict[int, tuple[Choice, dict[str, float]]] = {}
        self.uses = {p.id: host.devices_of(p) for p in host.node.plans.values()}  # plan -> its devices
        self.out: set[str] = set()  # devices down since their last probe answer (see module)
        self.samples: list[tuple[float, str, float]] = []  # (time, device, Mbit/s) of every probe
        self.probing: dict[str, float] = {}  # device -> when its probe went out, until answered
        self.probed: dict[str, float] = {}  # device -> when its last probe went out
        # A policy the bundle cannot serve (standalone without a local plan) fails here, at once.
        choose(policy, self.options, self.predict, self.estimator.estimate, deadline_s)

    def choose(self, task: int) -> str:
        for device, mbps in self.host.take_probes():
            self.probing.pop(device, None)
            if math.isnan(mbps):  # answered, but says nothing of the link: probe again after
                self.probed.pop(device, None)  # this task, not an interval later (the link may
                continue  # have just changed, and the estimate would lag it by one more probe)
            if device in self.out:
                self.estimator.forget(device)
                self.out.discard(device)
            self.samples.append((clock.now(), device, mbps))
            self.estimator.observe(device, min(mbps, MAX_PROBE_FACTOR * self.nominal[device]))
        out = self.out = self.out | self.host.down.keys()
        estimate = {d: v for d, v in self.estimator.estimate.items() if d not in out}
        avoid = out if self.policy in ("adaptive", "select") else set()  # the policies that go by prediction

        def predict(plan: str, rates: Bandwidths) -> float:
            return math.inf if self.uses[plan] & avoid else self.predict(plan, rates)

        choice = choose(self.policy, self.options, predict, estimate, self.deadline_s)
        if avoid:
            choice = dataclasses.replace(choice, reason=f"{choice.reason}; {', '.join(sorted(avoid))} out of use "
                                                        "until back and measured again")
        self.decisions[task] = (choice, {**estimate, **dict.fromkeys(out, 0.0)})
        return choice.plan

    def finished(self) -> None:
        """After a task, probe each link that has no probe under way and was not probed in the
        last PROBE_INTERVAL_S."""
        now = clock.now()
        for device in self.devices:
            if device in self.host.down:  # pinged by the host until it answers
                continue
            if now - self.probing.get(device, 0.0) > PROBE_TIMEOUT_S and \
                    now - self.probed.get(device, 0.0) >= PROBE_INTERVAL_S:
                self.host.probe(device)
                self.probing[device] = self.probed[device] = now
