"""What every strategy planned for one model and one cluster shares: device costs and caches.

A device's costs come from the cluster file (`gmacs`) or its measured profile, read once per
device: GMAC/s, and where the profile measured them, the fixed cost of a model run, of reading a
strip's weights and of a message. `Context.block_cost` is the DP's cost of one block after another.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from halpc.analyse.strips import BlockIO, block_io
from halpc.analyse.trunk import Trunk
from halpc.inputs.cluster import Cluster
from halpc.inputs.profile_file import load_profile
from halpc.inputs.target import TARGETS, Target, cluster_target
from halpc.planner.cost import cluster_transfer, fixed_prefix, play, step_seconds
from halpc.planner.legal import Legal
from halpc.planner.plan import BlockPlan, Strip
from halpc.planner.schedule import Scheduler, StripJob, block_jobs


@dataclass(frozen=True)
class DeviceCosts:
    """What the cost model knows of one device."""

    gmacs: float
    run_overhead_s: float = 0.0  # per model run
    weight_gbps: float | None = None  # reading a strip's weights from memory (None: free)
    message_overhead_s: float = 0.0  # per message sent or taken in
    int8_gmacs: float | None = None  # integer convolutions (quantized models); None: gmacs
    memory_mb: float | None = None  # what its part may take; None: no limit
    layer_fixed_ms: dict[int, float] = field(default_factory=dict)  # by layer position, as profiled
    profiled_model: str | None = None  # sha256 of the model the profile timed layer by layer


def device_costs(cluster: Cluster) -> dict[str, DeviceCosts]:
    """Each device's costs: the cluster file's `gmacs`, else its profile's; the fixed costs from
    its profile where it has one (each profile read once)."""
    costs = {}
    for d in cluster.devices:
        profile = load_profile(d.profile) if d.profile else {}
        gmacs = d.gmacs if d.gmacs is not None else float(profile["gmacs"])

        def figure(key: str, scale: float = 1.0) -> float | None:
            value = profile.get(key)
            return None if value is None else float(value) * scale

        costs[d.name] = DeviceCosts(gmacs, figure("per_run_overhead_ms", 1e-3) or 0.0, figure("weight_gbps"),
                                    figure("per_message_overhead_ms", 1e-3) or 0.0,
                                    d.int8_gmacs if d.int8_gmacs is not None else figure("int8_gmacs"),
                                    d.memory_mb if d.memory_mb is not None else figure("memory_total_mb"),
                                    _layer_fixed_ms(profile), (profile.get("model") or {}).get("sha256"))
    return costs


def _layer_fixed_ms(profile: dict) -> dict[int, float]:
    """The profile's per-layer fixed ms by trunk position (layers it could not fit: none)."""
    layers = profile.get("layers", {})
    return {int(v["position"]): float(v["fixed_ms"]) for v in layers.values()
            if isinstance(v, dict) and isinstance(v.get("position"), int) and isinstance(v.get("fixed_ms"), (int, float))}


def device_speeds(cluster: Cluster) -> dict[str, float]:
    """GMAC/s per device."""
    return {name: c.gmacs for name, c in device_costs(cluster).items()}


def context(trunk: Trunk, cluster: Cluster, target: Target | None = None) -> Context:
    """A measured profile also gives the fixed costs of a model run, of reading its weights and
    of a message, which dominate when a plan has many thin strips. Strips are planned for
    `target` (default: the cluster's, see `inputs.target.cluster_target`)."""
    costs = device_costs(cluster)
    layers = len(trunk.layers)
    return Context(trunk, cluster, {d: c.gmacs for d, c in costs.items()},
                   {d: c.run_overhead_s for d, c in costs.items() if c.run_overhead_s},
                   {d: c.weight_gbps for d, c in costs.items() if c.weight_gbps is not None},
                   {d: c.message_overhead_s for d, c in costs.items() if c.message_overhead_s},
                   target=target or cluster_target(cluster),
                   int8_speeds={d: c.int8_gmacs for d, c in costs.items() if c.int8_gmacs is not None},
                   memory_mb={d: c.memory_mb for d, c in costs.items() if c.memory_mb is not None},
                   layer_fixed={d: fixed_prefix(c.layer_fixed_ms, layers, c.run_overhead_s) for d, c in costs.items()
                                if c.layer_fixed_ms and c.profiled_model == trunk.model.sha256})


@dataclass
class Context:
    """A model, a cluster and caches shared by every strategy planned for them."""

    trunk: Trunk
    cluster: Cluster
    speeds: dict[str, float]  # GMAC/s
    overheads: dict[str, float] = field(default_factory=dict)  # seconds per model run
    weight_rates: dict[str, float] = field(default_factory=dict)  # GB/s reading weights
    message_overheads: dict[str, float] = field(default_factory=dict)  # seconds per message
    target: Target = TARGETS["x86_64"]  # what the strips must stay exact on
    int8_speeds: dict[str, float] = field(default_factory=dict)  # GMAC/s of integer convolutions
    memory_mb: dict[str, float] = field(default_factory=dict)  # what each device's part may take
    # seconds of the layers' own fixed costs before each trunk position (`cost.fixed_prefix`),
    # for devices profiled on this very model
    layer_fixed: dict[str, tuple[float, ...]] = field(default_factory=dict)
    _jobs: dict = field(default_factory=dict)
    _costs: dict = field(default_factory=dict)
    _alone: dict = field(default_factory=dict)  # makespan of a block on its own, its scheduler
    _compute: dict = field(default_factory=dict)  # each device's compute seconds in a block
    _subs: dict = field(default_factory=dict)  # the contexts of subsets, by their devices' names
    laid_out: dict = field(default_factory=dict)  # (layout chooser, start, stop) -> BlockPlan | None
    memo: dict = field(default_factory=dict)  # for layout choosers

    def __post_init__(self) -> None:
        self.tensor_specs = tensor_specs(self.trunk)
        self.transfer = cluster_transfer(self.cluster)
        self.legal = Legal(self.trunk, self.cluster, self.target)

    def without(self, device: str) -> Context:
        """The same model and device costs on the cluster less helper `device`. What does not
        depend on which devices there are (strip jobs, a strip's seconds on a named device, its
        exactness on that device) is shared; a block's cost, which does, is its own."""
        names = frozenset(self.cluster.names) - {device}
        if names in self._subs:  # every strategy searches the same subsets: cached costs serve all
            return self._subs[names]

        def rest(values: dict) -> dict:
            return {d: v for d, v in values.items() if d != device}

        sub = Context(self.trunk, self.cluster.without(device), rest(self.speeds), rest(self.overheads),
                      rest(self.weight_rates), rest(self.message_overheads), self.target, rest(self.int8_speeds),
                      rest(self.memory_mb), rest(self.layer_fixed), _jobs=self._jobs, _subs=self._subs, memo=self.memo)
        sub.legal = self.legal
        self._subs[names] = sub
        return sub

    def keeping(self, names: list[str]) -> Context:
        """The same model and device costs on the cluster's devices `names` alone (host in)."""
        sub = self
        for device in self.cluster.names:
            if device not in names:
                sub = sub.without(device)
        return sub

    @property
    def positions(self) -> list[int]:
        return [0] + [c.position for c in self.trunk.cuts] + [len(self.trunk.layers)]

    def io(self, start: int, stop: int) -> BlockIO:
        key = ("io", start, stop)
        if key not in self.memo:
            self.memo[key] = block_io(self.trunk, start, stop)
        return self.memo[key]

    def jobs(self, start: int, stop: int, strips: tuple[Strip, ...]) -> list[StripJob]:
        """The block's strip jobs (numbered as block 0: costing does not need the position)."""
        key = (start, stop, strips)
        if key not in self._jobs:
            self._jobs[key] = block_jobs(self.trunk, 0, self.io(start, stop), strips)
        return self._jobs[key]

    def compute_seconds(self, device: str, step: dict) -> float:
        return step_seconds(step, self.speeds[device], self.overheads.get(device, 0.0),
                            self.weight_rates.get(device), self.int8_speeds.get(device), self.layer_fixed.get(device))

    def block_cost(self, prev: BlockPlan | None, block: BlockPlan, gather: bool = False) -> float:
        """Seconds `block` adds to the timeline after `prev`, all devices starting `prev` together.

        Rows `block` needs from other devices leave as soon as `prev`'s strip that computed
        them is done, so a block's transfers can hide behind the end of the block before it:
        the cost is the makespan of the two blocks played together less that of `prev` alone.
        """
        key = (prev, block, gather)
        if key not in self._costs:
            host = self.cluster.host.name
            before, scheduler = self._after(prev, gather)
            exit_recvs = scheduler.add_block(1, self.jobs(block.start, block.stop, block.strips), stream=block.stream)
            programs = scheduler.programs()
            programs[host] = programs[host] + exit_recvs
            if block.stop == len(self.trunk.layers):
                programs[host] += scheduler.finish()
            self._costs[key] = self._makespan(programs) - before
        return self._costs[key]

    def cost_floor(self, prev: BlockPlan, block: BlockPlan, gather: bool = False) -> float:
        """A lower bound of `block_cost(prev, block)` without playing them: a device computes
        its strips of `prev`, then of `block`, one after the other, so the two end no sooner
        than its compute of both, whenever its rows arrive. The DP skips a pair whose bound
        cannot beat the best found (most pairs: an early block laid out badly)."""
        before = self._after(prev, gather, copy=False)[0]
        mine, theirs = self._work(prev), self._work(block)
        return max(mine.get(d, 0.0) + seconds for d, seconds in theirs.items()) - before

    def _work(self, block: BlockPlan) -> dict[str, float]:
        """Each device's compute seconds in `block` (a device reads the block's weights once)."""
        if block not in self._compute:
            work: dict[str, float] = {}
            for job in self.jobs(block.start, block.stop, block.strips):
                step = {"macs": job.macs, "int8_macs": job.int8_macs, "layers": [block.start, block.stop],
                        "weights": 0 if job.device in work else job.weights}
                work[job.device] = work.get(job.device, 0.0) + self.compute_seconds(job.device, step)
            self._compute[block] = work
        return self._compute[block]

    def _after(self, prev: BlockPlan | None, gather: bool, copy: bool = True) -> tuple[float, Scheduler]:
        """The makespan of `prev` alone and a scheduler that has played it (a copy of one kept
        per block: the DP costs every block after the same few dozen)."""
        if prev is None:
            return 0.0, Scheduler(self.trunk, list(self.cluster.names), self.cluster.host.name, gather, costing=True)
        if (prev, gather) not in self._alone:
            scheduler = Scheduler(self.trunk, list(self.cluster.names), self.cluster.host.name, gather, costing=True)
            scheduler.add_block(0, self.jobs(prev.start, prev.stop, prev.strips), True)
            self._alone[(prev, gather)] = self._makespan(scheduler.programs()), scheduler
        before, scheduler = self._alone[(prev, gather)]
        return before, scheduler.copy() if copy else scheduler

    def finish_times(self, block: BlockPlan) -> dict[str, float]:
        """When each device is done computing `block`, played alone from the task's start."""
        names = list(self.cluster.names)
        scheduler = Scheduler(self.trunk, names, self.cluster.host.name, costing=True)
        scheduler.add_block(0, self.jobs(block.start, block.stop, block.strips), stream=block.stream)
        events = play(scheduler.programs(), self.cluster.host.name, self.compute_seconds, self.transfer,
                      self.tensor_specs, self.message_seconds).events
        done = {d: 0.0 for d in names}
        for event in events:
            if event.kind == "compute":
                done[event.device] = max(done[event.device], event.end)
        return done

    def message_seconds(self, device: str) -> float:
        return self.message_overheads.get(device, 0.0)

    def _makespan(self, programs: dict) -> float:
        return play(programs, self.cluster.host.name, self.compute_seconds, self.transfer,
                        self.tensor_specs, self.message_seconds, record=False).makespan_s



def tensor_specs(trunk: Trunk) -> dict[str, dict]:
    """Each trunk tensor's shape, dtype and row axis, as the manifest and the cost model read them."""
    return {
        t: {"shape": list(i.shape), "dtype": i.dtype, "row_axis": i.row_axis}
        for t, i in trunk.tensors.items()
    }
