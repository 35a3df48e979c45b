"""The host's choice of plan per task at run time: it measures its links, predicts, decides.

`Controller.choose` is what `HostSession.stream` asks before each task; `Controller.observe`
gets each finished task's measured timeline. The link estimates come from the task's own
transfers: a message whose receiver was waiting for it (so its arrival time is when it
arrived, not when a busy loop got round to it) crossed its link in `arrival - max(sent, the
link's previous arrival)`. A link the task did not use, or used too little to measure, is
probed right after the task (`HostSession.probe`: two messages back to back, the device times
the second). The estimates are smoothed (`adapt.LinkEstimator`), the cost model predicts every
plan at them, and the policy (`adapt.choose`) picks. Decisions use the timelines of tasks that
have finished, so they lag the channel by about one task, as `simulate.replay` assumes.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from halpc.adapt import Bandwidths, Choice, LinkEstimator, PlanOption, Predictor, cached, choose
from halpc.cluster import Cluster
from halpc.planner import predict_bundle
from halpc_stub.host import HostSession, TaskResult
from halpc_stub.manifest import Manifest

MIN_SAMPLE_BYTES = 32 * 1024  # less than this in a task says more about overheads than the link
PROBE_TIMEOUT_S = 2.0  # a probe not answered by then is forgotten and sent again


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
    cluster = Cluster.from_dict(manifest.data["cluster"])

    def predict(plan: str, rates: Bandwidths) -> float:
        return predict_bundle(plans[plan], rates, cluster).latency_s

    return predict


def nominal_rates(manifest: Manifest, devices: Sequence[str]) -> dict[str, float]:
    """Each device's link to the host as the cluster file gives it."""
    cluster = Cluster.from_dict(manifest.data["cluster"])
    return {d: cluster.link(cluster.host.name, d).bandwidth_mbps for d in devices}


def link_samples(events: Sequence[Mapping[str, Any]], host: str) -> dict[str, float]:
    """Mbit/s of each device's link to the host, from one task's merged timeline (see module)."""
    waited = {(e["device"], e["peer"], e["label"]) for e in events if e["kind"] == "wait"}
    free: dict[tuple[str, str], float] = {}
    moved: dict[str, list[float]] = {}  # device -> [bytes, seconds]
    for e in sorted((e for e in events if e["kind"] == "send"), key=lambda e: e["start"]):
        sender, receiver = e["device"], e["peer"]
        link = (sender, receiver)
        start = max(e["start"], free.get(link, e["start"]))
        free[link] = max(e["end"], free.get(link, e["end"]))
        if host not in link or (receiver, sender, e["label"]) not in waited or e["end"] <= start:
            continue
        device = receiver if sender == host else sender
        total = moved.setdefault(device, [0.0, 0.0])
        total[0] += e.get("bytes") or 0
        total[1] += e["end"] - start
    return {d: size * 8 / seconds / 1e6 for d, (size, seconds) in moved.items()
            if size >= MIN_SAMPLE_BYTES and seconds > 0}


class Controller:
    def __init__(self, host: HostSession, policy: str, deadline_s: float | None, alpha: float = 0.5) -> None:
        manifest = host.manifest
        self.host = host
        self.policy = policy
        self.deadline_s = deadline_s
        self.options = plan_options(manifest)
        self.predict = cached(bundle_predictor(manifest))
        self.devices = list(host.workers)
        self.estimator = LinkEstimator(nominal_rates(manifest, self.devices), alpha)
        self.decisions: dict[int, tuple[Choice, dict[str, float]]] = {}  # task -> (choice, estimate)
        self.samples: list[tuple[float, str, float, str]] = []  # (time, device, Mbit/s, "task"|"probe")
        self.probing: dict[str, float] = {}  # device -> when its probe went out

    def choose(self, task: int) -> str:
        for device, mbps in self.host.take_probes():
            self._learn(device, mbps, "probe")
            self.probing.pop(device, None)
        estimate = self.estimator.estimate
        choice = choose(self.policy, self.options, self.predict, estimate, self.deadline_s)
        self.decisions[task] = (choice, estimate)
        return choice.plan

    def observe(self, result: TaskResult) -> None:
        measured = link_samples(result.events, self.host.node.name)
        for device, mbps in measured.items():
            self._learn(device, mbps, "task")
        now = time.time()
        for device in self.devices:
            if device not in measured and now - self.probing.get(device, 0.0) > PROBE_TIMEOUT_S:
                self.host.probe(device)
                self.probing[device] = now

    def _learn(self, device: str, mbps: float, source: str) -> None:
        self.estimator.observe(device, mbps)
        self.samples.append((time.time(), device, mbps, source))
