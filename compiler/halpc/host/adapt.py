"""Which plan (and model variant) the host runs for the next task, given how fast the links are.

A bundle holds several plans: ways to split one model variant over the devices, compiled for
different link rates, and the same for several variants of the model (narrower ones are faster
and less accurate). Links are WiFi, so their rates change while the host runs. Before each task
the host takes its smoothed estimate of every link (`LinkEstimator`), asks the cost model how
long each plan would take at those rates (a `Predictor`), and picks by a policy:

- standalone: the host alone runs the default variant (the baseline without any network);
- fixed: the bundle's default plan, whatever the links do (what a static compiler gives);
- adaptive: the default variant's plan predicted fastest at the estimate;
- select: the most accurate variant whose fastest plan is predicted to meet the deadline.

The predictor is a plain function so that this module needs no model: the real one wraps the
cost model (milliseconds a call: wrap it in `cached`), tests use a formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from halpc import units
from halpc.errors import HalpcError

Bandwidths = Mapping[str, float]  # per non-host device: Mbit/s of its link
Predictor = Callable[[str, Bandwidths], float]  # (plan id, link rates) -> predicted latency, seconds

POLICIES = ("standalone", "fixed", "adaptive", "select")
LOCAL = "local"


@dataclass(frozen=True)
class PlanOption:
    """One plan of the bundle, as the policies see it."""

    id: str  # plan id in the bundle
    variant: str  # model variant name, e.g. "mobilenet_v1_050"
    accuracy: float | None  # top-1 %, None if unknown
    strategy: str  # "local" means the host alone runs the whole model
    bandwidth_mbps: float | None  # the level the plan was compiled for (None: local)
    default: bool  # the bundle's primary plan (what "fixed" always runs)

    @property
    def label(self) -> str:
        """Short name for messages: variant, strategy and the level it was compiled for."""
        level = f"@{self.bandwidth_mbps:g}" if self.bandwidth_mbps is not None else ""
        return f"{self.variant} {self.strategy}{level}"


@dataclass(frozen=True)
class Choice:
    """What a policy picked for one task, and why (one sentence, for logs and reports)."""

    plan: str
    variant: str
    accuracy: float | None
    predicted_s: float
    reason: str


def _rates(estimate: Bandwidths) -> str:
    """`at dev-1 12 Mbit/s` or `at dev-1 12, dev-2 50 Mbit/s` (empty with no links)."""
    if not estimate:
        return ""
    return " at " + ", ".join(f"{d} {v:.3g}" for d, v in estimate.items()) + " Mbit/s"


def _choice(option: PlanOption, predicted_s: float, reason: str) -> Choice:
    return Choice(option.id, option.variant, option.accuracy, predicted_s, reason)


def default_option(options: Sequence[PlanOption]) -> PlanOption:
    """The bundle's primary plan: the first marked default (the first plan if none is)."""
    if not options:
        raise HalpcError("the bundle lists no plans; compile at least one plan")
    return next((o for o in options if o.default), options[0])


def _fastest(plans: Sequence[PlanOption], predicted: Mapping[str, float]) -> PlanOption:
    """The plan predicted fastest; ties go to the default plan, then to the first listed."""
    return min(enumerate(plans), key=lambda io: (predicted[io[1].id], not io[1].default, io[0]))[1]


def choose(policy: str, options: Sequence[PlanOption], predict: Predictor, estimate: Bandwidths,
           deadline_s: float | None) -> Choice:
    """The plan `policy` runs next when the links are believed to run at `estimate` (see module)."""
    if policy not in POLICIES:
        raise HalpcError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    default = default_option(options)
    at = _rates(estimate)
    if policy == "standalone":
        local = next((o for o in options if o.strategy == LOCAL and o.variant == default.variant), None)
        if local is None:
            raise HalpcError(
                f"the bundle has no local plan for {default.variant}; "
                "compile one with the local strategy or choose another policy"
            )
        s = predict(local.id, estimate)
        return _choice(local, s, f"{local.label}: the host alone, {units.ms(s)} ms predicted")
    if policy == "fixed":
        s = predict(default.id, estimate)
        return _choice(default, s, f"{default.label}: the default plan, {units.ms(s)} ms predicted{at}")
    if policy == "select" and deadline_s is not None:
        return _select(options, predict, estimate, deadline_s, default)
    plans = [o for o in options if o.variant == default.variant]
    predicted = {o.id: predict(o.id, estimate) for o in plans}
    best = _fastest(plans, predicted)
    s = predicted[best.id]
    if best is default:
        why = f"the default plan is the fastest of {len(plans)}"
    else:
        why = f"fastest of {len(plans)} (default {default.strategy} {units.ms(predicted[default.id])} ms)"
    return _choice(best, s, f"{best.label}: {units.ms(s)} ms predicted{at}, {why}")


def _select(options: Sequence[PlanOption], predict: Predictor, estimate: Bandwidths, deadline_s: float,
            default: PlanOption) -> Choice:
    """The most accurate variant whose fastest plan meets the deadline, else the fastest of all."""
    predicted = {o.id: predict(o.id, estimate) for o in options}
    variants: dict[str, list[PlanOption]] = {}
    for o in options:
        variants.setdefault(o.variant, []).append(o)
    fastest = {v: _fastest(plans, predicted) for v, plans in variants.items()}
    order = list(variants)
    # Most accurate first (unknown accuracy last); equal accuracy: the faster first, then listed order.
    ranked = sorted(order, key=lambda v: (
        fastest[v].accuracy is None,
        -(fastest[v].accuracy or 0.0),
        predicted[fastest[v].id],
        order.index(v),
    ))
    at = _rates(estimate)
    for i, v in enumerate(ranked):
        best = fastest[v]
        s = predicted[best.id]
        if s <= deadline_s:
            if i == 0:
                why = "the most accurate variant"
            else:
                above = fastest[ranked[i - 1]]
                why = f"{above.variant} needs {units.ms(predicted[above.id])} ms"
            return _choice(best, s, f"{best.label}: {units.ms(s)} ms predicted{at} meets {units.ms(deadline_s)} ms ({why})")
    best = min(enumerate(fastest.values()), key=lambda io: (
        predicted[io[1].id], io[1].variant != default.variant, io[0]))[1]
    s = predicted[best.id]
    return _choice(best, s, f"none meets {units.ms(deadline_s)} ms{at}: fastest is {best.label}, {units.ms(s)} ms")


class LinkEstimator:
    """Each link's rate, smoothed: an exponentially weighted moving average of what was seen.

    The host learns a link's rate from its own transfers, which are noisy and a task late;
    smoothing keeps one slow transfer from flipping the plan, `alpha` sets how fast it follows.
    """

    def __init__(self, initial: Bandwidths, alpha: float = 0.5):
        if not 0 < alpha <= 1:
            raise HalpcError(f"smoothing alpha={alpha:g} must be in (0, 1]; 1 follows the last sample only")
        self.alpha = alpha
        self._estimate = {d: float(v) for d, v in initial.items() if _usable(v)}

    def observe(self, device: str, mbps: float) -> None:
        """Fold one sample in; non-positive or non-finite samples (failed probes) are ignored."""
        if not _usable(mbps):
            return
        old = self._estimate.get(device)
        self._estimate[device] = float(mbps) if old is None else self.alpha * mbps + (1 - self.alpha) * old

    def forget(self, device: str) -> None:
        """Drop what is known of `device`'s link: its next sample is taken as it is."""
        self._estimate.pop(device, None)

    @property
    def estimate(self) -> dict[str, float]:
        """The current estimate per device, as a copy the caller may keep."""
        return dict(self._estimate)


def _usable(mbps) -> bool:
    try:
        return math.isfinite(mbps) and mbps > 0
    except TypeError:
        return False


def cached(predict: Predictor, resolution: float = 0.02) -> Predictor:
    """`predict`, memoised on (plan, each rate rounded to a step of `resolution` on a log scale).

    The estimate drifts a little after every task, so without rounding nothing would ever be
    reused; 2% steps change predictions by at most about 1%. The call is made at the bucket's
    rate, so a bucket always gives the same answer whatever rate first hit it. `resolution=0`
    memoises on the exact rates. The memo is the returned function's `cache` attribute.
    """
    if resolution < 0 or not math.isfinite(resolution):
        raise HalpcError(f"cache resolution {resolution:g} must be >= 0 (0.02: 2% steps)")
    step = math.log1p(resolution)
    memo: dict[tuple, float] = {}

    def rounded(rate: float) -> tuple[object, float]:
        if step == 0 or not _usable(rate):
            return rate, rate
        bucket = round(math.log(rate) / step)
        return bucket, math.exp(bucket * step)

    def wrapper(plan: str, rates: Bandwidths) -> float:
        buckets = {d: rounded(v) for d, v in rates.items()}
        key = (plan, tuple(sorted((d, b[0]) for d, b in buckets.items())))
        if key not in memo:
            memo[key] = predict(plan, {d: b[1] for d, b in buckets.items()})
        return memo[key]

    wrapper.cache = memo
    return wrapper
