"""How a block's rows are laid out over the devices.

- `host_only`: the host computes the block alone.
- `contiguous`: one strip per device in cluster order (host first), sized so that every
  device's compute, halo included, takes the same time at its speed. DPFP and the baselines.
- `halp`: secondaries get strips whose input segments do not overlap (no halo is sent twice);
  the host computes the overlapping zones between them, plus a strip of its own at the top,
  sized so that all finish together. In the first block the host also sends every secondary its
  segment, one after the other, while it computes: later secondaries start later and get less.
- `boundary_first`: halp's layout with every device's rows next to a neighbour as a strip of
  their own, run first (halp's strategy uses this one).
- `one_helper`: `boundary_first` over the host and the helper with the fastest link alone, for
  blocks after the first: on slow links a first block shared by every helper can pay while
  later blocks' halo exchanges between them cost more than their rows save.
- `streamed`: for the first block on slow links, halp's layout with each secondary's share cut
  into pieces that grow from the top; the host streams the input (`BlockPlan.stream`): its
  sends take turns over the secondaries, so each starts on its first small piece while the rest
  is on the wire, and all of them start early, not one after the other.
"""
from __future__ import annotations

from collections.abc import Callable

from halpc.planner.plan import BlockPlan, Strip, join_neighbours
from halpc.planner.context import Context
from halpc.analyse.rows import Rows
from halpc.analyse.strips import block_io, strip_at, strip_macs

ROUNDS = 4
EDGE_FRACTION = 4  # boundary_first: a device's edge strips take this fraction of its rows
# streamed: (pieces, growth) of a secondary's share, each piece `growth` times the one above;
# the shares are balanced for the first BALANCED shapes.
# More pieces start sooner but redo more halo inside the block; the block's cost decides.
STREAM_SHAPES = ((6, 1.5), (3, 2.0), (2, 3.0), (4, 2.0))
BALANCED = 2


def _strip_seconds(ctx: Context, io, device: str, bounds: list[int], j: int) -> tuple[float, Rows]:
    key = ("strip", io.start, io.stop, device, tuple(bounds), j)
    if key not in ctx.memo:
        ctx.memo[key] = _compute_strip_seconds(ctx, io, device, bounds, j)
    return ctx.memo[key]


def _compute_strip_seconds(ctx: Context, io, device: str, bounds: list[int], j: int) -> tuple[float, Rows]:
    rows = strip_at(ctx.trunk, io, bounds, j)
    seconds = strip_macs(ctx.trunk, io, rows) / (ctx.speeds[device] * 1e9)
    return seconds, rows.inputs.get(io.main_input(ctx.trunk), (0, 0))


def proportional_sizes(weights: list[float], total: int) -> list[int]:
    """Sizes >= 1 summing to `total`, proportional to `weights` (largest remainders)."""
    scale = sum(weights)
    raw = [max(w, 1e-9) / scale * total for w in weights]
    sizes = [max(1, int(r)) for r in raw]
    while sum(sizes) > total:
        i = max(range(len(sizes)), key=lambda k: (sizes[k] - raw[k], sizes[k]))
        sizes[i] -= 1
    while sum(sizes) < total:
        i = max(range(len(sizes)), key=lambda k: raw[k] - sizes[k])
        sizes[i] += 1
    return sizes


def host_only(ctx: Context, start: int, stop: int) -> tuple[Strip, ...]:
    """The host computes the whole block: right where the links are too slow to gain."""
    rows = ctx.trunk.tensors[block_io(ctx.trunk, start, stop).reference].rows
    return (Strip(ctx.cluster.host.name, (0, rows)),)


def contiguous(ctx: Context, start: int, stop: int, devices: list[str] | None = None,
               balance: bool = True) -> tuple[Strip, ...]:
    io = block_io(ctx.trunk, start, stop)
    rows = ctx.trunk.tensors[io.reference].rows
    devices = (devices or list(ctx.cluster.names))[:rows]
    weights = [ctx.speeds[d] for d in devices]
    sizes = proportional_sizes(weights, rows)
    for _ in range(ROUNDS if balance else 0):
        bounds = [0]
        for size in sizes:
            bounds.append(bounds[-1] + size)
        seconds = [_strip_seconds(ctx, io, d, bounds, j)[0] for j, d in enumerate(devices)]
        mean = sum(seconds) / len(seconds)
        weights = [size * mean / max(t, 1e-12) for size, t in zip(sizes, seconds)]
        new = proportional_sizes(weights, rows)
        if new == sizes:
            break
        sizes = new
    strips, at = [], 0
    for device, size in zip(devices, sizes):
        strips.append(Strip(device, (at, at + size)))
        at += size
    return tuple(strips)


def halp(ctx: Context, start: int, stop: int) -> tuple[Strip, ...]:
    io = block_io(ctx.trunk, start, stop)
    rows = ctx.trunk.tensors[io.reference].rows
    host = ctx.cluster.host.name
    secondaries = list(ctx.cluster.names[1:])
    if not secondaries or rows < 2 * len(secondaries) + 1:
        return contiguous(ctx, start, stop)
    best: tuple[float, tuple[Strip, ...]] | None = None

    def finish_of(strips: tuple[Strip, ...]) -> dict[str, float]:
        nonlocal best
        finish = _halp_finish(ctx, io, strips, first=start == 0)
        if best is None or max(finish.values()) < best[0]:
            best = (max(finish.values()), strips)
        return finish

    _balance(ctx, io, rows, host, secondaries, finish_of)
    assert best is not None
    return best[1]


def _balance(ctx: Context, io, rows: int, host: str, secondaries: list[str],
             finish_of: Callable[[tuple[Strip, ...]], dict[str, float]]) -> None:
    """Up to ROUNDS of halp's shares (`_halp_layout`): each played by `finish_of` (which keeps
    the best it saw), then every device's rows scaled by how early it finished against the mean."""
    devices = [host, *secondaries]
    weights = [ctx.speeds[d] for d in devices]
    tried: set[tuple[int, ...]] = set()
    for _ in range(ROUNDS):
        sizes = proportional_sizes(weights, rows)
        if tuple(sizes) in tried:
            break
        tried.add(tuple(sizes))
        shares = _halp_layout(ctx, io, rows, host, secondaries, sizes)
        finish = finish_of(shares)
        mean = sum(finish.values()) / len(finish)
        owned = {d: sum(s.rows[1] - s.rows[0] for s in shares if s.device == d) for d in devices}
        weights = [max(owned[d], 0.5) * mean / max(finish[d], 1e-12) for d in devices]


def _halp_layout(ctx: Context, io, rows: int, host: str, secondaries: list[str],
                 sizes: list[int]) -> tuple[Strip, ...]:
    """Secondaries laid out bottom-up, each as close below the next as their inputs allow.

    The host takes the zone between two secondaries (as narrow as keeps their input segments
    disjoint) and the rows above the first one.
    """
    strips: list[Strip] = []
    bottom = rows  # first row of what is laid out so far
    below: Rows | None = None  # input segment of the secondary just below
    for device, size in zip(reversed(secondaries), reversed(sizes[1:])):
        stop = bottom
        start = max(stop - size, 1)
        segment = _input_rows(ctx, io, (start, stop)) if start < stop else None
        while segment is not None and below is not None and segment[1] > below[0]:
            stop -= 1
            start = max(stop - size, 1)
            segment = _input_rows(ctx, io, (start, stop)) if start < stop else None
        if stop < bottom:
            strips.append(Strip(host, (stop, bottom)))
        if segment is not None:
            strips.append(Strip(device, (start, stop)))
            below, bottom = segment, start
        else:
            bottom = stop
    if bottom > 0:
        strips.append(Strip(host, (0, bottom)))
    return join_neighbours(tuple(reversed(strips)))


def _input_rows(ctx: Context, io, out: Rows) -> Rows:
    """Rows of the block's input that output rows `out` need."""
    key = ("input_rows", io.start, io.stop, out)
    if key not in ctx.memo:
        ctx.memo[key] = _compute_input_rows(ctx, io, out)
    return ctx.memo[key]


def _compute_input_rows(ctx: Context, io, out: Rows) -> Rows:
    rows = ctx.trunk.tensors[io.reference].rows
    bounds = sorted({0, out[0], out[1], rows})
    strip = strip_at(ctx.trunk, io, bounds, bounds.index(out[0]))
    return strip.inputs.get(io.main_input(ctx.trunk), (0, 0))


def _halp_finish(ctx: Context, io, strips: tuple[Strip, ...], first: bool) -> dict[str, float]:
    """Each device's finish time for the block: compute, after its input arrives (first block)."""
    host = ctx.cluster.host.name
    bounds = [strips[0].rows[0]] + [s.rows[1] for s in strips]
    finish: dict[str, float] = {d: 0.0 for d in ctx.cluster.names}
    link_free = 0.0
    row_bytes = ctx.trunk.tensors[io.main_input(ctx.trunk)].row_bytes
    for j, strip in enumerate(strips):
        seconds, needed = _strip_seconds(ctx, io, strip.device, bounds, j)
        start = 0.0
        if first and strip.device != host:
            link = ctx.cluster.link(host, strip.device)
            link_free += (needed[1] - needed[0]) * row_bytes * 8 / (link.bandwidth_mbps * 1e6)
            start = link_free + link.latency_ms / 1e3
        finish[strip.device] = max(finish[strip.device], start) + seconds
    return finish


def boundary_first(ctx: Context, start: int, stop: int) -> tuple[Strip, ...]:
    """halp's layout with each device's rows next to another device's cut off into a strip of
    their own, which the scheduler runs first: the rows a neighbour needs for the next block
    leave while the device computes the rest of its share."""
    strips = halp(ctx, start, stop)
    out: list[Strip] = []
    for j, strip in enumerate(strips):
        a, b = strip.rows
        edge = max(1, (b - a) // EDGE_FRACTION)
        top = j > 0 and strips[j - 1].device != strip.device
        bottom = j + 1 < len(strips) and strips[j + 1].device != strip.device
        cuts = sorted({a, b, *([a + edge] if top else []), *([b - edge] if bottom else [])})
        if b - a < 2 * edge + 1 or len(cuts) == 2:
            out.append(strip)
            continue
        out += [Strip(strip.device, (x, y)) for x, y in zip(cuts, cuts[1:])]
    return tuple(out)


def streamed(ctx: Context, start: int, stop: int) -> tuple[Strip, ...] | None:
    """halp's layout for a first block whose input the host streams: each secondary's share in
    pieces growing from the top, the shares balanced for each of the first `BALANCED` shapes by
    playing the block out with the host's sends taking turns (`Context.finish_times`); the
    other shapes are tried on the best shares found (balancing each costs planning time for
    little). None for a block that does not start at the model's input or that has too few
    rows to share."""
    io = block_io(ctx.trunk, start, stop)
    rows = ctx.trunk.tensors[io.reference].rows
    host = ctx.cluster.host.name
    devices = list(ctx.cluster.names)
    if start != 0 or len(devices) < 2 or rows < 2 * len(devices) - 1:
        return None
    best: tuple[float, tuple[Strip, ...], tuple[Strip, ...]] | None = None  # time, strips, shares

    def try_shape(shares: tuple[Strip, ...], shape: tuple[int, float]) -> dict[str, float]:
        nonlocal best
        strips = ctx.legal.strips(start, stop, _in_pieces(shares, host, *shape))
        finish = ctx.finish_times(BlockPlan(start, stop, strips, stream=True))
        if best is None or max(finish.values()) < best[0]:
            best = (max(finish.values()), strips, shares)
        return finish

    for shape in STREAM_SHAPES[:BALANCED]:
        _balance(ctx, io, rows, host, devices[1:], lambda shares, shape=shape: try_shape(shares, shape))
    assert best is not None
    for shape in STREAM_SHAPES[BALANCED:]:
        try_shape(best[2], shape)
    return best[1]


def _in_pieces(strips: tuple[Strip, ...], host: str, pieces: int, growth: float) -> tuple[Strip, ...]:
    """Every secondary's strip cut into at most `pieces` strips, each `growth` times the one above."""
    out: list[Strip] = []
    for strip in strips:
        a, b = strip.rows
        count = min(pieces, b - a)
        if strip.device == host or count < 2:
            out.append(strip)
            continue
        sizes = proportional_sizes([growth ** i for i in range(count)], b - a)
        for size in sizes:
            out.append(Strip(strip.device, (a, a + size)))
            a += size
    return tuple(out)


def one_helper(ctx: Context, start: int, stop: int) -> tuple[Strip, ...] | None:
    """`boundary_first` over the host and the helper with the fastest link (then the fastest
    device) alone; None for the first block (the subsets of helpers planned whole cover it) and
    where the cluster has fewer than two helpers (it would be `boundary_first` itself)."""
    helpers = ctx.cluster.secondaries
    if start == 0 or len(helpers) < 2:
        return None
    host = ctx.cluster.host.name
    best = max(helpers, key=lambda d: (ctx.cluster.link(host, d.name).bandwidth_mbps, ctx.speeds[d.name]))
    key = ("one helper", best.name, start, stop)  # the same on every subset that has `best`
    if key not in ctx.memo:
        ctx.memo[key] = boundary_first(ctx.keeping([host, best.name]), start, stop)
    return ctx.memo[key]
