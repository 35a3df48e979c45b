"""Several sources sharing a few nodes: capacity-sized partitions, matched to nodes by a game.

After Mohammed et al., "Distributed Inference Acceleration with Adaptive DNN Partitioning and
Offloading" (INFOCOM 2020). Several sources (cameras) each hold a stream of frames of their own
model; a frame's work is cut into partitions sized by node capacity, and the partitions of all
sources are assigned to the shared nodes by a matching in which each partition wants to finish
as early as possible. This package is the algorithm and its cost model only: pure Python,
independent of ONNX (`planner.sources` turns trunks and strips into partitions). Its modules:
`model` (the data), `problem` (the cost model), `game` (the matching), `baselines`, `frames`
(frames played out over time).

Vocabulary
----------
- A `Source` releases frames at `rate_hz`; a frame's work is its `partitions`.
- A `Partition` is one piece of one frame: `gmac` of work (GMAC), `in_bytes` it must receive
  from its source and `out_bytes` it sends back.
- A `Node` computes at `gmacs` GMAC/s, one partition at a time. Its `mbps` / `latency_ms` are
  its link to every source unless `link(source, node)` says otherwise.
- A node named like a source is that source's own device: its partitions run there with no
  transfer at all, and it is private to that source (no other source offloads onto a camera).
  Every other node is shared by all sources.

Cost model (one definition, used by the matching, every baseline and `evaluate`)
---------------------------------------------------------------------------------
Times of partition p on node n (no transfer at all when n is p's source's own device)::

    up(p, n)      = in_bytes * 8 / (mbps * 1e6) + latency_ms / 1e3
    service(p, n) = gmac / gmacs
    down(p, n)    = out_bytes * 8 / (mbps * 1e6) + latency_ms / 1e3
    alone(p, n)   = up + service + down        (p on an otherwise idle node)

Links are fixed delays: uploads of different partitions do not slow each other down (a source
sending several strips over one network interface would in reality send them one after the
other; that is left out, as in the paper's model).

**Predicted completion, with the queue already assigned to the node.** A source's partitions
are released together (one frame), and the other sources' frames come at their own rates, at
times unrelated to this frame. So, on node n under an assignment:

- n's utilisation is `rho(n) = sum(rate_hz(source of q) * service(q, n))` over the partitions q
  on n (the share of each second n is busy). At `rho(n) >= 1` the node cannot keep up: its
  queue grows without bound and every partition on it completes at `inf`.
- An input of source s arriving at n first waits for the work of the *other* sources that n
  has not finished yet, on average (the Pollaczek-Khinchine mean residual work, each other
  source sigma bringing one batch of `B(sigma, n) = sum(service(q, n) for q of sigma on n)` per
  frame)::

      wait(s, n) = sum(rate_hz(sigma) * B(sigma, n) ** 2 for sigma != s) / (2 * (1 - rho(n)))

  i.e. the other partitions' per-frame compute times weighted by their sources' request rates
  (a node that others use lightly costs little, one near saturation a lot).
- Then n serves s's partitions one at a time, first come first served by the arrival of their
  input (ties: the order the source lists them), never idle while an input waits::

      ready(p)  = up(p, n) + wait(s, n)
      finish(p) = max(finish of s's partition served before p on n (0 for the first), ready(p))
                  + service(p, n)
      completion(p, n, assignment) = finish(p) + down(p, n)

  the instant p's output is back at its source. With a single source the wait is 0 and this is
  exactly one frame played out on the nodes (`play_frames(..., arrivals="single")`).

Adding a partition to a node never makes another one there finish earlier, and removing one
never makes another finish later.

**Frame latency** (predicted, per source) = the latest completion among its partitions, plus
its `gather_ms` (stitching the pieces together; the transfers back are already in the
completions).

The matching game (`match`)
---------------------------
1. *Proposals.* Partitions take turns (sources round-robin, each source's biggest piece first;
   the order of the sources is shuffled by `seed`). Each proposes to the eligible node where it
   would complete earliest given the partitions assigned so far; nodes accept every proposal
   (their side of the game is their consent to exchanges, below). If every node would be
   overloaded, it goes where the utilisation stays lowest.
2. *Exchanges.* A **blocking swap** is two partitions p (on node a) and q (on node b != a), each
   allowed on the other's node, that would *both* complete strictly earlier (by more than
   `EPS` seconds, so float noise cannot cycle) after p moves to b and q to a, **with the two
   nodes consenting**. A **blocking move** is one partition that would complete strictly
   earlier on another node, the two nodes consenting. Each round applies the blocking change
   with the largest total gain for the partitions that move (ties: the first in partition
   order), records it (`Exchange`: who, from where to where, times before and after), and
   looks again, until none is left (`stable=True`); never more than `max_rounds` rounds (then
   `stable=False`).

   The nodes' consent (`consent=`), as in swap matching, where a swap needs the resources'
   approval too:

   - "total" (the default): the completion times of all the partitions on the two nodes,
     the movers included, fall in total: the movers gain more than they cost the partitions
     they now queue with (compared as (how many at inf, sum of the finite ones), by more than
     EPS). Only those two nodes' times change, so every round lowers that pair over all
     partitions, which cannot go on forever: the rounds always end.
   - "pareto": no partition staying on the two nodes completes later. It also always ends,
     but with other sources' interference on every shared node almost nothing is ever
     approved, so the exchanges rarely improve on the proposals.
   - "none": the two partitions alone decide. Their swaps may delay third partitions, and
     can cycle: 15 of the tests' 300 random instances never settle (the cap stops them).

   A matching with no blocking change left under its rule is two-sided exchange stable: no
   pair of partitions both gains by exchanging nodes with the nodes agreeing.

Baselines (same cost model): `alone` (each source runs everything itself), `selfish` (each source
runs this very matching as if it were the only source, the plans are then put together),
`greedy` (every partition to the eligible node with the most GMAC/s, whatever its queue and its
link) and `random` (uniform over the eligible nodes, seeded).

`play_frames` plays an assignment out over time (frames released at the sources' rates) and
`compare` tabulates mean and p95 frame latency of the matching and every baseline.
"""
from __future__ import annotations

from halpc.planner.matching.baselines import BASELINES, STRATEGIES, alone, assign, greedy, random_assignment, selfish
from halpc.planner.matching.game import blocking_pairs, evaluate, match, proposal_order
from halpc.planner.matching.model import (CONSENTS, EPS, Evaluation, Exchange, Key, LinkSpec, Matching, Node,
                                          Partition, Source, cluster_link, partitions_by_capacity)
from halpc.planner.matching.frames import SourceStats, compare, nearest_rank, play_frames, release_times

__all__ = [
    "BASELINES", "CONSENTS", "EPS", "STRATEGIES", "Evaluation", "Exchange", "Key", "LinkSpec", "Matching", "Node",
    "Partition", "Source", "SourceStats", "alone", "assign", "blocking_pairs", "cluster_link", "compare",
    "evaluate", "greedy", "match", "nearest_rank", "partitions_by_capacity", "play_frames", "proposal_order",
    "random_assignment", "release_times", "selfish",
]
