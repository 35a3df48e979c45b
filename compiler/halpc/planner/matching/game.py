"""The matching game: partitions propose to nodes, then blocking swaps and moves are applied,
biggest gain first, with the two nodes' consent, until none is left (see the package docstring)."""
from __future__ import annotations

import math
import random as _random
from collections.abc import Collection, Mapping, Sequence

from halpc.planner.matching.model import (CONSENTS, EPS, Evaluation, Exchange, Key, LinkSpec, Matching, Node,
                                          Source)
from halpc.planner.matching.problem import Problem



def propose(problem: Problem, order: Sequence[int]) -> list[int]:
    assign = [-1] * len(problem.parts)
    queues: list[list[int]] = [[] for _ in problem.nodes]
    loads = [0.0] * len(problem.nodes)
    for p in order:
        best = None
        for j in problem.eligible[p]:
            t = problem.place(p, j, queues[j])
            key = (t, loads[j] + problem.load[j][p], problem.alone[p][j], j)
            if best is None or key < best[0]:
                best = (key, j)
        assert best is not None
        j = best[1]
        assign[p] = j
        queues[j].append(p)
        queues[j].sort(key=problem.rank[j].__getitem__)
        loads[j] += problem.load[j][p]
    return assign

def blocking(problem: Problem, assign: Sequence[int], moves: bool = True, consent: str = "total") -> list[Exchange]:
    """Every blocking swap (and, with `moves`, every blocking move), in partition order."""
    if consent not in CONSENTS:
        raise ValueError(f"consent must be one of {', '.join(CONSENTS)}, got {consent!r}")
    queues = problem.members(assign)
    comp = [0.0] * len(problem.parts)
    for j, queue in enumerate(queues):
        for i, t in problem.node_completions(j, queue).items():
            comp[i] = t
    found: list[Exchange] = []
    for p in range(len(problem.parts)):
        a, cp = assign[p], comp[p]
        for b in problem.eligible[p]:
            if b == a or problem.alone[p][b] >= cp - EPS:
                continue  # p cannot gain on b whatever leaves it
            if moves:
                new_p = problem.place(p, b, queues[b])
                if new_p < cp - EPS and _consent(problem, consent, comp, (a, queues[a], -1, p),
                                                      (b, queues[b], p, -1)):
                    found.append(_exchange(problem, "move", ((p, a, b),), (cp,), (new_p,)))
            for q in queues[b]:
                if q <= p or not problem.ok[q][a] or problem.alone[q][a] >= comp[q] - EPS:
                    continue
                new_p = problem.place(p, b, queues[b], without=q)
                if not new_p < cp - EPS:
                    continue
                new_q = problem.place(q, a, queues[a], without=p)
                if new_q < comp[q] - EPS and _consent(problem, consent, comp, (a, queues[a], q, p),
                                                           (b, queues[b], p, q)):
                    found.append(_exchange(problem, "swap", ((p, a, b), (q, b, a)), (cp, comp[q]),
                                                (new_p, new_q)))
    return found

def _consent(problem: Problem, rule: str, comp: list[float], *changes: tuple[int, list[int], int, int]) -> bool:
    """Do the nodes agree to a change, each given as (node, its queue, partition joining or
    -1, partition leaving or -1)? "pareto": no partition staying on them completes later;
    "total": the completion times of every partition on them before and after, movers
    included, fall in total ((number at inf, sum of the finite ones), by more than EPS);
    "none": always."""
    if rule == "none":
        return True
    before: list[float] = []
    after: list[float] = []
    for j, queue, joining, leaving in changes:
        rank = problem.rank[j]
        new = [i for i in queue if i != leaving]
        if joining >= 0:
            new = sorted(new + [joining], key=rank.__getitem__)
        times = problem.node_completions(j, new)
        if rule == "pareto":
            if any(times[i] > comp[i] + EPS for i in queue if i != leaving):
                return False
        else:
            before += [comp[i] for i in queue]
            after += times.values()
    if rule == "pareto":
        return True
    old, now = potential(before), potential(after)
    return now[0] < old[0] or (now[0] == old[0] and now[1] < old[1] - EPS)

def _exchange(problem: Problem, kind: str, moves, before, after) -> Exchange:
    return Exchange(kind, tuple((problem.keys[i], problem.nodes[a].name, problem.nodes[b].name) for i, a, b in moves),
                    tuple(before), tuple(after))


def potential(times: Sequence[float]) -> tuple[int, float]:
    """(How many are at inf, the sum of the others): what every approved change lowers."""
    return (sum(1 for t in times if t == math.inf), sum(t for t in times if t != math.inf))



def proposal_order(sources: Sequence[Source], seed: int = 0) -> list[Key]:
    """The proposals' turn order: the sources shuffled by `seed`, then round-robin, each
    source's biggest piece (GMAC) first (ties by index)."""
    order = list(range(len(sources)))
    _random.Random(seed).shuffle(order)
    lists = [sorted(sources[si].partitions, key=lambda p: (-p.gmac, p.index)) for si in order]
    turns = []
    for r in range(max(len(l) for l in lists)):
        turns += [l[r].key for l in lists if r < len(l)]
    return turns


def match(sources: Sequence[Source], nodes: Sequence[Node], link: LinkSpec = None, seed: int = 0,
          max_rounds: int | None = None, moves: bool = True, consent: str = "total",
          private: Collection[str] | None = None) -> Matching:
    """The matching game (see the module's docstring): proposals, then blocking swaps (and
    blocking moves, unless `moves=False`) applied one per round, biggest gain first, until none
    is left or `max_rounds` (default 10 x partitions x nodes, at least 100) have been applied.
    Deterministic for a given `seed`, which only shuffles the sources' turns. `private`
    names more nodes that are some source's own device (beyond the sources given), so that
    none of these sources offloads onto them (`selfish` plans one source at a time)."""
    problem = Problem(sources, nodes, link, private)
    order = [problem.key_index[k] for k in proposal_order(problem.sources, seed)]
    assign = propose(problem, order)
    initial = problem.names(assign)
    if max_rounds is None:
        max_rounds = max(100, 10 * len(problem.parts) * len(problem.nodes))
    rounds: list[Exchange] = []
    stable = False
    while True:
        candidates = blocking(problem, assign, moves, consent)
        if not candidates:
            stable = True
            break
        if len(rounds) >= max_rounds:
            break
        best = candidates[0]
        for c in candidates[1:]:
            if c.gain > best.gain:
                best = c
        for key, _, to in best.moves:
            assign[problem.key_index[key]] = problem.node_index[to]
        rounds.append(best)
    ev = problem.evaluation(assign)
    return Matching(ev.assignment, ev.completion, ev.latency, ev.utilization,
                    initial=initial, rounds=tuple(rounds), stable=stable, moves=moves,
                    consent=consent, problem=problem)


def blocking_pairs(matching: Matching | Mapping[Key, str], sources: Sequence[Source] | None = None,
                   nodes: Sequence[Node] | None = None, link: LinkSpec = None,
                   moves: bool | None = None, consent: str | None = None) -> list[Exchange]:
    """Every blocking swap (and, with `moves`, blocking move) left in a matching, or in a plain
    assignment {key: node} given with its sources, nodes and link. Empty when stable. `moves`
    and `consent` default to the matching's own rules (else moves=True, consent="total")."""
    if isinstance(matching, Matching):
        moves = matching.moves if moves is None else moves
        consent = matching.consent if consent is None else consent
    moves = True if moves is None else moves
    consent = "total" if consent is None else consent
    if isinstance(matching, Matching) and sources is None:
        problem = matching.problem
    else:
        if sources is None or nodes is None:
            raise ValueError("give sources and nodes with a plain assignment")
        problem = Problem(sources, nodes, link)
    return blocking(problem, problem.indices(matching.assignment if isinstance(matching, Evaluation)
                                            else matching), moves, consent)


def evaluate(assignment: Mapping[Key, str], sources: Sequence[Source], nodes: Sequence[Node],
             link: LinkSpec = None) -> Evaluation:
    """An assignment {(source, index): node name} under the cost model."""
    problem = Problem(sources, nodes, link)
    return problem.evaluation(problem.indices(assignment))
