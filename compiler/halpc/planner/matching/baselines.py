"""What the matching is compared with, in the same cost model and with the same partitions."""
from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence

from halpc.planner.matching.game import match
from halpc.planner.matching.model import Key, LinkSpec, Node, Source
from halpc.planner.matching.problem import Problem



def alone(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
          seed: int = 0) -> dict[Key, str]:
    """Every source runs all its partitions itself (needs a node named like each source)."""
    names = {n.name for n in nodes}
    missing = [s.name for s in sources if s.name not in names]
    if missing:
        raise ValueError(f"alone needs each source's own device among the nodes; missing: {missing}")
    return {p.key: s.name for s in sources for p in s.partitions}


def selfish(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
            seed: int = 0) -> dict[Key, str]:
    """Each source plans as if it were alone with every node (this matching, on its own
    partitions only); the plans are then put together and meet on the shared nodes."""
    out: dict[Key, str] = {}
    private = [s.name for s in sources]  # the others' own devices stay theirs
    for s in sources:
        out.update(match([s], nodes, link, seed, private=private).assignment)
    return out


def greedy(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
           seed: int = 0) -> dict[Key, str]:
    """Partitions in order, each to the eligible node with the most GMAC/s (ties: the first
    listed), whatever is queued there and whatever its link."""
    problem = Problem(sources, nodes, link)
    out = {}
    for i, k in enumerate(problem.keys):
        j = min(problem.eligible[i], key=lambda j: (-problem.nodes[j].gmacs, j))
        out[k] = problem.nodes[j].name
    return out


def random_assignment(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
                      seed: int = 0) -> dict[Key, str]:
    """Each partition to an eligible node drawn uniformly (seeded)."""
    problem = Problem(sources, nodes, link)
    rng = _random.Random(seed)
    return {k: problem.nodes[rng.choice(problem.eligible[i])].name for i, k in enumerate(problem.keys)}


BASELINES: dict[str, Callable[..., dict[Key, str]]] = {
    "alone": alone,
    "selfish": selfish,
    "greedy": greedy,
    "random": random_assignment,
}
STRATEGIES = ("matching",) + tuple(BASELINES)


def assign(strategy: str, sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None,
           seed: int = 0) -> dict[Key, str]:
    """The assignment of one of STRATEGIES."""
    if strategy == "matching":
        return match(sources, nodes, link, seed).assignment
    if strategy not in BASELINES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return BASELINES[strategy](sources, nodes, link, seed)
